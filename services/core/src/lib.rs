//! healthcode's domain. Facts per resident form a join-semilattice (every
//! field is a max or a last-writer-wins register), so merging is idempotent,
//! commutative and associative; the color is computed at read time from the
//! facts and `now`. Nothing here does I/O.

pub mod audit;
pub mod event;
pub mod exposure;
pub mod facts;
pub mod policy;
pub mod record;
pub mod shadow;
pub mod time;
pub mod validation;
pub mod wire;

pub use audit::{AuditCursor, AuditEntry, AuditPage, Credential, Decision, Provenance};
pub use event::{Color, Event, EventBody, ScanKind, TestKind, TestOutcome};
pub use exposure::SiteRisks;
pub use facts::{Facts, OverrideFact, SITE_RISKS_KEY, ScanFact, SiteRiskFact, VisitFact};
pub use policy::{Policy, Reason, Status};
pub use time::UnixMicros;
pub use validation::{EventPath, Limits, ValidationError, Validator};
