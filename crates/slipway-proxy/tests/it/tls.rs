//! HTTPS and ACME on real loopback TCP: Debian's `pebble` (with `pebble-challtestsrv` as
//! its DNS, every name at 127.0.0.1) issues certificates by HTTP-01 and TLS-ALPN-01 that
//! the proxy's HTTPS listener then serves to a TLS client trusting only pebble's root, over
//! HTTP/2 by ALPN; a restart on the same data dir orders nothing; a host whose validation
//! fails backs off, doubling; uploaded certificates are checked and served; an SNI that
//! no route names gets no certificate; a client without SNI gets the certificate of the
//! route named by the listener's IP address; the edge reads uploads by another process
//! and shows each host's certificate in its status and metrics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use slipway_proxy::acme::{AcmeManager, AcmeOptions, ChallengeKind};
use slipway_proxy::route::Tls;
use slipway_proxy::tls::{CertResolver, CertStore, HttpsConfig, cert_info};
use slipway_proxy::{CertError, Config, Proxy, RouteTable};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::serve::TestBackend;

// ---- a private CA made with rcgen ----

pub(crate) struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub(crate) pem: String,
}

pub(crate) fn test_ca(name: &str) -> TestCa {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate().expect("ca key");
    let cert = params.self_signed(&key).expect("ca cert");
    TestCa {
        pem: cert.pem(),
        issuer: rcgen::Issuer::new(params, key),
    }
}

/// A leaf for `names` signed by `ca`: (full chain PEM, key PEM).
pub(crate) fn leaf(ca: &TestCa, names: &[&str], expired: bool) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("leaf params");
    if expired {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    }
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, &ca.issuer).expect("leaf cert");
    (format!("{}{}", cert.pem(), ca.pem), key.serialize_pem())
}

// ---- pebble and its DNS ----

fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        // The DNS server wants the UDP port as well.
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// pebble and pebble-challtestsrv, killed on drop.
struct Pebble {
    children: Vec<Child>,
    directory: String,
    /// The CA of pebble's own HTTPS (the ACME client's extra root).
    api_root: PathBuf,
    /// pebble's issuing root, PEM.
    issuing_root: String,
    dns_management: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn have(binary: &str) -> bool {
    Path::new("/usr/bin").join(binary).exists()
        || std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(binary).exists()))
}

impl Pebble {
    /// Starts both with validations sent to `http_port` and `tls_port` on 127.0.0.1;
    /// `None` (printed) when they are not installed.
    async fn start(http_port: u16, tls_port: u16) -> Option<Pebble> {
        if !have("pebble") || !have("pebble-challtestsrv") {
            eprintln!(
                "skipped: pebble and pebble-challtestsrv are not installed (apt-get install pebble)"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = test_ca("pebble API test CA");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca.issuer).expect("cert");
        let api_root = dir.path().join("api-ca.pem");
        std::fs::write(&api_root, &ca.pem).expect("write");
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).expect("write");
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).expect("write");
        let (acme_port, management_port, dns_port, dns_management) =
            (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).expect("write");
        let logs = dir.path().to_owned();
        let log = |name: &str| {
            std::fs::File::create(logs.join(name))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null())
        };
        let mut pebble = Pebble {
            children: Vec::new(),
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            api_root,
            issuing_root: String::new(),
            dns_management,
            _dir: dir,
        };
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("start pebble-challtestsrv");
        pebble.children.push(dns);
        let server = Command::new("pebble")
            .args(["-config"])
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("start pebble");
        pebble.children.push(server);
        let client = reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("ca"))
            .build()
            .expect("client");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let root = client
                .get(format!("https://127.0.0.1:{management_port}/roots/0"))
                .send()
                .await;
            let dir_ok = client.get(&pebble.directory).send().await;
            let dns_ok = client
                .post(format!("http://127.0.0.1:{dns_management}/clear-a"))
                .json(&serde_json::json!({"host": "nothing.test."}))
                .send()
                .await;
            if let (Ok(root), Ok(d), Ok(_)) = (root, dir_ok, dns_ok)
                && root.status().is_success()
                && d.status().is_success()
            {
                pebble.issuing_root = root.text().await.expect("root");
                return Some(pebble);
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not come up in 20 s; its logs are in {}",
                pebble._dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Points `host` at `ip` in pebble's DNS.
    async fn add_a(&self, host: &str, ip: &str) {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .post(format!("http://127.0.0.1:{}/add-a", self.dns_management))
            .json(&serde_json::json!({"host": format!("{host}."), "addresses": [ip]}))
            .send()
            .await
            .expect("add-a");
        assert!(resp.status().is_success(), "add-a: {}", resp.status());
    }

    fn options(&self, challenge: ChallengeKind) -> AcmeOptions {
        AcmeOptions {
            contact_email: Some("ops@slipway.test".to_owned()),
            directory_url: self.directory.clone(),
            extra_root: Some(self.api_root.clone()),
            challenge,
            order_timeout: Duration::from_secs(30),
            ..AcmeOptions::default()
        }
    }
}

// ---- the proxy with both listeners ----

pub(crate) struct TestEdge {
    proxy: Arc<Proxy>,
    pub(crate) http: SocketAddr,
    pub(crate) https: SocketAddr,
    pub(crate) store: Arc<CertStore>,
    stop: CancellationToken,
}

impl Drop for TestEdge {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(crate) async fn start_edge(routes: &str, data_dir: &Path) -> TestEdge {
    let http_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let https_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http = http_listener.local_addr().expect("addr");
    let https = https_listener.local_addr().expect("addr");
    let table = match slipway_proxy::file::parse(routes, "routes.yml") {
        Ok(set) => RouteTable::build([set]),
        Err(d) => panic!("routes: {d:?}"),
    };
    let config = Config {
        https_port: https.port(),
        ..Config::default()
    };
    let proxy = Arc::new(Proxy::new(config, table));
    let store = Arc::new(CertStore::open(data_dir).expect("open the store"));
    let resolver = CertResolver::new(proxy.clone(), store.clone());
    let tls = Arc::new(HttpsConfig::new(resolver).expect("tls config"));
    let stop = CancellationToken::new();
    tokio::spawn(slipway_proxy::serve_http(
        proxy.clone(),
        http_listener,
        stop.clone(),
    ));
    tokio::spawn(slipway_proxy::serve_https(
        proxy.clone(),
        https_listener,
        tls,
        stop.clone(),
    ));
    TestEdge {
        proxy,
        http,
        https,
        store,
        stop,
    }
}

impl TestEdge {
    fn acme(&self, options: AcmeOptions) -> AcmeManager {
        let manager = AcmeManager::spawn(
            options,
            self.store.clone(),
            self.proxy.challenges().clone(),
            self.stop.clone(),
        );
        manager.follow(self.proxy.clone(), self.stop.clone());
        manager
    }

    /// Waits until `host` has a certificate (60 s), failing with its status.
    async fn wait_for_certificate(&self, host: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.store.status(host, &Tls::Acme);
            if status.present {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no certificate for {host} in 60 s: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---- a TLS client that trusts only the given roots ----

struct Answer {
    alpn: Option<Vec<u8>>,
    serial: String,
    issuer: String,
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

async fn https_get(
    addr: SocketAddr,
    sni: &str,
    roots_pem: &str,
    path: &str,
) -> Result<Answer, String> {
    let config = client_config(roots_pem, &[b"h2", b"http/1.1"]);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no peer certificate")?;
    let info = cert_info(leaf.as_ref())?;
    let request = |uri: String| {
        hyper::Request::get(uri)
            .header("host", sni)
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = request(format!("https://{sni}{path}"));
        req.headers_mut().remove("host");
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(request(path.to_owned()))
            .await
            .map_err(|e| e.to_string())?
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Answer {
        alpn,
        serial: info.serial,
        issuer: info.issuer,
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn routes_for(host: &str, backend: SocketAddr, extra: &str) -> String {
    format!("routes:\n  - host: {host}\n    backends: [\"{backend}\"]\n    tls: acme\n{extra}")
}

// ---- the tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_certificate_is_served_over_h2_and_a_restart_orders_nothing() {
    let backend = TestBackend::start("web").await;
    let data = tempfile::tempdir().expect("tempdir");
    let host = "web.slipway.test";
    let routes = routes_for(
        host,
        backend.addr,
        "    http: redirect\n    hsts: {max_age: 600, include_subdomains: true}\n",
    );
    let edge = start_edge(&routes, data.path()).await;
    let Some(pebble) = Pebble::start(edge.http.port(), edge.https.port()).await else {
        return;
    };
    let acme = edge.acme(pebble.options(ChallengeKind::Http01));
    edge.wait_for_certificate(host).await;
    assert_eq!(acme.orders_for(host), 1);

    let answer = https_get(edge.https, host, &pebble.issuing_root, "/headers")
        .await
        .expect("HTTPS through the proxy");
    assert_eq!(answer.alpn.as_deref(), Some(&b"h2"[..]), "HTTP/2 by ALPN");
    assert_eq!(answer.status, 200);
    let seen: serde_json::Value = serde_json::from_str(&answer.body).expect("headers json");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-port"], edge.https.port().to_string());
    assert_eq!(
        answer
            .headers
            .get("strict-transport-security")
            .and_then(|v| v.to_str().ok()),
        Some("max-age=600; includeSubDomains")
    );
    let status = edge.store.status(host, &Tls::Acme);
    assert_eq!(status.issuer.as_deref(), Some(answer.issuer.as_str()));
    assert!(
        status.next_attempt.is_some() && status.last_error.is_none(),
        "{status:?}"
    );

    // Plain HTTP redirects to the HTTPS listener (and has no HSTS: it means nothing there).
    let plain = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(format!("http://{}/a?b=1", edge.http))
        .header("host", host)
        .send()
        .await
        .expect("plain request");
    assert_eq!(plain.status(), 308);
    assert_eq!(
        plain
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some(format!("https://{host}:{}/a?b=1", edge.https.port()).as_str())
    );
    assert!(plain.headers().get("strict-transport-security").is_none());

    // Files: the account and the key private, the chain beside it.
    use std::os::unix::fs::PermissionsExt;
    for file in ["acme/account.json", "acme/web.slipway.test/key.pem"] {
        let mode = std::fs::metadata(data.path().join(file))
            .expect(file)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }

    // A restart: a new store, resolver and manager on the same data dir (other ports, so
    // pebble could not even validate an order) serve the same certificate and order none.
    let before = answer.serial;
    drop(acme);
    drop(edge);
    let again = start_edge(&routes, data.path()).await;
    let acme = again.acme(pebble.options(ChallengeKind::Http01));
    let answer = https_get(again.https, host, &pebble.issuing_root, "/")
        .await
        .expect("HTTPS after the restart");
    assert_eq!(
        answer.serial, before,
        "the same certificate after a restart"
    );
    assert_eq!(answer.body, "web");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(acme.orders(), 0, "a restart ordered a certificate it had");
    assert!(again.store.status(host, &Tls::Acme).next_attempt.is_some());
    drop(pebble);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_certificate_is_served_to_a_client_trusting_only_pebble() {
    let backend = TestBackend::start("alpn").await;
    let data = tempfile::tempdir().expect("tempdir");
    let host = "alpn.slipway.test";
    let edge = start_edge(&routes_for(host, backend.addr, ""), data.path()).await;
    let Some(pebble) = Pebble::start(edge.http.port(), edge.https.port()).await else {
        return;
    };
    let acme = edge.acme(pebble.options(ChallengeKind::TlsAlpn01));
    edge.wait_for_certificate(host).await;
    assert_eq!(acme.orders(), 1);
    let answer = https_get(edge.https, host, &pebble.issuing_root, "/")
        .await
        .expect("HTTPS through the proxy");
    assert_eq!(answer.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!((answer.status, answer.body.as_str()), (200, "alpn"));
    // The challenge certificate is gone once the order is over: a validation-style
    // handshake now gets no certificate.
    let mut config =
        rustls::ClientConfig::builder_with_provider(slipway_proxy::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let tcp = TcpStream::connect(edge.https).await.expect("connect");
    let refused = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from(host.to_owned()).expect("name"),
            tcp,
        )
        .await;
    assert!(refused.is_err());
    drop(pebble);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_order_backs_off_doubling_and_records_its_error() {
    let backend = TestBackend::start("fail").await;
    let data = tempfile::tempdir().expect("tempdir");
    let host = "fail.slipway.test";
    let edge = start_edge(&routes_for(host, backend.addr, ""), data.path()).await;
    let Some(pebble) = Pebble::start(edge.http.port(), edge.https.port()).await else {
        return;
    };
    // Nothing listens on 127.0.0.2 at the proxy's port: every validation fails.
    pebble.add_a(host, "127.0.0.2").await;
    let options = AcmeOptions {
        first_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(60),
        ..pebble.options(ChallengeKind::Http01)
    };
    let acme = edge.acme(options);
    let parse = |t: &Option<String>| -> SystemTime {
        humantime::parse_rfc3339(t.as_deref().expect("a time")).expect("rfc3339")
    };
    let mut waits = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while waits.len() < 3 {
        let status = edge.store.status(host, &Tls::Acme);
        if status.failures as usize > waits.len() {
            assert_eq!(status.failures as usize, waits.len() + 1, "{status:?}");
            assert!(!status.present);
            let error = status.last_error.clone().expect("the error is recorded");
            assert!(error.contains(host), "{error}");
            let wait = parse(&status.next_attempt)
                .duration_since(parse(&status.last_error_at))
                .expect("next attempt after the error");
            waits.push(wait);
        }
        assert!(Instant::now() < deadline, "3 failures in 60 s: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ms = Duration::from_millis;
    assert_eq!(waits, vec![ms(500), ms(1000), ms(2000)]);
    // One order per failure: no retry storm between them.
    let orders = acme.orders_for(host);
    assert!((3..=4).contains(&orders), "{orders} orders for 3 failures");
    let metrics = edge.store.render_metrics();
    assert!(
        metrics.contains("slipway_proxy_acme_consecutive_failures{host=\"fail.slipway.test\"}"),
        "{metrics}"
    );
    drop(pebble);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_certificates_are_checked_served_and_read_back() {
    let backend = TestBackend::start("uploaded").await;
    let data = tempfile::tempdir().expect("tempdir");
    let ca = test_ca("upload test CA");
    let routes = format!(
        "routes:\n  - host: shop.example.com\n    backends: [\"{b}\"]\n    tls: shop.example.com\n  \
         - host: \"*.apps.example.com\"\n    backends: [\"{b}\"]\n    tls: \"*.apps.example.com\"\n  \
         - host: plain.example.com\n    backends: [\"{b}\"]\n",
        b = backend.addr
    );
    let edge = start_edge(&routes, data.path()).await;

    let (chain, key) = leaf(&ca, &["shop.example.com"], false);
    let (_, other_key) = leaf(&ca, &["shop.example.com"], false);
    match edge
        .store
        .add_uploaded("shop.example.com", chain.as_bytes(), other_key.as_bytes())
    {
        Err(CertError::KeyMismatch { .. }) => {}
        other => panic!("a key of another certificate: {other:?}"),
    }
    match edge
        .store
        .add_uploaded("other.example.com", chain.as_bytes(), key.as_bytes())
    {
        Err(e @ CertError::WrongHost { .. }) => {
            assert!(e.to_string().contains("shop.example.com"), "{e}")
        }
        other => panic!("a certificate for another host: {other:?}"),
    }
    let (old_chain, old_key) = leaf(&ca, &["shop.example.com"], true);
    match edge
        .store
        .add_uploaded("shop.example.com", old_chain.as_bytes(), old_key.as_bytes())
    {
        Err(CertError::Expired { .. }) => {}
        other => panic!("an expired certificate: {other:?}"),
    }
    match edge
        .store
        .add_uploaded("shop.example.com", b"not a pem", key.as_bytes())
    {
        Err(CertError::NoCertificate { .. }) => {}
        other => panic!("no PEM: {other:?}"),
    }
    // No certificate yet: the handshake fails rather than serve something else.
    assert!(
        https_get(edge.https, "shop.example.com", &ca.pem, "/")
            .await
            .is_err()
    );

    let info = edge
        .store
        .add_uploaded("shop.example.com", chain.as_bytes(), key.as_bytes())
        .expect("a good certificate");
    let (wild_chain, wild_key) = leaf(&ca, &["*.apps.example.com"], false);
    edge.store
        .add_uploaded(
            "*.apps.example.com",
            wild_chain.as_bytes(),
            wild_key.as_bytes(),
        )
        .expect("a wildcard certificate");

    let answer = https_get(edge.https, "shop.example.com", &ca.pem, "/")
        .await
        .expect("the uploaded certificate");
    assert_eq!((answer.status, answer.body.as_str()), (200, "uploaded"));
    assert_eq!(answer.serial, info.serial);
    let wild = https_get(edge.https, "a.apps.example.com", &ca.pem, "/")
        .await
        .expect("the wildcard certificate");
    assert_eq!(wild.status, 200);
    let status = edge.store.status(
        "shop.example.com",
        &Tls::Certificate("shop.example.com".into()),
    );
    assert!(status.present && status.issuer.is_some_and(|i| i.contains("upload test CA")));

    // An SNI no route names, and a route without TLS: no certificate, the handshake fails.
    for sni in [
        "nobody.example.com",
        "plain.example.com",
        "b.a.apps.example.com",
    ] {
        let err = https_get(edge.https, sni, &ca.pem, "/")
            .await
            .err()
            .unwrap_or_else(|| panic!("{sni} was served a certificate"));
        assert!(err.contains("TLS handshake"), "{sni}: {err}");
    }

    // Read back by a new store on the same data dir, key file private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.path().join("certs/shop.example.com/key.pem"))
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let reopened = CertStore::open(data.path()).expect("reopen");
    assert_eq!(
        reopened
            .uploaded_cert("shop.example.com")
            .map(|c| c.info.serial),
        Some(info.serial)
    );
    assert!(reopened.uploaded_cert("*.apps.example.com").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_sni_gets_the_certificate_of_the_listeners_ip() {
    let backend = TestBackend::start("by ip").await;
    let data = tempfile::tempdir().expect("tempdir");
    let ca = test_ca("ip test CA");
    let routes = format!(
        "routes:\n  - host: 127.0.0.1\n    backends: [\"{b}\"]\n    tls: 127.0.0.1\n",
        b = backend.addr
    );
    let edge = start_edge(&routes, data.path()).await;
    // An IP as the server name: rustls sends no SNI.
    assert!(
        https_get(edge.https, "127.0.0.1", &ca.pem, "/")
            .await
            .is_err(),
        "no certificate uploaded yet"
    );
    let (chain, key) = leaf(&ca, &["127.0.0.1"], false);
    let info = edge
        .store
        .add_uploaded("127.0.0.1", chain.as_bytes(), key.as_bytes())
        .expect("a certificate for the IP");
    assert_eq!(info.names, vec!["127.0.0.1".to_owned()]);
    let answer = https_get(edge.https, "127.0.0.1", &ca.pem, "/")
        .await
        .expect("no SNI, the IP's certificate");
    assert_eq!((answer.status, answer.body.as_str()), (200, "by ip"));
    assert_eq!(answer.serial, info.serial);
    // Twice, so the per-address configuration built for the first one is reused.
    let again = https_get(edge.https, "127.0.0.1", &ca.pem, "/")
        .await
        .expect("the second client without SNI");
    assert_eq!(again.serial, info.serial);

    // The IP's route may name another host's certificate (what `h2load https://IP/`
    // in the benchmark gets, its requests then routed by their authority).
    let data = tempfile::tempdir().expect("tempdir");
    let routes = format!(
        "routes:\n  - host: 127.0.0.1\n    backends: [\"{b}\"]\n    tls: app.test\n  \
         - host: app.test\n    backends: [\"{b}\"]\n    tls: app.test\n",
        b = backend.addr
    );
    let edge = start_edge(&routes, data.path()).await;
    let (chain, key) = leaf(&ca, &["app.test"], false);
    let info = edge
        .store
        .add_uploaded("app.test", chain.as_bytes(), key.as_bytes())
        .expect("a certificate for app.test");
    let tcp = TcpStream::connect(edge.https).await.expect("connect");
    let config = rustls::ClientConfig::builder_with_provider(slipway_proxy::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name"),
            tcp,
        )
        .await
        .expect("no SNI, the certificate the IP's route names");
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("leaf");
    assert_eq!(cert_info(leaf.as_ref()).expect("parse").serial, info.serial);
}

/// A verifier that takes any certificate (h2load's view), to see which one is sent.
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &slipway_proxy::tls::crypto_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &slipway_proxy::tls::crypto_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        slipway_proxy::tls::crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_serves_https_reads_uploads_of_another_process_and_reports_certificates() {
    use slipway_proxy::{Edge, EdgeConfig};
    let backend = TestBackend::start("edge").await;
    let data = tempfile::tempdir().expect("tempdir");
    let ca = test_ca("edge test CA");
    let routes = data.path().join("routes.yml");
    std::fs::write(
        &routes,
        format!(
            "routes:\n  - host: cli.example.com\n    backends: [\"{b}\"]\n    tls: cli.example.com\n",
            b = backend.addr
        ),
    )
    .expect("write routes");
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let edge = Edge::start(
        EdgeConfig {
            http: Some("127.0.0.1:0".parse().expect("addr")),
            https: Some("127.0.0.1:0".parse().expect("addr")),
            routes_file: Some(routes),
            data_dir: Some(data.path().to_owned()),
            ..EdgeConfig::default()
        },
        stop.clone(),
    )
    .await
    .expect("the edge starts");
    let https = edge.https_addr().expect("https listener");
    let certificate = |edge: &Edge| {
        edge.status()
            .routes
            .into_iter()
            .find(|r| r.host == "cli.example.com")
            .and_then(|r| r.tls.certificate)
            .expect("the route's certificate state")
    };
    assert!(!certificate(&edge).present);
    assert!(
        https_get(https, "cli.example.com", &ca.pem, "/")
            .await
            .is_err()
    );

    // `slipway proxy cert add` is another process with its own store on the data dir.
    let (chain, key) = leaf(&ca, &["cli.example.com"], false);
    let cli = CertStore::open(data.path()).expect("the CLI's store");
    let info = cli
        .add_uploaded("cli.example.com", chain.as_bytes(), key.as_bytes())
        .expect("upload");
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        match https_get(https, "cli.example.com", &ca.pem, "/").await {
            Ok(a) => break a,
            Err(e) => assert!(Instant::now() < deadline, "not picked up in 10 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((answer.status, answer.body.as_str()), (200, "edge"));
    assert_eq!(answer.serial, info.serial);
    let status = certificate(&edge);
    assert!(status.present, "{status:?}");
    assert_eq!(
        status.not_after,
        Some(humantime::format_rfc3339_millis(info.not_after).to_string())
    );
    assert!(status.issuer.is_some_and(|i| i.contains("edge test CA")));
    let metrics = edge.render_metrics();
    let not_after = info
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert!(
        metrics.contains(&format!(
            "slipway_proxy_certificate_not_after_seconds{{host=\"cli.example.com\",origin=\"uploaded\"}} {not_after}"
        )),
        "{metrics}"
    );

    // Removed by the CLI: no longer served.
    assert!(cli.remove_uploaded("cli.example.com").expect("remove"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while https_get(https, "cli.example.com", &ca.pem, "/")
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "a removed certificate still served after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two connections of one TLS client (one `version`) to `addr`, each with a request read
/// to its end: how the second handshake went.
async fn second_handshake(
    addr: SocketAddr,
    sni: &str,
    roots_pem: &str,
    version: &'static rustls::SupportedProtocolVersion,
) -> Option<rustls::HandshakeKind> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let roots = root_store(roots_pem);
    let config = rustls::ClientConfig::builder_with_provider(slipway_proxy::tls::crypto_provider())
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut kind = None;
    for _ in 0..2 {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        kind = tls.get_ref().1.handshake_kind();
        tls.write_all(
            format!("GET / HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("request");
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_client_resumes_its_session_on_tls_13_and_12() {
    let backend = TestBackend::start("resumed").await;
    let data = tempfile::tempdir().expect("tempdir");
    let ca = test_ca("resumption test CA");
    let routes = format!(
        "routes:\n  - host: again.example.com\n    backends: [\"{b}\"]\n    tls: again.example.com\n",
        b = backend.addr
    );
    let edge = start_edge(&routes, data.path()).await;
    let (chain, key) = leaf(&ca, &["again.example.com"], false);
    edge.store
        .add_uploaded("again.example.com", chain.as_bytes(), key.as_bytes())
        .expect("upload");
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let kind = second_handshake(edge.https, "again.example.com", &ca.pem, version).await;
        assert_eq!(kind, Some(rustls::HandshakeKind::Resumed), "{version:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_within_30_days_of_expiry_is_renewed_and_one_far_from_it_is_not() {
    let backend = TestBackend::start("renewed").await;
    let data = tempfile::tempdir().expect("tempdir");
    let (soon, later) = ("soon.slipway.test", "later.slipway.test");
    // Two certificates as an earlier run left them under DATA/acme: one with 10 days
    // left, one with 60.
    let ca = test_ca("an earlier CA");
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    let day = Duration::from_secs(86_400);
    for (host, days_left) in [(soon, 10), (later, 60)] {
        let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).expect("params");
        params.not_before = epoch + (now - day * 80);
        params.not_after = epoch + (now + day * days_left);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca.issuer).expect("cert");
        let dir = data.path().join("acme").join(host);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("fullchain.pem"), cert.pem()).expect("write");
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write");
    }
    let routes = format!(
        "{}{}",
        routes_for(soon, backend.addr, ""),
        routes_for(later, backend.addr, "").replace("routes:\n", "")
    );
    let edge = start_edge(&routes, data.path()).await;
    let old_serial = edge.store.acme_cert(soon).expect("read back").info.serial;
    let Some(pebble) = Pebble::start(edge.http.port(), edge.https.port()).await else {
        return;
    };
    let acme = edge.acme(pebble.options(ChallengeKind::Http01));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cert = edge.store.acme_cert(soon).expect("a certificate");
        if cert.info.serial != old_serial {
            assert!(cert.info.issuer.contains("Pebble"), "{}", cert.info.issuer);
            break;
        }
        let status = edge.store.status(soon, &Tls::Acme);
        assert!(Instant::now() < deadline, "not renewed in 60 s: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = https_get(edge.https, soon, &pebble.issuing_root, "/")
        .await
        .expect("the renewed certificate, served");
    assert_eq!((answer.status, answer.body.as_str()), (200, "renewed"));
    assert_eq!(acme.orders_for(soon), 1);
    assert_eq!(
        acme.orders_for(later),
        0,
        "60 days left: nothing to renew yet"
    );
    let later_status = edge.store.status(later, &Tls::Acme);
    let next = humantime::parse_rfc3339(later_status.next_attempt.as_deref().expect("planned"))
        .expect("rfc3339");
    let in_days = next
        .duration_since(SystemTime::now())
        .expect("in the future")
        .as_secs()
        / 86_400;
    assert!(
        (29..=30).contains(&in_days),
        "renewal planned in {in_days} days"
    );
    drop(pebble);
}

/// The certificates of `pem`, as the only roots a test client trusts.
pub(crate) fn root_store(pem: &str) -> rustls::RootCertStore {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.expect("root pem")).expect("root");
    }
    roots
}

/// A TLS client trusting only `roots_pem`, offering `alpn`.
pub(crate) fn client_config(roots_pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut config =
        rustls::ClientConfig::builder_with_provider(slipway_proxy::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(root_store(roots_pem))
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}
