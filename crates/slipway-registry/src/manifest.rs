//! Manifest parsing and validation: Docker v2 schema 2 manifests and manifest lists, OCI
//! image manifests and indexes (including artifacts with `artifactType` and `subject`).
//!
//! Parsing only reads what the registry needs (media type, the blobs and manifests a
//! manifest refers to, its subject, artifact type and annotations); the bytes a client
//! pushed are what is stored and served, never a re-serialisation.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The media types the registry stores, in the order `Accept`-less clients prefer them.
pub const SUPPORTED_MEDIA_TYPES: [&str; 4] = [
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    OCI_INDEX,
];

/// Layer media types whose blobs live elsewhere (`urls`) and need not be in the registry.
const FOREIGN_LAYERS: [&str; 4] = [
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

/// An OCI content descriptor as it appears in manifests and in referrers responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// The kind of manifest, by structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An image manifest (config + layers): Docker schema 2 or OCI.
    Image,
    /// A list of manifests: Docker manifest list or OCI index.
    Index,
}

/// What the registry needs to know about a pushed manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub media_type: String,
    pub kind: Kind,
    /// Config and layers that must be present in the repository (foreign layers excluded).
    pub blobs: Vec<Descriptor>,
    /// Manifests an index refers to; they must be present in the repository.
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    /// `artifactType`, else (image manifests) the config's media type, as the referrers
    /// API reports it.
    pub artifact_type: Option<String>,
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Why a manifest was refused (`MANIFEST_INVALID`, or `MANIFEST_UNSUPPORTED`-like for
/// schema 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest has schemaVersion {0}; only schemaVersion 2 is accepted")]
    SchemaVersion(i64),
    #[error(
        "Docker schema 1 manifests are not accepted; push with a current Docker or set the \
         client to schema 2 / OCI"
    )]
    Schema1,
    #[error("manifest media type `{0}` is not supported (supported: {supported})", supported = SUPPORTED_MEDIA_TYPES.join(", "))]
    UnsupportedMediaType(String),
    #[error("Content-Type `{header}` does not match the manifest's mediaType `{field}`")]
    MediaTypeMismatch { header: String, field: String },
    #[error("manifest of type `{media_type}` is missing `{field}`")]
    Missing {
        media_type: String,
        field: &'static str,
    },
    #[error(
        "cannot tell the manifest's type: no mediaType field, no Content-Type, and neither `config`/`layers` nor `manifests`"
    )]
    UnknownShape,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Parses `body` pushed with `content_type` (the request's `Content-Type`, if any).
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Parsed, ManifestError> {
    let raw: Raw = serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    let header = content_type
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or(ct)
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|ct| {
            !ct.is_empty() && ct != "application/json" && ct != "application/octet-stream"
        });
    if let Some(h) = &header
        && (h == DOCKER_MANIFEST_V1 || h == DOCKER_MANIFEST_V1_SIGNED)
    {
        return Err(ManifestError::Schema1);
    }
    match raw.schema_version {
        Some(2) => {}
        Some(1) => return Err(ManifestError::Schema1),
        Some(v) => return Err(ManifestError::SchemaVersion(v)),
        None => return Err(ManifestError::SchemaVersion(0)),
    }
    let media_type = match (&header, &raw.media_type) {
        (Some(h), Some(f)) if h != f => {
            return Err(ManifestError::MediaTypeMismatch {
                header: h.clone(),
                field: f.clone(),
            });
        }
        (Some(h), _) => h.clone(),
        (None, Some(f)) => f.clone(),
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) if raw.config.is_some() => OCI_MANIFEST.to_string(),
        (None, None) => return Err(ManifestError::UnknownShape),
    };
    let kind = match media_type.as_str() {
        DOCKER_MANIFEST | OCI_MANIFEST => Kind::Image,
        DOCKER_MANIFEST_LIST | OCI_INDEX => Kind::Index,
        other => return Err(ManifestError::UnsupportedMediaType(other.to_string())),
    };
    let missing = |field| ManifestError::Missing {
        media_type: media_type.clone(),
        field,
    };
    match kind {
        Kind::Image => {
            let config = raw.config.ok_or_else(|| missing("config"))?;
            let layers = match raw.layers {
                Some(layers) => layers,
                // OCI artifacts may have an empty layer list; Docker images must have `layers`.
                None if media_type == OCI_MANIFEST => Vec::new(),
                None => return Err(missing("layers")),
            };
            let artifact_type = raw
                .artifact_type
                .or_else(|| Some(config.media_type.clone()).filter(|t| !t.is_empty()));
            let mut blobs = vec![config];
            blobs.extend(
                layers.into_iter().filter(|l| {
                    !FOREIGN_LAYERS.contains(&l.media_type.as_str()) || l.urls.is_empty()
                }),
            );
            Ok(Parsed {
                media_type,
                kind,
                blobs,
                manifests: Vec::new(),
                subject: raw.subject,
                artifact_type,
                annotations: raw.annotations,
            })
        }
        Kind::Index => {
            let manifests = raw.manifests.ok_or_else(|| missing("manifests"))?;
            Ok(Parsed {
                media_type,
                kind,
                blobs: Vec::new(),
                manifests,
                subject: raw.subject,
                artifact_type: raw.artifact_type,
                annotations: raw.annotations,
            })
        }
    }
}

/// Whether a stored manifest of `media_type` may be returned to a client that sent these
/// `Accept` header values. No `Accept` at all means "anything" (what old clients and curl
/// send); `*/*` and `application/*` match everything.
pub fn acceptable<'a>(media_type: &str, accept: impl IntoIterator<Item = &'a str>) -> bool {
    let mut any = false;
    for value in accept {
        for item in value.split(',') {
            let item = item.split(';').next().unwrap_or(item).trim();
            if item.is_empty() {
                continue;
            }
            any = true;
            if item == "*/*" || item == "application/*" || item.eq_ignore_ascii_case(media_type) {
                return true;
            }
        }
    }
    !any
}
