//! Credentials, TLS and call limits -> [`Security`].

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use healthcode_auth::GuardConfig;
use merge::Merge;
use serde::Deserialize;

#[derive(Args, Clone, Debug, Default, Deserialize, Merge)]
#[command(next_help_heading = "Security")]
#[serde(default)]
#[merge(strategy = merge::option::overwrite_none)]
pub struct SecurityArgs {
    /// Where credentials live: tokens file, pseudonym key, certificates
    /// [default: <data_dir>/credentials]
    #[arg(long, env = "HEALTHCODE_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// Create development credentials (CA, certificates, tokens, pseudonym
    /// key) in the credentials dir where missing; off in deployments [default: true]
    #[arg(long, env = "HEALTHCODE_DEV_CREDENTIALS")]
    pub dev_credentials: Option<bool>,
    /// Hashed bearer tokens, one [[token]] per principal [default: <credentials_dir>/tokens.toml]
    #[arg(long, env = "HEALTHCODE_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Secret key of the resident pseudonyms, hex; the same on every edge and
    /// lookup of a deployment [default: <credentials_dir>/pseudonym.key]
    #[arg(long, env = "HEALTHCODE_PSEUDONYM_KEY_FILE")]
    pub pseudonym_key_file: Option<PathBuf>,
    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key-file
    #[arg(long, env = "HEALTHCODE_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key of --tls-cert-file (PEM)
    #[arg(long, env = "HEALTHCODE_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Accept client certificates signed by this CA (PEM) as credentials: CN
    /// names the principal, OU its role (mutual TLS; tokens keep working)
    #[arg(long, env = "HEALTHCODE_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Ed25519 key that signs the status token of every lookup answer
    /// [default: <credentials_dir>/status-signing.toml]
    #[arg(long, env = "HEALTHCODE_STATUS_SIGNING_KEY_FILE")]
    pub status_signing_key_file: Option<PathBuf>,
    /// Longest life of a status token [default: 4h]
    #[arg(long, env = "HEALTHCODE_STATUS_TOKEN_TTL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub status_token_ttl: Option<Duration>,
    /// Calls per second one principal may make before RESOURCE_EXHAUSTED [default: 5000]
    #[arg(long, env = "HEALTHCODE_RATE_LIMIT_PER_PRINCIPAL")]
    pub rate_limit_per_principal: Option<u32>,
    /// Largest gRPC request accepted, in bytes [default: 2097152]
    #[arg(long, env = "HEALTHCODE_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Serve gRPC without TLS on an address other than loopback (tokens and
    /// results then cross the network in clear) [default: false]
    #[arg(long, env = "HEALTHCODE_ALLOW_PLAINTEXT")]
    pub allow_plaintext: Option<bool>,
}

/// Credentials, TLS and limits of the gRPC and admin servers.
#[derive(Clone, Debug)]
pub struct Security {
    pub credentials_dir: PathBuf,
    pub dev_credentials: bool,
    pub tokens_file: PathBuf,
    pub pseudonym_key_file: PathBuf,
    pub tls: Option<Tls>,
    pub status_signing_key_file: PathBuf,
    pub status_token_ttl: Duration,
    pub guard: GuardConfig,
    pub max_message_bytes: usize,
    pub allow_plaintext: bool,
}

#[derive(Clone, Debug)]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

impl Security {
    /// The files a process finds in `credentials_dir` unless told otherwise.
    pub fn in_dir(credentials_dir: PathBuf) -> Security {
        Security {
            dev_credentials: true,
            tokens_file: credentials_dir.join("tokens.toml"),
            pseudonym_key_file: credentials_dir.join("pseudonym.key"),
            status_signing_key_file: credentials_dir.join("status-signing.toml"),
            credentials_dir,
            tls: None,
            status_token_ttl: healthcode_status_token::DEFAULT_MAX_AGE,
            guard: GuardConfig::default(),
            max_message_bytes: healthcode_rpc::DEFAULT_MAX_MESSAGE_BYTES,
            allow_plaintext: false,
        }
    }
}

impl Security {
    /// Refuses plaintext gRPC on `addr` unless it is loopback or plaintext
    /// was asked for: a bearer token sent in clear is anyone's on the way.
    pub fn check_transport(&self, addr: std::net::SocketAddr) -> anyhow::Result<()> {
        if self.tls.is_some() || self.allow_plaintext || addr.ip().is_loopback() {
            return Ok(());
        }
        anyhow::bail!(
            "refusing to serve gRPC without TLS on {addr}, which is not a loopback address: give \
             --tls-cert-file and --tls-key-file (`healthcode credentials init --server-name <name>` makes \
             server.pem and server.key), or --allow-plaintext where the network itself is trusted"
        )
    }
}

impl SecurityArgs {
    pub fn into_config(self, data_dir: &Path) -> anyhow::Result<Security> {
        let d = Security::in_dir(self.credentials_dir.unwrap_or_else(|| data_dir.join("credentials")));
        let tls = match (self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file) {
            (Some(cert_file), Some(key_file), client_ca_file) => Some(Tls { cert_file, key_file, client_ca_file }),
            (None, None, None) => None,
            (None, None, Some(_)) => anyhow::bail!("tls_client_ca_file needs tls_cert_file and tls_key_file"),
            _ => anyhow::bail!("tls_cert_file and tls_key_file must be given together"),
        };
        let guard = match self.rate_limit_per_principal {
            Some(rate) => GuardConfig {
                rate_per_principal: NonZeroU32::new(rate)
                    .ok_or_else(|| anyhow::anyhow!("rate_limit_per_principal must be at least 1"))?,
            },
            None => d.guard,
        };
        let security = Security {
            dev_credentials: self.dev_credentials.unwrap_or(d.dev_credentials),
            tokens_file: self.tokens_file.unwrap_or(d.tokens_file),
            pseudonym_key_file: self.pseudonym_key_file.unwrap_or(d.pseudonym_key_file),
            status_signing_key_file: self.status_signing_key_file.unwrap_or(d.status_signing_key_file),
            status_token_ttl: self.status_token_ttl.unwrap_or(d.status_token_ttl),
            credentials_dir: d.credentials_dir,
            tls,
            guard,
            max_message_bytes: self.max_message_bytes.unwrap_or(d.max_message_bytes),
            allow_plaintext: self.allow_plaintext.unwrap_or(d.allow_plaintext),
        };
        anyhow::ensure!(security.max_message_bytes >= 4096, "max_message_bytes must be at least 4096");
        Ok(security)
    }
}
