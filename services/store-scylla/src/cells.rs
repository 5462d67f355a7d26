//! How facts become cells and cells become facts again. Pure: no session.
//!
//! Why the stored facts are order-insensitive with no read-before-write:
//! - A register (latest positive, latest test, updated_at) is written with its
//!   value as the cell's write timestamp. ScyllaDB keeps the cell with the
//!   greatest write timestamp, on every replica and at every compaction, so
//!   the cell holds the maximum of everything ever written to it. Two writes
//!   of one timestamp carry one value, so how a tie resolves cannot matter.
//! - Nothing else is a cell that two different writes share. For two cells
//!   of one timestamp, ScyllaDB (since scylladb#14183) and Cassandra (since
//!   CASSANDRA-14592) keep the one that expires later before they compare
//!   values; the expiry is the coordinator's clock plus the TTL, so the
//!   winner of a tie would depend on when each write arrived. The latest scan
//!   was such a cell until schema version 4, and two scans of one instant
//!   could settle on either.
//! - Negatives, overrides, visits, scans and site risks are clustering rows
//!   keyed by their time and identity: writing one adds it to a set, writing
//!   it again changes nothing, and a set union does not care about order.
//!   "The two latest negatives", "the latest 64 overrides" and "the latest
//!   scan, ties to the greater event_id" are picked from the set when read,
//!   by the domain's own merge, so no write needs to know what is already
//!   stored.
//! - Each cell's TTL ends retention after the fact's own time
//!   (`Facts::retained`). Expiry removes the oldest members of a set first,
//!   so the top two of what is left are the top two of what is within retention.

use std::time::Duration;

use healthcode_core::{Color, Facts, OverrideFact, ScanFact, ScanKind, SiteRiskFact, UnixMicros, VisitFact};
use serde::{Deserialize, Serialize};

use crate::cql::{Register, RowKind};

/// The longest TTL ScyllaDB accepts: 20 years, in seconds.
pub const MAX_TTL_SECONDS: i32 = 630_720_000;

/// Version byte in front of the postcard part of blob values.
const PAYLOAD_VERSION: u8 = 1;

/// One cell or row to write for a resident, with its write timestamp
/// (microseconds, the CQL `USING TIMESTAMP` unit) and TTL in seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// A max register: its value (microseconds) is also its timestamp.
    Register {
        register: Register,
        value: i64,
        ttl: i32,
    },
    Row {
        kind: RowKind,
        at: i64,
        event_id: String,
        payload: Vec<u8>,
        timestamp: i64,
        ttl: i32,
    },
}

/// The TTL of a fact that happened at `at`, written at `now`: the rest of its
/// retention, rounded up to whole seconds. `None` when it has already
/// expired, so it is not written at all.
pub fn ttl_seconds(at: UnixMicros, retention: Duration, now: UnixMicros) -> Option<i32> {
    let ends = at.saturating_add(retention);
    let left = ends.0.checked_sub(now.0).filter(|m| *m > 0)?;
    let seconds = (left as u64).div_ceil(1_000_000);
    Some(seconds.min(MAX_TTL_SECONDS as u64) as i32)
}

/// The cells and rows that merge `facts` into a resident's partition.
pub fn writes(facts: &Facts, retention: Duration, now: UnixMicros) -> Vec<Write> {
    let mut out = Vec::new();
    for (register, at) in [
        (Register::LatestPositive, facts.latest_positive),
        (Register::LatestTest, facts.latest_test),
        (Register::UpdatedAt, facts.updated_at),
    ] {
        if let Some(at) = at
            && let Some(ttl) = ttl_seconds(at, retention, now)
        {
            out.push(Write::Register { register, value: at.0, ttl });
        }
    }
    let mut row = |kind: RowKind, at: UnixMicros, event_id: &str, payload: Vec<u8>| {
        if let Some(ttl) = ttl_seconds(at, retention, now) {
            out.push(Write::Row { kind, at: at.0, event_id: event_id.to_owned(), payload, timestamp: at.0, ttl });
        }
    };
    for at in facts.latest_negatives.iter().flatten() {
        row(RowKind::Negative, *at, "", Vec::new());
    }
    for o in &facts.overrides {
        row(RowKind::Override, o.issued_at, &row_id(&o.authority_id, &o.event_id), encode_override(o));
    }
    for v in &facts.visits {
        row(RowKind::Visit, v.scanned_at, &v.site_id, Vec::new());
    }
    if let Some(scan) = &facts.latest_scan {
        row(RowKind::Scan, scan.scanned_at, &row_id(&scan.station_id, &scan.event_id), encode_scan_row(scan));
    }
    for r in &facts.site_risks {
        row(RowKind::SiteRisk, r.issued_at, &row_id(&r.authority_id, &r.event_id), encode_site_risk(r));
    }
    out
}

/// Between the submitter and the event id in a row's `event_id` column.
/// Neither contains it: ids are [A-Za-z0-9._:-].
const ROW_ID_SEPARATOR: char = '\u{1f}';

/// The `event_id` clustering column of an override, site-risk or scan row:
/// the submitter and its event id, the key the edge deduplicates on. Event
/// ids are unique per submitter only, so two authorities (or stations) that
/// use one id at one instant write two rows, not one contested cell.
pub fn row_id(submitter: &str, event_id: &str) -> String {
    format!("{submitter}{ROW_ID_SEPARATOR}{event_id}")
}

/// The event id in a row's `event_id` column; the whole column for the rows
/// of a version-3 build, which held the event id alone.
pub fn event_id_of(row_id: &str) -> &str {
    row_id.rsplit_once(ROW_ID_SEPARATOR).map_or(row_id, |(_, event_id)| event_id)
}

#[derive(Serialize, Deserialize)]
struct SiteRiskRest {
    risk_id: String,
    site_id: String,
    authority_id: String,
    risky_from: UnixMicros,
    risky_until: UnixMicros,
    retracted: bool,
    note: String,
}

pub fn encode_site_risk(r: &SiteRiskFact) -> Vec<u8> {
    postcard_part(&SiteRiskRest {
        risk_id: r.risk_id.clone(),
        site_id: r.site_id.clone(),
        authority_id: r.authority_id.clone(),
        risky_from: r.risky_from,
        risky_until: r.risky_until,
        retracted: r.retracted,
        note: r.note.clone(),
    })
}

pub fn decode_site_risk(issued_at: UnixMicros, event_id: String, bytes: &[u8]) -> Result<SiteRiskFact, CellError> {
    let rest: SiteRiskRest = from_postcard_part(bytes, "site risk")?;
    Ok(SiteRiskFact {
        risk_id: rest.risk_id,
        issued_at,
        event_id,
        site_id: rest.site_id,
        authority_id: rest.authority_id,
        risky_from: rest.risky_from,
        risky_until: rest.risky_until,
        retracted: rest.retracted,
        note: rest.note,
    })
}

/// The `latest_scan` static cell of schema version 3, still read.
#[derive(Serialize, Deserialize)]
struct ScanRest {
    scanned_at: UnixMicros,
    site_id: String,
    station_id: String,
    kind: ScanKind,
}

/// A scan row's payload: its time and event_id are the row's key.
#[derive(Serialize, Deserialize)]
struct ScanRowRest {
    site_id: String,
    station_id: String,
    kind: ScanKind,
}

#[derive(Serialize, Deserialize)]
struct OverrideRest {
    expires_at: UnixMicros,
    color: Color,
    authority_id: String,
    note: String,
}

fn postcard_part<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![PAYLOAD_VERSION];
    out.extend(postcard::to_allocvec(value).expect("plain structs always serialize"));
    out
}

/// A stored cell this build cannot read.
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    #[error("undecodable {what}")]
    Undecodable {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("{what} encoded with unknown version {version}")]
    UnknownVersion { what: &'static str, version: u8 },
    #[error("empty {0}")]
    Empty(&'static str),
    #[error("scan value has no event_id separator")]
    NoSeparator,
    #[error("scan event_id is not UTF-8")]
    NotUtf8,
    #[error("row of unknown kind {0}")]
    UnknownKind(i8),
}

fn from_postcard_part<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &'static str) -> Result<T, CellError> {
    match bytes.split_first() {
        Some((&PAYLOAD_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|source| CellError::Undecodable { what, source })
        }
        Some((&version, _)) => Err(CellError::UnknownVersion { what, version }),
        None => Err(CellError::Empty(what)),
    }
}

pub fn encode_scan_row(scan: &ScanFact) -> Vec<u8> {
    postcard_part(&ScanRowRest { site_id: scan.site_id.clone(), station_id: scan.station_id.clone(), kind: scan.kind })
}

pub fn decode_scan_row(scanned_at: UnixMicros, event_id: String, bytes: &[u8]) -> Result<ScanFact, CellError> {
    let rest: ScanRowRest = from_postcard_part(bytes, "scan")?;
    Ok(ScanFact { scanned_at, event_id, site_id: rest.site_id, station_id: rest.station_id, kind: rest.kind })
}

/// The `latest_scan` cell as schema version 3 wrote it: the event_id, a 0
/// byte, the rest. Only tests write it now.
#[cfg(test)]
pub fn encode_legacy_scan_cell(scan: &ScanFact) -> Vec<u8> {
    let mut out = scan.event_id.as_bytes().to_vec();
    out.push(0);
    out.extend(postcard_part(&ScanRest {
        scanned_at: scan.scanned_at,
        site_id: scan.site_id.clone(),
        station_id: scan.station_id.clone(),
        kind: scan.kind,
    }));
    out
}

pub fn decode_legacy_scan_cell(bytes: &[u8]) -> Result<ScanFact, CellError> {
    let split = bytes.iter().position(|b| *b == 0).ok_or(CellError::NoSeparator)?;
    let event_id = std::str::from_utf8(&bytes[..split]).map_err(|_| CellError::NotUtf8)?.to_owned();
    let rest: ScanRest = from_postcard_part(&bytes[split + 1..], "scan")?;
    Ok(ScanFact {
        scanned_at: rest.scanned_at,
        event_id,
        site_id: rest.site_id,
        station_id: rest.station_id,
        kind: rest.kind,
    })
}

pub fn encode_override(o: &OverrideFact) -> Vec<u8> {
    postcard_part(&OverrideRest {
        expires_at: o.expires_at,
        color: o.color,
        authority_id: o.authority_id.clone(),
        note: o.note.clone(),
    })
}

pub fn decode_override(issued_at: UnixMicros, event_id: String, bytes: &[u8]) -> Result<OverrideFact, CellError> {
    let rest: OverrideRest = from_postcard_part(bytes, "override")?;
    Ok(OverrideFact {
        issued_at,
        event_id,
        expires_at: rest.expires_at,
        color: rest.color,
        authority_id: rest.authority_id,
        note: rest.note,
    })
}

/// One row of the partition read: the static cells repeat on every row;
/// the clustering part is empty on a partition with registers only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredRow {
    pub latest_positive: Option<i64>,
    pub latest_test: Option<i64>,
    pub updated_at: Option<i64>,
    pub latest_scan: Option<Vec<u8>>,
    pub kind: Option<i8>,
    pub at: Option<i64>,
    pub event_id: Option<String>,
    pub payload: Option<Vec<u8>>,
}

/// The facts of a partition's rows, joined with the domain's merge; `None`
/// when the partition holds nothing.
pub fn facts_from_rows(rows: &[StoredRow]) -> Result<Option<Facts>, CellError> {
    let Some(first) = rows.first() else { return Ok(None) };
    let mut facts = Facts {
        latest_positive: first.latest_positive.map(UnixMicros),
        latest_test: first.latest_test.map(UnixMicros),
        updated_at: first.updated_at.map(UnixMicros),
        latest_scan: match &first.latest_scan {
            Some(bytes) => Some(decode_legacy_scan_cell(bytes)?),
            None => None,
        },
        ..Facts::default()
    };
    for row in rows {
        let (Some(code), Some(at)) = (row.kind, row.at) else { continue };
        let at = UnixMicros(at);
        let key = row.event_id.as_deref().unwrap_or_default();
        let payload = row.payload.as_deref().unwrap_or_default();
        let part = match RowKind::from_code(code) {
            Some(RowKind::Negative) => Facts { latest_negatives: [Some(at), None], ..Facts::default() },
            Some(RowKind::Override) => Facts {
                overrides: vec![decode_override(at, event_id_of(key).to_owned(), payload)?],
                ..Facts::default()
            },
            Some(RowKind::Visit) => {
                Facts { visits: vec![VisitFact { scanned_at: at, site_id: key.to_owned() }], ..Facts::default() }
            }
            Some(RowKind::SiteRisk) => Facts {
                site_risks: vec![decode_site_risk(at, event_id_of(key).to_owned(), payload)?],
                ..Facts::default()
            },
            Some(RowKind::Scan) => Facts {
                latest_scan: Some(decode_scan_row(at, event_id_of(key).to_owned(), payload)?),
                ..Facts::default()
            },
            None => return Err(CellError::UnknownKind(code)),
        };
        facts.merge(&part);
    }
    Ok(Some(facts).filter(|f| !f.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use healthcode_core::Color;

    const DAY: Duration = Duration::from_secs(24 * 3600);
    const SECOND: i64 = 1_000_000;

    fn at(s: i64) -> UnixMicros {
        UnixMicros(1_800_000_000 * SECOND + s * SECOND)
    }

    #[test]
    fn ttl_is_the_rest_of_retention_rounded_up() {
        let now = at(0);
        assert_eq!(ttl_seconds(now, 30 * DAY, now), Some(30 * 86_400));
        assert_eq!(ttl_seconds(UnixMicros(now.0 - 86_400 * SECOND), 30 * DAY, now), Some(29 * 86_400));
        assert_eq!(ttl_seconds(UnixMicros(now.0 - 30 * 86_400 * SECOND + 1), 30 * DAY, now), Some(1));
        assert_eq!(ttl_seconds(UnixMicros(now.0 - 30 * 86_400 * SECOND), 30 * DAY, now), None, "expired now");
        assert_eq!(ttl_seconds(UnixMicros(now.0 - 40 * 86_400 * SECOND), 30 * DAY, now), None);
        assert_eq!(ttl_seconds(at(100 * 365 * 86_400), 30 * DAY, now), Some(MAX_TTL_SECONDS), "capped");
    }

    #[test]
    fn registers_are_written_at_their_own_time_in_microseconds() {
        let facts = Facts {
            latest_positive: Some(at(5)),
            latest_test: Some(at(7)),
            updated_at: Some(at(9)),
            ..Facts::default()
        };
        let w = writes(&facts, 30 * DAY, at(10));
        assert_eq!(
            w,
            vec![
                Write::Register {
                    register: Register::LatestPositive,
                    value: 1_800_000_005_000_000,
                    ttl: 30 * 86_400 - 5,
                },
                Write::Register { register: Register::LatestTest, value: 1_800_000_007_000_000, ttl: 30 * 86_400 - 3 },
                Write::Register { register: Register::UpdatedAt, value: 1_800_000_009_000_000, ttl: 30 * 86_400 - 1 },
            ]
        );
    }

    #[test]
    fn negatives_and_overrides_are_rows_and_expired_facts_are_not_written() {
        let o = OverrideFact {
            issued_at: at(3),
            event_id: "o-1".into(),
            expires_at: at(3600),
            color: Color::Red,
            authority_id: "a-1".into(),
            note: "household contact".into(),
        };
        let facts = Facts {
            latest_negatives: [Some(at(8)), Some(at(-40 * 86_400))],
            overrides: vec![o.clone()],
            ..Facts::default()
        };
        let w = writes(&facts, 30 * DAY, at(10));
        assert_eq!(w.len(), 2, "the negative sampled 40 days ago is past retention: {w:?}");
        assert!(
            matches!(&w[0], Write::Row { kind: RowKind::Negative, at: a, timestamp: t, .. } if *a == at(8).0 && *t == at(8).0)
        );
        let Write::Row { kind: RowKind::Override, at: a, event_id, payload, .. } = &w[1] else { panic!("{w:?}") };
        assert_eq!(event_id, &row_id("a-1", "o-1"), "keyed by authority and event id");
        assert_eq!(decode_override(UnixMicros(*a), event_id_of(event_id).to_owned(), payload).unwrap(), o);
    }

    fn scan(id: &str) -> ScanFact {
        ScanFact {
            scanned_at: at(1),
            event_id: id.into(),
            site_id: format!("site-{id}"),
            station_id: "st-1".into(),
            kind: ScanKind::Checkpoint,
        }
    }

    fn scan_row(scan: &ScanFact) -> StoredRow {
        StoredRow {
            kind: Some(RowKind::Scan as i8),
            at: Some(scan.scanned_at.0),
            event_id: Some(row_id(&scan.station_id, &scan.event_id)),
            payload: Some(encode_scan_row(scan)),
            ..StoredRow::default()
        }
    }

    #[test]
    fn scans_of_one_instant_are_two_rows_and_the_read_keeps_the_greater_event_id() {
        // A tie between two cells would fall to whichever expires later, that
        // is to the order the writes arrived in; two rows never tie.
        for (a, b) in [("e-1", "e-2"), ("e", "e-"), ("A", "a"), ("e-9", "e-10")] {
            let key = |id: &str| match &writes(
                &Facts { latest_scan: Some(scan(id)), ..Facts::default() },
                30 * DAY,
                at(10),
            )[..]
            {
                [Write::Row { kind: RowKind::Scan, at, event_id, timestamp, .. }] => {
                    assert_eq!(timestamp, at, "a row's timestamp is its own time");
                    (*at, event_id.clone())
                }
                other => panic!("one scan row expected: {other:?}"),
            };
            assert_ne!(key(a), key(b), "{a} and {b} share no cell");
            let greater = if scan(a) > scan(b) { scan(a) } else { scan(b) };
            for rows in [[scan_row(&scan(a)), scan_row(&scan(b))], [scan_row(&scan(b)), scan_row(&scan(a))]] {
                assert_eq!(facts_from_rows(&rows).unwrap().unwrap().latest_scan, Some(greater.clone()), "{a} vs {b}");
            }
        }
        assert!(decode_scan_row(at(1), "e".into(), b"").is_err());
    }

    #[test]
    fn a_latest_scan_cell_of_schema_version_3_is_still_read_and_joined_with_the_rows() {
        let old = StoredRow { latest_scan: Some(encode_legacy_scan_cell(&scan("e-1"))), ..StoredRow::default() };
        assert_eq!(facts_from_rows(std::slice::from_ref(&old)).unwrap().unwrap().latest_scan, Some(scan("e-1")));
        let newer = StoredRow { latest_scan: old.latest_scan.clone(), ..scan_row(&scan("e-2")) };
        assert_eq!(facts_from_rows(&[newer]).unwrap().unwrap().latest_scan, Some(scan("e-2")));
        let older = StoredRow { latest_scan: old.latest_scan.clone(), ..scan_row(&scan("e-0")) };
        assert_eq!(facts_from_rows(&[older]).unwrap().unwrap().latest_scan, Some(scan("e-1")));
        assert!(decode_legacy_scan_cell(b"no-separator").is_err());
    }

    #[test]
    fn rows_of_schema_version_3_held_the_event_id_alone_and_still_read() {
        assert_eq!(event_id_of(&row_id("authority-1", "o-1")), "o-1");
        assert_eq!(event_id_of("o-1"), "o-1");
        let o = OverrideFact {
            issued_at: at(3),
            event_id: "o-1".into(),
            expires_at: at(60),
            color: Color::Red,
            authority_id: "a".into(),
            note: String::new(),
        };
        let row = |event_id: String| StoredRow {
            kind: Some(RowKind::Override as i8),
            at: Some(at(3).0),
            event_id: Some(event_id),
            payload: Some(encode_override(&o)),
            ..StoredRow::default()
        };
        for stored in [row("o-1".into()), row(row_id("a", "o-1"))] {
            assert_eq!(facts_from_rows(&[stored]).unwrap().unwrap().overrides, vec![o.clone()]);
        }
    }

    #[test]
    fn rows_read_back_are_joined_into_the_facts_written() {
        let risk = SiteRiskFact {
            risk_id: "k1".into(),
            issued_at: at(8),
            event_id: "r-2".into(),
            site_id: "mall".into(),
            authority_id: "a".into(),
            risky_from: at(1),
            risky_until: at(4),
            retracted: false,
            note: "n".into(),
        };
        let older = SiteRiskFact { issued_at: at(5), event_id: "r-1".into(), retracted: true, ..risk.clone() };
        let o = |id: &str, s: i64| OverrideFact {
            issued_at: at(s),
            event_id: id.into(),
            expires_at: at(s + 60),
            color: Color::Yellow,
            authority_id: "a".into(),
            note: String::new(),
        };
        let facts = Facts {
            latest_positive: Some(at(2)),
            latest_test: Some(at(9)),
            updated_at: Some(at(9)),
            latest_scan: Some(scan("s-1")),
            latest_negatives: [Some(at(9)), Some(at(6))],
            overrides: vec![o("o-1", 4), o("o-2", 5)],
            visits: vec![
                VisitFact { scanned_at: at(3), site_id: "mall".into() },
                VisitFact { scanned_at: at(7), site_id: "gym".into() },
            ],
            site_risks: vec![risk.clone()],
        };
        let statics = StoredRow {
            latest_positive: Some(at(2).0),
            latest_test: Some(at(9).0),
            updated_at: Some(at(9).0),
            ..StoredRow::default()
        };
        // As ScyllaDB returns them: kind ascending, then newest first, with an
        // older negative still within retention.
        let mut rows = Vec::new();
        let rows_written = [
            (1, 9, ""),
            (1, 6, ""),
            (1, 3, ""),
            (2, 5, "o-2"),
            (2, 4, "o-1"),
            (3, 7, "gym"),
            (3, 3, "mall"),
            (4, 8, "r-2"),
            (4, 5, "r-1"),
            (5, 1, "s-1"),
        ];
        for (kind, s, id) in rows_written {
            let payload = match kind {
                2 => encode_override(&o(id, s)),
                4 if id == "r-2" => encode_site_risk(&risk),
                4 => encode_site_risk(&older),
                5 => encode_scan_row(&scan(id)),
                _ => Vec::new(),
            };
            let event_id = match kind {
                2 | 4 => row_id("a", id),
                5 => row_id("st-1", id),
                _ => id.to_owned(),
            };
            rows.push(StoredRow {
                kind: Some(kind),
                at: Some(at(s).0),
                event_id: Some(event_id),
                payload: Some(payload),
                ..statics.clone()
            });
        }
        assert_eq!(facts_from_rows(&rows).unwrap(), Some(facts));
        assert_eq!(facts_from_rows(&[]).unwrap(), None);
        assert_eq!(facts_from_rows(&[StoredRow::default()]).unwrap(), None);
        let unknown = StoredRow { kind: Some(9), at: Some(1), ..StoredRow::default() };
        assert!(facts_from_rows(&[unknown]).is_err());
    }
}
