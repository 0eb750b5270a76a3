//! Generated code for the public API in `proto/cit/v1`: messages (prost) and gRPC clients and
//! servers (tonic). Nothing is hand-written here except the file descriptor set that server
//! reflection serves.

/// The `cit.v1` package.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("cit.v1");
}

/// Encoded `FileDescriptorSet` of every cit proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cit_descriptor.bin"));
