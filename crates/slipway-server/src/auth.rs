//! API tokens: made random, stored as SHA-256 hashes, checked on every request; and the
//! registry's view of them, so `docker login HOST -u admin -p <token>` works with a
//! Slipway token.

use std::sync::Arc;

use rand::RngCore;
use sha2::{Digest, Sha256};
use slipway_registry::auth::BoxFuture;
use slipway_registry::{Authenticator, Principal};

use crate::store::{Store, Token};

/// Token scopes, from most to least powerful.
pub const SCOPE_ADMIN: &str = "admin";
/// May only speak the runner protocol.
pub const SCOPE_RUNNER: &str = "runner";
/// `robot:<namespace>`: may only pull and push registry repositories below the namespace.
pub const SCOPE_ROBOT_PREFIX: &str = "robot:";

/// Checks a scope given by a user: `admin`, `runner` or `robot:<namespace>`.
pub fn valid_scope(scope: &str) -> bool {
    scope == SCOPE_ADMIN
        || scope == SCOPE_RUNNER
        || scope
            .strip_prefix(SCOPE_ROBOT_PREFIX)
            .is_some_and(|ns| !ns.is_empty() && !ns.contains('*') && !ns.ends_with('/'))
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
/// runner's stage makes several). An entry lives [`TokenCache::TTL`]; deleting a token
/// clears the cache, so a revoked token stops working at once.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (Token, std::time::Instant)>>,
}

impl TokenCache {
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(5);

    /// [`check`], answered from the cache when it can be.
    pub async fn check(&self, store: &Store, presented: &str) -> Option<Token> {
        let key = hash(presented);
        if let Some((token, at)) = self.lock().get(&key)
            && at.elapsed() < Self::TTL
        {
            return Some(token.clone());
        }
        let token = check(store, presented).await?;
        let mut entries = self.lock();
        if entries.len() > 10_000 {
            entries.clear();
        }
        entries.insert(key, (token.clone(), std::time::Instant::now()));
        Some(token)
    }

    /// Forgets every entry (after a token was deleted).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (Token, std::time::Instant)>>
    {
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

/// Registry credentials are Slipway tokens: an admin token may do everything (any user
/// name, `admin` by convention), a robot token pull and push below its namespace, other
/// tokens nothing in the registry.
#[derive(Debug, Clone)]
pub struct RegistryAuth {
    pub store: Arc<Store>,
}

impl Authenticator for RegistryAuth {
    fn authenticate<'a>(
        &'a self,
        username: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Option<Principal>> {
        Box::pin(async move {
            let token = check(&self.store, password).await?;
            if token.scope == SCOPE_ADMIN {
                return Some(Principal::admin(username));
            }
            let namespace = token.scope.strip_prefix(SCOPE_ROBOT_PREFIX)?;
            Some(Principal::robot(token.name, namespace))
        })
    }
}
