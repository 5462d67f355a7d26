//! The CQL this adapter sends: schema, and the statements it prepares. Pure
//! text building, so it is tested without a server.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The schema version this build writes and reads. Recorded in
/// `schema_version`; a keyspace with a newer one is refused at start.
/// Version 2 added visits and site risks (row kinds 3 and 4) and the
/// `site_visits` index, which version 1 cannot read. Version 3 added the
/// audit record: a version-2 build would apply decisions without recording
/// them, so it is refused once a version-3 build has run. Version 4 keeps the
/// latest scan as rows (kind 5) instead of the `latest_scan` static cell,
/// which a version-3 build would not see (it refuses the unknown kind).
pub const SCHEMA_VERSION: i32 = 4;

/// Schema components tracked in `schema_version`.
pub const FACTS_COMPONENT: &str = "resident_facts";

/// Rows that may come back for one resident: its negatives, overrides,
/// visits and scans within retention, in that order. Far above any real
/// resident's tests and overrides (a few a day); a bound so that no partition
/// can make a lookup read without limit. A resident with more visits than
/// fit loses only the oldest visits from the read (`VISITS_KEPT`, 512, are
/// kept anyway) and its scans, whose latest is then read on its own.
pub const ROWS_PER_RESIDENT: i32 = 1000;

/// Rows of the site-risk registry's partition: every version of every risk
/// issued within retention.
pub const ROWS_OF_SITE_RISKS: i32 = 100_000;

/// One `site_visits` partition per site and day: a busy venue's month of
/// visits is never one partition.
pub const VISIT_BUCKET_MICROS: i64 = 24 * 3_600 * 1_000_000;

/// Keyspace replication: NetworkTopologyStrategy with a replication factor
/// per datacenter, written `dc1=3,dc2=3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replication(pub BTreeMap<String, u32>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplicationError {
    #[error("scylla_replication must list at least one datacenter as dc=factor")]
    Empty,
    #[error("scylla_replication entry {0:?} must look like datacenter=factor")]
    Malformed(String),
    #[error("scylla_replication datacenter {0:?} must only contain letters, digits, '-' and '_'")]
    BadName(String),
    #[error("scylla_replication factor of {0:?} must be a whole number from 1 to 15")]
    BadFactor(String),
}

impl FromStr for Replication {
    type Err = ReplicationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut map = BTreeMap::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (dc, factor) = entry.split_once('=').ok_or_else(|| ReplicationError::Malformed(entry.to_owned()))?;
            let dc = dc.trim();
            // The name goes into DDL text: keep it to characters that need no quoting.
            if dc.is_empty() || !dc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(ReplicationError::BadName(dc.to_owned()));
            }
            let factor: u32 = factor.trim().parse().map_err(|_| ReplicationError::BadFactor(dc.to_owned()))?;
            if !(1..=15).contains(&factor) {
                return Err(ReplicationError::BadFactor(dc.to_owned()));
            }
            map.insert(dc.to_owned(), factor);
        }
        if map.is_empty() {
            return Err(ReplicationError::Empty);
        }
        Ok(Replication(map))
    }
}

impl fmt::Display for Replication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<String> = self.0.iter().map(|(dc, rf)| format!("{dc}={rf}")).collect();
        f.write_str(&entries.join(","))
    }
}

/// A setting of this adapter that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingError {
    #[error("scylla_keyspace {0:?} must be 1 to 48 characters from [a-z0-9_], starting with a letter")]
    Keyspace(String),
    #[error("scylla_nodes must list at least one host[:port]")]
    NoNodes,
}

/// A keyspace name: goes into every statement's text, so it is checked.
pub fn check_keyspace(name: &str) -> Result<(), SettingError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name.as_bytes()[0].is_ascii_lowercase();
    if ok { Ok(()) } else { Err(SettingError::Keyspace(name.to_owned())) }
}

/// The three single-value facts, kept as static cells of the resident's
/// partition. Each is a max register: its value is its write timestamp, so
/// two writes of one timestamp carry one value. The discriminant is the
/// position in [`Register::ALL`].
///
/// The `latest_scan` static cell is no register any more (schema version
/// 4): it is only read, for what a version-3 build wrote.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Register {
    LatestPositive = 0,
    LatestTest = 1,
    UpdatedAt = 2,
}

impl Register {
    pub const ALL: [Register; 3] = [Register::LatestPositive, Register::LatestTest, Register::UpdatedAt];

    pub fn column(self) -> &'static str {
        match self {
            Register::LatestPositive => "latest_positive",
            Register::LatestTest => "latest_test",
            Register::UpdatedAt => "updated_at",
        }
    }
}

/// Clustering rows of a resident's partition: a grow-only set of facts,
/// read back whole and joined by the domain's own merge.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RowKind {
    Negative = 1,
    Override = 2,
    /// `at` the scan time, `event_id` the site: a set of (site, time).
    Visit = 3,
    /// Under the registry key only: `at` issued_at, `event_id` the event's.
    SiteRisk = 4,
    /// `at` the scan time, `event_id` the scan's, the rest in the payload:
    /// the set of scans, of which the read keeps the greatest.
    Scan = 5,
}

impl RowKind {
    pub fn from_code(code: i8) -> Option<RowKind> {
        match code {
            1 => Some(RowKind::Negative),
            2 => Some(RowKind::Override),
            3 => Some(RowKind::Visit),
            4 => Some(RowKind::SiteRisk),
            5 => Some(RowKind::Scan),
            _ => None,
        }
    }
}

/// The statements of one keyspace.
#[derive(Clone, Debug)]
pub struct Cql {
    keyspace: String,
}

impl Cql {
    pub fn new(keyspace: &str) -> Result<Cql, SettingError> {
        check_keyspace(keyspace)?;
        Ok(Cql { keyspace: keyspace.to_owned() })
    }

    pub fn create_keyspace(&self, replication: &Replication) -> String {
        let factors: Vec<String> = replication.0.iter().map(|(dc, rf)| format!("'{dc}': {rf}")).collect();
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {{'class': 'NetworkTopologyStrategy', {}}} \
             AND durable_writes = true",
            self.keyspace,
            factors.join(", ")
        )
    }

    /// One partition per resident. Static cells hold the registers; rows
    /// keyed (kind, at, event_id) hold negatives and overrides. Every cell
    /// carries a TTL, and nothing is ever deleted, so expired cells cannot be
    /// resurrected and a short gc_grace_seconds is safe: it lets compaction
    /// drop expired data a day after it expires instead of ten.
    pub fn create_facts_table(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {}.resident_facts (\
             resident text, kind tinyint, at bigint, event_id text, payload blob, \
             latest_positive bigint STATIC, latest_test bigint STATIC, updated_at bigint STATIC, \
             latest_scan blob STATIC, \
             PRIMARY KEY ((resident), kind, at, event_id)) \
             WITH CLUSTERING ORDER BY (kind ASC, at DESC, event_id DESC) \
             AND compaction = {{'class': 'LeveledCompactionStrategy'}} \
             AND gc_grace_seconds = 86400",
            self.keyspace
        )
    }

    /// Who visited a site when, by (site, day): what `count_visitors` reads.
    pub fn create_site_visits_table(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {}.site_visits (\
             site_id text, day bigint, at bigint, resident text, \
             PRIMARY KEY ((site_id, day), at, resident)) \
             WITH compaction = {{'class': 'TimeWindowCompactionStrategy', \
             'compaction_window_unit': 'DAYS', 'compaction_window_size': 1}} \
             AND gc_grace_seconds = 86400",
            self.keyspace
        )
    }

    /// Binds: site_id, day, at, resident, write timestamp, TTL.
    pub fn write_site_visit(&self) -> String {
        format!(
            "INSERT INTO {}.site_visits (site_id, day, at, resident) VALUES (?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?",
            self.keyspace
        )
    }

    /// Binds: site_id, day, from, until. Paged: a busy site's day is long.
    pub fn read_site_visitors(&self) -> String {
        format!(
            "SELECT resident FROM {}.site_visits WHERE site_id = ? AND day = ? AND at >= ? AND at < ?",
            self.keyspace
        )
    }

    /// Every decision of an authority, one partition per subject (a
    /// resident's key, or the site-risk registry's), newest first. Written
    /// with the audit retention as TTL and never updated.
    pub fn create_audit_table(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {}.audit_record (\
             subject text, issued_at bigint, entry_id text, entry blob, \
             PRIMARY KEY ((subject), issued_at, entry_id)) \
             WITH CLUSTERING ORDER BY (issued_at DESC, entry_id DESC) \
             AND gc_grace_seconds = 86400",
            self.keyspace
        )
    }

    /// Binds: subject, issued_at, entry_id, entry, write timestamp, TTL.
    pub fn write_audit_entry(&self) -> String {
        format!(
            "INSERT INTO {}.audit_record (subject, issued_at, entry_id, entry) VALUES (?, ?, ?, ?) \
             USING TIMESTAMP ? AND TTL ?",
            self.keyspace
        )
    }

    /// Binds: subject, limit. The newest entries of a subject.
    pub fn read_audit_first(&self) -> String {
        format!("SELECT entry FROM {}.audit_record WHERE subject = ? LIMIT ?", self.keyspace)
    }

    /// Binds: subject, issued_at, entry_id, limit. The entries after a
    /// cursor in the clustering order (older, or as old with a smaller id).
    pub fn read_audit_after(&self) -> String {
        format!(
            "SELECT entry FROM {}.audit_record WHERE subject = ? AND (issued_at, entry_id) < (?, ?) LIMIT ?",
            self.keyspace
        )
    }

    pub fn create_schema_version_table(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {}.schema_version (component text PRIMARY KEY, version int, applied_at_micros bigint)",
            self.keyspace
        )
    }

    pub fn select_schema_version(&self) -> String {
        format!("SELECT version FROM {}.schema_version WHERE component = ?", self.keyspace)
    }

    /// Binds: component, version, applied_at_micros, write timestamp. The
    /// write timestamp is the version itself, so the highest version ever
    /// recorded stays, whatever order processes of two builds start in.
    pub fn record_schema_version(&self) -> String {
        format!(
            "INSERT INTO {}.schema_version (component, version, applied_at_micros) VALUES (?, ?, ?) USING TIMESTAMP ?",
            self.keyspace
        )
    }

    /// Binds: write timestamp, TTL, value, resident. The cell's write
    /// timestamp is the fact's own time, so ScyllaDB's rule "the greater
    /// timestamp wins" is the register's max.
    pub fn write_register(&self, register: Register) -> String {
        format!(
            "UPDATE {}.resident_facts USING TIMESTAMP ? AND TTL ? SET {} = ? WHERE resident = ?",
            self.keyspace,
            register.column()
        )
    }

    /// Binds: resident, kind, at, event_id, [payload,] write timestamp, TTL.
    /// A row without payload (a negative) is its key and row marker only.
    pub fn write_row(&self, with_payload: bool) -> String {
        let (column, marker) = if with_payload { (", payload", ", ?") } else { ("", "") };
        format!(
            "INSERT INTO {}.resident_facts (resident, kind, at, event_id{column}) VALUES (?, ?, ?, ?{marker}) \
             USING TIMESTAMP ? AND TTL ?",
            self.keyspace
        )
    }

    /// Binds: the token to start after, the last token of the range, the
    /// page size. The residents of a token range in token order.
    pub fn scan_residents(&self) -> String {
        format!(
            "SELECT DISTINCT token(resident), resident FROM {}.resident_facts \
             WHERE token(resident) > ? AND token(resident) <= ? LIMIT ?",
            self.keyspace
        )
    }

    /// Binds: resident. One single-partition read per resident.
    pub fn read_facts(&self) -> String {
        self.read_partition(ROWS_PER_RESIDENT)
    }

    /// Binds: the registry key. The site-risk registry's partition.
    pub fn read_site_risks(&self) -> String {
        self.read_partition(ROWS_OF_SITE_RISKS)
    }

    /// Binds: resident. The greatest scan row alone (clustering order puts
    /// it first of its kind), for a partition whose read stopped at
    /// [`ROWS_PER_RESIDENT`] before reaching the scans.
    pub fn read_latest_scan(&self) -> String {
        self.select_facts(&format!("AND kind = {} LIMIT 1", RowKind::Scan as i8))
    }

    fn read_partition(&self, limit: i32) -> String {
        self.select_facts(&format!("LIMIT {limit}"))
    }

    /// The columns `ReadRow` (lib.rs) decodes, of one resident's partition.
    fn select_facts(&self, rest: &str) -> String {
        format!(
            "SELECT latest_positive, latest_test, updated_at, latest_scan, kind, at, event_id, payload \
             FROM {}.resident_facts WHERE resident = ? {rest}",
            self.keyspace
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_parses_datacenters_and_refuses_bad_entries() {
        let r: Replication = "dc1=3, dc2 = 2".parse().unwrap();
        assert_eq!(r.0.get("dc1"), Some(&3));
        assert_eq!(r.0.get("dc2"), Some(&2));
        assert_eq!(r.to_string(), "dc1=3,dc2=2");
        assert_eq!("".parse::<Replication>(), Err(ReplicationError::Empty));
        assert_eq!("dc1".parse::<Replication>(), Err(ReplicationError::Malformed("dc1".into())));
        assert_eq!("dc1=0".parse::<Replication>(), Err(ReplicationError::BadFactor("dc1".into())));
        assert_eq!("dc1=x".parse::<Replication>(), Err(ReplicationError::BadFactor("dc1".into())));
        assert!(matches!("d'c=3".parse::<Replication>(), Err(ReplicationError::BadName(_))));
    }

    #[test]
    fn keyspace_names_that_could_break_statements_are_refused() {
        assert!(Cql::new("healthcode").is_ok());
        for bad in ["", "Healthcode", "hc; DROP", "1hc", "hc.facts", &"a".repeat(49)] {
            let err = Cql::new(bad).unwrap_err();
            assert!(err.to_string().contains("scylla_keyspace"), "{bad}: {err}");
        }
    }

    #[test]
    fn keyspace_uses_network_topology_with_every_datacenter() {
        let cql = Cql::new("hc").unwrap();
        let ddl = cql.create_keyspace(&"east=3,west=2".parse().unwrap());
        assert!(ddl.starts_with("CREATE KEYSPACE IF NOT EXISTS hc WITH replication = {"), "{ddl}");
        assert!(ddl.contains("'class': 'NetworkTopologyStrategy', 'east': 3, 'west': 2}"), "{ddl}");
    }

    #[test]
    fn writes_carry_their_own_timestamp_and_ttl_and_never_read_first() {
        let cql = Cql::new("hc").unwrap();
        for register in Register::ALL {
            let stmt = cql.write_register(register);
            assert_eq!(
                stmt,
                format!(
                    "UPDATE hc.resident_facts USING TIMESTAMP ? AND TTL ? SET {} = ? WHERE resident = ?",
                    register.column()
                )
            );
        }
        let (row, bare) = (cql.write_row(true), cql.write_row(false));
        assert!(row.ends_with("USING TIMESTAMP ? AND TTL ?"), "{row}");
        assert!(row.contains("event_id, payload) VALUES (?, ?, ?, ?, ?)"), "{row}");
        assert!(bare.contains("event_id) VALUES (?, ?, ?, ?) USING"), "{bare}");
        for stmt in Register::ALL.map(|r| cql.write_register(r)).iter().chain([&row, &bare]) {
            assert!(!stmt.contains(" IF "), "no lightweight transaction: {stmt}");
            let markers = if stmt == &row {
                7
            } else if stmt == &bare {
                6
            } else {
                4
            };
            assert_eq!(stmt.matches('?').count(), markers, "{stmt}");
        }
    }

    #[test]
    fn the_audit_record_is_one_partition_per_subject_newest_first_and_written_without_reading() {
        let cql = Cql::new("hc").unwrap();
        let ddl = cql.create_audit_table();
        assert!(ddl.contains("PRIMARY KEY ((subject), issued_at, entry_id)"), "{ddl}");
        assert!(ddl.contains("CLUSTERING ORDER BY (issued_at DESC, entry_id DESC)"), "{ddl}");
        let write = cql.write_audit_entry();
        assert!(write.ends_with("USING TIMESTAMP ? AND TTL ?") && !write.contains(" IF "), "{write}");
        assert_eq!(write.matches('?').count(), 6, "{write}");
        for read in [cql.read_audit_first(), cql.read_audit_after()] {
            assert!(read.contains("WHERE subject = ?") && read.ends_with("LIMIT ?"), "{read}");
        }
        assert!(cql.read_audit_after().contains("(issued_at, entry_id) < (?, ?)"));
    }

    #[test]
    fn registers_are_listed_in_discriminant_order() {
        for (index, register) in Register::ALL.iter().enumerate() {
            assert_eq!(*register as usize, index, "{register:?}");
        }
    }

    #[test]
    fn the_read_is_one_partition_and_bounded() {
        let read = Cql::new("hc").unwrap().read_facts();
        assert!(read.contains("WHERE resident = ? LIMIT 1000"), "{read}");
        assert!(!read.contains(" IN "), "{read}");
        let scan = Cql::new("hc").unwrap().read_latest_scan();
        assert!(scan.ends_with("WHERE resident = ? AND kind = 5 LIMIT 1"), "{scan}");
    }

    #[test]
    fn row_kinds_round_trip_their_codes() {
        for kind in [RowKind::Negative, RowKind::Override, RowKind::Visit, RowKind::SiteRisk, RowKind::Scan] {
            assert_eq!(RowKind::from_code(kind as i8), Some(kind));
        }
        assert_eq!(RowKind::from_code(0), None);
        assert_eq!(RowKind::from_code(6), None);
    }

    #[test]
    fn the_facts_table_keeps_registers_static_and_sets_ordered_newest_first() {
        let ddl = Cql::new("hc").unwrap().create_facts_table();
        for register in Register::ALL {
            assert!(ddl.contains(&format!("{} ", register.column())), "{ddl}");
        }
        assert_eq!(ddl.matches(" STATIC").count(), 4, "{ddl}");
        assert!(ddl.contains("PRIMARY KEY ((resident), kind, at, event_id)"), "{ddl}");
        assert!(ddl.contains("CLUSTERING ORDER BY (kind ASC, at DESC, event_id DESC)"), "{ddl}");
    }
}
