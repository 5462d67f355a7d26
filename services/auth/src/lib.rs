//! Who may call what.
//!
//! A caller is a [`Principal`]: a name (the station, lab or authority id it
//! submits under) and a [`Role`]. It is known from a bearer token (stored on
//! the server only as a SHA-256 hash) or from a client certificate signed by
//! the deployment's client CA (CN = name, OU = role). Each RPC admits some
//! roles; an event must name its caller as its station, lab or authority.
//! Resident ids are replaced by keyed pseudonyms before anything stores them.

mod certs;
mod dev;
mod guard;
mod pseudonym;
mod role;
mod tokens;

pub use certs::{ClientCert, principal_from_cert};
pub use dev::{DEV_PRINCIPALS, DevCredentials, Issuer};
pub use guard::{Admitted, Authenticate, Bearer, Guard, GuardConfig, bearer, with_token};
pub use pseudonym::Pseudonymizer;
pub use role::{Principal, Proof, Role, Rpc, check_owner, owner};
pub use tokens::{TokenEntry, TokenRegistry, new_token};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {detail}")]
    Invalid { path: String, detail: String },
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

impl AuthError {
    fn io(path: &std::path::Path, source: std::io::Error) -> AuthError {
        AuthError::Io { path: path.display().to_string(), source }
    }

    fn invalid(path: &std::path::Path, detail: impl Into<String>) -> AuthError {
        AuthError::Invalid { path: path.display().to_string(), detail: detail.into() }
    }
}

/// Lowercase hex, for token hashes, keys and pseudonyms.
use healthcode_secrets::{from_hex as unhex, to_hex as hex};

/// `N` bytes from the OS's secure random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the OS random source works");
    bytes
}
