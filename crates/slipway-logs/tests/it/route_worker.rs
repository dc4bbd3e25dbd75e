//! The worker over an in-memory source: filters, a receiver down at first beside one that
//! is up, live records after catching up, raw templates, syslog over TLS.

use std::sync::Arc;
use std::time::Duration;

use slipway_logs::route::{RouteHandle, RouteUri, spawn_route};
use slipway_logs::{LogSource, ServiceKey, Stream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::sync::watch;

use crate::route_support::{LineCollector, MemSource, free_port, meta, record, wait_for};

const T0: i64 = 1_796_682_946_000_000_000;

fn caught_up(h: &RouteHandle) -> bool {
    let s = h.status();
    !s.lag.is_empty() && s.lag.iter().all(|l| l.bytes == 0)
}

fn two_services(n: usize) -> Arc<MemSource> {
    let src = MemSource::new();
    let web = meta("aaa111", "shop-web-1", &[("tier", "front")]);
    let db = meta("bbb111", "shop-db-1", &[("tier", "back")]);
    src.add_container(web.clone());
    src.add_container(db.clone());
    let kweb = ServiceKey::new("prod", "shop", "web");
    let kdb = ServiceKey::new("prod", "shop", "db");
    for i in 0..n {
        let stream = if i % 3 == 0 {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        let (k, m) = if i % 2 == 0 {
            (&kweb, &web)
        } else {
            (&kdb, &db)
        };
        src.push(
            k,
            record(m, T0 + i as i64 * 1000, stream, &format!("rec {i:05}")),
        );
    }
    src
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_route_only_matching_records() {
    let src = two_services(600);
    let col = LineCollector::start_on(0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_tx, rx) = watch::channel(false);
    let uri = RouteUri::parse(&format!(
        "raw://127.0.0.1:{}?filter.labels=tier:fr*&filter.sources=stdout&template={}",
        col.port, "{{ container }} {{ stream }} {{ service }} {{ line }}"
    ))
    .expect("uri");
    let h =
        spawn_route(uri, src.clone() as Arc<dyn LogSource>, dir.path(), "n", rx).expect("spawn");
    wait_for("caught up", Duration::from_secs(30), || caught_up(&h)).await;
    // Even records are web's; of those, i % 3 == 0 are stderr.
    let want: Vec<String> = (0..600)
        .filter(|i| i % 2 == 0 && i % 3 != 0)
        .map(|i| format!("shop-web-1 stdout web rec {i:05}"))
        .collect();
    wait_for("lines", Duration::from_secs(10), || {
        col.snapshot().len() >= want.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(col.snapshot(), want);
    let s = h.status();
    assert_eq!(s.delivered, want.len() as u64);
    assert!(
        s.lag.iter().all(|l| l.bytes == 0 && l.records == Some(0)),
        "db's cursor moved too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_receiver_waits_while_another_route_delivers() {
    let src = two_services(1000);
    let up = LineCollector::start_on(0).await;
    let down_port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, rx) = watch::channel(false);
    let a = spawn_route(
        RouteUri::parse(&format!("raw+tcp://127.0.0.1:{down_port}")).expect("uri a"),
        src.clone() as Arc<dyn LogSource>,
        dir.path(),
        "n",
        rx.clone(),
    )
    .expect("spawn a");
    let b = spawn_route(
        RouteUri::parse(&format!("raw+tcp://127.0.0.1:{}", up.port)).expect("uri b"),
        src.clone() as Arc<dyn LogSource>,
        dir.path(),
        "n",
        rx,
    )
    .expect("spawn b");
    wait_for("b delivers", Duration::from_secs(30), || caught_up(&b)).await;
    let sa = a.status();
    assert_eq!(sa.delivered, 0);
    assert!(!sa.connected);
    let err = sa.last_error.expect("a's error");
    assert!(
        err.contains(&format!("connecting to 127.0.0.1:{down_port}")),
        "{err}"
    );
    assert!(sa.last_error_at.is_some());
    assert!(sa.lag.iter().all(|l| l.bytes > 0));

    let late = LineCollector::start_on(down_port).await;
    wait_for("a catches up", Duration::from_secs(40), || caught_up(&a)).await;
    assert!(a.status().connected);

    // Live: records committed after both caught up reach both, woken by subscribe().
    let m = meta("aaa111", "shop-web-1", &[]);
    for i in 1000..1010 {
        src.push(
            &ServiceKey::new("prod", "shop", "web"),
            record(&m, T0 + i * 1000, Stream::Stdout, &format!("rec {i:05}")),
        );
    }
    wait_for("live records", Duration::from_secs(10), || {
        late.snapshot().len() == 1010 && up.snapshot().len() == 1010
    })
    .await;
    for c in [&late, &up] {
        let mut got = c.snapshot();
        got.sort();
        let want: Vec<String> = (0..1010).map(|i| format!("rec {i:05}")).collect();
        assert_eq!(got, want);
    }
    tx.send(true).expect("shutdown");
    tokio::time::timeout(Duration::from_secs(10), async {
        a.join().await;
        b.join().await;
    })
    .await
    .expect("both stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_tls_with_a_private_ca() {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "routes test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write ca");

    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (mtx, mut mrx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = acceptor.accept(tcp).await.expect("handshake");
        let mut r = tokio::io::BufReader::new(tls);
        loop {
            // RFC 6587 octet counting: LEN SP MSG.
            let mut len = Vec::new();
            if r.read_until(b' ', &mut len).await.expect("read len") == 0 {
                break;
            }
            let n: usize = std::str::from_utf8(&len)
                .expect("len")
                .trim()
                .parse()
                .expect("len number");
            let mut msg = vec![0; n];
            r.read_exact(&mut msg).await.expect("msg");
            let _ = mtx.send(String::from_utf8(msg).expect("utf8"));
        }
    });

    let src = MemSource::new();
    let m = meta("aaa111", "shop-web-1", &[]);
    src.add_container(m.clone());
    let key = ServiceKey::new("prod", "shop", "web");
    src.push(&key, record(&m, T0, Stream::Stdout, "one"));
    src.push(&key, record(&m, T0 + 1000, Stream::Stderr, "two\nlines"));
    let (_tx, rx) = watch::channel(false);
    let uri = RouteUri::parse(&format!(
        "syslog+tls://localhost:{port}?tls.ca={}",
        ca_path.display()
    ))
    .expect("uri");
    let h = spawn_route(
        uri,
        src.clone() as Arc<dyn LogSource>,
        dir.path().join("c"),
        "node1",
        rx,
    )
    .expect("spawn");
    let first = tokio::time::timeout(Duration::from_secs(10), mrx.recv())
        .await
        .expect("in time")
        .expect("msg");
    let second = tokio::time::timeout(Duration::from_secs(10), mrx.recv())
        .await
        .expect("in time")
        .expect("msg");
    assert!(
        first.starts_with(
            "<14>1 2026-12-07T22:35:46.000000Z node1 web shop-web-1 - [slipway@32473 "
        ),
        "{first}"
    );
    assert!(first.ends_with("] one"), "{first}");
    assert!(
        second.starts_with("<11>1 2026-12-07T22:35:46.000001Z "),
        "{second}"
    );
    assert!(
        second.ends_with("] two\nlines"),
        "octet counting keeps the record whole: {second}"
    );
    wait_for("caught up", Duration::from_secs(10), || caught_up(&h)).await;
}

#[tokio::test]
async fn a_tls_route_without_its_ca_file_does_not_start() {
    let src = MemSource::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_tx, rx) = watch::channel(false);
    let uri = RouteUri::parse("syslog+tls://u:pw@localhost:6514?tls.ca=/nonexistent/ca.pem")
        .expect("uri");
    let e =
        spawn_route(uri, src as Arc<dyn LogSource>, dir.path(), "n", rx).expect_err("no CA file");
    let text = e.to_string();
    assert!(
        text.starts_with("log route syslog+tls://u:******@localhost:6514"),
        "{text}"
    );
    assert!(
        text.contains("reading tls.ca /nonexistent/ca.pem"),
        "{text}"
    );
}
