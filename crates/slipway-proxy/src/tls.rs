//! Certificates and the TLS side of the HTTPS listener: the [`CertStore`] (uploaded and
//! ACME-issued certificates under the data dir, with each host's status), the
//! [`Challenges`] the ACME manager publishes (HTTP-01 tokens for the plain listener,
//! TLS-ALPN-01 certificates for this resolver), the SNI resolver [`CertResolver`] and the
//! rustls [`server_config`] (TLS 1.2 and 1.3, ALPN `h2`, `http/1.1`, `acme-tls/1`).
//!
//! Layout under the data dir: `certs/NAME/{fullchain.pem,key.pem}` for uploaded
//! certificates (NAME is the host, `*` written `_`), `acme/account.json` (the ACME
//! account's key) and `acme/HOST/{fullchain.pem,key.pem}` for issued ones.
//!
//! Invariants: a certificate in the store was checked (its key matches its leaf, the leaf
//! names its host, it is within its validity when added); every file is written to a
//! temporary file, fsynced and renamed (a crash leaves the old file or the new one, never
//! half of one), keys and the account are 0600; the resolver answers only an SNI that a
//! route with TLS names, from memory (no IO, no ordering on the handshake path): any other
//! SNI, or none, gets no certificate and the handshake fails.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::forward::Proxy;
use crate::route::Tls;
use crate::status::CertificateStatus;

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{what}: no PEM certificate found (expected the full chain, leaf first)")]
    NoCertificate { what: String },
    #[error("{what}: cannot read the PEM: {detail}")]
    Pem { what: String, detail: String },
    #[error("{what}: no private key found in the key PEM (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { what: String },
    #[error("{what}: the certificate cannot be parsed: {detail}")]
    Parse { what: String, detail: String },
    #[error("{what}: the private key does not match the leaf certificate ({detail})")]
    KeyMismatch { what: String, detail: String },
    #[error("{what}: the leaf certificate does not name `{host}` (it names {names})")]
    WrongHost {
        what: String,
        host: String,
        names: String,
    },
    #[error("{what}: the certificate expired at {not_after}")]
    Expired { what: String, not_after: String },
    #[error("{what}: the certificate is not valid before {not_before}")]
    NotYetValid { what: String, not_before: String },
    #[error("`{host}` is not a host a certificate can be for: {detail}")]
    BadHost { host: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a loaded certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The issuer's distinguished name, as `CN=…, O=…`.
    pub issuer: String,
    /// The leaf's serial number, hex.
    pub serial: String,
    /// The leaf's DNS names and IP addresses (as text).
    pub names: Vec<String>,
}

/// A checked chain and key, ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertOrigin {
    Uploaded,
    Acme,
}

/// The ACME side of one host's status, kept by the manager.
#[derive(Debug, Clone, Default)]
pub(crate) struct AcmeState {
    pub(crate) last_error: Option<(String, SystemTime)>,
    pub(crate) next_attempt: Option<SystemTime>,
    pub(crate) failures: u32,
}

/// Uploaded and ACME-issued certificates, in memory and under the data dir.
#[derive(Debug)]
pub struct CertStore {
    dir: PathBuf,
    uploaded: RwLock<BTreeMap<String, LoadedCert>>,
    acme: RwLock<BTreeMap<String, LoadedCert>>,
    acme_state: Mutex<BTreeMap<String, AcmeState>>,
}

impl CertStore {
    /// Opens the store under `data_dir`, reading back every certificate written before.
    /// One that no longer loads (expired, damaged) is skipped with a warning: an ACME
    /// host then orders a new one, an uploaded one shows as absent.
    pub fn open(data_dir: &Path) -> Result<CertStore, CertError> {
        let store = CertStore {
            dir: data_dir.to_owned(),
            uploaded: RwLock::new(BTreeMap::new()),
            acme: RwLock::new(BTreeMap::new()),
            acme_state: Mutex::new(BTreeMap::new()),
        };
        *write_lock(&store.uploaded) = load_dir(&data_dir.join("certs"))?;
        *write_lock(&store.acme) = load_dir(&data_dir.join("acme"))?;
        Ok(store)
    }

    /// Reads the uploaded certificates again (another process, `slipway proxy cert add`,
    /// changed them); the next handshakes use what is on disk now.
    pub fn reload_uploaded(&self) -> Result<(), CertError> {
        let loaded = load_dir(&self.dir.join("certs"))?;
        *write_lock(&self.uploaded) = loaded;
        Ok(())
    }

    /// What the uploaded certificates' files are now (names, sizes, modification
    /// times): a change means [`CertStore::reload_uploaded`] has something to read.
    fn uploaded_fingerprint(&self) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.dir.join("certs")) else {
            return out;
        };
        for entry in entries.flatten() {
            for file in ["fullchain.pem", "key.pem"] {
                let path = entry.path().join(file);
                if let Ok(meta) = std::fs::metadata(&path) {
                    out.push((path, meta.len(), meta.modified().ok()));
                }
            }
        }
        out.sort();
        out
    }

    /// Checks and stores an uploaded certificate for `host` (exact or `*.example.com`):
    /// `chain_pem` is the full chain, leaf first, `key_pem` its private key. It replaces
    /// the one uploaded before for that host, on disk and for the next handshake.
    pub fn add_uploaded(
        &self,
        host: &str,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<CertInfo, CertError> {
        let host = checked_host(host)?;
        let what = format!("the certificate for {host}");
        let cert = check_chain(&host, chain_pem, key_pem, &what, true)?;
        let dir = self.dir.join("certs").join(dir_name_of_host(&host));
        write_pair(&dir, chain_pem, key_pem)?;
        let info = cert.info.clone();
        write_lock(&self.uploaded).insert(host, cert);
        Ok(info)
    }

    /// Removes the uploaded certificate of `host`; whether there was one.
    pub fn remove_uploaded(&self, host: &str) -> Result<bool, CertError> {
        let host = checked_host(host)?;
        let dir = self.dir.join("certs").join(dir_name_of_host(&host));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|source| CertError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(write_lock(&self.uploaded).remove(&host).is_some())
    }

    /// Stores a certificate the ACME manager was issued for `host`.
    pub(crate) fn put_acme(
        &self,
        host: &str,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<CertInfo, CertError> {
        let what = format!("the certificate issued for {host}");
        let cert = check_chain(host, chain_pem, key_pem, &what, true)?;
        let dir = self.dir.join("acme").join(dir_name_of_host(host));
        write_pair(&dir, chain_pem, key_pem)?;
        let info = cert.info.clone();
        write_lock(&self.acme).insert(host.to_owned(), cert);
        Ok(info)
    }

    /// The ACME account's file.
    pub(crate) fn account_path(&self) -> PathBuf {
        self.dir.join("acme").join("account.json")
    }

    /// The ACME-issued certificate of `host`, if one is loaded.
    pub fn acme_cert(&self, host: &str) -> Option<LoadedCert> {
        read_lock(&self.acme).get(host).cloned()
    }

    /// The uploaded certificate of `host` (exact name, `*.example.com` for a wildcard).
    pub fn uploaded_cert(&self, host: &str) -> Option<LoadedCert> {
        read_lock(&self.uploaded).get(host).cloned()
    }

    /// Every uploaded certificate's host and what it says, for `slipway proxy cert list`.
    pub fn uploaded(&self) -> Vec<(String, CertInfo)> {
        read_lock(&self.uploaded)
            .iter()
            .map(|(h, c)| (h.clone(), c.info.clone()))
            .collect()
    }

    /// The certificate to serve for an SNI `server_name` under a route's `tls` mode: the
    /// named uploaded certificate, else (ACME or no match) the ACME one for the name, else
    /// an uploaded one for the exact name, else one for its wildcard.
    pub fn select(&self, server_name: &str, tls: &Tls) -> Option<(LoadedCert, CertOrigin)> {
        if let Tls::Certificate(name) = tls
            && let Some(c) = self.uploaded_cert(&name.to_ascii_lowercase())
        {
            return Some((c, CertOrigin::Uploaded));
        }
        if let Some(c) = self.acme_cert(server_name) {
            return Some((c, CertOrigin::Acme));
        }
        if let Some(c) = self.uploaded_cert(server_name) {
            return Some((c, CertOrigin::Uploaded));
        }
        let (_, parent) = server_name.split_once('.')?;
        self.uploaded_cert(&format!("*.{parent}"))
            .map(|c| (c, CertOrigin::Uploaded))
    }

    /// [`CertStore::select`]'s key alone, for the handshake: no copy of the certificate's
    /// description, only the key's reference count.
    fn select_key(&self, server_name: &str, tls: &Tls) -> Option<Arc<CertifiedKey>> {
        let key_in = |map: &RwLock<BTreeMap<String, LoadedCert>>, name: &str| {
            read_lock(map).get(name).map(|c| c.key.clone())
        };
        if let Tls::Certificate(name) = tls
            && let Some(k) = key_in(&self.uploaded, &lowercase(name))
        {
            return Some(k);
        }
        if let Some(k) = key_in(&self.acme, server_name) {
            return Some(k);
        }
        if let Some(k) = key_in(&self.uploaded, server_name) {
            return Some(k);
        }
        let (_, parent) = server_name.split_once('.')?;
        key_in(&self.uploaded, &format!("*.{parent}"))
    }

    /// A host's certificate and ACME state, for the routes page and `/metrics`.
    pub fn status(&self, host: &str, tls: &Tls) -> CertificateStatus {
        let selected = match host.strip_prefix("*.") {
            // A wildcard route's certificate is the uploaded wildcard one.
            Some(_) => self
                .uploaded_cert(host)
                .or_else(|| match tls {
                    Tls::Certificate(name) => self.uploaded_cert(&lowercase(name)),
                    _ => None,
                })
                .map(|c| (c, CertOrigin::Uploaded)),
            None => self.select(host, tls),
        };
        let state = lock(&self.acme_state)
            .get(host)
            .cloned()
            .unwrap_or_default();
        CertificateStatus {
            present: selected.is_some(),
            not_after: selected.as_ref().map(|(c, _)| rfc3339(c.info.not_after)),
            issuer: selected.map(|(c, _)| c.info.issuer),
            last_error_at: state.last_error.as_ref().map(|(_, at)| rfc3339(*at)),
            last_error: state.last_error.map(|(e, _)| e),
            next_attempt: state.next_attempt.map(rfc3339),
            failures: state.failures,
        }
    }

    pub(crate) fn acme_state(&self, host: &str) -> AcmeState {
        lock(&self.acme_state)
            .get(host)
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets the ACME state of hosts no route asks ACME for any more.
    pub(crate) fn retain_acme_state(&self, hosts: &std::collections::BTreeSet<String>) {
        lock(&self.acme_state).retain(|h, _| hosts.contains(h));
    }

    pub(crate) fn set_acme_state(&self, host: &str, state: AcmeState) {
        lock(&self.acme_state).insert(host.to_owned(), state);
    }

    /// Certificate expiry and ACME failures per host, as Prometheus text (appended to the
    /// proxy's metrics by the caller that owns the store).
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP slipway_proxy_certificate_not_after_seconds When the host's certificate expires (Unix time).\n");
        out.push_str("# TYPE slipway_proxy_certificate_not_after_seconds gauge\n");
        let mut seen = BTreeMap::new();
        for (origin, map) in [("uploaded", &self.uploaded), ("acme", &self.acme)] {
            for (host, cert) in read_lock(map).iter() {
                let secs = cert
                    .info
                    .not_after
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                seen.insert((host.clone(), origin), secs);
            }
        }
        for ((host, origin), secs) in &seen {
            out.push_str(&format!(
                "slipway_proxy_certificate_not_after_seconds{{host=\"{}\",origin=\"{origin}\"}} {secs}\n",
                escape_label(host)
            ));
        }
        out.push_str("# HELP slipway_proxy_acme_consecutive_failures ACME orders failed in a row for the host (0 once one succeeds).\n");
        out.push_str("# TYPE slipway_proxy_acme_consecutive_failures gauge\n");
        for (host, state) in lock(&self.acme_state).iter() {
            out.push_str(&format!(
                "slipway_proxy_acme_consecutive_failures{{host=\"{}\"}} {}\n",
                escape_label(host),
                state.failures
            ));
        }
        out
    }
}

/// Challenge answers the ACME manager publishes while an order is open.
#[derive(Debug, Default)]
pub struct Challenges {
    /// HTTP-01: token → key authorization.
    http01: RwLock<HashMap<String, String>>,
    /// TLS-ALPN-01: host → the self-signed certificate carrying the acmeIdentifier.
    tls_alpn01: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// The key authorization to answer `GET /.well-known/acme-challenge/TOKEN` with.
    pub fn http01(&self, token: &str) -> Option<String> {
        read_lock(&self.http01).get(token).cloned()
    }

    pub(crate) fn set_http01(&self, token: &str, key_authorization: &str) {
        write_lock(&self.http01).insert(token.to_owned(), key_authorization.to_owned());
    }

    pub(crate) fn clear_http01(&self, token: &str) {
        write_lock(&self.http01).remove(token);
    }

    fn tls_alpn01(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        read_lock(&self.tls_alpn01).get(host).cloned()
    }

    pub(crate) fn set_tls_alpn01(&self, host: &str, key: Arc<CertifiedKey>) {
        write_lock(&self.tls_alpn01).insert(host.to_owned(), key);
    }

    pub(crate) fn clear_tls_alpn01(&self, host: &str) {
        write_lock(&self.tls_alpn01).remove(host);
    }
}

/// Picks the certificate per handshake: a TLS-ALPN-01 validation gets its challenge
/// certificate; otherwise the SNI must be a host a route with TLS names (exact, else a
/// wildcard route), and gets that route's certificate from the store. A client that sends
/// no SNI (it connected to an IP address) is answered as if it had named
/// `no_sni_name`, the listener's local address, when the resolver has one.
#[derive(Debug, Clone)]
pub struct CertResolver {
    proxy: Arc<Proxy>,
    store: Arc<CertStore>,
    no_sni_name: Option<String>,
}

impl CertResolver {
    pub fn new(proxy: Arc<Proxy>, store: Arc<CertStore>) -> CertResolver {
        CertResolver {
            proxy,
            store,
            no_sni_name: None,
        }
    }

    /// The same resolver, answering a client without SNI as if it named `ip`.
    pub fn for_local_ip(&self, ip: IpAddr) -> CertResolver {
        CertResolver {
            no_sni_name: Some(ip.to_canonical().to_string()),
            ..self.clone()
        }
    }

    /// The certificate for `server_name` (lowercase, no trailing dot), if a route names it.
    pub fn resolve_name(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.proxy.snapshot();
        let routes = snapshot.table.routes();
        // An exact route's mode wins over a wildcard's, as in the request lookup.
        let route = routes
            .iter()
            .filter(|r| r.tls.is_on() && r.key.host.matches(server_name))
            .min_by_key(|r| r.key.host.is_wildcard())?;
        self.store.select_key(server_name, &route.tls)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = match hello.server_name() {
            Some(n) => n.trim_end_matches('.').to_ascii_lowercase(),
            None => self.no_sni_name.clone()?,
        };
        let acme_validation = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme_validation {
            // Only while an order for this host waits on it; else no certificate.
            return self.proxy.challenges().tls_alpn01(&name);
        }
        let key = self.resolve_name(&name);
        if key.is_none() {
            tracing::debug!(sni = %name, "TLS handshake for a host no route with TLS names");
        }
        key
    }
}

/// The HTTPS listener's configurations, built once: the shared one for clients that send
/// an SNI, and one per local IP address for those that do not (created on the first such
/// client of that address, then reused). All share one session cache and one ticketer,
/// so a resumed session skips the full handshake on any of them.
#[derive(Debug)]
pub struct HttpsConfig {
    base: Arc<rustls::ServerConfig>,
    resolver: CertResolver,
    by_local_ip: RwLock<HashMap<IpAddr, Arc<rustls::ServerConfig>>>,
}

impl HttpsConfig {
    pub fn new(resolver: CertResolver) -> Result<HttpsConfig, rustls::Error> {
        let base = Arc::new(server_config(Arc::new(resolver.clone()))?);
        Ok(HttpsConfig {
            base,
            resolver,
            by_local_ip: RwLock::new(HashMap::new()),
        })
    }

    /// The configuration for a client hello: `has_sni`, and the connection's local IP.
    pub fn for_client(&self, has_sni: bool, local_ip: IpAddr) -> Arc<rustls::ServerConfig> {
        if has_sni {
            return self.base.clone();
        }
        if let Some(c) = read_lock(&self.by_local_ip).get(&local_ip) {
            return c.clone();
        }
        let mut config = (*self.base).clone();
        config.cert_resolver = Arc::new(self.resolver.for_local_ip(local_ip));
        let config = Arc::new(config);
        write_lock(&self.by_local_ip).insert(local_ip, config.clone());
        config
    }
}

/// The ring provider every TLS use of the proxy shares.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The HTTPS listener's rustls configuration: TLS 1.3 and 1.2, session resumption, certificates from
/// `resolver`, ALPN `h2`, `http/1.1` and `acme-tls/1` (the last only answered for a
/// TLS-ALPN-01 validation).
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // Resumption: stateless tickets (TLS 1.3 and 1.2) and a session cache for clients
    // that do not take tickets.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Ok(config)
}

/// Every certificate under `dir` (one folder per host), creating `dir` when missing.
/// One that no longer loads (expired, damaged) is skipped with a warning.
fn load_dir(dir: &Path) -> Result<BTreeMap<String, LoadedCert>, CertError> {
    create_private_dir(dir)?;
    let entries = std::fs::read_dir(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut loaded = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let host = host_of_dir_name(name);
        let read = |file: &str| {
            let p = path.join(file);
            std::fs::read(&p).map_err(|source| CertError::Io { path: p, source })
        };
        let result = read("fullchain.pem").and_then(|chain| {
            let key = read("key.pem")?;
            check_chain(&host, &chain, &key, &path.display().to_string(), false)
        });
        match result {
            Ok(cert) => {
                loaded.insert(host, cert);
            }
            Err(e) => tracing::warn!("certificate not loaded: {e}"),
        }
    }
    Ok(loaded)
}

/// Follows the uploaded certificates on disk until `shutdown` (checked every 2 s): a
/// certificate added or removed by `slipway proxy cert add` from another process is
/// served without a restart.
pub async fn watch_uploaded(store: Arc<CertStore>, shutdown: tokio_util::sync::CancellationToken) {
    let mut seen = store.uploaded_fingerprint();
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = shutdown.cancelled() => return,
        }
        let now = store.uploaded_fingerprint();
        if now != seen {
            match store.reload_uploaded() {
                Ok(()) => tracing::info!("uploaded certificates read again"),
                Err(e) => tracing::warn!("uploaded certificates not read again: {e}"),
            }
            seen = now;
        }
    }
}

/// Reads and checks a chain and key for `host`. `check_validity`: refuse one outside its
/// validity window (on upload and issue; on load an expired one is refused too, but a
/// clock skew on a not-yet-valid one is tolerated).
fn check_chain(
    host: &str,
    chain_pem: &[u8],
    key_pem: &[u8],
    what: &str,
    check_validity: bool,
) -> Result<LoadedCert, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Pem {
            what: what.to_owned(),
            detail: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate {
            what: what.to_owned(),
        });
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => CertError::NoKey {
            what: what.to_owned(),
        },
        e => CertError::Pem {
            what: what.to_owned(),
            detail: e.to_string(),
        },
    })?;
    let info = cert_info(leaf.as_ref()).map_err(|detail| CertError::Parse {
        what: what.to_owned(),
        detail,
    })?;
    if !names_cover(&info.names, host) {
        return Err(CertError::WrongHost {
            what: what.to_owned(),
            host: host.to_owned(),
            names: if info.names.is_empty() {
                "no DNS name".to_owned()
            } else {
                info.names.join(", ")
            },
        });
    }
    let now = SystemTime::now();
    if info.not_after <= now {
        return Err(CertError::Expired {
            what: what.to_owned(),
            not_after: rfc3339(info.not_after),
        });
    }
    if check_validity && info.not_before > now + Duration::from_secs(300) {
        return Err(CertError::NotYetValid {
            what: what.to_owned(),
            not_before: rfc3339(info.not_before),
        });
    }
    let provider = crypto_provider();
    let certified =
        CertifiedKey::from_der(chain, key, &provider).map_err(|e| CertError::KeyMismatch {
            what: what.to_owned(),
            detail: e.to_string(),
        })?;
    // `from_der` lets an unknown consistency pass; a key that parsed but is not the
    // leaf's is caught here.
    certified.keys_match().map_err(|e| CertError::KeyMismatch {
        what: what.to_owned(),
        detail: e.to_string(),
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        info,
    })
}

/// The validity, issuer, serial and DNS names of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let time = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(n) => {
                    names.push(n.to_ascii_lowercase());
                }
                // An IP literal route (a client with no SNI) is named by its address.
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        not_before: time(cert.validity().not_before.timestamp()),
        not_after: time(cert.validity().not_after.timestamp()),
        issuer: cert.issuer().to_string(),
        serial: cert.tbs_certificate.raw_serial_as_string(),
        names,
    })
}

/// Whether a certificate's DNS names cover `host`: the same name, or for a name one
/// label below a wildcard (`a.example.com` under `*.example.com`). A wildcard host needs
/// the wildcard name itself.
fn names_cover(names: &[String], host: &str) -> bool {
    names.iter().any(|n| {
        n == host
            || (!host.starts_with("*.")
                && n.strip_prefix("*.").is_some_and(|suffix| {
                    host.split_once('.')
                        .is_some_and(|(_, parent)| parent == suffix)
                }))
    })
}

fn checked_host(host: &str) -> Result<String, CertError> {
    crate::route::Host::parse(host)
        .map(|h| h.as_str().to_owned())
        .map_err(|detail| CertError::BadHost {
            host: host.to_owned(),
            detail,
        })
}

/// `*.example.com` is stored as `_.example.com` (hosts never hold `_`).
fn dir_name_of_host(host: &str) -> String {
    host.replace('*', "_")
}

fn host_of_dir_name(name: &str) -> String {
    name.replace('_', "*")
}

fn write_pair(dir: &Path, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), CertError> {
    create_private_dir(dir)?;
    // The key first: a crash in between leaves a new key beside an old chain, which
    // fails the key check on load and is ordered again, never served mismatched.
    write_atomic(&dir.join("key.pem"), key_pem, 0o600)?;
    write_atomic(&dir.join("fullchain.pem"), chain_pem, 0o644)
}

/// Writes `bytes` to `path` by a temporary file in the same directory, fsynced, renamed
/// over `path`, and the directory fsynced.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:x}",
        std::process::id(),
        crate::balance::random()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}

fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CertError::Io {
            path: dir.to_owned(),
            source,
        })
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `name` in lowercase, copied only when it has capitals.
fn lowercase(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase().into()
    } else {
        name.into()
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

// A panic elsewhere never leaves these maps in a state worth refusing to serve.
fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_exact_and_one_level_of_wildcard() {
        let names = vec!["a.example.com".to_owned(), "*.shop.example.com".to_owned()];
        assert!(names_cover(&names, "a.example.com"));
        assert!(names_cover(&names, "x.shop.example.com"));
        assert!(!names_cover(&names, "y.x.shop.example.com"));
        assert!(!names_cover(&names, "shop.example.com"));
        assert!(!names_cover(&names, "*.example.com"));
        assert!(names_cover(&names, "*.shop.example.com"));
    }

    #[test]
    fn wildcard_dir_names_round_trip() {
        assert_eq!(dir_name_of_host("*.example.com"), "_.example.com");
        assert_eq!(host_of_dir_name("_.example.com"), "*.example.com");
        assert_eq!(host_of_dir_name("a.example.com"), "a.example.com");
    }
}
