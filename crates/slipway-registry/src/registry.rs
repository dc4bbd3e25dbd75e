//! [`Registry`]: opening the store, the router, events and tokens for the embedding program.

use crate::Digest;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::api::Identity;
use crate::auth::{Authenticator, RepoPattern, Scope};
use crate::error::RegistryError;
use crate::events::{EventAction, EventTarget, RegistryEvent};
use crate::gc::{GcGuard, GcOptions, GcReport};
use crate::storage::{BlobStore, FsStore, StorageConfig, random_id};
use crate::token::{TokenSigner, unix_now};
use crate::uploads::Uploads;

/// How the registry is set up.
#[derive(Clone)]
pub struct RegistryConfig {
    /// The registry's directory (`<data-dir>/registry` under `slipway up`).
    pub root: PathBuf,
    /// HMAC key for bearer tokens. `None`: read `<root>/token.key`, creating it (32 random
    /// bytes, mode 0600) on first start, so tokens stay valid across restarts.
    pub token_key: Option<Vec<u8>>,
    /// The `service` of challenges and the audience of tokens.
    pub service: String,
    /// The URL clients reach the registry at (`https://ci.example.com`); when `None`, the
    /// request's `Host` header is used to build the token realm.
    pub public_url: Option<String>,
    /// How long issued tokens are valid.
    pub token_ttl: Duration,
    /// Repositories anyone may pull without credentials.
    pub anonymous_pull: Vec<RepoPattern>,
    /// Largest manifest accepted (distribution's default is 4 MiB).
    pub max_manifest_bytes: usize,
    /// Where blob content goes: `blobs/` under `root` (the default) or, with the `s3`
    /// feature, a bucket. Metadata and upload sessions always stay under `root`.
    pub storage: StorageConfig,
}

impl fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("root", &self.root)
            .field("token_key", &self.token_key.as_ref().map(|_| "<redacted>"))
            .field("service", &self.service)
            .field("public_url", &self.public_url)
            .field("token_ttl", &self.token_ttl)
            .field("anonymous_pull", &self.anonymous_pull)
            .field("max_manifest_bytes", &self.max_manifest_bytes)
            .field("storage", &self.storage)
            .finish()
    }
}

impl RegistryConfig {
    /// Defaults: key file in `root`, service `slipway-registry`, 15-minute tokens, nothing
    /// public, 4 MiB manifests.
    pub fn new(root: impl Into<PathBuf>) -> RegistryConfig {
        RegistryConfig {
            root: root.into(),
            token_key: None,
            service: "slipway-registry".to_string(),
            public_url: None,
            token_ttl: Duration::from_secs(15 * 60),
            anonymous_pull: Vec::new(),
            max_manifest_bytes: 4 * 1024 * 1024,
            storage: StorageConfig::Filesystem,
        }
    }
}

/// State shared by all requests.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: RegistryConfig,
    pub(crate) store: FsStore,
    pub(crate) blobs: BlobStore,
    pub(crate) uploads: Uploads,
    pub(crate) signer: TokenSigner,
    pub(crate) authenticator: Arc<dyn Authenticator>,
    pub(crate) events: broadcast::Sender<RegistryEvent>,
    pub(crate) gc: GcGuard,
}

impl Shared {
    pub(crate) fn is_public(&self, repo: &str) -> bool {
        self.config.anonymous_pull.iter().any(|p| p.matches(repo))
    }

    /// A delete event: deletes carry no media type or size.
    pub(crate) fn emit_delete(
        &self,
        repository: &str,
        digest: &Digest,
        tag: Option<String>,
        identity: &Identity,
    ) {
        let target = EventTarget {
            media_type: String::new(),
            size: 0,
            digest: digest.clone(),
            repository: repository.to_owned(),
            tag,
        };
        self.emit(EventAction::Delete, target, identity);
    }

    pub(crate) fn emit(&self, action: EventAction, target: EventTarget, identity: &Identity) {
        let event = RegistryEvent {
            id: random_id(),
            timestamp: unix_now(),
            action,
            target,
            actor: identity.name().to_string(),
        };
        tracing::info!(
            action = ?event.action,
            repository = %event.target.repository,
            digest = %event.target.digest,
            tag = ?event.target.tag,
            actor = %event.actor,
            "registry event"
        );
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }
}

/// An open registry. Cheap to clone; all clones share the store and the event channel.
#[derive(Debug, Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

impl Registry {
    /// Opens (creating if needed) the registry at `config.root`. Basic credentials are
    /// checked by `authenticator`.
    pub fn open(
        config: RegistryConfig,
        authenticator: Arc<dyn Authenticator>,
    ) -> Result<Registry, RegistryError> {
        fs::create_dir_all(&config.root)
            .map_err(|e| RegistryError::io(&config.root, "creating directory", e))?;
        let key = match &config.token_key {
            Some(key) => key.clone(),
            None => load_or_create_key(&config.root.join("token.key"))?,
        };
        let store = FsStore::open(&config.root)?;
        let blobs = BlobStore::open(&config.storage, &store)?;
        let signer = TokenSigner::new(key, "slipway", config.service.clone());
        let (events, _) = broadcast::channel(1024);
        Ok(Registry {
            shared: Arc::new(Shared {
                uploads: Uploads::new(store.clone(), blobs.clone()),
                config,
                store,
                blobs,
                signer,
                authenticator,
                events,
                gc: GcGuard::default(),
            }),
        })
    }

    /// The `/v2/` routes and the token endpoint (`/v2/token`), to serve or to merge into a
    /// larger router.
    pub fn router(&self) -> axum::Router {
        crate::api::router(self.shared.clone())
    }

    /// Push and delete events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RegistryEvent> {
        self.shared.events.subscribe()
    }

    /// A bearer token for `subject` with `access`, valid for `ttl` and only while the
    /// authenticator says `credential` is live. Clients send it as `Authorization: Bearer`;
    /// it is never accepted as a password (`docker login -p` refuses it).
    pub fn issue_token(
        &self,
        subject: &str,
        credential: &str,
        access: Vec<Scope>,
        ttl: Duration,
    ) -> String {
        self.shared
            .signer
            .issue(subject, Some(credential), access, ttl)
            .0
    }

    /// Runs garbage collection and retention while the registry keeps serving (see
    /// [`crate::gc`]); with `options.dry_run` only reports what it would delete.
    pub async fn collect_garbage(&self, options: GcOptions) -> Result<GcReport, RegistryError> {
        let shared = self.shared.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            crate::gc::run(
                &runtime,
                &shared.store,
                &shared.blobs,
                &shared.uploads,
                &shared.gc,
                &options,
            )
        })
        .await
        .map_err(|e| RegistryError::Io {
            path: self.shared.config.root.clone(),
            action: "running garbage collection",
            error: std::io::Error::other(e),
        })?
    }

    /// Deletes a tag for `actor` (the UI's delete button) and emits the delete event, as
    /// `DELETE /v2/<name>/manifests/<tag>` would. `Ok(false)` when there was no such tag.
    pub fn delete_tag(&self, repo: &str, tag: &str, actor: &str) -> Result<bool, RegistryError> {
        let Some(name) = crate::name::RepoName::parse(repo) else {
            return Ok(false);
        };
        let dir = self.shared.config.root.clone();
        let io = |e| RegistryError::io(&dir, "deleting a tag", e);
        let Some(info) = self.shared.store.tag(&name, tag).map_err(io)? else {
            return Ok(false);
        };
        let deleted = self.shared.store.delete_tag(&name, tag).map_err(io)?;
        if deleted {
            let identity = Identity::Principal(crate::auth::Principal::admin(actor));
            self.shared
                .emit_delete(repo, &info.digest, Some(tag.to_owned()), &identity);
        }
        Ok(deleted)
    }

    /// The metadata store (for the UI and tools).
    pub fn store(&self) -> &FsStore {
        &self.shared.store
    }

    /// The blob content store (filesystem or S3).
    pub fn blobs(&self) -> &BlobStore {
        &self.shared.blobs
    }
}

fn load_or_create_key(path: &std::path::Path) -> Result<Vec<u8>, RegistryError> {
    let err = |action, e| RegistryError::io(path, action, e);
    match fs::File::open(path) {
        Ok(mut file) => {
            let mut key = Vec::new();
            file.read_to_end(&mut key)
                .map_err(|e| err("reading the token key", e))?;
            if key.len() < 32 {
                return Err(RegistryError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!(
                        "token key has {} bytes, expected at least 32; delete it to generate a new one (issued tokens become invalid)",
                        key.len()
                    ),
                });
            }
            Ok(key)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err("creating the token key", e))?;
            file.write_all(&key)
                .and_then(|()| file.sync_all())
                .map_err(|e| err("writing the token key", e))?;
            Ok(key.to_vec())
        }
        Err(e) => Err(err("opening the token key", e)),
    }
}
