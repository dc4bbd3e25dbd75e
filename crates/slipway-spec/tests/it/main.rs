//! The one integration-test binary of slipway-spec (one binary keeps link time down).

mod corpus;
mod envsubst;
mod glob;
mod lint;
mod plan;
mod robustness;

use std::path::PathBuf;

/// `../shared` beside the clone, where the real-world corpus and seed examples live.
/// `None` (and a message) when absent, as in a user's checkout.
pub fn shared_dir(sub: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(sub);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: {} not found (../shared is not beside this checkout)",
            dir.display()
        );
        None
    }
}
