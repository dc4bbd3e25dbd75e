//! Encryption of secrets at rest: one 32-byte key and XChaCha20-Poly1305.
//!
//! Owns the key file (`secret.key` in the data directory) and the sealed format of every
//! secret value the store keeps (repository secrets, status tokens, webhook secrets as
//! `sealed:<sealed>`). Main type: [`SecretBox`].
//!
//! Invariants:
//! - A sealed value is `base64(nonce ‖ ciphertext ‖ tag)` (standard alphabet, padded) with a
//!   fresh random 24-byte nonce per seal, so two seals of one value never look alike.
//! - Every seal is bound to an *associated data* string (e.g. `repo:<id>:<name>`): a
//!   ciphertext copied to another row, or opened with another key, fails to open; so does one
//!   with a single bit changed.
//! - The key file is created at most once, atomically (temporary file in the same directory,
//!   written, fsynced, then linked into place without overwriting; the directory is fsynced),
//!   with mode 0600. A crash leaves either no key file or a whole one, never a truncated key.
//! - An existing key file is never rewritten. One of the wrong size, or one that group or
//!   other may read or write, is an error (like ssh with a private key): overwriting it would
//!   lose every stored secret, and using it would trust a key others may have read.
//! - The key never appears in `Debug` output or in an error message, nor does a key text or
//!   a plaintext.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore;

/// Bytes in a key.
pub const KEY_LEN: usize = 32;
/// Bytes in a nonce (XChaCha20).
pub const NONCE_LEN: usize = 24;
/// Bytes of the Poly1305 tag that follows every ciphertext.
const TAG_LEN: usize = 16;

/// What starts a sealed webhook secret in the store (base64 never holds `:`).
pub const WEBHOOK_SEALED: &str = "sealed:";

/// The associated data of a repository's webhook secret.
pub fn webhook_secret_aad(repo: &str) -> String {
    format!("repo:{repo}:webhook-secret")
}

/// Why a key could not be loaded or a sealed value not opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret key file {}: could not {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "secret key file {} holds {len} bytes, expected {KEY_LEN} raw bytes or 64 hex characters; \
         it is left as it is (replacing it would make every stored secret unreadable)",
        path.display()
    )]
    KeyFileSize { path: PathBuf, len: u64 },
    #[error(
        "secret key file {} has mode {mode:04o}, readable or writable by group or others; \
         run `chmod 600 {}` (and consider the key leaked if others could read it)",
        path.display(), path.display()
    )]
    KeyFilePermissions { path: PathBuf, mode: u32 },
    #[error("secret key text ({source_name}): {reason}")]
    KeyText {
        /// Where the text came from, e.g. `SLIPWAY_SECRET_KEY` or a file name.
        source_name: String,
        reason: String,
    },
    #[error("sealed secret for `{aad}` is malformed: {reason}")]
    Malformed { aad: String, reason: &'static str },
    #[error(
        "sealed secret for `{aad}` does not open: it was sealed with another key, for another \
         secret, or was altered"
    )]
    Open { aad: String },
    #[error("sealed secret for `{aad}` opened but is not UTF-8")]
    NotUtf8 { aad: String },
}

/// The AEAD over one key. Cheap to clone; `Debug` prints no key material.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBox")
            .field("key", &"<redacted>")
            .finish()
    }
}

impl SecretBox {
    /// A box over the given key bytes.
    pub fn from_key(key: [u8; KEY_LEN]) -> SecretBox {
        SecretBox {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    /// A box over a fresh random key that is stored nowhere (tests, ephemeral servers).
    pub fn generate() -> SecretBox {
        SecretBox::from_key(random_key())
    }

    /// Reads the key at `path`, or creates it (and its directory) when it does not exist.
    ///
    /// The file holds either 32 raw bytes (as created here) or a key text that
    /// [`SecretBox::from_key_text`] reads (64 hex characters or base64 of 32 bytes, e.g.
    /// written by `openssl rand -hex 32`). A file of any other size or content, or one with
    /// any group/other permission bit set, is an error and is left untouched.
    pub fn load_or_create(path: &Path) -> Result<SecretBox, SecretError> {
        match read_key_file(path)? {
            Some(key) => Ok(SecretBox::from_key(key)),
            None => {
                let key = random_key();
                match create_key_file(path, &key)? {
                    Created::Written => Ok(SecretBox::from_key(key)),
                    // Another process created it between our read and our link: use theirs.
                    Created::Exists => match read_key_file(path)? {
                        Some(key) => Ok(SecretBox::from_key(key)),
                        None => Err(SecretError::Io {
                            path: path.to_owned(),
                            action: "read the key file another process just created",
                            source: std::io::Error::from(std::io::ErrorKind::NotFound),
                        }),
                    },
                }
            }
        }
    }

    /// A box over a key given as text (e.g. the `SLIPWAY_SECRET_KEY` environment variable):
    /// 64 hex characters, or base64 (standard or URL-safe, padded or not) of 32 bytes.
    /// Surrounding whitespace is ignored. The error never quotes the text.
    pub fn from_key_text(text: &str) -> Result<SecretBox, SecretError> {
        parse_key_text(text, "key text").map(SecretBox::from_key)
    }

    /// Encrypts `plaintext` bound to `aad`: `base64(nonce ‖ ciphertext ‖ tag)`.
    pub fn seal(&self, plaintext: &str, aad: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: aad.as_bytes(),
        };
        // Encryption only fails for messages beyond the cipher's 256 GiB limit, which a
        // `&str` held in memory for a secret does not reach; an empty ciphertext then simply
        // fails to open later rather than panicking here.
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        STANDARD.encode(out)
    }

    /// A repository's webhook secret as `repos.webhook_secret` keeps it:
    /// [`WEBHOOK_SEALED`] then the sealed text, bound to the repository's name (names never
    /// change; the id is not known before the row is inserted, and the row must never hold
    /// a usable placeholder).
    pub fn seal_webhook_secret(&self, repo: &str, plaintext: &str) -> String {
        format!(
            "{WEBHOOK_SEALED}{}",
            self.seal(plaintext, &webhook_secret_aad(repo))
        )
    }

    /// The webhook secret of a stored `repos.webhook_secret`; one stored by a version that
    /// did not seal them (no [`WEBHOOK_SEALED`]) is taken as it is (the server seals those
    /// at start, see [`crate::app`]).
    pub fn open_webhook_secret(&self, repo: &str, stored: &str) -> Result<String, SecretError> {
        match stored.strip_prefix(WEBHOOK_SEALED) {
            Some(sealed) => self.open(sealed, &webhook_secret_aad(repo)),
            None => Ok(stored.to_owned()),
        }
    }

    /// Decrypts what [`SecretBox::seal`] made with the same key and the same `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> Result<String, SecretError> {
        let bytes = STANDARD
            .decode(sealed.trim())
            .map_err(|_| SecretError::Malformed {
                aad: aad.to_owned(),
                reason: "not base64",
            })?;
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretError::Malformed {
                aad: aad.to_owned(),
                reason: "shorter than a nonce and a tag",
            });
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: aad.as_bytes(),
        };
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| SecretError::Open {
                aad: aad.to_owned(),
            })?;
        String::from_utf8(plain).map_err(|_| SecretError::NotUtf8 {
            aad: aad.to_owned(),
        })
    }
}

fn random_key() -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    rand::rng().fill_bytes(&mut key);
    key
}

fn parse_key_text(text: &str, source_name: &str) -> Result<[u8; KEY_LEN], SecretError> {
    let text = text.trim();
    let err = |reason: String| SecretError::KeyText {
        source_name: source_name.to_owned(),
        reason,
    };
    if text.is_empty() {
        return Err(err("empty".to_owned()));
    }
    let bytes = if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).map_err(|_| err("not valid hex".to_owned()))?
    } else {
        [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(text).ok())
            .ok_or_else(|| {
                err(format!(
                    "expected 64 hex characters or base64 of {KEY_LEN} bytes \
                     ({} characters given)",
                    text.chars().count()
                ))
            })?
    };
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
        err(format!(
            "decodes to {} bytes, expected {KEY_LEN} (e.g. `openssl rand -hex 32`)",
            bytes.len()
        ))
    })
}

/// The key in `path`, `None` when there is no such file.
fn read_key_file(path: &Path) -> Result<Option<[u8; KEY_LEN]>, SecretError> {
    let io = |action: &'static str| {
        move |source| SecretError::Io {
            path: path.to_owned(),
            action,
            source,
        }
    };
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read the metadata of")(e)),
    };
    check_mode(path, &meta)?;
    let len = meta.len();
    // Raw key, or a key text with some whitespace around it.
    if len != KEY_LEN as u64 && !(2 * KEY_LEN as u64..=200).contains(&len) {
        return Err(SecretError::KeyFileSize {
            path: path.to_owned(),
            len,
        });
    }
    let bytes = std::fs::read(path).map_err(io("read"))?;
    if let Ok(key) = <[u8; KEY_LEN]>::try_from(bytes.as_slice()) {
        return Ok(Some(key));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| SecretError::KeyFileSize {
        path: path.to_owned(),
        len,
    })?;
    parse_key_text(text, &path.display().to_string()).map(Some)
}

#[cfg(unix)]
fn check_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::KeyFilePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), SecretError> {
    Ok(())
}

enum Created {
    Written,
    Exists,
}

/// Writes `key` to a temporary file beside `path` (0600, fsynced) and links it into place
/// without replacing an existing file; then fsyncs the directory.
fn create_key_file(path: &Path, key: &[u8; KEY_LEN]) -> Result<Created, SecretError> {
    let io = |action: &'static str| {
        move |source| SecretError::Io {
            path: path.to_owned(),
            action,
            source,
        }
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io("create the directory of"))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "secret.key".to_owned());
    let mut suffix = [0u8; 8];
    rand::rng().fill_bytes(&mut suffix);
    let tmp = dir.join(format!(".{file_name}.tmp-{}", hex::encode(suffix)));

    let write = || -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(key)?;
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("write a temporary key file beside")(e));
    }
    // A hard link fails when `path` exists, so a key another process created meanwhile is
    // never replaced; rename (which would replace it) is only the fallback for filesystems
    // without hard links.
    let linked = match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(Created::Written),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Created::Exists),
        Err(_) if !path.exists() => std::fs::rename(&tmp, path)
            .map(|()| Created::Written)
            .map_err(io("move the new key file into place as")),
        Err(_) => Ok(Created::Exists),
    };
    let _ = std::fs::remove_file(&tmp);
    let created = linked?;
    if let Created::Written = created {
        sync_dir(&dir).map_err(io("fsync the directory of"))?;
    }
    Ok(created)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}
