//! Status tokens, signed once and reused while the answer they vouch for
//! stays the same. An Ed25519 signature costs more than the rest of a cached
//! lookup; a gate that scans the same resident twice in a minute, or a
//! station that polls, gets the token signed for the first answer.
//!
//! A reused token says what a fresh one would (resident, color, reason,
//! validity, stale flag); only its `issued_at` is older, by less than
//! [`TokenReuse::reuse_for`], and so its life (capped at `issued_at` plus
//! the signer's maximum age) ends that much sooner.

use std::sync::Arc;
use std::time::Duration;

use healthcode_core::UnixMicros;
use healthcode_proto::Timestamp;
use healthcode_proto::v1 as pb;
use healthcode_status_token::Signer;

/// What a token vouches for, but its time of issue.
#[derive(Clone, Debug, PartialEq)]
struct Vouched {
    color: i32,
    reason: i32,
    valid_until: Option<Timestamp>,
    stale: bool,
}

impl Vouched {
    fn of(status: &pb::ResidentStatus) -> Vouched {
        Vouched { color: status.color, reason: status.reason, valid_until: status.valid_until, stale: status.stale }
    }
}

struct Signed {
    vouched: Vouched,
    issued_at: UnixMicros,
    token: String,
}

pub struct TokenReuse {
    signer: Arc<Signer>,
    reuse_for: Duration,
    recent: moka::sync::Cache<String, Arc<Signed>, foldhash::fast::RandomState>,
}

impl TokenReuse {
    /// Tokens of at most `capacity` residents kept for `reuse_for`; a zero
    /// `reuse_for` signs every answer.
    pub fn new(signer: Arc<Signer>, reuse_for: Duration, capacity: u64) -> TokenReuse {
        let recent = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .time_to_live(reuse_for.max(Duration::from_millis(1)))
            .build_with_hasher(foldhash::fast::RandomState::default());
        TokenReuse { signer, reuse_for, recent }
    }

    /// The longest a reused token's `issued_at` lies before the answer it rides on.
    pub fn reuse_for(&self) -> Duration {
        self.reuse_for
    }

    /// The token for `status` answered at `now`: one signed for the same
    /// answer less than `reuse_for` ago, else a new one.
    pub fn token(&self, status: &pb::ResidentStatus, now: UnixMicros) -> String {
        let vouched = Vouched::of(status);
        if let Some(signed) = self.recent.get(&status.resident_id) {
            let age = now.0.saturating_sub(signed.issued_at.0);
            if signed.vouched == vouched && (0..self.reuse_for.as_micros() as i64).contains(&age) {
                metrics::counter!("healthcode_lookup_status_tokens_total", "signed" => "reused").increment(1);
                return signed.token.clone();
            }
        }
        let token = self.signer.sign(status, now);
        metrics::counter!("healthcode_lookup_status_tokens_total", "signed" => "now").increment(1);
        if !self.reuse_for.is_zero() {
            let signed = Signed { vouched, issued_at: now, token: token.clone() };
            self.recent.insert(status.resident_id.clone(), Arc::new(signed));
        }
        token
    }
}

#[cfg(test)]
mod tests {
    use healthcode_status_token::Keyring;

    use super::*;

    fn answer(resident: &str, color: pb::Color) -> pb::ResidentStatus {
        pb::ResidentStatus { resident_id: resident.into(), color: color as i32, ..Default::default() }
    }

    #[test]
    fn a_token_is_reused_for_the_same_answer_within_its_age_and_no_longer() {
        let dir = tempfile::tempdir().unwrap();
        let (signing, keys) = (dir.path().join("signing.toml"), dir.path().join("keys.toml"));
        Signer::generate(&signing, &keys, "k1").unwrap();
        let signer = Arc::new(Signer::from_file(&signing, Duration::from_secs(4 * 3600)).unwrap());
        let keyring = Keyring::from_file(&keys).unwrap();
        let tokens = TokenReuse::new(signer, Duration::from_secs(60), 100);
        let t0 = UnixMicros::now();
        let at = |secs: u64| t0.saturating_add(Duration::from_secs(secs));
        let issued = |token: &str, now| keyring.verify(token, now).unwrap().issued_at;

        let first = tokens.token(&answer("r1", pb::Color::Green), t0);
        assert_eq!(tokens.token(&answer("r1", pb::Color::Green), at(59)), first, "same answer within 60 s");
        assert_eq!(issued(&first, at(59)), t0);

        let changed = tokens.token(&answer("r1", pb::Color::Red), at(59));
        assert_ne!(changed, first, "a changed answer gets its own token");
        assert_eq!(keyring.verify(&changed, at(59)).unwrap().color, pb::Color::Red);

        let other = tokens.token(&answer("r2", pb::Color::Red), at(59));
        assert_ne!(other, changed, "tokens are per resident");

        let later = tokens.token(&answer("r1", pb::Color::Red), at(59 + 60));
        assert_eq!(issued(&later, at(119)), at(119), "at the bound, a new signature");
    }

    #[test]
    fn no_reuse_signs_every_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (signing, keys) = (dir.path().join("signing.toml"), dir.path().join("keys.toml"));
        Signer::generate(&signing, &keys, "k1").unwrap();
        let signer = Arc::new(Signer::from_file(&signing, Duration::from_secs(4 * 3600)).unwrap());
        let tokens = TokenReuse::new(signer, Duration::ZERO, 100);
        let t0 = UnixMicros::now();
        let first = tokens.token(&answer("r1", pb::Color::Green), t0);
        let second = tokens.token(&answer("r1", pb::Color::Green), t0.saturating_add(Duration::from_micros(1)));
        assert_ne!(first, second);
    }
}
