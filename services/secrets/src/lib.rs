//! Secret files: signing keys, pseudonym keys, client keys, token hashes.
//! One way to write them, so none is ever half-written, readable by others,
//! or lost to a crash right after the write reported success.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use atomic_write_file::AtomicWriteFile;
use atomic_write_file::unix::OpenOptionsExt as _;

/// Replaces `path` with `bytes`, owner read/write only: written to a
/// temporary file beside it, fsynced, renamed over it, and the directory
/// fsynced. A reader sees the old file or the new one, never a part.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = AtomicWriteFile::options().mode(0o600).preserve_mode(false).open(path)?;
    file.write_all(bytes)?;
    file.commit()
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    // encode_to_slice: a table lookup per byte, not a char iterator (pseudonyms are on every call).
    let mut out = vec![0; bytes.len() * 2];
    hex::encode_to_slice(bytes, &mut out).expect("twice the length");
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// The bytes of hex `text` (surrounding whitespace allowed); `None` when
/// it is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_secret_file_is_owner_only_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "old, world-readable").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        assert_eq!(from_hex(&format!(" {}\n", to_hex(&[0, 171, 255]))), Some(vec![0, 171, 255]));
        assert_eq!(from_hex("xyz"), None);
    }
}
