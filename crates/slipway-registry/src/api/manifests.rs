//! Manifest routes: fetch by tag or digest with `Accept` negotiation, push by tag or digest,
//! delete of manifests and tags, and the referrers API.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use crate::digest::Digest;
use crate::error::{ApiError, ErrorCode};
use crate::events::{EventAction, EventTarget};
use crate::manifest::{self, Descriptor, Kind, OCI_INDEX};
use crate::name::{Reference, RepoName};
use crate::registry::Shared;
use crate::storage::ManifestMeta;
use crate::token::unix_now;

use super::{Identity, Query, header_str, respond};

fn manifest_unknown(repo: &RepoName, reference: &Reference) -> ApiError {
    ApiError::new(
        ErrorCode::ManifestUnknown,
        format!("manifest `{reference}` is not in repository `{repo}`"),
    )
}

/// Resolves a tag or digest to the digest and metadata of a manifest of `repo`.
async fn resolve(
    shared: &Shared,
    repo: &RepoName,
    reference: &Reference,
) -> Result<(Digest, ManifestMeta), ApiError> {
    let (r, reference2) = (repo.clone(), reference.clone());
    let found = shared
        .store
        .blocking(move |s| {
            let digest = match &reference2 {
                Reference::Digest(d) => d.clone(),
                Reference::Tag(t) => match s.tag(&r, t)? {
                    Some(info) => info.digest,
                    None => return Ok(None),
                },
            };
            Ok(s.manifest(&r, &digest)?.map(|m| (digest, m)))
        })
        .await?;
    found.ok_or_else(|| manifest_unknown(repo, reference))
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`.
pub(crate) async fn get(
    shared: &Shared,
    repo: &RepoName,
    reference: &Reference,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, ApiError> {
    let (digest, meta) = resolve(shared, repo, reference).await?;
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok());
    if !manifest::acceptable(&meta.media_type, accept) {
        return Err(ApiError::new(
            ErrorCode::ManifestUnknown,
            format!(
                "manifest `{reference}` is stored as `{}`, which the request's Accept header does not allow",
                meta.media_type
            ),
        ));
    }
    let out = vec![
        ("Content-Type", meta.media_type.clone()),
        ("Docker-Content-Digest", digest.to_string()),
        ("ETag", format!("\"{digest}\"")),
        ("Content-Length", meta.size.to_string()),
    ];
    if head {
        return Ok(respond(StatusCode::OK, &out, Body::empty()));
    }
    let bytes = shared
        .blobs
        .read_all(&digest)
        .await
        .map_err(|e| ApiError::internal("reading a manifest", e))?
        .ok_or_else(|| manifest_unknown(repo, reference))?;
    Ok(respond(StatusCode::OK, &out, Body::from(bytes)))
}

/// `PUT /v2/<name>/manifests/<reference>`.
pub(crate) async fn put(
    shared: &Arc<Shared>,
    identity: &Identity,
    repo: &RepoName,
    reference: &Reference,
    request: Request,
) -> Result<Response, ApiError> {
    let content_type = header_str(request.headers(), header::CONTENT_TYPE).map(str::to_string);
    let limit = shared.config.max_manifest_bytes;
    let body = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::SizeInvalid,
                format!("manifest is larger than {limit} bytes or its upload was interrupted"),
            )
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        })?;
    let digest = match reference {
        Reference::Digest(expected) => {
            let actual = Digest::of(expected.algorithm(), &body);
            if actual != *expected {
                return Err(ApiError::new(
                    ErrorCode::DigestInvalid,
                    format!("manifest content has digest {actual}, not {expected}"),
                ));
            }
            actual
        }
        Reference::Tag(_) => Digest::sha256_of(&body),
    };
    let parsed = manifest::parse(&body, content_type.as_deref())
        .map_err(|e| ApiError::new(ErrorCode::ManifestInvalid, e.to_string()))?;

    // Everything it refers to must already be in this repository. Protect it from a
    // concurrent garbage collection first, then check (see `gc`).
    // The pin lasts until the metadata is written, at the end of this function.
    let _pin = shared.gc.protect(
        std::iter::once(&digest)
            .chain(parsed.blobs.iter().map(|b| &b.digest))
            .chain(parsed.manifests.iter().map(|m| &m.digest)),
    );
    let (r, p) = (repo.clone(), parsed.clone());
    let mut missing = shared
        .store
        .blocking(move |s| {
            for blob in &p.blobs {
                if !s.blob_linked(&r, &blob.digest) {
                    return Ok(Some(blob.digest.clone()));
                }
            }
            for child in &p.manifests {
                if s.manifest(&r, &child.digest)?.is_none() {
                    return Ok(Some(child.digest.clone()));
                }
            }
            Ok(None)
        })
        .await?;
    if missing.is_none() {
        for blob in &parsed.blobs {
            if shared.blobs.size(&blob.digest).await?.is_none() {
                missing = Some(blob.digest.clone());
                break;
            }
        }
    }
    if let Some(missing) = missing {
        let what = if parsed.kind == Kind::Index {
            "manifest"
        } else {
            "blob"
        };
        return Err(ApiError::new(
            ErrorCode::ManifestBlobUnknown,
            format!(
                "{what} {missing} referenced by the manifest is not in repository `{repo}`; push it first"
            ),
        ));
    }

    let mut references: Vec<Digest> = parsed.blobs.iter().map(|b| b.digest.clone()).collect();
    references.extend(parsed.manifests.iter().map(|m| m.digest.clone()));
    let meta = ManifestMeta {
        media_type: parsed.media_type.clone(),
        size: body.len() as u64,
        pushed_at: unix_now(),
        subject: parsed.subject.as_ref().map(|s| s.digest.clone()),
        artifact_type: parsed.artifact_type.clone(),
        references,
    };
    let referrer = parsed.subject.as_ref().map(|s| {
        (
            s.digest.clone(),
            Descriptor {
                media_type: parsed.media_type.clone(),
                digest: digest.clone(),
                size: body.len() as u64,
                urls: Vec::new(),
                artifact_type: parsed.artifact_type.clone(),
                annotations: parsed.annotations.clone(),
                platform: None,
            },
        )
    });
    let tag = match reference {
        Reference::Tag(t) => Some(t.clone()),
        Reference::Digest(_) => None,
    };
    {
        // Order matters for crash safety: content, then metadata, then the tag.
        shared.blobs.put_bytes(&digest, body.clone()).await?;
        let (r, d, tag) = (repo.clone(), digest.clone(), tag.clone());
        let referrer = referrer.clone();
        shared
            .store
            .blocking(move |s| {
                s.link_blob(&r, &d)?;
                s.put_manifest(&r, &d, &meta)?;
                if let Some((subject, descriptor)) = &referrer {
                    s.add_referrer(&r, subject, descriptor)?;
                }
                if let Some(tag) = &tag {
                    s.set_tag(&r, tag, &d)?;
                }
                Ok(())
            })
            .await?;
    }
    shared.emit(
        EventAction::Push,
        EventTarget {
            media_type: parsed.media_type.clone(),
            size: body.len() as u64,
            digest: digest.clone(),
            repository: repo.to_string(),
            tag,
        },
        identity,
    );
    let mut out = vec![
        ("Location", format!("/v2/{repo}/manifests/{digest}")),
        ("Docker-Content-Digest", digest.to_string()),
    ];
    if let Some((subject, _)) = &referrer {
        out.push(("OCI-Subject", subject.to_string()));
    }
    Ok(respond(StatusCode::CREATED, &out, Body::empty()))
}

/// `DELETE /v2/<name>/manifests/<reference>`: a digest deletes the manifest and every tag
/// pointing at it; a tag deletes only the tag.
pub(crate) async fn delete(
    shared: &Shared,
    identity: &Identity,
    repo: &RepoName,
    reference: &Reference,
) -> Result<Response, ApiError> {
    let r = repo.clone();
    let (digest, target) = match reference {
        Reference::Tag(tag) => {
            let t = tag.clone();
            let info = shared
                .store
                .blocking(move |s| {
                    let info = s.tag(&r, &t)?;
                    if info.is_some() {
                        s.delete_tag(&r, &t)?;
                    }
                    Ok(info)
                })
                .await?
                .ok_or_else(|| manifest_unknown(repo, reference))?;
            (info.digest, Some(tag.clone()))
        }
        Reference::Digest(d) => {
            let d2 = d.clone();
            let removed = shared
                .store
                .blocking(move |s| {
                    let Some(meta) = s.manifest(&r, &d2)? else {
                        return Ok(false);
                    };
                    for tag in s.tags(&r)?.unwrap_or_default() {
                        if s.tag(&r, &tag)?.is_some_and(|i| i.digest == d2) {
                            s.delete_tag(&r, &tag)?;
                        }
                    }
                    if let Some(subject) = &meta.subject {
                        s.remove_referrer(&r, subject, &d2)?;
                    }
                    s.delete_manifest(&r, &d2)?;
                    Ok(true)
                })
                .await?;
            if !removed {
                return Err(manifest_unknown(repo, reference));
            }
            (d.clone(), None)
        }
    };
    shared.emit_delete(&repo.to_string(), &digest, target, identity);
    Ok(respond(StatusCode::ACCEPTED, &[], Body::empty()))
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=…]`: an OCI index of the manifests
/// whose `subject` is `digest` (empty when there are none).
pub(crate) async fn referrers(
    shared: &Shared,
    repo: &RepoName,
    subject: &Digest,
    query: &Query,
) -> Result<Response, ApiError> {
    let (r, d) = (repo.clone(), subject.clone());
    let mut list = shared.store.blocking(move |s| s.referrers(&r, &d)).await?;
    let filter = query.get("artifactType").filter(|t| !t.is_empty());
    let mut headers = vec![("Content-Type", OCI_INDEX.to_string())];
    if let Some(t) = filter {
        list.retain(|d| d.artifact_type.as_deref() == Some(t));
        headers.push(("OCI-Filters-Applied", "artifactType".to_string()));
    }
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": list,
    });
    let bytes =
        serde_json::to_vec(&body).map_err(|e| ApiError::internal("encoding referrers", e))?;
    headers.push(("Content-Length", bytes.len().to_string()));
    Ok(respond(StatusCode::OK, &headers, Body::from(bytes)))
}
