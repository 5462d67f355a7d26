//! The `healthcode.v1` API: messages, service stubs and the descriptor set
//! that server reflection serves.

pub mod v1 {
    tonic::include_proto!("healthcode.v1");
}

/// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("healthcode_descriptor");

pub use prost::Message;
pub use prost_types::Timestamp;
