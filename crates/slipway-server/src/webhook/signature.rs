//! Signatures: HMAC-SHA256 of the body (GitHub, Gitea, generic) and GitLab's plain token,
//! all compared in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{Headers, Provider, WebhookError, first_header};

type HmacSha256 = Hmac<Sha256>;

pub(super) const GENERIC_HEADER: &str = "X-Slipway-Signature";
const GITHUB_HEADER: &str = "X-Hub-Signature-256";
const GITLAB_HEADER: &str = "X-Gitlab-Token";
const SHA256_PREFIX: &str = "sha256=";

/// Gitea's headers, in the order they are looked for, with the prefix each value carries.
const GITEA_HEADERS: &[(&str, &str)] = &[
    ("X-Forgejo-Signature", ""),
    ("X-Gitea-Signature", ""),
    ("X-Gogs-Signature", ""),
    (GITHUB_HEADER, SHA256_PREFIX),
];

/// `sha256=<hex HMAC-SHA256 of body>`: the value of `X-Hub-Signature-256` and
/// `X-Slipway-Signature` for this body and secret (for clients of the generic trigger).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let Some(mut mac) = hmac(secret) else {
        unreachable!("HMAC-SHA256 accepts keys of any length")
    };
    mac.update(body);
    format!(
        "{SHA256_PREFIX}{}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// HMAC takes keys of any length, so this is never `None`.
fn hmac(secret: &[u8]) -> Option<HmacSha256> {
    HmacSha256::new_from_slice(secret).ok()
}

pub(super) fn verify(
    provider: Provider,
    headers: &(impl Headers + ?Sized),
    body: &[u8],
    secret: &[u8],
) -> Result<(), WebhookError> {
    if secret.is_empty() {
        return Err(WebhookError::NoSecret);
    }
    match provider {
        Provider::GitHub => verify_hmac(
            provider,
            headers,
            &[(GITHUB_HEADER, SHA256_PREFIX)],
            body,
            secret,
        ),
        Provider::Gitea => verify_hmac(provider, headers, GITEA_HEADERS, body, secret),
        Provider::Generic => verify_hmac(
            provider,
            headers,
            &[(GENERIC_HEADER, SHA256_PREFIX)],
            body,
            secret,
        ),
        Provider::GitLab => verify_token(provider, headers, secret),
    }
}

fn verify_hmac(
    provider: Provider,
    headers: &(impl Headers + ?Sized),
    candidates: &[(&'static str, &'static str)],
    body: &[u8],
    secret: &[u8],
) -> Result<(), WebhookError> {
    let Some((header, value)) = first_header(headers, candidates.iter().map(|(name, _)| *name))
    else {
        return Err(WebhookError::MissingSignature {
            provider,
            header: candidates
                .first()
                .map(|(name, _)| *name)
                .unwrap_or_default(),
        });
    };
    let prefix = candidates
        .iter()
        .find(|(name, _)| *name == header)
        .map(|(_, prefix)| *prefix)
        .unwrap_or_default();
    let expected = decode(header, value, prefix)?;
    let mut mac = hmac(secret).ok_or(WebhookError::NoSecret)?;
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| WebhookError::BadSignature { header })
}

/// The 32 bytes of a `[prefix]<64 hex digits>` value.
fn decode(header: &'static str, value: &str, prefix: &str) -> Result<Vec<u8>, WebhookError> {
    let form = format!("expected `{prefix}<64 hex digits>`");
    let malformed = |reason: String| WebhookError::MalformedSignature { header, reason };
    let digits = if prefix.is_empty() {
        value
    } else {
        match value.get(..prefix.len()) {
            Some(start) if start.eq_ignore_ascii_case(prefix) => {
                value.get(prefix.len()..).unwrap_or_default()
            }
            _ => {
                return Err(malformed(format!(
                    "{form}, the value does not start with `{prefix}`"
                )));
            }
        }
    };
    if digits.len() != 64 {
        return Err(malformed(format!(
            "{form}, found {} characters after the prefix",
            digits.chars().count()
        )));
    }
    hex::decode(digits).map_err(|_| malformed(format!("{form}, the digits are not hexadecimal")))
}

fn verify_token(
    provider: Provider,
    headers: &(impl Headers + ?Sized),
    secret: &[u8],
) -> Result<(), WebhookError> {
    // Not trimmed: the token is compared exactly as GitLab sends it.
    let token = headers
        .header(GITLAB_HEADER)
        .filter(|token| !token.is_empty())
        .ok_or(WebhookError::MissingSignature {
            provider,
            header: GITLAB_HEADER,
        })?;
    // Differing lengths compare unequal at once (the length is all that leaks).
    if bool::from(token.as_bytes().ct_eq(secret)) {
        Ok(())
    } else {
        Err(WebhookError::BadSignature {
            header: GITLAB_HEADER,
        })
    }
}
