//! The audit record: every decision an authority made (an override of a
//! resident's color, a site risk declared, moved or withdrawn), who made it
//! and how they proved it. Kept apart from the facts: the facts keep what the
//! color needs for the fact retention (30 days, at most
//! [`crate::facts::OVERRIDES_KEPT`] overrides), the record keeps every
//! decision for the audit retention (a year by default).
//!
//! Append-only: an entry is never changed. Its key within its subject is
//! (issued_at, entry id), and the entry id holds the submitter and the event
//! id, so a redelivered event writes the same entry again and two callers'
//! events never share one.

use serde::{Deserialize, Serialize};

use crate::event::{Color, Event, EventBody};
use crate::time::UnixMicros;

/// How the caller proved who it is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Credential {
    BearerToken,
    ClientCertificate,
}

/// Who had an event accepted, stamped by the edge into the log record (never
/// taken from the caller's message).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The principal's name: a token's principal or a certificate's common name.
    pub principal: String,
    pub credential: Credential,
    /// When the edge accepted it (the event's own time is its `issued_at`).
    pub accepted_at: UnixMicros,
}

/// What was decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Override { color: Color, expires_at: UnixMicros },
    SiteRisk { risk_id: String, site_id: String, risky_from: UnixMicros, risky_until: UnixMicros, retracted: bool },
}

/// One decision in the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Whose record: a resident's store key (its pseudonym) for an override,
    /// [`crate::SITE_RISKS_KEY`] for site risks.
    pub subject: String,
    pub event_id: String,
    pub authority_id: String,
    pub issued_at: UnixMicros,
    pub decision: Decision,
    /// Free text; kept here and in the facts, never logged.
    pub note: String,
    /// `None` for records written before the edge stamped provenance.
    pub by: Option<Provenance>,
}

/// Where a page of a subject's record starts: after this (issued_at, entry
/// id), newest first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuditCursor {
    pub issued_at: UnixMicros,
    pub entry_id: String,
}

/// The separator inside an entry id: a control character, outside every id
/// alphabet, so (authority, event id) pairs never collide.
const ENTRY_ID_SEPARATOR: char = '\u{1f}';

impl AuditEntry {
    /// The record's entry for `event`, for a decision; `None` for scans and
    /// results. `subject` is the store key the event is filed under.
    pub fn of(event: &Event, subject: &str, by: Option<Provenance>) -> Option<AuditEntry> {
        let (authority_id, issued_at, note, decision) = match &event.body {
            EventBody::Override { authority_id, color, note, issued_at, expires_at } => {
                (authority_id, *issued_at, note, Decision::Override { color: *color, expires_at: *expires_at })
            }
            EventBody::SiteRisk {
                risk_id,
                site_id,
                authority_id,
                risky_from,
                risky_until,
                issued_at,
                retracted,
                note,
            } => {
                let decision = Decision::SiteRisk {
                    risk_id: risk_id.clone(),
                    site_id: site_id.clone(),
                    risky_from: *risky_from,
                    risky_until: *risky_until,
                    retracted: *retracted,
                };
                (authority_id, *issued_at, note, decision)
            }
            EventBody::Scan { .. } | EventBody::TestResult { .. } => return None,
        };
        Some(AuditEntry {
            subject: subject.to_owned(),
            event_id: event.event_id.clone(),
            authority_id: authority_id.clone(),
            issued_at,
            decision,
            note: note.clone(),
            by,
        })
    }

    /// Unique within the subject: the submitter and its event id.
    pub fn entry_id(&self) -> String {
        format!("{}{ENTRY_ID_SEPARATOR}{}", self.authority_id, self.event_id)
    }

    /// This entry's place in its subject's record.
    pub fn cursor(&self) -> AuditCursor {
        AuditCursor { issued_at: self.issued_at, entry_id: self.entry_id() }
    }

    /// Still kept at `now` under `retention`.
    pub fn retained(&self, retention: std::time::Duration, now: UnixMicros) -> bool {
        self.issued_at >= now.saturating_sub(retention)
    }
}

impl AuditCursor {
    /// The opaque page token handed to callers: `issued_at` and the entry id.
    pub fn to_token(&self) -> String {
        let mut out = format!("{}.", self.issued_at.0);
        for byte in self.entry_id.as_bytes() {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }

    /// The cursor a token stands for; `None` when it is not one this build made.
    pub fn from_token(token: &str) -> Option<AuditCursor> {
        let (at, hex) = token.split_once('.')?;
        let issued_at = UnixMicros(at.parse().ok()?);
        if hex.len() % 2 != 0 || hex.len() > 1024 {
            return None;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(AuditCursor { issued_at, entry_id: String::from_utf8(bytes).ok()? })
    }
}

/// One page of a subject's record, newest first; `next` is where the
/// following page starts, `None` after the last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next: Option<AuditCursor>,
}

impl AuditPage {
    /// The page of at most `limit` from `entries`, newest first, read one
    /// past the limit: that one's presence is what says a next page exists.
    pub fn from_one_past(mut entries: Vec<AuditEntry>, limit: usize) -> AuditPage {
        let next = (entries.len() > limit).then(|| {
            entries.truncate(limit);
            entries.last().map(AuditEntry::cursor)
        });
        AuditPage { entries, next: next.flatten() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_token_round_trips_and_foreign_tokens_are_refused() {
        let c = AuditCursor { issued_at: UnixMicros(1_800_000_000_000_000), entry_id: "auth-1\u{1f}ov-7".into() };
        assert_eq!(AuditCursor::from_token(&c.to_token()), Some(c));
        for bad in ["", "12", "x.00", "12.0", "12.zz", "12.ff"] {
            assert_eq!(AuditCursor::from_token(bad), None, "{bad:?}");
        }
    }
}
