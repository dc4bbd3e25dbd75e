//! Blob routes: fetch, delete, and uploads (monolithic, chunked, single-POST, cross-repository
//! mount, status, cancel).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use crate::auth::Action;
use crate::digest::Digest;
use crate::error::{ApiError, ErrorCode};

use crate::name::RepoName;
use crate::range::{ContentRange, resolve_request_range, upload_range_header};
use crate::registry::Shared;
use crate::uploads::{Session, UploadError};

use super::{Identity, Query, header_str, respond};

fn blob_unknown(digest: &Digest) -> ApiError {
    ApiError::new(
        ErrorCode::BlobUnknown,
        format!("blob {digest} is not in this repository"),
    )
}

fn upload_unknown(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::BlobUploadUnknown,
        format!("upload `{id}` is unknown (finished, cancelled, expired or never started)"),
    )
}

/// `GET`/`HEAD /v2/<name>/blobs/<digest>`, with single-range support.
pub(crate) async fn get(
    shared: &Shared,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, ApiError> {
    if !shared.store.blob_linked(repo, digest) {
        return Err(blob_unknown(digest));
    }
    let size = shared
        .blobs
        .size(digest)
        .await
        .map_err(|e| ApiError::internal("looking up a blob", e))?
        .ok_or_else(|| blob_unknown(digest))?;
    let mut out_headers = vec![
        ("Docker-Content-Digest", digest.to_string()),
        ("Content-Type", "application/octet-stream".to_string()),
        ("Accept-Ranges", "bytes".to_string()),
        ("ETag", format!("\"{digest}\"")),
        ("Cache-Control", "max-age=31536000".to_string()),
    ];
    let range = header_str(headers, header::RANGE).and_then(|r| resolve_request_range(r, size));
    let (status, start, len) = match range {
        None => (StatusCode::OK, 0, size),
        Some(Ok(r)) => {
            out_headers.push((
                "Content-Range",
                format!("bytes {}-{}/{size}", r.start, r.end),
            ));
            (StatusCode::PARTIAL_CONTENT, r.start, r.byte_count())
        }
        Some(Err(())) => {
            return Err(ApiError::new(
                ErrorCode::RangeInvalid,
                format!("requested range is outside the blob of {size} bytes"),
            )
            .with_header("Content-Range", format!("bytes */{size}")));
        }
    };
    out_headers.push(("Content-Length", len.to_string()));
    if head {
        return Ok(respond(status, &out_headers, Body::empty()));
    }
    let stream = shared
        .blobs
        .read(digest, start, len)
        .await
        .map_err(|e| ApiError::internal("reading a blob", e))?
        .ok_or_else(|| blob_unknown(digest))?;
    Ok(respond(status, &out_headers, Body::from_stream(stream)))
}

/// `DELETE /v2/<name>/blobs/<digest>`: unlinks the blob from the repository; the bytes go
/// at the next garbage collection if nothing else refers to them.
pub(crate) async fn delete(
    shared: &Shared,
    identity: &Identity,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Response, ApiError> {
    let (r, d) = (repo.clone(), digest.clone());
    let removed = shared
        .store
        .blocking(move |s| s.unlink_blob(&r, &d))
        .await?;
    if !removed {
        return Err(blob_unknown(digest));
    }
    shared.emit_delete(&repo.to_string(), digest, None, identity);
    Ok(respond(
        StatusCode::ACCEPTED,
        &[("Docker-Content-Digest", digest.to_string())],
        Body::empty(),
    ))
}

fn location(repo: &RepoName, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

fn upload_headers(repo: &RepoName, session: &Session) -> Vec<(&'static str, String)> {
    vec![
        ("Location", location(repo, &session.id)),
        ("Range", upload_range_header(session.size)),
        ("Docker-Upload-UUID", session.id.clone()),
    ]
}

fn created(repo: &RepoName, digest: &Digest) -> Response {
    respond(
        StatusCode::CREATED,
        &[
            ("Location", format!("/v2/{repo}/blobs/{digest}")),
            ("Docker-Content-Digest", digest.to_string()),
        ],
        Body::empty(),
    )
}

fn query_digest(query: &Query) -> Result<Option<Digest>, ApiError> {
    query
        .get("digest")
        .map(|d| {
            d.parse().map_err(|e: crate::digest::DigestError| {
                ApiError::new(ErrorCode::DigestInvalid, e.to_string())
            })
        })
        .transpose()
}

/// `POST /v2/<name>/blobs/uploads/`: mount, single-POST upload, or a new session.
pub(crate) async fn start_upload(
    shared: &Arc<Shared>,
    identity: &Identity,
    repo: &RepoName,
    query: &Query,
    request: Request,
) -> Result<Response, ApiError> {
    if let Some(mount) = query.get("mount") {
        let mount: Digest = mount.parse().map_err(|e: crate::digest::DigestError| {
            ApiError::new(ErrorCode::DigestInvalid, e.to_string())
        })?;
        let _pin = shared.gc.protect([&mount]);
        if let Some(from) = query.get("from").and_then(RepoName::parse)
            && identity.may(shared, from.as_str(), Action::Pull)
            && shared.store.blob_linked(&from, &mount)
            && shared.blobs.size(&mount).await?.is_some()
        {
            let (r, d) = (repo.clone(), mount.clone());
            shared.store.blocking(move |s| s.link_blob(&r, &d)).await?;
            return Ok(created(repo, &mount));
        }
        // Not mountable (unknown, or not readable by this client): fall back to an upload.
    }
    let digest = query_digest(query)?;
    let handle = shared.uploads.start(repo).await?;
    let mut session = handle.lock().await;
    if let Some(digest) = digest {
        // Single POST carrying the whole blob.
        let body = request.into_body();
        append(shared, &mut session, body, Some(digest.algorithm())).await?;
        return commit(shared, repo, &mut session, &digest).await;
    }
    Ok(respond(
        StatusCode::ACCEPTED,
        &upload_headers(repo, &session),
        Body::empty(),
    ))
}

async fn session_for(
    shared: &Shared,
    repo: &RepoName,
    id: &str,
) -> Result<crate::uploads::SessionHandle, ApiError> {
    shared
        .uploads
        .get(repo, id)
        .await?
        .ok_or_else(|| upload_unknown(id))
}

/// Locks the session, refusing one that was closed while this request waited.
async fn lock_open<'a>(
    handle: &'a crate::uploads::SessionHandle,
    id: &str,
) -> Result<tokio::sync::MutexGuard<'a, Session>, ApiError> {
    let session = handle.lock().await;
    if session.closed {
        return Err(upload_unknown(id));
    }
    Ok(session)
}

/// Checks `Content-Range` (if any) against the session: chunks must come in order.
fn check_range(repo: &RepoName, session: &Session, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = header_str(headers, header::CONTENT_RANGE) else {
        return Ok(());
    };
    let out_of_order = |message: String| {
        let mut e = ApiError::new(ErrorCode::RangeInvalid, message);
        for (name, value) in upload_headers(repo, session) {
            e = e.with_header(name, value);
        }
        e
    };
    let range = ContentRange::parse(value).map_err(|e| out_of_order(e.to_string()))?;
    if range.start != session.size {
        return Err(out_of_order(format!(
            "chunk {range} does not start where the upload ends (it has {} bytes)",
            session.size
        )));
    }
    if let Some(len) =
        header_str(headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok())
        && len != range.byte_count()
    {
        return Err(out_of_order(format!(
            "Content-Range {range} covers {} bytes but Content-Length is {len}",
            range.byte_count()
        )));
    }
    Ok(())
}

async fn append(
    shared: &Shared,
    session: &mut Session,
    body: Body,
    algorithm: Option<crate::digest::Algorithm>,
) -> Result<(), ApiError> {
    match shared.uploads.append(session, body, algorithm).await {
        Ok(_) => Ok(()),
        Err(UploadError::Client(e)) => Err(ApiError::new(
            ErrorCode::BlobUploadInvalid,
            format!("upload body interrupted: {e}; ask for the upload's status and resume"),
        )),
        Err(e) => Err(ApiError::internal("writing an upload", e)),
    }
}

async fn commit(
    shared: &Shared,
    repo: &RepoName,
    session: &mut Session,
    digest: &Digest,
) -> Result<Response, ApiError> {
    let _pin = shared.gc.protect([digest]);
    match shared.uploads.finish(session, digest).await {
        Ok(_) => {}
        Err(UploadError::DigestMismatch { expected, actual }) => {
            return Err(ApiError::new(
                ErrorCode::DigestInvalid,
                format!("uploaded content has digest {actual}, not {expected}; upload cancelled"),
            ));
        }
        Err(e) => return Err(ApiError::internal("committing an upload", e)),
    }
    let (r, d) = (repo.clone(), digest.clone());
    shared.store.blocking(move |s| s.link_blob(&r, &d)).await?;
    Ok(created(repo, digest))
}

/// `PATCH /v2/<name>/blobs/uploads/<id>`: one chunk (or the whole blob, streamed).
pub(crate) async fn patch_upload(
    shared: &Shared,
    repo: &RepoName,
    id: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let handle = session_for(shared, repo, id).await?;
    let mut session = lock_open(&handle, id).await?;
    check_range(repo, &session, request.headers())?;
    append(shared, &mut session, request.into_body(), None).await?;
    Ok(respond(
        StatusCode::ACCEPTED,
        &upload_headers(repo, &session),
        Body::empty(),
    ))
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=…`: last chunk (optional) and commit.
pub(crate) async fn finish_upload(
    shared: &Shared,
    repo: &RepoName,
    id: &str,
    query: &Query,
    request: Request,
) -> Result<Response, ApiError> {
    let digest = query_digest(query)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::DigestInvalid,
            "closing an upload needs `?digest=<algorithm>:<hex>`",
        )
    })?;
    let handle = session_for(shared, repo, id).await?;
    let mut session = lock_open(&handle, id).await?;
    check_range(repo, &session, request.headers())?;
    let has_body = header_str(request.headers(), header::CONTENT_LENGTH) != Some("0")
        && (request.headers().contains_key(header::CONTENT_LENGTH)
            || request.headers().contains_key(header::TRANSFER_ENCODING));
    if has_body {
        append(
            shared,
            &mut session,
            request.into_body(),
            Some(digest.algorithm()),
        )
        .await?;
    }
    commit(shared, repo, &mut session, &digest).await
}

/// `GET /v2/<name>/blobs/uploads/<id>`: how much has arrived.
pub(crate) async fn upload_status(
    shared: &Shared,
    repo: &RepoName,
    id: &str,
) -> Result<Response, ApiError> {
    let handle = session_for(shared, repo, id).await?;
    let session = lock_open(&handle, id).await?;
    Ok(respond(
        StatusCode::NO_CONTENT,
        &upload_headers(repo, &session),
        Body::empty(),
    ))
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`.
pub(crate) async fn cancel_upload(
    shared: &Shared,
    repo: &RepoName,
    id: &str,
) -> Result<Response, ApiError> {
    let handle = session_for(shared, repo, id).await?;
    let mut session = lock_open(&handle, id).await?;
    shared.uploads.remove(&mut session).await;
    Ok(respond(StatusCode::NO_CONTENT, &[], Body::empty()))
}
