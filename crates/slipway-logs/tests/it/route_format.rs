//! Wire forms: exact RFC 5424 messages, SD escaping, GELF and its UDP chunks.

use std::time::Duration;

use slipway_logs::route::format::{self, Outgoing};
use slipway_logs::route::{RouteUri, Sink};
use slipway_logs::{ServiceKey, Stream};

use crate::route_support::{meta, record};

const T: i64 = 1_796_682_946_123_456_789;

#[test]
fn rfc5424_exact() {
    let key = ServiceKey::new("prod", "shop", "web");
    let m = meta("abc123def4567", "shop-web-1", &[]);
    let r = record(&m, T, Stream::Stdout, "GET / 200");
    let o = Outgoing {
        key: &key,
        position: 7,
        record: &r,
        meta: &m,
        hostname: "node1",
    };
    assert_eq!(
        format::rfc5424(&o),
        "<14>1 2026-12-07T22:35:46.123456Z node1 web shop-web-1 - [slipway@32473 env=\"prod\" \
         stack=\"shop\" service=\"web\" container=\"shop-web-1\" container_id=\"abc123def456\" \
         replica=\"1\" revision=\"r1\" stream=\"stdout\"] GET / 200"
    );

    let mut r = record(&m, T, Stream::Stderr, "boom \"x\"\nat y");
    r.replica = None;
    r.revision = None;
    let mut fields = serde_json::Map::new();
    fields.insert("msg".into(), "a\"b\\c]d".into());
    fields.insert("bad name=]\"".into(), serde_json::json!(3));
    fields.insert("obj".into(), serde_json::json!({"k": [1]}));
    r.fields = Some(fields);
    let long_service = "s".repeat(60);
    let key = ServiceKey::new("prod", "shop", long_service.as_str());
    let o = Outgoing {
        key: &key,
        position: 7,
        record: &r,
        meta: &m,
        hostname: "my host",
    };
    let msg = format::rfc5424(&o);
    assert_eq!(
        msg,
        format!(
            "<11>1 2026-12-07T22:35:46.123456Z my_host {} shop-web-1 - [slipway@32473 env=\"prod\" \
             stack=\"shop\" service=\"{long_service}\" container=\"shop-web-1\" \
             container_id=\"abc123def456\" stream=\"stderr\" bad_name___=\"3\" \
             msg=\"a\\\"b\\\\c\\]d\" obj=\"{{\\\"k\\\":[1\\]}}\"] boom \"x\"\nat y",
            "s".repeat(48)
        )
    );
}

#[test]
fn gelf_message_and_chunks_reassemble() {
    let key = ServiceKey::new("prod", "shop", "web");
    let m = meta("abc123def4567", "shop-web-1", &[]);
    let r = record(&m, T, Stream::Stderr, "\u{1b}[31mfirst\u{1b}[0m\nsecond");
    let o = Outgoing {
        key: &key,
        position: 7,
        record: &r,
        meta: &m,
        hostname: "node1",
    };
    let g = format::gelf(&o);
    assert_eq!(g["version"], "1.1");
    assert_eq!(g["short_message"], "first");
    assert_eq!(g["full_message"], "first\nsecond");
    assert_eq!(g["level"], 3);
    assert_eq!(g["_env"], "prod");
    assert_eq!(g["_container"], "shop-web-1");
    assert_eq!(g["timestamp"].as_f64().expect("ts"), 1_796_682_946.123_456);

    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let chunks = format::gelf_chunks(&payload, *b"12345678");
    assert_eq!(chunks.len(), 100_000usize.div_ceil(8180));
    let mut back = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        assert!(c.len() <= 8192);
        assert_eq!(&c[..2], &[0x1e, 0x0f]);
        assert_eq!(&c[2..10], b"12345678");
        assert_eq!(c[10] as usize, i);
        assert_eq!(c[11] as usize, chunks.len());
        back.extend_from_slice(&c[12..]);
    }
    assert_eq!(back, payload);
    assert_eq!(format::gelf_chunks(b"{}", [0; 8]), vec![b"{}".to_vec()]);
}

#[tokio::test]
async fn udp_syslog_and_chunked_gelf_arrive() {
    let key = ServiceKey::new("prod", "shop", "web");
    let m = meta("abc123def4567", "shop-web-1", &[]);
    let big = "x".repeat(30_000);
    let r1 = record(&m, T, Stream::Stdout, "hello");
    let r2 = record(&m, T, Stream::Stdout, &big);
    let rx = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = rx.local_addr().expect("addr").port();

    let mut sink = Sink::new(&RouteUri::parse(&format!("syslog://127.0.0.1:{port}")).expect("uri"))
        .expect("sink");
    let batch = [Outgoing {
        key: &key,
        position: 0,
        record: &r1,
        meta: &m,
        hostname: "n",
    }];
    let sent = sink.send(&batch, &mut |_| {}).await;
    assert_eq!(sent.done, 1);
    let mut buf = vec![0; 70_000];
    let n = tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf))
        .await
        .expect("datagram in time")
        .expect("recv");
    assert_eq!(
        std::str::from_utf8(&buf[..n]).expect("utf8"),
        format::rfc5424(&batch[0])
    );

    let mut sink = Sink::new(&RouteUri::parse(&format!("gelf://127.0.0.1:{port}")).expect("uri"))
        .expect("sink");
    let batch = [Outgoing {
        key: &key,
        position: 0,
        record: &r2,
        meta: &m,
        hostname: "n",
    }];
    assert_eq!(sink.send(&batch, &mut |_| {}).await.done, 1);
    let mut parts: Vec<(u8, Vec<u8>)> = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf))
            .await
            .expect("chunk in time")
            .expect("recv");
        assert_eq!(&buf[..2], &[0x1e, 0x0f], "chunked");
        let count = buf[11] as usize;
        parts.push((buf[10], buf[12..n].to_vec()));
        if parts.len() == count {
            break;
        }
    }
    assert!(parts.len() > 1);
    parts.sort_by_key(|p| p.0);
    let whole: Vec<u8> = parts.into_iter().flat_map(|p| p.1).collect();
    let v: serde_json::Value = serde_json::from_slice(&whole).expect("reassembled JSON");
    assert_eq!(v["short_message"].as_str().expect("short").len(), 30_000);
}

#[tokio::test]
async fn gelf_tcp_is_nul_terminated_and_raw_defaults_to_the_line() {
    use tokio::io::AsyncReadExt;
    let key = ServiceKey::new("prod", "shop", "web");
    let m = meta("abc123def4567", "shop-web-1", &[]);
    let r1 = record(&m, T, Stream::Stdout, "one");
    let r2 = record(&m, T, Stream::Stderr, "two\nthree");
    let batch = [
        Outgoing {
            key: &key,
            position: 0,
            record: &r1,
            meta: &m,
            hostname: "n",
        },
        Outgoing {
            key: &key,
            position: 19,
            record: &r2,
            meta: &m,
            hostname: "n",
        },
    ];
    for (scheme, want) in [("gelf+tcp", None), ("raw", Some("one\ntwo\nthree\n"))] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let reader = tokio::spawn(async move {
            let (mut c, _) = listener.accept().await.expect("accept");
            let mut all = Vec::new();
            c.read_to_end(&mut all).await.expect("read");
            all
        });
        let mut sink =
            Sink::new(&RouteUri::parse(&format!("{scheme}://127.0.0.1:{port}")).expect("uri"))
                .expect("sink");
        assert_eq!(sink.send(&batch, &mut |_| {}).await.done, 2);
        sink.close().await;
        let bytes = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("in time")
            .expect("join");
        match want {
            Some(text) => assert_eq!(std::str::from_utf8(&bytes).expect("utf8"), text),
            None => {
                let msgs: Vec<serde_json::Value> = bytes
                    .split(|b| *b == 0)
                    .filter(|m| !m.is_empty())
                    .map(|m| serde_json::from_slice(m).expect("GELF JSON"))
                    .collect();
                assert_eq!(msgs.len(), 2);
                assert_eq!(bytes.last(), Some(&0));
                assert_eq!(msgs[0]["short_message"], "one");
                assert_eq!(msgs[1]["level"], 3);
                assert_eq!(msgs[1]["full_message"], "two\nthree");
            }
        }
    }
}
