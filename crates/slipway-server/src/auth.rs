//! API tokens: made random, stored as SHA-256 hashes, checked on every request; and the
//! registry's view of them, so `docker login HOST -u admin -p <token>` works with a
//! Slipway token.
//!
//! A registry bearer token is tied to the Slipway token that earned it (credential
//! `token:<id>`; ids are never reused): [`RegistryAuth::credential_live`] asks whether that
//! row still exists, answered from [`TokenCache`] for a few seconds at most and afresh
//! after any revocation this process makes, so deleting a robot token or ending a
//! pipeline's stage attempt (which deletes its token) ends its bearer tokens at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};
use slipway_registry::auth::{BoxFuture, PatternError};
use slipway_registry::{Authenticator, Principal, RepoPattern};

use crate::store::{Store, Token};

/// Token scopes, from most to least powerful.
pub const SCOPE_ADMIN: &str = "admin";
/// May only speak the runner protocol.
pub const SCOPE_RUNNER: &str = "runner";
/// May only pull from the registry (any repository): the deployer's own token, and one a
/// deploy host may be given.
pub const SCOPE_PULL: &str = "pull";
/// `robot:<namespace>`: may only pull and push registry repositories below the namespace.
pub const SCOPE_ROBOT_PREFIX: &str = "robot:";
/// `paths:<pattern>[,<pattern>…]`: may only pull and push the registry paths the patterns
/// name and below them ([`RepoPattern::parse_path`]); what a pipeline's token gets.
pub const SCOPE_PATHS_PREFIX: &str = "paths:";

/// Checks a scope given by a user: `admin`, `runner`, `pull`, `robot:<namespace>` or
/// `paths:<pattern>,…`.
pub fn valid_scope(scope: &str) -> bool {
    scope == SCOPE_ADMIN
        || scope == SCOPE_RUNNER
        || scope == SCOPE_PULL
        || scope
            .strip_prefix(SCOPE_ROBOT_PREFIX)
            .is_some_and(|ns| !ns.is_empty() && !ns.contains('*') && !ns.ends_with('/'))
        || scope
            .strip_prefix(SCOPE_PATHS_PREFIX)
            .is_some_and(|list| path_patterns(list).is_ok())
}

/// The patterns of a `paths:` scope's list (comma separated); the first bad one's error.
pub fn path_patterns(list: &str) -> Result<Vec<RepoPattern>, PatternError> {
    list.split(',').map(RepoPattern::parse_path).collect()
}

/// Most patterns a repository's `registry_paths` setting may hold.
pub const MAX_REGISTRY_PATHS: usize = 32;

/// A repository's `registry_paths` setting as given (blank entries dropped, duplicates
/// once), or why it is refused.
pub fn registry_paths(given: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for entry in given.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        RepoPattern::parse_path(entry).map_err(|e| format!("registry_paths: {e}"))?;
        if !out.iter().any(|p| p == entry) {
            out.push(entry.to_owned());
        }
    }
    if out.len() > MAX_REGISTRY_PATHS {
        return Err(format!(
            "registry_paths: {} patterns, at most {MAX_REGISTRY_PATHS}; use wildcards (`team/shared-*`) \
             to cover several repositories with one",
            out.len()
        ));
    }
    Ok(out)
}

/// The scope of a token that may pull and push `patterns` (already validated).
pub fn paths_scope(patterns: &[String]) -> String {
    format!("{SCOPE_PATHS_PREFIX}{}", patterns.join(","))
}

/// A new random token: 32 bytes, hex.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// What the store keeps of a token.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// What starts a runner's own credential: `slipway-runner.<runner id>.<secret>`.
const RUNNER_CREDENTIAL_PREFIX: &str = "slipway-runner.";

/// The credential a runner presents, from its id and the secret made at its registration
/// (the store keeps only the secret's [`hash`]).
pub fn runner_credential(id: i64, secret: &str) -> String {
    format!("{RUNNER_CREDENTIAL_PREFIX}{id}.{secret}")
}

/// The runner id and secret of a presented runner credential, if it has that form.
pub fn parse_runner_credential(presented: &str) -> Option<(i64, &str)> {
    let (id, secret) = presented
        .strip_prefix(RUNNER_CREDENTIAL_PREFIX)?
        .split_once('.')?;
    Some((id.parse().ok()?, secret))
}

/// Whether `secret` hashes to `stored` (compared in constant time; an empty `stored`, a
/// runner registered before credentials existed, matches nothing).
pub fn matches_hash(secret: &str, stored: &str) -> bool {
    use subtle::ConstantTimeEq;
    !stored.is_empty() && bool::from(hash(secret).as_bytes().ct_eq(stored.as_bytes()))
}

/// The token behind a presented secret, if any.
pub async fn check(store: &Store, presented: &str) -> Option<Token> {
    if presented.trim().is_empty() {
        return None;
    }
    match store.token_by_hash(&hash(presented)).await {
        Ok(token) => token,
        Err(e) => {
            tracing::error!("checking a token: {e}");
            None
        }
    }
}

/// Tokens recently checked, so the API does not ask the database on every request (a
/// runner's stage makes several), and token ids the registry recently found live. An entry
/// lives [`TokenCache::TTL`]; deleting a token clears the cache, so a revoked token stops
/// working at once. A check that raced a clear keeps its answer to itself: each clear
/// bumps a generation, and an answer read from the store before the bump is not cached.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: std::sync::Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    /// Bumped by every clear.
    generation: u64,
    by_hash: HashMap<String, (Token, Instant)>,
    /// Token ids found in the store, for [`RegistryAuth::credential_live`].
    live: HashMap<i64, Instant>,
}

impl TokenCache {
    pub const TTL: Duration = Duration::from_secs(5);

    /// [`check`], answered from the cache when it can be.
    pub async fn check(&self, store: &Store, presented: &str) -> Option<Token> {
        let key = hash(presented);
        let generation = {
            let entries = self.lock();
            if let Some((token, at)) = entries.by_hash.get(&key)
                && at.elapsed() < Self::TTL
            {
                return Some(token.clone());
            }
            entries.generation
        };
        let token = check(store, presented).await?;
        let mut entries = self.lock();
        if entries.generation == generation {
            if entries.by_hash.len() > 10_000 {
                entries.by_hash.clear();
            }
            entries.by_hash.insert(key, (token.clone(), Instant::now()));
        }
        Some(token)
    }

    /// Whether token `id` is still stored, answered from the cache when it can be.
    pub async fn live(&self, store: &Store, id: i64) -> bool {
        let generation = {
            let entries = self.lock();
            if entries
                .live
                .get(&id)
                .is_some_and(|at| at.elapsed() < Self::TTL)
            {
                return true;
            }
            entries.generation
        };
        let found = match store.token_by_id(id).await {
            Ok(token) => token.is_some(),
            Err(e) => {
                // Deny while the store cannot say.
                tracing::error!("checking registry credential token:{id}: {e}");
                false
            }
        };
        let mut entries = self.lock();
        if found && entries.generation == generation {
            if entries.live.len() > 10_000 {
                entries.live.clear();
            }
            entries.live.insert(id, Instant::now());
        }
        found
    }

    /// Forgets every entry (after a token was deleted).
    pub fn clear(&self) {
        let mut entries = self.lock();
        entries.generation += 1;
        entries.by_hash.clear();
        entries.live.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Makes sure a token with this secret exists (for `--admin-token` and friends).
pub async fn ensure(
    store: &Store,
    name: &str,
    secret: &str,
    scope: &str,
) -> Result<Token, crate::store::StoreError> {
    let h = hash(secret);
    if let Some(t) = store.token_by_hash(&h).await? {
        return Ok(t);
    }
    store.create_token(name, &h, scope, crate::now_ms()).await
}

/// [`ensure`], and revokes every other token of that name and scope (with their sessions):
/// for the tokens the server is configured with (`--admin-token`, `--runner-token`), so
/// that starting with a new value rotates the old one out instead of keeping both valid.
pub async fn ensure_only(
    store: &Store,
    name: &str,
    secret: &str,
    scope: &str,
) -> Result<Token, crate::store::StoreError> {
    let kept = ensure(store, name, secret, scope).await?;
    for old in store.tokens().await? {
        if old.id != kept.id && old.name == name && old.scope == scope {
            store.delete_token(old.id).await?;
            tracing::warn!(
                "revoked the earlier `{name}` token (id {}): a new one is configured",
                old.id
            );
        }
    }
    Ok(kept)
}

/// Registry credentials are Slipway tokens: an admin token may do everything (any user
/// name, `admin` by convention), a `pull` token pull anything, a robot token pull and push
/// below its namespace, a
/// `paths:` token (a pipeline's) pull and push on its paths, other tokens nothing in the
/// registry. Each principal's credential is its token's row (`token:<id>`).
#[derive(Debug, Clone)]
pub struct RegistryAuth {
    pub store: Arc<Store>,
    /// Shared with [`crate::app::AppState::tokens`], which revocations clear.
    pub cache: Arc<TokenCache>,
}

/// The credential id of a stored token, as bearer tokens carry it.
fn credential_of(token: &Token) -> String {
    format!("token:{}", token.id)
}

impl Authenticator for RegistryAuth {
    fn authenticate<'a>(
        &'a self,
        username: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Option<Principal>> {
        Box::pin(async move {
            let token = check(&self.store, password).await?;
            let principal = if token.scope == SCOPE_ADMIN {
                Principal::admin(username)
            } else if token.scope == SCOPE_PULL {
                Principal::puller(token.name.clone())
            } else if let Some(namespace) = token.scope.strip_prefix(SCOPE_ROBOT_PREFIX) {
                Principal::robot(token.name.clone(), namespace)
            } else {
                let list = token.scope.strip_prefix(SCOPE_PATHS_PREFIX)?;
                match path_patterns(list) {
                    Ok(patterns) => Principal::pusher(token.name.clone(), patterns),
                    Err(e) => {
                        tracing::error!("token {} has a bad scope: {e}", token.id);
                        return None;
                    }
                }
            };
            Some(principal.with_credential(credential_of(&token)))
        })
    }

    fn credential_live<'a>(&'a self, credential: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            match credential
                .strip_prefix("token:")
                .and_then(|id| id.parse::<i64>().ok())
            {
                Some(id) => self.cache.live(&self.store, id).await,
                None => false,
            }
        })
    }
}
