//! The StatusStore conformance suite against the embedded (redb) store, in
//! both of its sharing modes.

use healthcode_store::conformance::EmbeddedStoreFactory;

mod exclusive {
    use super::*;
    healthcode_store::status_store_conformance!(Some(EmbeddedStoreFactory::new()));
}

mod shared {
    use super::*;
    healthcode_store::status_store_conformance!(Some(EmbeddedStoreFactory::shared()));
}
