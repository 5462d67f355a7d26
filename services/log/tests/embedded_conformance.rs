//! The EventLog conformance suite against the embedded (redb) log.

use healthcode_log::conformance::EmbeddedLogFactory;

healthcode_log::event_log_conformance!(Some(EmbeddedLogFactory::new()));
