//! ACME (RFC 8555) for the hosts routes name with `tls: acme`: the [`AcmeManager`], one
//! background task that makes sure each such host has a valid certificate in the
//! [`CertStore`]. It orders one when missing, renews 30 days before expiry (two thirds
//! into the lifetime of a short-lived one), answers HTTP-01 through the plain listener or
//! TLS-ALPN-01 through the HTTPS listener's resolver (both via [`Challenges`]), and backs
//! off per host on failure (doubling from [`AcmeOptions::first_backoff`] up to
//! [`AcmeOptions::max_backoff`]), the failure recorded in the host's status.
//!
//! The host set comes from the route table: [`AcmeManager::set_hosts_from`] on every table
//! change, or [`AcmeManager::follow`] to watch a proxy's snapshot.
//!
//! Invariants: no ACME call is on the request path (the task works alone; handshakes and
//! requests read only memory); orders are made one at a time, and a host is only ordered
//! when it has no valid certificate and its backoff has passed, so a restart on the same
//! data dir (the store reads back what was issued) orders nothing, and a failing host is
//! tried ever less often, never in a loop; wildcard and IP-address hosts are never ordered
//! (HTTP-01 and TLS-ALPN-01 cannot prove a wildcard; an IP is for clients without SNI):
//! their status says to upload a certificate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, LetsEncrypt,
    NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use tokio_util::sync::CancellationToken;

use crate::forward::Proxy;
use crate::route::Tls;
use crate::table::RouteTable;
use crate::tls::{AcmeState, CertInfo, CertStore, Challenges};

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT_PRODUCTION: &str = LetsEncrypt::Production.url();
/// Let's Encrypt's staging directory (`--acme-staging`): untrusted certificates, high
/// rate limits, for trying a setup out.
pub const LETS_ENCRYPT_STAGING: &str = LetsEncrypt::Staging.url();

/// Which challenge the manager answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChallengeKind {
    /// `GET http://HOST/.well-known/acme-challenge/TOKEN` on the plain listener (port 80).
    #[default]
    Http01,
    /// A TLS handshake with ALPN `acme-tls/1` on the HTTPS listener (port 443).
    TlsAlpn01,
}

impl ChallengeKind {
    /// `http-01` or `tls-alpn-01`.
    pub fn parse(text: &str) -> Result<ChallengeKind, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "http-01" | "http01" | "http" => Ok(ChallengeKind::Http01),
            "tls-alpn-01" | "tlsalpn01" | "tls-alpn" => Ok(ChallengeKind::TlsAlpn01),
            other => Err(format!(
                "ACME challenge `{other}`: write http-01 or tls-alpn-01"
            )),
        }
    }

    fn acme_type(self) -> ChallengeType {
        match self {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }
}

impl std::fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        })
    }
}

/// The manager's settings; [`AcmeOptions::default`] is Let's Encrypt production, HTTP-01.
#[derive(Debug, Clone)]
pub struct AcmeOptions {
    /// `--acme-email`: the account's contact (expiry notices).
    pub contact_email: Option<String>,
    /// `--acme-directory`, `--acme-staging`.
    pub directory_url: String,
    /// `--acme-ca-root FILE`: a PEM root to trust for the directory itself (a private CA);
    /// when given, it is the only root trusted for the directory.
    pub extra_root: Option<PathBuf>,
    pub challenge: ChallengeKind,
    /// Renew this long before expiry.
    pub renew_before: Duration,
    /// The wait after a host's first failure; it doubles with each next one.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// How long one order may wait on the CA (validation, then issuance).
    pub order_timeout: Duration,
}

impl Default for AcmeOptions {
    fn default() -> Self {
        AcmeOptions {
            contact_email: None,
            directory_url: LETS_ENCRYPT_PRODUCTION.to_owned(),
            extra_root: None,
            challenge: ChallengeKind::Http01,
            renew_before: Duration::from_secs(30 * 24 * 3600),
            first_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(24 * 3600),
            order_timeout: Duration::from_secs(120),
        }
    }
}

/// The running manager; cheap to clone.
#[derive(Debug, Clone)]
pub struct AcmeManager {
    inner: Arc<Inner>,
}

struct Inner {
    options: AcmeOptions,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    hosts: std::sync::Mutex<BTreeSet<String>>,
    wake: tokio::sync::Notify,
    orders: AtomicU64,
    orders_by_host: std::sync::Mutex<BTreeMap<String, u64>>,
    account: tokio::sync::Mutex<Option<Account>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeManager")
            .field("options", &self.options)
            .field("hosts", &self.hosts)
            .field("orders", &self.orders)
            .finish_non_exhaustive()
    }
}

/// The account as stored: its credentials and the directory they belong to.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

impl AcmeManager {
    /// Starts the manager's task (until `shutdown`); it orders nothing until it is given
    /// hosts.
    pub fn spawn(
        options: AcmeOptions,
        store: Arc<CertStore>,
        challenges: Arc<Challenges>,
        shutdown: CancellationToken,
    ) -> AcmeManager {
        let manager = AcmeManager {
            inner: Arc::new(Inner {
                options,
                store,
                challenges,
                hosts: std::sync::Mutex::new(BTreeSet::new()),
                wake: tokio::sync::Notify::new(),
                orders: AtomicU64::new(0),
                orders_by_host: std::sync::Mutex::new(BTreeMap::new()),
                account: tokio::sync::Mutex::new(None),
            }),
        };
        tokio::spawn(manager.inner.clone().run(shutdown));
        manager
    }

    /// The hosts that need an ACME certificate from now on (names as routes write them).
    pub fn set_hosts(&self, hosts: impl IntoIterator<Item = String>) {
        let hosts: BTreeSet<String> = hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect();
        let mut current = self.inner.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if *current != hosts {
            *current = hosts;
            drop(current);
            self.inner.wake.notify_one();
        }
    }

    /// [`AcmeManager::set_hosts`] with every host a route of `table` names with `tls: acme`.
    pub fn set_hosts_from(&self, table: &RouteTable) {
        self.set_hosts(acme_hosts(table));
    }

    /// Follows `proxy`'s live table until `shutdown`: each new table's ACME hosts become
    /// the manager's (checked every 500 ms, a pointer comparison when nothing changed).
    pub fn follow(&self, proxy: Arc<Proxy>, shutdown: CancellationToken) {
        let manager = self.clone();
        tokio::spawn(async move {
            let mut seen: Option<Arc<crate::balance::Snapshot>> = None;
            loop {
                let now = proxy.snapshot();
                if seen.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &now)) {
                    manager.set_hosts_from(&now.table);
                    seen = Some(now);
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }

    /// Orders placed since start (every host), for tests and logs.
    pub fn orders(&self) -> u64 {
        self.inner.orders.load(Ordering::Acquire)
    }

    /// Orders placed for `host` since start.
    pub fn orders_for(&self, host: &str) -> u64 {
        self.inner
            .orders_by_host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .copied()
            .unwrap_or(0)
    }

    pub fn store(&self) -> &Arc<CertStore> {
        &self.inner.store
    }
}

/// Every host a route of `table` names with `tls: acme`.
pub fn acme_hosts(table: &RouteTable) -> BTreeSet<String> {
    table
        .routes()
        .iter()
        .filter(|r| r.tls == Tls::Acme)
        .map(|r| r.key.host.as_str().to_owned())
        .collect()
}

/// What a host needs now.
enum Due {
    Now,
    At(SystemTime),
    Never,
}

impl Inner {
    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let hosts: BTreeSet<String> =
                self.hosts.lock().unwrap_or_else(|p| p.into_inner()).clone();
            // A host no route asks for any more leaves the status and the metrics.
            self.store.retain_acme_state(&hosts);
            // With nothing due, look again in an hour (a clock jump, a deleted file).
            let mut wake_at = SystemTime::now() + Duration::from_secs(3600);
            for host in hosts {
                if shutdown.is_cancelled() {
                    return;
                }
                let due = match self.due(&host) {
                    Due::Now => {
                        tokio::select! {
                            () = self.attempt(&host) => {}
                            () = shutdown.cancelled() => return,
                        }
                        self.due(&host)
                    }
                    other => other,
                };
                if let Due::At(t) = due {
                    wake_at = wake_at.min(t);
                }
            }
            let wait = wake_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_millis(50));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// When `host` needs an order, recording the answer as its next attempt.
    fn due(&self, host: &str) -> Due {
        let mut state = self.store.acme_state(host);
        let unprovable = if host.starts_with("*.") {
            Some("a wildcard certificate cannot be ordered by HTTP-01 or TLS-ALPN-01")
        } else if host.parse::<std::net::IpAddr>().is_ok() {
            Some("a certificate for an IP address is not ordered by ACME here")
        } else {
            None
        };
        if let Some(why) = unprovable {
            if state.last_error.is_none() {
                state.last_error = Some((
                    format!(
                        "{host}: {why}; upload one (slipway proxy cert add {host} --cert FULLCHAIN --key KEY)"
                    ),
                    SystemTime::now(),
                ));
                state.next_attempt = None;
                self.store.set_acme_state(host, state);
            }
            return Due::Never;
        }
        let now = SystemTime::now();
        if let Some(cert) = self.store.acme_cert(host) {
            let renew_at = self.renew_at(&cert.info);
            if renew_at > now {
                if state.failures == 0 {
                    state.next_attempt = Some(renew_at);
                    self.store.set_acme_state(host, state);
                    return Due::At(renew_at);
                }
            } else if state.failures == 0 {
                return Due::Now;
            }
        }
        match state.next_attempt {
            Some(t) if state.failures > 0 && t > now => Due::At(t),
            _ => Due::Now,
        }
    }

    fn renew_at(&self, info: &CertInfo) -> SystemTime {
        let lifetime = info
            .not_after
            .duration_since(info.not_before)
            .unwrap_or(Duration::ZERO);
        if lifetime > self.options.renew_before * 2 {
            info.not_after - self.options.renew_before
        } else {
            info.not_before + lifetime * 2 / 3
        }
    }

    /// One order for `host`, its outcome recorded in the host's status.
    async fn attempt(&self, host: &str) {
        self.orders.fetch_add(1, Ordering::AcqRel);
        *self
            .orders_by_host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(host.to_owned())
            .or_default() += 1;
        tracing::info!(%host, directory = %self.options.directory_url, challenge = %self.options.challenge, "ordering a certificate");
        // Twice the order's own timeout covers the account and the finalization too.
        let outcome = tokio::time::timeout(self.options.order_timeout * 2, self.order(host))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the order for {host} took longer than {:?}",
                    self.options.order_timeout * 2
                ))
            });
        let mut state = self.store.acme_state(host);
        match outcome {
            Ok(info) => {
                tracing::info!(%host, not_after = %crate::tls::rfc3339(info.not_after), issuer = %info.issuer, "certificate issued");
                state = AcmeState {
                    last_error: None,
                    next_attempt: Some(self.renew_at(&info)),
                    failures: 0,
                };
            }
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                let backoff = backoff(
                    self.options.first_backoff,
                    self.options.max_backoff,
                    state.failures,
                );
                let now = SystemTime::now();
                tracing::warn!(%host, failures = state.failures, retry_in = ?backoff, "ACME order failed: {error}");
                state.last_error = Some((error, now));
                state.next_attempt = Some(now + backoff);
            }
        }
        self.store.set_acme_state(host, state);
    }

    /// The account, loaded from the data dir or created (and stored) on first use.
    async fn account(&self) -> Result<Account, String> {
        let mut slot = self.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let directory = &self.options.directory_url;
        let builder = || match &self.options.extra_root {
            Some(root) => Account::builder_with_root(root)
                .map_err(|e| format!("--acme-ca-root {}: {e}", root.display())),
            None => Account::builder().map_err(|e| format!("the system's TLS roots: {e}")),
        };
        let path = self.store.account_path();
        let stored = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<StoredAccount>(&bytes).ok())
            .filter(|s| &s.directory == directory);
        let account = match stored {
            Some(stored) => builder()?
                .from_credentials(stored.credentials)
                .await
                .map_err(|e| format!("ACME account of {}: {e}", path.display()))?,
            None => {
                let contact = self
                    .options
                    .contact_email
                    .as_ref()
                    .map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| format!("creating an ACME account at {directory}: {e}"))?;
                let json = serde_json::to_vec_pretty(&StoredAccount {
                    directory: directory.clone(),
                    credentials,
                })
                .map_err(|e| format!("ACME account: {e}"))?;
                crate::tls::write_atomic(&path, &json, 0o600).map_err(|e| e.to_string())?;
                tracing::info!(directory = %directory, "ACME account created");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    async fn order(&self, host: &str) -> Result<CertInfo, String> {
        let account = self.account().await?;
        let directory = &self.options.directory_url;
        let kind = self.options.challenge;
        let identifiers = [Identifier::Dns(host.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| format!("new order for {host} at {directory}: {e}"))?;
        // Withdrawn whatever the outcome, when this order ends.
        let mut published = Published {
            challenges: &self.challenges,
            tokens: Vec::new(),
            alpn_hosts: Vec::new(),
        };
        {
            let mut authorizations = order.authorizations();
            while let Some(authorization) = authorizations.next().await {
                let mut authorization =
                    authorization.map_err(|e| format!("authorization for {host}: {e}"))?;
                match authorization.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => {
                        return Err(format!("the authorization for {host} is {other:?}"));
                    }
                }
                let mut challenge = authorization
                    .challenge(kind.acme_type())
                    .ok_or_else(|| format!("{directory} offers no {kind} challenge for {host}"))?;
                let key_authorization = challenge.key_authorization();
                match kind {
                    ChallengeKind::Http01 => {
                        self.challenges
                            .set_http01(&challenge.token, key_authorization.as_str());
                        published.tokens.push(challenge.token.clone());
                    }
                    ChallengeKind::TlsAlpn01 => {
                        let key = alpn_challenge_cert(host, key_authorization.digest().as_ref())?;
                        self.challenges.set_tls_alpn01(host, key);
                        published.alpn_hosts.push(host.to_owned());
                    }
                }
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| format!("{kind} challenge for {host}: {e}"))?;
            }
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(self.options.order_timeout);
        let status = order.poll_ready(&retries).await;
        match status {
            Ok(OrderStatus::Ready) => {}
            Ok(_) | Err(instant_acme::Error::Api(_)) => {
                let detail = match status {
                    Err(e) => e.to_string(),
                    Ok(_) => challenge_failure(&mut order).await,
                };
                return Err(format!(
                    "{directory} did not validate {host} by {kind}: {detail}"
                ));
            }
            Err(e) => return Err(format!("waiting on the order for {host}: {e}")),
        }
        let key = rcgen::KeyPair::generate().map_err(|e| format!("a key for {host}: {e}"))?;
        let mut params = rcgen::CertificateParams::new(vec![host.to_owned()])
            .map_err(|e| format!("a CSR for {host}: {e}"))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| format!("a CSR for {host}: {e}"))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| format!("finalizing the order for {host}: {e}"))?;
        let chain = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| format!("the certificate for {host}: {e}"))?;
        drop(published);
        self.store
            .put_acme(host, chain.as_bytes(), key.serialize_pem().as_bytes())
            .map_err(|e| e.to_string())
    }
}

/// The challenges' own errors, once an order went invalid.
async fn challenge_failure(order: &mut Order) -> String {
    let mut details = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        if let Ok(state) = authorization.refresh().await {
            for c in &state.challenges {
                if let Some(problem) = &c.error {
                    details.push(problem.to_string());
                }
            }
        }
    }
    if details.is_empty() {
        "the order is invalid".to_owned()
    } else {
        details.join("; ")
    }
}

/// The wait after the `failures`-th failure in a row: `first`, doubled each time, at most
/// `max`.
pub fn backoff(first: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    first.saturating_mul(1u32 << doublings).min(max)
}

/// The self-signed certificate TLS-ALPN-01 asks for (RFC 8737 3): the host as its only
/// name and the key authorization's SHA-256 in the critical acmeIdentifier extension.
fn alpn_challenge_cert(host: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let what = |e: &dyn std::fmt::Display| format!("the TLS-ALPN-01 certificate for {host}: {e}");
    let key = rcgen::KeyPair::generate().map_err(|e| what(&e))?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(|e| what(&e))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| what(&e))?;
    let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // Not `from_der`: its key check parses the leaf with webpki, which refuses the
    // critical acmeIdentifier extension this certificate exists to carry.
    let signing_key = crate::tls::crypto_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| what(&e))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}

/// Challenge answers published for one order, withdrawn when it ends.
struct Published<'a> {
    challenges: &'a Challenges,
    tokens: Vec<String>,
    alpn_hosts: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.challenges.clear_http01(t);
        }
        for h in &self.alpn_hosts {
            self.challenges.clear_tls_alpn01(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(60), s(3600), 1), s(60));
        assert_eq!(backoff(s(60), s(3600), 2), s(120));
        assert_eq!(backoff(s(60), s(3600), 3), s(240));
        assert_eq!(backoff(s(60), s(3600), 7), s(3600));
        assert_eq!(backoff(s(60), s(3600), u32::MAX), s(3600));
    }

    #[test]
    fn challenge_kinds_parse() {
        assert_eq!(
            ChallengeKind::parse("TLS-ALPN-01"),
            Ok(ChallengeKind::TlsAlpn01)
        );
        assert_eq!(ChallengeKind::parse("http-01"), Ok(ChallengeKind::Http01));
        assert!(ChallengeKind::parse("dns-01").is_err());
    }
}
