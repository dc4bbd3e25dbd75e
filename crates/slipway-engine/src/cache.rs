//! Dependency caches: pipeline volumes written `cache: {}` (a Slipway addition), kept
//! between builds that share a *cache scope* ([`crate::RunOptions::cache_scope`]).
//!
//! A cache is a Docker named volume. Its name is derived from the scope, the volume's name
//! and its `key`, and is injective in the scope: the scope is the segment between the
//! `slipway-cache-` prefix and the first `.`, and no segment contains a `.`, so whatever
//! name and key a pipeline file chooses, it can never reach a volume of another scope. That
//! is the safety property pull requests rely on: their scope (`repo-<id>-pr`) differs from
//! the one of branch and tag builds (`repo-<id>`), so an untrusted change can fill only
//! the caches other pull requests read.
//!
//! Cache volumes carry [`LABEL_MANAGED`] and [`LABEL_CACHE`] (plus the informational
//! [`LABEL_CACHE_VOLUME`] and [`LABEL_CACHE_KEY`]) but neither the owner nor the build
//! label, so neither a build's cleanup (by build label) nor
//! [`crate::cleanup::remove_orphans`] (by dead owner) ever removes them. They are removed
//! by hand: `docker volume ls --filter label=io.slipway.cache`, then `docker volume rm`.

use std::collections::HashMap;
use std::path::Path;

use crate::cleanup::LABEL_MANAGED;

/// The cache scope a cache volume belongs to (`repo-<id>`, `repo-<id>-pr`, `local-<hash>`).
pub const LABEL_CACHE: &str = "io.slipway.cache";
/// The pipeline volume's name, as written (informational).
pub const LABEL_CACHE_VOLUME: &str = "io.slipway.cache.volume";
/// The cache's `key`, after substitution, when it has one (informational).
pub const LABEL_CACHE_KEY: &str = "io.slipway.cache.key";

/// The Docker volume backing cache volume `name` (with optional `key`) in `scope`:
/// `slipway-cache-<scope>.<name>[.<hash of key>]`. Parts that are not plain
/// (`[A-Za-z0-9_-]`, at most 48 characters) are cleaned and get a hash of the original,
/// so distinct inputs keep distinct names.
pub fn volume_name(scope: &str, name: &str, key: Option<&str>) -> String {
    let mut out = format!("slipway-cache-{}.{}", segment(scope), segment(name));
    if let Some(key) = key {
        out.push('.');
        out.push_str(&short_hash(key));
    }
    out
}

/// The labels of a cache volume: managed, with its scope, and no owner or build.
pub(crate) fn labels(scope: &str, name: &str, key: Option<&str>) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_CACHE.to_string(), scope.to_string()),
        (LABEL_CACHE_VOLUME.to_string(), name.to_string()),
    ]);
    if let Some(key) = key {
        labels.insert(LABEL_CACHE_KEY.to_string(), key.to_string());
    }
    labels
}

/// The cache scope of local runs (`slipway exec`) in the repository at `toplevel`:
/// `local-<hash of the path>`, so each checkout keeps its own caches between runs.
pub fn local_scope(toplevel: &Path) -> String {
    format!(
        "local-{}",
        short_hash(&toplevel.to_string_lossy())
            .get(..8)
            .unwrap_or("0")
    )
}

/// A volume name segment: the text itself when it is plain, else a cleaned prefix and a
/// hash of the whole. Never contains `.` (the separator of segments).
fn segment(text: &str) -> String {
    let plain = !text.is_empty()
        && text.len() <= 48
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if plain {
        return text.to_string();
    }
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    format!("{cleaned}-{}", short_hash(text))
}

/// 12 hex digits of the FNV-1a hash of `text`: stable across Rust versions and machines
/// (unlike `DefaultHasher`), which volume names must be. Not a security boundary: scopes
/// are kept apart by the name's structure, not by the hash.
fn short_hash(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:012x}", hash >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scope segment of a volume name: between the prefix and the first `.`.
    fn scope_of(volume: &str) -> &str {
        let rest = volume.strip_prefix("slipway-cache-").expect("prefix");
        rest.split('.').next().expect("a scope segment")
    }

    #[test]
    fn names_are_readable_and_stable() {
        assert_eq!(
            volume_name("repo-7", "deps", None),
            "slipway-cache-repo-7.deps"
        );
        let keyed = volume_name("repo-7", "deps", Some("main"));
        assert!(keyed.starts_with("slipway-cache-repo-7.deps."), "{keyed}");
        assert_eq!(keyed, volume_name("repo-7", "deps", Some("main")));
        assert_ne!(keyed, volume_name("repo-7", "deps", Some("develop")));
        assert_eq!(local_scope(Path::new("/src/app")).len(), "local-".len() + 8);
        assert_ne!(
            local_scope(Path::new("/src/app")),
            local_scope(Path::new("/src/other"))
        );
    }

    #[test]
    fn no_name_or_key_reaches_another_scope() {
        // A pull request chooses name and key; the branch scope must stay out of reach.
        let branch = volume_name("repo-1", "pr-deps", None);
        for (name, key) in [
            ("deps", None),
            ("pr-deps", None),
            ("deps.x", Some("y")),
            ("../repo-1.deps", None),
            ("", Some("")),
        ] {
            let pr = volume_name("repo-1-pr", name, key);
            assert_ne!(pr, branch);
            assert_eq!(scope_of(&pr), "repo-1-pr", "{pr}");
        }
        assert_eq!(scope_of(&volume_name("repo-12", "deps", None)), "repo-12");
        // Odd scopes are cleaned, hashed, and still distinct.
        let odd = volume_name("a/b", "deps", None);
        assert_ne!(scope_of(&odd), scope_of(&volume_name("a-b", "deps", None)));
        assert!(!scope_of(&odd).contains('/'), "{odd}");
    }

    #[test]
    fn names_are_valid_docker_volume_names() {
        for (scope, name, key) in [
            ("repo-1", "deps", None),
            ("repo-1-pr", "node modules/ü", Some("feature/x")),
            ("", "", None),
        ] {
            let volume = volume_name(scope, name, key);
            assert!(
                volume
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')),
                "{volume}"
            );
        }
    }
}
