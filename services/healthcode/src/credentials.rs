//! Creating credentials: a deployment's (`healthcode credentials init`) and
//! the development ones `healthcode up` makes on first start. Both share
//! these steps; serving and the client verbs only read what is here.

use std::path::Path;

use anyhow::Context;
use healthcode_auth::DevCredentials;
use healthcode_status_token::Signer;

use crate::config::Security;

/// Creates the credentials missing in `dir`: certificates (the server's
/// for `server_names`), tokens, pseudonym key, status signing key and its
/// keyring. Returns the names of what it created.
pub fn create_credentials(dir: &Path, server_names: &[&str]) -> anyhow::Result<Vec<&'static str>> {
    let mut created = DevCredentials::at(dir).ensure_for(server_names).context("creating credentials")?;
    if create_signing_key(&dir.join("status-signing.toml"), &dir.join("status-keys.toml"))? {
        created.push("status signing key");
    }
    Ok(created)
}

/// A status signing key and the keyring stations verify with, unless the key is there.
fn create_signing_key(key: &Path, keyring: &Path) -> anyhow::Result<bool> {
    if key.exists() {
        return Ok(false);
    }
    Signer::generate(key, keyring, "dev-1").context("creating the status signing key")?;
    Ok(true)
}

/// The development credentials and status signing key `security` names,
/// where missing; says what it created.
pub fn ensure_development(security: &Security) -> anyhow::Result<()> {
    let created = DevCredentials::at(&security.credentials_dir).ensure().context("creating development credentials")?;
    if !created.is_empty() {
        tracing::info!(
            dir = %security.credentials_dir.display(),
            created = created.join(", "),
            "created development credentials: <role>.token holds a bearer token of dev-<role>, \
             <role>.pem/.key its client certificate; the client verbs find them there"
        );
    }
    let keyring = security.credentials_dir.join("status-keys.toml");
    if create_signing_key(&security.status_signing_key_file, &keyring)? {
        tracing::info!(keyring = %keyring.display(), "created a status signing key; stations verify tokens with the keyring");
    }
    Ok(())
}
