//! Status tokens: a lookup's answer signed with Ed25519, so that a station
//! that cannot reach the service can still trust a code the resident shows
//! (or one it kept), with nothing but the public keys. Tokens name their key
//! id; verifiers hold a keyring of public keys by id, so keys rotate by
//! adding the new key to keyrings before signing with it.
//!
//! A token is base64url (no padding) of a `StatusToken`: the encoded
//! `StatusClaims` and their signature.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use healthcode_core::UnixMicros;
use healthcode_proto::Message;
use healthcode_proto::v1 as pb;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a status token: {0}")]
    Malformed(String),
    #[error("signed with key {0:?}, which this keyring does not hold")]
    UnknownKey(String),
    #[error("the signature does not match: the token was altered or not issued by this service")]
    BadSignature,
    #[error("expired at {0}")]
    Expired(String),
    #[error("issued in the future ({0}): check this station's clock")]
    NotYetValid(String),
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {detail}")]
    File { path: String, detail: String },
}

fn file_error(path: &Path, detail: impl ToString) -> KeyError {
    KeyError::File { path: path.display().to_string(), detail: detail.to_string() }
}

/// What a verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub resident_id: String,
    pub color: pb::Color,
    pub reason: pb::Reason,
    pub valid_until: UnixMicros,
    pub issued_at: UnixMicros,
    pub key_id: String,
    pub stale: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SigningKeyFile {
    key_id: String,
    /// PKCS#8 of the Ed25519 key pair, hex.
    pkcs8: String,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    #[serde(default, rename = "key")]
    keys: Vec<PublicKeyEntry>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKeyEntry {
    id: String,
    /// The 32-byte Ed25519 public key, hex.
    public: String,
}

use healthcode_secrets::{from_hex as unhex, to_hex as hex};

/// Longest life of a status token unless a deployment says otherwise.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(4 * 3600);

/// Signs answers; held by the lookup.
pub struct Signer {
    key_id: String,
    pair: Ed25519KeyPair,
    /// Longest life of a token, whatever the status's own validity.
    max_age: Duration,
}

impl Signer {
    pub fn from_file(path: &Path, max_age: Duration) -> Result<Signer, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
        let file: SigningKeyFile = toml::from_str(&text).map_err(|e| file_error(path, e))?;
        let pkcs8 = unhex(&file.pkcs8).ok_or_else(|| file_error(path, "pkcs8: must be hex"))?;
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| file_error(path, format!("pkcs8: {e}")))?;
        Ok(Signer { key_id: file.key_id, pair, max_age })
    }

    /// Writes a new signing key (owner-only) and adds its public half to
    /// the keyring at `keyring` (created when missing).
    pub fn generate(signing: &Path, keyring: &Path, key_id: &str) -> Result<(), KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| file_error(signing, e))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| file_error(signing, e))?;
        let file = SigningKeyFile { key_id: key_id.to_owned(), pkcs8: hex(pkcs8.as_ref()) };
        write_private(signing, &toml::to_string(&file).map_err(|e| file_error(signing, e))?)?;
        let mut ring_file = match std::fs::read_to_string(keyring) {
            Ok(text) => toml::from_str(&text).map_err(|e| file_error(keyring, e))?,
            Err(_) => KeyringFile::default(),
        };
        ring_file.keys.push(PublicKeyEntry { id: key_id.to_owned(), public: hex(pair.public_key().as_ref()) });
        std::fs::write(keyring, toml::to_string(&ring_file).map_err(|e| file_error(keyring, e))?)
            .map_err(|e| file_error(keyring, e))
    }

    /// The token of an answer computed at `issued_at`.
    pub fn sign(&self, status: &pb::ResidentStatus, issued_at: UnixMicros) -> String {
        let cap = issued_at.saturating_add(self.max_age);
        let valid_until = status.valid_until.as_ref().and_then(UnixMicros::from_timestamp).map_or(cap, |v| v.min(cap));
        let claims = pb::StatusClaims {
            resident_id: status.resident_id.clone(),
            color: status.color,
            reason: status.reason,
            valid_until: Some(valid_until.to_timestamp()),
            issued_at: Some(issued_at.to_timestamp()),
            key_id: self.key_id.clone(),
            stale: status.stale,
        }
        .encode_to_vec();
        let signature = self.pair.sign(&claims).as_ref().to_vec();
        URL_SAFE_NO_PAD.encode(pb::StatusToken { claims, signature }.encode_to_vec())
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), KeyError> {
    healthcode_secrets::write_private(path, text.as_bytes()).map_err(|e| file_error(path, e))
}

/// The public keys a station trusts, by key id.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: HashMap<String, Vec<u8>>,
}

impl Keyring {
    pub fn from_file(path: &Path) -> Result<Keyring, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
        let file: KeyringFile = toml::from_str(&text).map_err(|e| file_error(path, e))?;
        let mut keys = HashMap::new();
        for (i, key) in file.keys.into_iter().enumerate() {
            let public = unhex(&key.public)
                .filter(|k| k.len() == 32)
                .ok_or_else(|| file_error(path, format!("key[{i}].public: must be 64 hex characters")))?;
            keys.insert(key.id, public);
        }
        Ok(Keyring { keys })
    }

    /// Checks a token's signature and time; the claims when it holds at `now`.
    pub fn verify(&self, token: &str, now: UnixMicros) -> Result<Claims, TokenError> {
        let bytes = URL_SAFE_NO_PAD.decode(token.trim()).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let token = pb::StatusToken::decode(bytes.as_slice()).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let claims =
            pb::StatusClaims::decode(token.claims.as_slice()).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let public = self.keys.get(&claims.key_id).ok_or_else(|| TokenError::UnknownKey(claims.key_id.clone()))?;
        UnparsedPublicKey::new(&ED25519, public)
            .verify(&token.claims, &token.signature)
            .map_err(|_| TokenError::BadSignature)?;
        let time = |t: &Option<healthcode_proto::Timestamp>, name: &str| {
            t.as_ref()
                .and_then(UnixMicros::from_timestamp)
                .ok_or_else(|| TokenError::Malformed(format!("{name} missing")))
        };
        let (valid_until, issued_at) =
            (time(&claims.valid_until, "valid_until")?, time(&claims.issued_at, "issued_at")?);
        // Signed clocks may differ a little from the station's.
        if issued_at > now.saturating_add(Duration::from_secs(300)) {
            return Err(TokenError::NotYetValid(rfc3339(issued_at)));
        }
        if now >= valid_until {
            return Err(TokenError::Expired(rfc3339(valid_until)));
        }
        Ok(Claims {
            resident_id: claims.resident_id,
            color: pb::Color::try_from(claims.color).unwrap_or_default(),
            reason: pb::Reason::try_from(claims.reason).unwrap_or_default(),
            valid_until,
            issued_at,
            key_id: claims.key_id,
            stale: claims.stale,
        })
    }
}

fn rfc3339(t: UnixMicros) -> String {
    humantime::format_rfc3339_seconds(t.to_system_time()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (Signer, Keyring, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (signing, keyring) = (dir.path().join("signing.toml"), dir.path().join("keys.toml"));
        Signer::generate(&signing, &keyring, "k1").unwrap();
        let signer = Signer::from_file(&signing, Duration::from_secs(4 * 3600)).unwrap();
        (signer, Keyring::from_file(&keyring).unwrap(), dir)
    }

    fn green(now: UnixMicros, valid_for: Duration) -> pb::ResidentStatus {
        pb::ResidentStatus {
            resident_id: "R-1".into(),
            color: pb::Color::Green as i32,
            reason: pb::Reason::NegativeTestValid as i32,
            valid_until: Some(now.saturating_add(valid_for).to_timestamp()),
            ..Default::default()
        }
    }

    #[test]
    fn a_signed_answer_verifies_offline_until_it_expires() {
        let (signer, keyring, _dir) = keys();
        let now = UnixMicros::now();
        let token = signer.sign(&green(now, Duration::from_secs(3600)), now);
        let claims = keyring.verify(&token, now).unwrap();
        assert_eq!(
            (claims.resident_id.as_str(), claims.color, claims.key_id.as_str()),
            ("R-1", pb::Color::Green, "k1")
        );
        assert_eq!(claims.valid_until, now.saturating_add(Duration::from_secs(3600)), "the status's own validity");
        let later = now.saturating_add(Duration::from_secs(3601));
        assert!(matches!(keyring.verify(&token, later), Err(TokenError::Expired(_))));
    }

    #[test]
    fn a_token_lives_no_longer_than_the_signers_limit() {
        let (signer, keyring, _dir) = keys();
        let now = UnixMicros::now();
        let token = signer.sign(&green(now, Duration::from_secs(48 * 3600)), now);
        assert_eq!(keyring.verify(&token, now).unwrap().valid_until, now.saturating_add(Duration::from_secs(4 * 3600)));
        let red = pb::ResidentStatus { color: pb::Color::Red as i32, valid_until: None, ..green(now, Duration::ZERO) };
        let claims = keyring.verify(&signer.sign(&red, now), now).unwrap();
        assert_eq!(
            (claims.color, claims.valid_until),
            (pb::Color::Red, now.saturating_add(Duration::from_secs(4 * 3600)))
        );
    }

    #[test]
    fn altered_foreign_and_garbled_tokens_are_refused() {
        let (signer, keyring, _dir) = keys();
        let now = UnixMicros::now();
        let token = signer.sign(&green(now, Duration::from_secs(3600)), now);
        // Turn the green into a red by editing the claims.
        let mut raw = pb::StatusToken::decode(URL_SAFE_NO_PAD.decode(&token).unwrap().as_slice()).unwrap();
        let mut claims = pb::StatusClaims::decode(raw.claims.as_slice()).unwrap();
        claims.color = pb::Color::Red as i32;
        raw.claims = claims.encode_to_vec();
        let forged = URL_SAFE_NO_PAD.encode(raw.encode_to_vec());
        assert_eq!(keyring.verify(&forged, now), Err(TokenError::BadSignature));
        // Another deployment's key.
        let (other, _, _other_dir) = keys();
        let foreign = other.sign(&green(now, Duration::from_secs(3600)), now);
        assert_eq!(keyring.verify(&foreign, now), Err(TokenError::BadSignature), "same key id, other key");
        assert!(matches!(keyring.verify("not a token!", now), Err(TokenError::Malformed(_))));
        assert!(matches!(Keyring::default().verify(&token, now), Err(TokenError::UnknownKey(id)) if id == "k1"));
        let future = signer.sign(&green(now, Duration::from_secs(3600)), now.saturating_add(Duration::from_secs(3600)));
        assert!(matches!(keyring.verify(&future, now), Err(TokenError::NotYetValid(_))));
    }

    #[test]
    fn a_rotated_keyring_accepts_both_keys() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = dir.path().join("keys.toml");
        let (old, new) = (dir.path().join("old.toml"), dir.path().join("new.toml"));
        Signer::generate(&old, &keyring, "2026-11").unwrap();
        Signer::generate(&new, &keyring, "2026-12").unwrap();
        let ring = Keyring::from_file(&keyring).unwrap();
        let now = UnixMicros::now();
        for (path, id) in [(&old, "2026-11"), (&new, "2026-12")] {
            let signer = Signer::from_file(path, Duration::from_secs(3600)).unwrap();
            assert_eq!(ring.verify(&signer.sign(&green(now, Duration::from_secs(60)), now), now).unwrap().key_id, id);
        }
    }
}
