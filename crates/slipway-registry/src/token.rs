//! Bearer tokens: JWTs signed with HMAC-SHA256 under a key only this registry (and the
//! server that embeds it) knows, carrying the repository scopes granted, as in Docker's
//! token authentication specification. Clients treat them as opaque strings.
//!
//! Invariants:
//! - A token names the credential that earned it (`cred`, the principal's
//!   [`crate::Principal::credential`]); a request made with it is served only while the
//!   [`crate::Authenticator`] says that credential is live, so revoking a robot token or
//!   ending a pipeline's stage attempt ends its bearer tokens too. A token for a named
//!   subject without `cred` (made before this rule) is refused.
//! - A token is never a password: the token endpoint and Basic credentials refuse a
//!   password that verifies as one of our tokens, so a token cannot be traded for a fresh
//!   one with a later expiry. Its life is its `exp`, and no longer than its credential's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

use crate::auth::{Action, Scope, constant_time_eq};

type HmacSha256 = Hmac<sha2::Sha256>;

/// The claims of a registry token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The principal's name; empty for anonymous.
    pub sub: String,
    /// The service (`service=` of the challenge) the token is for.
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    /// The credential the token was issued for (see the module docs); absent for anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cred: Option<String>,
    /// Scopes as granted: a requested repository the principal may not touch is present
    /// with an empty action list, so the registry can answer 403 rather than challenge again.
    pub access: Vec<Scope>,
}

impl Claims {
    /// `Some(true/false)` if the token speaks about `repo` (allowed or not), `None` if the
    /// client never asked for it.
    pub fn allows(&self, repo: &str, action: Action) -> Option<bool> {
        let mut mentioned = false;
        for s in self
            .access
            .iter()
            .filter(|s| s.kind == "repository" && s.name == repo)
        {
            mentioned = true;
            if s.actions.contains(&action) {
                return Some(true);
            }
        }
        mentioned.then_some(false)
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is for service `{0}`, not this registry")]
    WrongAudience(String),
}

/// Signs and verifies tokens with one HMAC key.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
    issuer: String,
    service: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("issuer", &self.issuer)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

impl TokenSigner {
    pub fn new(key: Vec<u8>, issuer: impl Into<String>, service: impl Into<String>) -> Self {
        TokenSigner {
            key,
            issuer: issuer.into(),
            service: service.into(),
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// A token for `subject`, authenticated by `credential`, granting `access`, valid for
    /// `ttl` from now (and only while the credential is live).
    pub fn issue(
        &self,
        subject: &str,
        credential: Option<&str>,
        access: Vec<Scope>,
        ttl: Duration,
    ) -> (String, Claims) {
        let now = unix_now();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_string(),
            aud: self.service.clone(),
            exp: now + ttl.as_secs().max(1),
            nbf: now.saturating_sub(1),
            iat: now,
            jti: crate::storage::random_id(),
            cred: credential.map(str::to_string),
            access,
        };
        (self.sign(&claims), claims)
    }

    fn sign(&self, claims: &Claims) -> String {
        // Serialising a struct of strings and integers cannot fail.
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = URL_SAFE_NO_PAD.encode(self.mac(signing_input.as_bytes()));
        format!("{signing_input}.{signature}")
    }

    fn mac(&self, data: &[u8]) -> Vec<u8> {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// Checks the signature, the audience and the validity period.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let (signing_input, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (header, payload) = signing_input.split_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        if !constant_time_eq(&self.mac(signing_input.as_bytes()), &signature) {
            return Err(TokenError::BadSignature);
        }
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Malformed)?;
        if header != HEADER.as_bytes() {
            return Err(TokenError::Malformed);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if claims.aud != self.service {
            return Err(TokenError::WrongAudience(claims.aud));
        }
        let now = unix_now();
        if now >= claims.exp || now + 60 < claims.nbf {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
