//! The StatusStore conformance suite against the embedded stores: the redb
//! B-tree in both of its sharing modes, and the one-process LSM tree.

use healthcode_store::conformance::{EmbeddedStoreFactory, LsmStoreFactory};

mod exclusive {
    use super::*;
    healthcode_store::status_store_conformance!(Some(EmbeddedStoreFactory::new()));
}

mod shared {
    use super::*;
    healthcode_store::status_store_conformance!(Some(EmbeddedStoreFactory::shared()));
}

mod lsm {
    use super::*;
    healthcode_store::status_store_conformance!(Some(LsmStoreFactory::default()));
}
