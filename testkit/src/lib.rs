//! What the tests and drills share to reach real components: Kafka brokers
//! (the engines' Apache Kafka cluster, or a tansu broker of a test's own),
//! the engines of `scripts/engines.sh` to kill and restart, and the one way
//! a test says that it skipped. No Kafka or CQL client library here: the
//! load tester links this crate.

pub mod broker;
pub mod engines;

/// Says that a test or case skipped, on the process's stderr: libtest
/// captures `eprintln!` of passing tests, and a skip must be seen (and
/// counted by scripts/test.sh, which looks for lines starting `SKIPPED`).
pub fn skipped(test: &str, why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}
