//! Copies the facts of an LSM store into a new store whose facts keyspace
//! has other table options, so that verify can be timed on each with the
//! same data (docs/benchmarks.md, "Verify on other table options"):
//!
//! ```sh
//! BLOCK=4096 COMPRESSION=lz4 PIN=0 cargo run --release -p healthcode-store \
//!     --example copy_facts -- <data>/store/lsm <copy>/store/lsm
//! ```
//!
//! BLOCK: data block bytes; COMPRESSION: `lz4` or `none` on every level;
//! PIN=1 pins index and filter blocks on every level; HASH: the data
//! blocks' hash index ratio. Only the facts are copied: lookups and
//! verify read nothing else.

use fjall::config::{BlockSizePolicy, CompressionPolicy, HashRatioPolicy, PinningPolicy};
use fjall::{CompressionType, Database, KeyspaceCreateOptions, PersistMode};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn setting<T: std::str::FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => v.parse().map_err(|e| format!("{name}={v}: {e}").into()),
        Err(_) => Ok(default),
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(from), Some(to)) = (args.next(), args.next()) else {
        return Err("usage: copy_facts <from store/lsm> <to store/lsm>".into());
    };
    let compression = match setting("COMPRESSION", String::from("lz4"))?.as_str() {
        "none" => CompressionType::None,
        "lz4" => CompressionType::Lz4,
        other => return Err(format!("COMPRESSION={other}: lz4 or none").into()),
    };
    let mut options = KeyspaceCreateOptions::default()
        .max_memtable_size(32 << 20)
        .data_block_size_policy(BlockSizePolicy::all(setting("BLOCK", 4096)?))
        .data_block_compression_policy(CompressionPolicy::all(compression))
        .data_block_hash_ratio_policy(HashRatioPolicy::all(setting("HASH", 0.0)?));
    if setting("PIN", 0u8)? == 1 {
        options = options
            .index_block_pinning_policy(PinningPolicy::all(true))
            .filter_block_pinning_policy(PinningPolicy::all(true));
    }

    let source = Database::builder(&from).open()?;
    let facts = source.keyspace("facts", KeyspaceCreateOptions::default)?;
    let db = Database::builder(&to).open()?;
    let copy = db.keyspace("facts", || options)?;
    // `up` opens these too; verify does not read them.
    db.keyspace("site_visits", KeyspaceCreateOptions::default)?;
    db.keyspace("audit", KeyspaceCreateOptions::default)?;

    let (mut keys, mut key_bytes, mut value_bytes) = (0u64, 0u64, 0u64);
    let mut batch = db.batch();
    for entry in facts.iter() {
        let (key, value) = entry.into_inner()?;
        (keys, key_bytes, value_bytes) = (keys + 1, key_bytes + key.len() as u64, value_bytes + value.len() as u64);
        batch.insert(&copy, key, value);
        if keys % 2000 == 0 {
            std::mem::replace(&mut batch, db.batch()).commit()?;
        }
    }
    batch.commit()?;
    db.persist(PersistMode::SyncAll)?;
    println!("copied {keys} keys: {key_bytes} key bytes, {value_bytes} value bytes");
    Ok(())
}
