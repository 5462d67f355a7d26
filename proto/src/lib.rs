//! The `healthcode.v1` API: messages, the descriptor set that server
//! reflection serves, and the service stubs behind the `server` and
//! `client` features.

pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/healthcode.v1.rs"));
}

/// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/healthcode_descriptor.bin"));

pub use prost::{DecodeError, Message};
pub use prost_types::Timestamp;
