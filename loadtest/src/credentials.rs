//! Credentials of a replayed round. Every request goes out as the principal
//! it belongs to: a batch as the station, lab or authority its events name,
//! a lookup as one of [`GATES`] checkpoint stations. `provision` issues a
//! token per principal once, keeps them in the round directory, and adds
//! their hashes to a server's tokens file (servers pick them up within a second).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use healthcode_auth::{Role, TokenEntry, TokenRegistry, new_token, owner};
use healthcode_proto::Message;
use healthcode_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::schedule::{Kind, Reader};

pub const CREDENTIALS_FILE: &str = "credentials.json";
/// Stations the lookups are spread over.
pub const GATES: usize = 16;

/// The station that makes the `n`-th lookup.
pub fn gate(n: usize) -> String {
    format!("loadtest-gate-{}", n % GATES)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Credentials {
    /// principal -> (role, token)
    principals: BTreeMap<String, (Role, String)>,
}

impl Credentials {
    pub fn load(dir: &Path) -> anyhow::Result<Credentials> {
        let path = dir.join(CREDENTIALS_FILE);
        let text = std::fs::read(&path).with_context(|| {
            format!(
                "reading {}: run `healthcode-loadtest credentials --dir {} --tokens-file <server tokens file>` first",
                path.display(),
                dir.display()
            )
        })?;
        Ok(serde_json::from_slice(&text)?)
    }

    pub fn token(&self, principal: &str) -> anyhow::Result<&str> {
        self.principals
            .get(principal)
            .map(|(_, token)| token.as_str())
            .with_context(|| format!("no credential for {principal}; rerun `healthcode-loadtest credentials`"))
    }

    /// The token a batch goes out with: its first event's submitter's.
    pub fn for_batch(&self, request: &pb::SubmitBatchRequest) -> anyhow::Result<&str> {
        let first = request.events.first().and_then(owner).context("a batch without an owner")?;
        self.token(first.2)
    }
}

/// Every principal the round submits or looks up as.
fn principals(dir: &Path) -> anyhow::Result<BTreeMap<String, Role>> {
    let mut found: BTreeMap<String, Role> = (0..GATES).map(|n| (gate(n), Role::Station)).collect();
    for entry in Reader::open(dir)? {
        let entry = entry?;
        if entry.kind == Kind::SubmitBatch {
            let batch = pb::SubmitBatchRequest::decode(entry.payload.as_slice())?;
            for (role, _, id) in batch.events.iter().filter_map(owner) {
                if !found.contains_key(id) {
                    found.insert(id.to_owned(), role);
                }
            }
        }
    }
    Ok(found)
}

/// Issues the round's tokens (once; later calls reuse them) and admits them
/// in `tokens_file`. Returns how many principals the round has.
pub fn provision(dir: &Path, tokens_file: &Path) -> anyhow::Result<usize> {
    let mut credentials = Credentials::load(dir).unwrap_or_default();
    for (name, role) in principals(dir)? {
        credentials.principals.entry(name.clone()).or_insert_with(|| (role, new_token(&name, role).0));
    }
    let entries: Vec<TokenEntry> =
        credentials.principals.iter().map(|(name, (role, token))| TokenEntry::of(token, name, *role)).collect();
    if let Some(parent) = tokens_file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    TokenRegistry::append(tokens_file, &entries)?;
    // Raw tokens: owner-only, like every secret file.
    healthcode_secrets::write_private(&dir.join(CREDENTIALS_FILE), &serde_json::to_vec(&credentials)?)?;
    Ok(entries.len())
}
