//! The master <-> worker wire format. This is the only crate that knows it:
//! the protobuf schema lives in `proto/kiln.proto` and everything else uses
//! the generated types re-exported here.

#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("kiln.v1");
}

pub use v1::*;

/// ALPN protocol id of the gRPC worker endpoint (mutual TLS required).
pub const ALPN_GRPC: &[u8] = b"h2";
/// ALPN protocol id of the enrollment exchange on the same port (no client
/// certificate: the one-time token authenticates the worker).
pub const ALPN_ENROLL: &[u8] = b"kiln-enroll/1";
/// Largest artifact carried inline in `Finished` (and most inline bytes in
/// one `Finished`: INLINE_MAX * 4).
pub const INLINE_MAX: u64 = 64 * 1024;
/// Size of file chunks on Fetch and Upload.
pub const CHUNK_SIZE: usize = 256 * 1024;
