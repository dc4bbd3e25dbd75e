//! Slipway's built-in image registry: the OCI Distribution API (v1.1, plus what Docker
//! clients need) under `/v2/`, so `docker login/push/pull` and skopeo work against the
//! Slipway server itself, with no Harbor or `registry:2` beside it.
//!
//! Entry points: [`Registry::open`] with a [`RegistryConfig`] and an [`Authenticator`]
//! (the caller decides who a username/token pair is; [`StaticAuthenticator`] is a fixed
//! list), then [`Registry::router`] to serve or mount the routes, [`Registry::subscribe`]
//! for [`RegistryEvent`]s (pushes and deletes), [`Notifier::spawn`] to deliver those events
//! to webhooks, [`Registry::issue_token`] for short-lived bearer tokens tied to a credential.
//!
//! How it is organised:
//! - `api` (private): routes, parsed from the path because repository names
//!   contain `/`; `blobs` (fetch, uploads, mount), `manifests` (fetch with `Accept`
//!   negotiation, push, delete, referrers), `listing` (tags, catalog), `token` (the token
//!   endpoint), `access` (authentication, authorisation, challenges).
//! - [`storage`]: [`storage::FsStore`], the filesystem store of metadata (links, manifest
//!   records, tags, referrers, the catalog index) and upload sessions, and
//!   [`storage::BlobStore`], the content-addressed blob store: `blobs/` on the filesystem by
//!   default, or (cargo feature `s3`) an S3-compatible bucket, chosen by
//!   [`RegistryConfig::storage`]. The S3 client is `storage::s3` (path-style requests over
//!   `reqwest`, multipart uploads for large blobs, `ListObjectsV2` for garbage collection)
//!   with the hand-written SigV4 signer of `storage::sigv4`; configure it with
//!   `S3Config::from_url("s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1",
//!   access_key, secret_key)`.
//! - [`uploads`]: upload sessions, streamed to disk and hashed as they arrive.
//! - [`manifest`]: manifest parsing and validation; [`range`]: `Content-Range`;
//!   [`digest`]: digests and hashers; [`name`]: repository names, tags, references.
//! - [`auth`] (principals, grants, path patterns, the authenticator trait) and [`token`]
//!   (HMAC-signed JWTs, each naming the credential that earned it).
//! - [`events`]: push/delete events and distribution's notification envelope.
//! - [`notify`]: webhook delivery. Each endpoint gets the envelope (`{"events":[...]}`,
//!   `Content-Type: application/vnd.docker.distribution.events.v1+json`, small batches)
//!   by POST from a background task, retried with capped exponential backoff on connection
//!   errors and non-2xx answers (5 attempts by default), failures logged; it never blocks
//!   a request, and events an endpoint falls behind on are dropped with a warning.
//! - [`gc`]: online garbage collection, retention rules, dry run.
//!
//! Storage layout (under [`RegistryConfig::root`]):
//!
//! ```text
//! token.key                                      HMAC key of bearer tokens (0600)
//! blobs/<alg>/<hex[..2]>/<hex>                   content, named by its digest
//! uploads/<id>/{data,info.json}                  uploads in progress
//! repositories.idx                               every repository name, one a line
//! repositories/<name>/_layers/<alg>/<hex>        blob linked into the repository
//! repositories/<name>/_manifests/revisions/<alg>/<hex>   manifest metadata (media type, size,
//!                                                push time, subject, references)
//! repositories/<name>/_manifests/tags/<tag>      digest the tag points at
//! repositories/<name>/_referrers/<alg>/<subject-hex>/<alg>-<hex>.json   referrer descriptors
//! ```
//!
//! With the S3 backend, `blobs/…` is in the bucket instead, as objects
//! `<prefix>blobs/<alg>/<hex[..2]>/<hex>`; everything else stays under the root.
//!
//! Catalog pagination reads `repositories.idx`, loaded once at open into a sorted set and
//! appended (and fsynced) before a new repository gets any content; a page is a range of
//! that set from `last` on, so listing never walks the store.
//!
//! Invariants:
//! - **No partial blob is ever visible.** Upload bytes go to `uploads/<id>/data`; a blob
//!   appears under `blobs/` only by `rename` after an fsync and a digest check of exactly
//!   those bytes, so a crash or kill leaves at most an upload directory behind. Two clients
//!   pushing the same blob write separate uploads and rename identical content. With S3 the
//!   upload is still received, fsynced and verified on local disk; only then is it sent to
//!   the bucket, where an object becomes visible only when its `PUT` (or multipart
//!   `CompleteMultipartUpload`) succeeds, and the server checks the payload's SHA-256 too.
//!   Blob GETs are streamed from the bucket through the registry (no presigned redirect).
//! - **Uploads resume.** A session's bytes are on disk; after a restart its status and
//!   hash are recovered from them, so a chunked upload continues where its data ends.
//!   Chunks must arrive in order (`Content-Range` start = current size, else 416).
//! - **Manifests are stored byte-exact** and served with the media type they were pushed
//!   with; their digest is of those bytes. Every manifest response carries
//!   `Docker-Content-Digest`.
//! - **Repository isolation.** A blob or manifest is only readable through a repository it
//!   was pushed or mounted into, and a mount needs pull access to the source repository.
//! - **Deny by default.** Every request needs a grant for its repository and action
//!   (`pull`, `push`, `delete`) unless the repository is configured for anonymous pull;
//!   bad credentials get 401 with a `Bearer` challenge, missing permission 403 `DENIED`.
//! - **A bearer token lives no longer than its credential** and is never a password: each
//!   use asks [`Authenticator::credential_live`] about the credential it names, and a
//!   password that is one of our tokens is refused everywhere (see [`token`]).
//! - Streaming: blobs are never held in memory whole; they are hashed while written (an S3
//!   multipart upload holds one part, 16 MiB by default, at a time).
//! - **Garbage collection never deletes what a push in flight relies on**: uploads live
//!   outside `blobs/`, committed blobs get a grace period counted from their commit, and
//!   digests a request is about to rely on are pinned for the run (see [`gc`]).

mod api;
pub mod auth;
pub mod digest;
mod error;
pub mod events;
pub mod gc;
pub mod manifest;
pub mod name;
pub mod notify;
pub mod range;
mod registry;
pub mod storage;
pub mod token;
pub mod uploads;

pub use auth::{Action, Authenticator, Grant, Principal, RepoPattern, Scope, StaticAuthenticator};
pub use digest::Digest;
pub use error::{ApiError, ErrorCode, RegistryError};
pub use events::{EventAction, EventTarget, RegistryEvent};
pub use gc::{GcOptions, GcReport, RetentionRule};
pub use notify::{Notifier, NotifyEndpoint};
pub use registry::{Registry, RegistryConfig};
