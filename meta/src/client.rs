//! Connecting to a meta service (kept in `mirrorfs_api::client`, which every client crate
//! shares).

pub use mirrorfs_api::client::*;
