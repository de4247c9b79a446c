//! The mirrorfs wire types: the gRPC code generated from `proto/` and the domain newtypes that
//! the other crates pass around instead of bare integers; and byte sizes as flags take them.

pub mod client;
mod errors;
pub mod size;
mod types;

pub use errors::{ERROR_KIND, FsErrorKind};
pub use types::{BlockId, Checksum, Ino, ParseError, Revision, VolumeId};

/// Generated code, nested as the protobuf packages are (generated paths refer to each other).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    pub mod mirrorfs {
        pub mod meta {
            pub mod v1 {
                tonic::include_proto!("mirrorfs.meta.v1");
            }
        }
        pub mod records {
            pub mod v1 {
                tonic::include_proto!("mirrorfs.records.v1");
            }
        }
    }
}

/// The metadata API, `mirrorfs.meta.v1`.
pub use proto::mirrorfs::meta::v1 as meta;
/// The stored records of the metadata keyspace, `mirrorfs.records.v1`.
pub use proto::mirrorfs::records::v1 as records;

/// The gRPC metadata key that carries `Bearer <token>` on every call.
pub const AUTHORIZATION: &str = "authorization";
