//! Issuing credentials: a deployment's set, tokens, client certificates.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use healthcode_auth::{DevCredentials, Issuer, Role, TokenRegistry, new_token};

use super::out;

#[derive(Subcommand, Debug)]
pub enum CredentialsCommand {
    /// Creates a deployment's credentials where missing: CA, server
    /// certificate, a token and client certificate per role, pseudonym key
    /// and status signing key (then kept in a secret store, e.g. a Kubernetes Secret).
    Init(InitArgs),
    /// Issues a bearer token: appends its hash to the tokens file (running
    /// servers pick it up within a second) and prints the token once.
    Token(IssueArgs),
    /// Issues a client certificate signed by the credentials dir's CA.
    Cert(IssueArgs),
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    /// The station, lab or authority id the credential submits under.
    #[arg(long)]
    pub principal: String,
    #[arg(long, value_parser = |s: &str| s.parse::<Role>())]
    pub role: Role,
    #[arg(long, env = "HEALTHCODE_CREDENTIALS_DIR", default_value = "./data/credentials")]
    pub credentials_dir: PathBuf,
    /// Where `cert` writes <principal>.pem and <principal>.key [default: the credentials dir]
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[arg(long, env = "HEALTHCODE_CREDENTIALS_DIR", default_value = "./data/credentials")]
    pub credentials_dir: PathBuf,
    /// DNS name or IP address the server certificate is for (repeatable)
    /// [default: localhost and 127.0.0.1]
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
}

pub fn credentials(command: CredentialsCommand) -> anyhow::Result<()> {
    match command {
        CredentialsCommand::Init(args) => {
            let names: Vec<&str> = args.server_names.iter().map(String::as_str).collect();
            let created = crate::credentials::create_credentials(&args.credentials_dir, &names)?;
            let created = if created.is_empty() { "nothing, all was there".to_owned() } else { created.join(", ") };
            eprintln!("credentials in {}: created {created}", args.credentials_dir.display());
        }
        CredentialsCommand::Token(args) => {
            let dir = DevCredentials::at(&args.credentials_dir);
            let (token, entry) = new_token(&args.principal, args.role);
            TokenRegistry::append(&dir.tokens_file(), &[entry])?;
            eprintln!("token of {} ({}) added to {}", args.principal, args.role, dir.tokens_file().display());
            out!("{token}")?;
        }
        CredentialsCommand::Cert(args) => {
            let dir = DevCredentials::at(&args.credentials_dir);
            let cert = Issuer::open(&dir)?.client_cert(&args.principal, args.role)?;
            let out = args.out.unwrap_or_else(|| args.credentials_dir.clone());
            std::fs::create_dir_all(&out)?;
            let (pem, key) = (out.join(format!("{}.pem", args.principal)), out.join(format!("{}.key", args.principal)));
            std::fs::write(&pem, cert.cert_pem)?;
            healthcode_secrets::write_private(&key, cert.key_pem.as_bytes())?;
            out!("{}\n{}", pem.display(), key.display())?;
        }
    }
    Ok(())
}
