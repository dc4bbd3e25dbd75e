//! Where the registry keeps its data. [`fs::FsStore`] is the filesystem layout described in
//! the crate documentation; an object-storage implementation is planned behind a feature.

pub mod fs;

pub use fs::{FsStore, ManifestMeta, TagInfo};

/// 128 random bits as 32 lowercase hex digits: upload ids, temp-file names, token ids.
pub fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    crate::digest::to_hex(&bytes)
}
