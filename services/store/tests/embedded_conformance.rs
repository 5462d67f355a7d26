//! The StatusStore conformance suite against the embedded (redb) store.

use healthcode_store::conformance::EmbeddedStoreFactory;

healthcode_store::status_store_conformance!(Some(EmbeddedStoreFactory::new()));
