//! Blob content in an S3-compatible bucket (cargo feature `s3`): AWS S3, MinIO, Garage,
//! Ceph RGW, … Requests are path-style (`<endpoint>/<bucket>/<key>`) and signed with the
//! hand-written SigV4 signer in [`super::sigv4`] over `reqwest`.
//!
//! Object keys mirror the filesystem layout: `<prefix>blobs/<alg>/<hex[..2]>/<hex>`. Only
//! content lives in the bucket (layers, configs and manifest bytes); repository metadata and
//! upload sessions stay on local disk under the registry root.
//!
//! - **Writes.** An upload is received, hashed and verified on local disk as usual; only
//!   then is the blob sent to the bucket: one `PUT` below
//!   [`S3Config::multipart_threshold`], a multipart upload of [`S3Config::part_size`] parts
//!   above it. An object becomes visible only when its `PUT` or `CompleteMultipartUpload`
//!   succeeds, so no partial blob is ever readable; a failed multipart upload is aborted.
//!   The body is signed with its SHA-256 (the digest itself for sha256 blobs, each part's
//!   hash for multipart), so the server also checks the bytes it received.
//! - **Reads.** `GET`s are streamed from the bucket through the registry (with `Range` for
//!   partial requests); clients never talk to the bucket, which may sit on a private
//!   network, and need no presigned URL.
//! - **Deletes and listing** (garbage collection): `DELETE` and paginated `ListObjectsV2`.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::TryStreamExt;
use reqwest::{Method, StatusCode, Url};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;

use super::sigv4::{EMPTY_SHA256, Signer, UNSIGNED_PAYLOAD, uri_encode, uri_encode_path};
use super::{BlobInfo, BlobStream};
use crate::digest::{Algorithm, Digest};

/// Where and how to reach the bucket.
#[derive(Clone)]
pub struct S3Config {
    /// `http://127.0.0.1:9000`, `https://s3.eu-west-1.amazonaws.com`.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Key prefix inside the bucket: empty, or ending in `/` (`registry/`).
    pub prefix: String,
    pub access_key: String,
    pub secret_key: String,
    /// Blobs of at least this many bytes go up as multipart uploads (default 64 MiB).
    pub multipart_threshold: u64,
    /// Part size of multipart uploads (default 16 MiB; S3's minimum is 5 MiB). One part
    /// per upload is held in memory at a time.
    pub part_size: u64,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .finish()
    }
}

/// A storage URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("storage URL `{url}`: {reason}")]
pub struct S3ConfigError {
    pub url: String,
    pub reason: String,
}

/// Smallest part S3 accepts (except for the last one).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

impl S3Config {
    /// A bucket at `endpoint`, no prefix, default multipart sizes.
    pub fn new(
        endpoint: &str,
        region: &str,
        bucket: &str,
        access_key: &str,
        secret_key: &str,
    ) -> S3Config {
        S3Config {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region: region.to_string(),
            bucket: bucket.to_string(),
            prefix: String::new(),
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            multipart_threshold: 64 * 1024 * 1024,
            part_size: 16 * 1024 * 1024,
        }
    }

    /// Parses `s3://BUCKET[/PREFIX][?endpoint=URL&region=REGION]`. `region` defaults to
    /// `us-east-1`, `endpoint` to AWS's `https://s3.<region>.amazonaws.com`.
    pub fn from_url(
        url: &str,
        access_key: &str,
        secret_key: &str,
    ) -> Result<S3Config, S3ConfigError> {
        let err = |reason: &str| S3ConfigError {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| err("must start with s3://"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(err("names no bucket (s3://BUCKET/PREFIX)"));
        }
        let (mut endpoint, mut region) = (None, "us-east-1".to_string());
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "endpoint" => endpoint = Some(value.into_owned()),
                "region" => region = value.into_owned(),
                other => {
                    return Err(err(&format!(
                        "unknown parameter `{other}` (known: endpoint, region)"
                    )));
                }
            }
        }
        let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        match Url::parse(&endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => return Err(err(&format!("endpoint `{endpoint}` is not an http(s) URL"))),
        }
        if access_key.is_empty() || secret_key.is_empty() {
            return Err(err(
                "needs an access key and a secret key (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
            ));
        }
        let mut config = S3Config::new(&endpoint, &region, bucket, access_key, secret_key);
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            config.prefix = format!("{prefix}/");
        }
        Ok(config)
    }
}

/// A request to the bucket that failed; it names the method and the URL.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("S3 {method} {url}: {error}")]
    Request {
        method: Method,
        url: String,
        #[source]
        error: reqwest::Error,
    },
    #[error("S3 {method} {url} answered {status}: {body}")]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("S3 {method} {url}: {reason}")]
    Protocol {
        method: Method,
        url: String,
        reason: String,
    },
}

impl From<S3Error> for io::Error {
    fn from(e: S3Error) -> io::Error {
        io::Error::other(e)
    }
}

/// The S3 blob backend; cheap to clone.
#[derive(Debug, Clone)]
pub struct S3Blobs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: S3Config,
    signer: Signer,
    client: reqwest::Client,
}

/// A request body and its `x-amz-content-sha256`.
enum Payload {
    Empty,
    Bytes(Bytes, String),
    Stream(reqwest::Body, u64, String),
}

impl S3Blobs {
    pub fn new(mut config: S3Config) -> Result<S3Blobs, crate::RegistryError> {
        config.endpoint = config.endpoint.trim_end_matches('/').to_string();
        config.part_size = config.part_size.max(MIN_PART_SIZE);
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| crate::RegistryError::Storage {
                location: config.endpoint.clone(),
                reason: format!("building the HTTP client: {e}"),
            })?;
        let signer = Signer::new(&config.access_key, &config.secret_key, &config.region);
        Ok(S3Blobs {
            inner: Arc::new(Inner {
                config,
                signer,
                client,
            }),
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.inner.config
    }

    /// `s3://bucket/prefix (endpoint)`, for messages.
    pub fn location(&self) -> String {
        let c = &self.inner.config;
        format!("s3://{}/{} at {}", c.bucket, c.prefix, c.endpoint)
    }

    fn key(&self, digest: &Digest) -> String {
        let hex = digest.hex();
        format!(
            "{}blobs/{}/{}/{hex}",
            self.inner.config.prefix,
            digest.algorithm().as_str(),
            &hex[..2]
        )
    }

    /// `<endpoint>/<bucket>[/<key>][?query]`; `query` pairs are encoded here.
    fn url(&self, key: Option<&str>, query: &[(&str, &str)]) -> io::Result<Url> {
        let c = &self.inner.config;
        let mut text = format!("{}/{}", c.endpoint, uri_encode(&c.bucket, false));
        if let Some(key) = key {
            text.push('/');
            text.push_str(&uri_encode_path(key));
        }
        if !query.is_empty() {
            let q: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
                .collect();
            text.push('?');
            text.push_str(&q.join("&"));
        }
        Url::parse(&text).map_err(|e| io::Error::other(format!("S3 URL `{text}`: {e}")))
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        range: Option<&str>,
        payload: Payload,
    ) -> Result<reqwest::Response, S3Error> {
        let hash = match &payload {
            Payload::Empty => EMPTY_SHA256.to_string(),
            Payload::Bytes(_, h) | Payload::Stream(_, _, h) => h.clone(),
        };
        let signed: Vec<(&str, &str)> = range.iter().map(|r| ("range", *r)).collect();
        let headers =
            self.inner
                .signer
                .sign(method.as_str(), &url, &signed, &hash, SystemTime::now());
        let mut request = self.inner.client.request(method.clone(), url.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(range) = range {
            request = request.header(reqwest::header::RANGE, range);
        }
        request = match payload {
            Payload::Empty => request,
            Payload::Bytes(bytes, _) => request.body(bytes),
            Payload::Stream(body, len, _) => request
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(body),
        };
        request.send().await.map_err(|error| S3Error::Request {
            method,
            url: url.to_string(),
            error,
        })
    }

    /// Turns a non-2xx answer into an error carrying (the start of) its body.
    async fn check(
        method: Method,
        response: reqwest::Response,
    ) -> Result<reqwest::Response, S3Error> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let url = response.url().to_string();
        let mut body = response.text().await.unwrap_or_default();
        body.truncate(500);
        Err(S3Error::Status {
            method,
            url,
            status,
            body,
        })
    }

    pub async fn size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        let url = self.url(Some(&self.key(digest)), &[])?;
        let response = self.send(Method::HEAD, url, None, Payload::Empty).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = Self::check(Method::HEAD, response).await?;
        let len = response
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| S3Error::Protocol {
                method: Method::HEAD,
                url: response.url().to_string(),
                reason: "no Content-Length in the answer".to_string(),
            })?;
        Ok(Some(len))
    }

    pub async fn read(
        &self,
        digest: &Digest,
        start: u64,
        len: u64,
    ) -> io::Result<Option<BlobStream>> {
        if len == 0 {
            // A zero-length range cannot be asked for; an empty read only needs existence.
            return Ok(self
                .size(digest)
                .await?
                .map(|_| Box::pin(futures_util::stream::empty()) as BlobStream));
        }
        let url = self.url(Some(&self.key(digest)), &[])?;
        let range = format!("bytes={start}-{}", start + len - 1);
        let response = self
            .send(Method::GET, url, Some(&range), Payload::Empty)
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = Self::check(Method::GET, response).await?;
        let stream = response.bytes_stream().map_err(io::Error::other);
        Ok(Some(Box::pin(stream)))
    }

    pub async fn read_all(&self, digest: &Digest) -> io::Result<Option<Bytes>> {
        let url = self.url(Some(&self.key(digest)), &[])?;
        let response = self
            .send(Method::GET, url.clone(), None, Payload::Empty)
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = Self::check(Method::GET, response).await?;
        let bytes = response.bytes().await.map_err(|error| S3Error::Request {
            method: Method::GET,
            url: url.to_string(),
            error,
        })?;
        Ok(Some(bytes))
    }

    pub async fn put_bytes(&self, digest: &Digest, data: Bytes) -> io::Result<()> {
        let url = self.url(Some(&self.key(digest)), &[])?;
        let hash = crate::digest::to_hex(&Sha256::digest(&data));
        let response = self
            .send(Method::PUT, url, None, Payload::Bytes(data, hash))
            .await?;
        Self::check(Method::PUT, response).await?;
        Ok(())
    }

    /// Uploads the verified local file `file` (`size` bytes) as blob `digest`.
    pub async fn put_file(&self, file: &Path, digest: &Digest, size: u64) -> io::Result<()> {
        if size >= self.inner.config.multipart_threshold {
            return self.put_multipart(file, digest, size).await;
        }
        let url = self.url(Some(&self.key(digest)), &[])?;
        // The digest was checked on our side; with sha256 it is also the payload hash, so
        // the server checks the bytes it got too.
        let hash = match digest.algorithm() {
            Algorithm::Sha256 => digest.hex().to_string(),
            _ => UNSIGNED_PAYLOAD.to_string(),
        };
        let reader = tokio::fs::File::open(file).await?.take(size);
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            reader,
            256 * 1024,
        ));
        let response = self
            .send(Method::PUT, url, None, Payload::Stream(body, size, hash))
            .await?;
        Self::check(Method::PUT, response).await?;
        Ok(())
    }

    async fn put_multipart(&self, file: &Path, digest: &Digest, size: u64) -> io::Result<()> {
        let key = self.key(digest);
        let url = self.url(Some(&key), &[("uploads", "")])?;
        let response = self
            .send(Method::POST, url.clone(), None, Payload::Empty)
            .await?;
        let text = Self::check(Method::POST, response)
            .await?
            .text()
            .await
            .map_err(|error| S3Error::Request {
                method: Method::POST,
                url: url.to_string(),
                error,
            })?;
        let upload_id = xml_values(&text, "UploadId")
            .into_iter()
            .next()
            .map(xml_unescape)
            .ok_or_else(|| S3Error::Protocol {
                method: Method::POST,
                url: url.to_string(),
                reason: format!("no UploadId in the answer to CreateMultipartUpload: {text}"),
            })?;
        let result = self.upload_parts(file, &key, &upload_id, size).await;
        if result.is_err() {
            // Best effort: leave no stray parts behind (the bucket's lifecycle rules are the
            // backstop).
            if let Ok(url) = self.url(Some(&key), &[("uploadId", &upload_id)]) {
                let _ = self.send(Method::DELETE, url, None, Payload::Empty).await;
            }
        }
        result
    }

    async fn upload_parts(
        &self,
        file: &Path,
        key: &str,
        upload_id: &str,
        size: u64,
    ) -> io::Result<()> {
        let part_size = self.inner.config.part_size;
        let mut reader = tokio::fs::File::open(file).await?.take(size);
        let mut etags = Vec::new();
        let mut sent = 0u64;
        let mut number = 1u32;
        while sent < size {
            let want = part_size.min(size - sent);
            let mut part = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
            (&mut reader).take(want).read_to_end(&mut part).await?;
            if part.len() as u64 != want {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} ended before {size} bytes", file.display()),
                ));
            }
            let hash = crate::digest::to_hex(&Sha256::digest(&part));
            let n = number.to_string();
            let url = self.url(Some(key), &[("partNumber", &n), ("uploadId", upload_id)])?;
            let response = self
                .send(
                    Method::PUT,
                    url.clone(),
                    None,
                    Payload::Bytes(Bytes::from(part), hash),
                )
                .await?;
            let response = Self::check(Method::PUT, response).await?;
            let etag = response
                .headers()
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| S3Error::Protocol {
                    method: Method::PUT,
                    url: url.to_string(),
                    reason: "no ETag in the answer to UploadPart".to_string(),
                })?
                .to_string();
            etags.push((number, etag));
            sent += want;
            number += 1;
        }
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in &etags {
            xml.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                xml_escape(etag)
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let url = self.url(Some(key), &[("uploadId", upload_id)])?;
        let hash = crate::digest::to_hex(&Sha256::digest(xml.as_bytes()));
        let response = self
            .send(
                Method::POST,
                url.clone(),
                None,
                Payload::Bytes(Bytes::from(xml), hash),
            )
            .await?;
        let text = Self::check(Method::POST, response)
            .await?
            .text()
            .await
            .unwrap_or_default();
        // S3 may answer 200 and report the failure in the body.
        if text.contains("<Error>") {
            return Err(S3Error::Protocol {
                method: Method::POST,
                url: url.to_string(),
                reason: format!("CompleteMultipartUpload failed: {text}"),
            }
            .into());
        }
        Ok(())
    }

    /// Deletes blob `digest`. S3 answers the same whether it existed or not: `true`.
    pub async fn delete(&self, digest: &Digest) -> io::Result<bool> {
        let url = self.url(Some(&self.key(digest)), &[])?;
        let response = self.send(Method::DELETE, url, None, Payload::Empty).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        Self::check(Method::DELETE, response).await?;
        Ok(true)
    }

    /// Every blob under the prefix (paginated `ListObjectsV2`).
    pub async fn list(&self) -> io::Result<Vec<BlobInfo>> {
        let prefix = format!("{}blobs/", self.inner.config.prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2"), ("prefix", prefix.as_str())];
            if let Some(t) = &token {
                query.push(("continuation-token", t.as_str()));
            }
            let url = self.url(None, &query)?;
            let response = self
                .send(Method::GET, url.clone(), None, Payload::Empty)
                .await?;
            let text = Self::check(Method::GET, response)
                .await?
                .text()
                .await
                .map_err(|error| S3Error::Request {
                    method: Method::GET,
                    url: url.to_string(),
                    error,
                })?;
            for object in xml_values(&text, "Contents") {
                let key = xml_values(object, "Key")
                    .into_iter()
                    .next()
                    .map(xml_unescape);
                let Some(digest) = key.as_deref().and_then(|k| digest_of_key(&prefix, k)) else {
                    continue;
                };
                let size = xml_values(object, "Size")
                    .into_iter()
                    .next()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                let modified = xml_values(object, "LastModified")
                    .into_iter()
                    .next()
                    .and_then(|t| humantime::parse_rfc3339_weak(t.trim()).ok())
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(u64::MAX, |d| d.as_secs());
                out.push(BlobInfo {
                    digest,
                    size,
                    modified,
                });
            }
            let truncated = xml_values(&text, "IsTruncated")
                .into_iter()
                .next()
                .is_some_and(|v| v.trim() == "true");
            token = xml_values(&text, "NextContinuationToken")
                .into_iter()
                .next()
                .map(xml_unescape);
            if !truncated || token.is_none() {
                return Ok(out);
            }
        }
    }
}

/// `<prefix><alg>/<xx>/<hex>` back to a digest.
fn digest_of_key(prefix: &str, key: &str) -> Option<Digest> {
    let rest = key.strip_prefix(prefix)?;
    let mut parts = rest.split('/');
    let (alg, _, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    format!("{alg}:{hex}").parse().ok()
}

/// The texts of every `<tag>…</tag>` in `xml` (no nesting of the same tag; enough for S3's
/// answers).
fn xml_values<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    out
}

fn xml_unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#34;", "\"")
        .replace("&amp;", "&")
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
