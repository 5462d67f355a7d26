//! Resident ids are replaced by a keyed hash at the edge, before the event
//! reaches the log, and lookups hash the same way. Without the deployment's
//! key nobody holding the log or the store can link a pseudonym to a person,
//! nor test a guessed id against it (a plain hash could be reversed by
//! hashing every possible id).

use std::path::Path;

use ring::hmac;

use crate::{AuthError, hex, unhex};

#[derive(Clone)]
pub struct Pseudonymizer {
    key: hmac::Key,
}

/// 128 bits of the HMAC: collisions among 10^8 residents have odds near 10^-23.
const PSEUDONYM_BYTES: usize = 16;

impl Pseudonymizer {
    pub fn new(secret: &[u8]) -> Pseudonymizer {
        Pseudonymizer { key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }

    /// Reads a key file of hex (at least 32 bytes of key).
    pub fn from_file(path: &Path) -> Result<Pseudonymizer, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::io(path, e))?;
        match unhex(&text) {
            Some(secret) if secret.len() >= 32 => Ok(Pseudonymizer::new(&secret)),
            _ => Err(AuthError::invalid(path, "must hold at least 64 hex characters (a 256-bit key)")),
        }
    }

    /// A new random key in the file format [`Pseudonymizer::from_file`] reads.
    pub fn generate_key_file(path: &Path) -> Result<(), AuthError> {
        crate::tokens::write_private(path, format!("{}\n", hex(&crate::random_bytes::<32>())).as_bytes())
    }

    /// The pseudonym of a resident id: 32 hex characters, a valid id itself.
    pub fn pseudonym(&self, resident_id: &str) -> String {
        let tag = hmac::sign(&self.key, resident_id.as_bytes());
        hex(&tag.as_ref()[..PSEUDONYM_BYTES])
    }
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer(<key>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_per_key_and_differ_across_keys() {
        let a = Pseudonymizer::new(b"first key of thirty-two bytes!!!");
        let b = Pseudonymizer::new(b"other key of thirty-two bytes!!!");
        assert_eq!(a.pseudonym("R-1"), a.pseudonym("R-1"));
        assert_ne!(a.pseudonym("R-1"), a.pseudonym("R-2"));
        assert_ne!(a.pseudonym("R-1"), b.pseudonym("R-1"));
        assert_eq!(a.pseudonym("R-1").len(), 32);
        assert!(!a.pseudonym("R-1").contains("R-1"));
    }

    #[test]
    fn a_short_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "abcd").unwrap();
        assert!(Pseudonymizer::from_file(&path).is_err());
        Pseudonymizer::generate_key_file(&path).unwrap();
        assert!(Pseudonymizer::from_file(&path).is_ok());
    }
}
