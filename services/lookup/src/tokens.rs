//! Status tokens, signed once and reused while the answer they vouch for
//! stays the same. The last token of a resident lives beside the resident's
//! facts in the lookup cache and is carried over when a merge or a reread
//! replaces them: a scan that changes no color, reason or validity leaves the
//! answer, and so its token, as it was (under an ingest flood every cached
//! resident is merged into within seconds, and dropping the token on each
//! merge signed nearly every answer again). An Ed25519 signature costs more
//! than the rest of a cached lookup; a gate that scans the same resident
//! twice in a minute, or a station that polls, gets the token signed for
//! the first answer.
//!
//! A reused token says what a fresh one would (resident, color, reason,
//! validity, stale flag); only its `issued_at` is older, by less than
//! the reuse window (`--status-token-reuse-for`), and so its life (capped at `issued_at` plus
//! the signer's maximum age) ends that much sooner.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use healthcode_core::UnixMicros;
use healthcode_proto::Timestamp;
use healthcode_proto::v1 as pb;
use healthcode_status_token::Signer;

/// What a token vouches for, but its time of issue (and the signer's key,
/// the same for the life of the process).
#[derive(Clone, Debug)]
struct Vouched {
    resident_id: String,
    color: i32,
    reason: i32,
    valid_until: Option<Timestamp>,
    stale: bool,
}

impl Vouched {
    /// Whether a token for `self` says what one for `status` would
    /// (compared in place: no copy per lookup).
    fn matches(&self, status: &pb::ResidentStatus) -> bool {
        self.color == status.color
            && self.reason == status.reason
            && self.valid_until == status.valid_until
            && self.stale == status.stale
            && self.resident_id == status.resident_id
    }

    fn of(status: &pb::ResidentStatus) -> Vouched {
        Vouched {
            resident_id: status.resident_id.clone(),
            color: status.color,
            reason: status.reason,
            valid_until: status.valid_until,
            stale: status.stale,
        }
    }
}

#[derive(Clone, Debug)]
struct Signed {
    vouched: Vouched,
    issued_at: UnixMicros,
    token: String,
}

/// The token last signed for a resident; it lives beside the resident's
/// facts in the lookup cache.
#[derive(Debug, Default)]
pub struct TokenSlot(Mutex<Option<Signed>>);

impl TokenSlot {
    /// A slot for the facts that replace these, holding the same token: it is
    /// reused only while it vouches for exactly what the new facts answer.
    pub fn carried(&self) -> TokenSlot {
        TokenSlot(Mutex::new(self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()))
    }
}

pub struct TokenReuse {
    signer: Arc<Signer>,
    reuse_for: Duration,
    reused: metrics::Counter,
    signed: metrics::Counter,
}

impl TokenReuse {
    /// Reuses tokens for `reuse_for`; zero signs every answer.
    pub fn new(signer: Arc<Signer>, reuse_for: Duration) -> TokenReuse {
        let counter = |how: &'static str| metrics::counter!("healthcode_lookup_status_tokens_total", "signed" => how);
        TokenReuse { signer, reuse_for, reused: counter("reused"), signed: counter("now") }
    }

    /// The token for `status` answered at `now` from the facts whose slot is
    /// `slot`: the one signed for the same answer less than `reuse_for` ago,
    /// else a new one.
    pub fn token(&self, slot: &TokenSlot, status: &pb::ResidentStatus, now: UnixMicros) -> String {
        let mut last = slot.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(signed) = last.as_ref() {
            let age = now.0.saturating_sub(signed.issued_at.0);
            if signed.vouched.matches(status) && (0..self.reuse_for.as_micros() as i64).contains(&age) {
                self.reused.increment(1);
                return signed.token.clone();
            }
        }
        let token = self.signer.sign(status, now);
        self.signed.increment(1);
        if !self.reuse_for.is_zero() {
            *last = Some(Signed { vouched: Vouched::of(status), issued_at: now, token: token.clone() });
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

    /// A new signing key and the keyring that verifies it.
    fn keys(dir: &std::path::Path) -> (Arc<Signer>, Keyring) {
        let (signing, keys) = (dir.join("signing.toml"), dir.join("keys.toml"));
        Signer::generate(&signing, &keys, "k1").unwrap();
        let signer = Arc::new(Signer::from_file(&signing, Duration::from_secs(4 * 3600)).unwrap());
        (signer, Keyring::from_file(&keys).unwrap())
    }

    #[test]
    fn a_token_is_reused_for_the_same_answer_within_its_age_and_no_longer() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, keyring) = keys(dir.path());
        let tokens = TokenReuse::new(signer, Duration::from_secs(60));
        let (r1, r2) = (TokenSlot::default(), TokenSlot::default());
        let t0 = UnixMicros::now();
        let at = |secs: u64| t0.saturating_add(Duration::from_secs(secs));
        let issued = |token: &str, now| keyring.verify(token, now).unwrap().issued_at;

        let first = tokens.token(&r1, &answer("r1", pb::Color::Green), t0);
        assert_eq!(tokens.token(&r1, &answer("r1", pb::Color::Green), at(59)), first, "same answer within 60 s");
        assert_eq!(issued(&first, at(59)), t0);

        let changed = tokens.token(&r1, &answer("r1", pb::Color::Red), at(59));
        assert_ne!(changed, first, "a changed answer gets its own token");
        assert_eq!(keyring.verify(&changed, at(59)).unwrap().color, pb::Color::Red);

        let other = tokens.token(&r2, &answer("r2", pb::Color::Red), at(59));
        assert_ne!(other, changed, "tokens are per resident");

        let later = tokens.token(&r1, &answer("r1", pb::Color::Red), at(59 + 60));
        assert_eq!(issued(&later, at(119)), at(119), "at the bound, a new signature");
    }

    #[test]
    fn no_reuse_signs_every_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, _) = keys(dir.path());
        let tokens = TokenReuse::new(signer, Duration::ZERO);
        let slot = TokenSlot::default();
        let t0 = UnixMicros::now();
        let first = tokens.token(&slot, &answer("r1", pb::Color::Green), t0);
        let second = tokens.token(&slot, &answer("r1", pb::Color::Green), t0.saturating_add(Duration::from_micros(1)));
        assert_ne!(first, second);
    }
}
