//! Bearer tokens. The server keeps only SHA-256 hashes, so a leaked tokens
//! file does not let anyone in. Tokens are 256 random bits: a fast hash is
//! enough, there is nothing to brute-force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::{AuthError, Principal, Proof, Role, hex, random_bytes};

/// One line of the tokens file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub principal: String,
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub sha256: String,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default, rename = "token")]
    tokens: Vec<TokenEntry>,
}

/// A fresh token (64 hex characters) and the entry that admits it.
pub fn new_token(principal: &str, role: Role) -> (String, TokenEntry) {
    let token = hex(&random_bytes::<32>());
    let entry = TokenEntry::of(&token, principal, role);
    (token, entry)
}

impl TokenEntry {
    /// The entry that admits an existing token.
    pub fn of(token: &str, principal: &str, role: Role) -> TokenEntry {
        TokenEntry { principal: principal.to_owned(), role, sha256: digest(token) }
    }
}

fn digest(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

struct Loaded {
    by_hash: HashMap<String, Principal>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// The tokens a server accepts, from a TOML file of [`TokenEntry`]s, reread
/// when it changes.
pub struct TokenRegistry {
    path: PathBuf,
    loaded: RwLock<Loaded>,
}

const RECHECK: Duration = Duration::from_secs(1);

impl TokenRegistry {
    pub fn open(path: &Path) -> Result<TokenRegistry, AuthError> {
        let loaded = load(path)?;
        Ok(TokenRegistry { path: path.to_owned(), loaded: RwLock::new(loaded) })
    }

    pub fn len(&self) -> usize {
        self.loaded.read().expect("tokens lock").by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        self.refresh_if_due();
        self.loaded.read().expect("tokens lock").by_hash.get(&digest(token)).cloned()
    }

    /// Rereads the file when it changed, looking at most once a second: new
    /// tokens start working and removed ones stop without a restart.
    fn refresh_if_due(&self) {
        if self.loaded.read().expect("tokens lock").checked.elapsed() < RECHECK {
            return;
        }
        let mut loaded = self.loaded.write().expect("tokens lock");
        if loaded.checked.elapsed() < RECHECK {
            return;
        }
        loaded.checked = Instant::now();
        let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if modified == loaded.modified {
            return;
        }
        match load(&self.path) {
            Ok(fresh) => {
                tracing::info!(path = %self.path.display(), tokens = fresh.by_hash.len(), "tokens file reloaded");
                *loaded = fresh;
            }
            // Keep serving the tokens we had; a broken file must not lock everyone out.
            Err(e) => tracing::warn!(error = %e, "tokens file unreadable, keeping the previous tokens"),
        }
    }

    /// Adds entries to the file at `path`, creating it when missing.
    pub fn append(path: &Path, entries: &[TokenEntry]) -> Result<(), AuthError> {
        let mut file = if path.exists() { read(path)? } else { TokensFile::default() };
        file.tokens.extend_from_slice(entries);
        let text = toml::to_string(&file).map_err(|e| AuthError::invalid(path, e.to_string()))?;
        write_private(path, text.as_bytes())
    }
}

fn read(path: &Path) -> Result<TokensFile, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|e| AuthError::io(path, e))?;
    toml::from_str(&text).map_err(|e| AuthError::invalid(path, e.to_string()))
}

fn load(path: &Path) -> Result<Loaded, AuthError> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).map_err(|e| AuthError::io(path, e))?;
    let file = read(path)?;
    let mut by_hash = HashMap::with_capacity(file.tokens.len());
    for (i, entry) in file.tokens.into_iter().enumerate() {
        if entry.sha256.len() != 64 || crate::unhex(&entry.sha256).is_none() {
            return Err(AuthError::invalid(path, format!("token[{i}].sha256: must be 64 hex characters")));
        }
        if entry.principal.is_empty() {
            return Err(AuthError::invalid(path, format!("token[{i}].principal: must not be empty")));
        }
        by_hash.insert(entry.sha256, Principal { name: entry.principal, role: entry.role, proof: Proof::BearerToken });
    }
    Ok(Loaded { by_hash, modified: Some(modified), checked: Instant::now() })
}

/// Writes a secret file readable by its owner only, replacing it atomically.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    healthcode_secrets::write_private(path, bytes).map_err(|e| AuthError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_known_by_its_hash_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let (token, entry) = new_token("lab-7", Role::Lab);
        TokenRegistry::append(&path, std::slice::from_ref(&entry)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token), "the file must not hold the token itself");
        let registry = TokenRegistry::open(&path).unwrap();
        assert_eq!(
            registry.authenticate(&token),
            Some(Principal { name: "lab-7".into(), role: Role::Lab, proof: Proof::BearerToken })
        );
        assert_eq!(registry.authenticate(&token[1..]), None);
    }

    #[test]
    fn tokens_issued_later_are_picked_up_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        TokenRegistry::append(&path, &[new_token("a", Role::Station).1]).unwrap();
        let registry = TokenRegistry::open(&path).unwrap();
        let (token, entry) = new_token("b", Role::Station);
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        TokenRegistry::append(&path, &[entry]).unwrap();
        assert_eq!(registry.authenticate(&token).map(|p| p.name), Some("b".to_string()));
    }

    #[test]
    fn a_token_removed_from_the_file_stops_working() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let (kept, kept_entry) = new_token("a", Role::Station);
        let (revoked, revoked_entry) = new_token("b", Role::Station);
        TokenRegistry::append(&path, &[kept_entry.clone(), revoked_entry]).unwrap();
        let registry = TokenRegistry::open(&path).unwrap();
        assert!(registry.authenticate(&revoked).is_some());
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        std::fs::remove_file(&path).unwrap();
        TokenRegistry::append(&path, &[kept_entry]).unwrap();
        assert!(registry.authenticate(&revoked).is_none(), "revoked within a second");
        assert!(registry.authenticate(&kept).is_some());
    }

    #[test]
    fn a_malformed_entry_is_refused_with_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, "[[token]]\nprincipal = \"x\"\nrole = \"station\"\nsha256 = \"abc\"\n").unwrap();
        let err = TokenRegistry::open(&path).err().unwrap().to_string();
        assert!(err.contains("token[0].sha256"), "{err}");
    }
}
