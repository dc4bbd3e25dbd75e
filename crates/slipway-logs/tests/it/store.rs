//! The store: round trips, crash recovery, retention, search over a million lines, follow.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use slipway_logs::store::{
    Append, Checkpoint, Query, Retention, RetentionPolicy, Store, StoreOptions,
};
use slipway_logs::{ContainerMeta, LogSource, Record, ServiceKey, Stream};

use crate::support::record;

const C1: &str = "aaaaaaaaaaaa1111";

fn key() -> ServiceKey {
    ServiceKey::new("prod", "shop/main", "web")
}

fn append(key: &ServiceKey, records: Vec<Record>, ck: Option<Checkpoint>) -> Append {
    Append {
        key: key.clone(),
        records,
        checkpoints: ck.map(|c| (C1.to_owned(), c)).into_iter().collect(),
        containers: vec![ContainerMeta {
            id: C1.to_owned(),
            name: "web-1".to_owned(),
            image: "img".to_owned(),
            labels: Default::default(),
        }],
    }
}

#[test]
fn round_trip_keeps_every_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = [
        "plain",
        "tab\there",
        "multi\nline\nrecord",
        "back\\slash \\n not a newline\\",
        "\r\ncrlf\r",
        "\u{1b}[1;31mred\u{1b}[0m and ünïcode",
        "",
    ];
    let mut recs: Vec<Record> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| record(i as i64 + 1, C1, l))
        .collect();
    recs[1].stream = Stream::Stderr;
    recs[2].replica = Some(2);
    recs[2].revision = Some("v1\tx".to_owned());
    recs[3].fields = serde_json::from_str(r#"{"level":"info","msg":"a\tb\nc"}"#).ok();
    {
        let store = Store::open(dir.path(), StoreOptions::default()).expect("open");
        store
            .commit(&[append(
                &key(),
                recs.clone(),
                Some(Checkpoint {
                    ts_ns: 7,
                    count_at_ts: 1,
                }),
            )])
            .expect("commit");
        let b = store.read(&key(), 0, 100).expect("read");
        assert_eq!(
            b.records
                .iter()
                .map(|p| p.record.clone())
                .collect::<Vec<_>>(),
            expect_short(&recs)
        );
    }
    let store = Store::open(dir.path(), StoreOptions::default()).expect("reopen");
    assert_eq!(store.services(), vec![key()]);
    let b = store.read(&key(), 0, 100).expect("read");
    assert_eq!(
        b.records
            .iter()
            .map(|p| p.record.clone())
            .collect::<Vec<_>>(),
        expect_short(&recs)
    );
    assert_eq!(b.next, store.end(&key()));
    assert_eq!(
        store.checkpoint(C1),
        Some((
            key(),
            Checkpoint {
                ts_ns: 7,
                count_at_ts: 1
            }
        ))
    );
    assert_eq!(
        store.container(&key(), "aaaaaaaaaaaa").map(|c| c.name),
        Some("web-1".to_owned())
    );
    // Reading from a position in the middle gives the rest.
    let second = b.records[1].position;
    let rest = store.read(&key(), second, 2).expect("read");
    assert_eq!(rest.records.len(), 2);
    assert_eq!(rest.records[0].record.line, "tab\there");
    assert_eq!(rest.next, b.records[3].position);
    // Grep sees the message without ANSI escapes.
    let q = Query {
        grep: Some(regex::Regex::new("^red and").expect("re")),
        ..Query::default()
    };
    assert_eq!(store.query(&q).expect("query").len(), 1);
}

fn expect_short(recs: &[Record]) -> Vec<Record> {
    recs.iter()
        .map(|r| Record {
            container: r.container[..12].to_owned(),
            ..r.clone()
        })
        .collect()
}

#[test]
fn uncommitted_appends_are_truncated_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let end;
    {
        let store = Store::open(dir.path(), StoreOptions::default()).expect("open");
        store
            .commit(&[append(
                &key(),
                vec![record(1, C1, "one"), record(2, C1, "two")],
                Some(Checkpoint {
                    ts_ns: 2,
                    count_at_ts: 1,
                }),
            )])
            .expect("commit");
        end = store.end(&key());
    }
    // A crash between the append and the checkpoint: bytes past the committed end.
    let seg = std::fs::read_dir(dir.path().join("prod/shop%2Fmain/web"))
        .expect("dir")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .expect("a segment");
    let mut f = OpenOptions::new()
        .append(true)
        .open(seg.path())
        .expect("open segment");
    f.write_all(b"3\to\taaaaaaaaaaaa\t\t\t\tthree\n4\to\tpartial")
        .expect("write");
    drop(f);
    let store = Store::open(dir.path(), StoreOptions::default()).expect("reopen");
    assert_eq!(store.end(&key()), end);
    assert_eq!(std::fs::metadata(seg.path()).expect("meta").len(), end);
    assert_eq!(store.checkpoint(C1).map(|c| c.1.ts_ns), Some(2));
    // The collector re-reads "three" from its checkpoint: stored once.
    store
        .commit(&[append(
            &key(),
            vec![record(3, C1, "three")],
            Some(Checkpoint {
                ts_ns: 3,
                count_at_ts: 1,
            }),
        )])
        .expect("commit");
    let lines: Vec<String> = store
        .read(&key(), 0, 10)
        .expect("read")
        .records
        .into_iter()
        .map(|p| p.record.line)
        .collect();
    assert_eq!(lines, ["one", "two", "three"]);
}

#[test]
fn corrupt_lines_are_errors_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path(), StoreOptions::default()).expect("open");
        store
            .commit(&[append(
                &key(),
                vec![record(1, C1, "one"), record(2, C1, "two")],
                None,
            )])
            .expect("commit");
    }
    let seg = dir
        .path()
        .join("prod/shop%2Fmain/web/00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).expect("read");
    let second = bytes.iter().position(|&b| b == b'\n').expect("newline") + 1;
    bytes[second] = b'x';
    std::fs::write(&seg, &bytes).expect("write");
    let store = Store::open(dir.path(), StoreOptions::default()).expect("reopen");
    let e = store.read(&key(), 0, 10).expect_err("corrupt");
    let msg = e.to_string();
    assert!(
        msg.contains("00000000000000000000.log") && msg.contains(&format!("offset {second}")),
        "{msg}"
    );
}

#[test]
fn retention_removes_closed_segments_and_reads_report_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        segment_bytes: 1000,
        retention: RetentionPolicy {
            default: Retention {
                max_age: Duration::from_secs(3600),
                max_bytes: 1 << 30,
            },
            per_env: [(
                "staging".to_owned(),
                Retention {
                    max_age: Duration::from_secs(3600),
                    max_bytes: 2500,
                },
            )]
            .into(),
        },
    };
    let store = Store::open(dir.path(), opts).expect("open");
    let hour: i64 = 3_600_000_000_000;
    let t0 = 100 * hour;
    let staging = ServiceKey::new("staging", "s", "api");
    for i in 0..100i64 {
        // One old record per batch for the first half, then recent ones.
        let t = if i < 50 { t0 + i } else { t0 + 3 * hour + i };
        let line = format!("line {i:03} {}", "x".repeat(80));
        store
            .commit(&[
                append(&key(), vec![record(t, C1, &line)], None),
                append(&staging, vec![record(t, C1, &line)], None),
            ])
            .expect("commit");
    }
    let before = store.read(&key(), 0, 1000).expect("read");
    assert_eq!(before.records.len(), 100);
    let removed = store
        .enforce_retention_at(t0 + 3 * hour + 1000)
        .expect("retention");
    assert!(removed > 0);
    let after = store.read(&key(), 0, 1000).expect("read");
    assert!(after.skipped > 0);
    assert_eq!(after.skipped, after.records[0].position);
    assert!(
        after.records.len() >= 50 && after.records.len() < 100,
        "{}",
        after.records.len()
    );
    // Only whole segments go: what is left is a suffix, and the recent half is all there.
    let first: usize = after.records[0].record.line[5..8].parse().expect("n");
    assert_eq!(after.records.len(), 100 - first);
    assert!(first <= 50);
    // By size for staging: at most ~2500 bytes plus the active segment kept.
    let st = store.read(&staging, 0, 1000).expect("read");
    assert!(
        st.skipped > 0 && st.records.len() < 60,
        "{} kept",
        st.records.len()
    );
    assert_eq!(store.end(&key()), before.next);
    // Reopened: the same.
    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default()).expect("reopen");
    assert_eq!(store.read(&key(), 0, 1000).expect("read"), after);
}

#[test]
fn search_over_a_million_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            segment_bytes: 16 << 20,
            ..StoreOptions::default()
        },
    )
    .expect("open");
    let n: i64 = 1_000_000;
    let other = ServiceKey::new("prod", "shop", "worker");
    let mut batch = Vec::with_capacity(10_000);
    let mut obatch = Vec::new();
    for i in 0..n {
        let mut r = record(
            i * 1000,
            C1,
            &format!(
                "request {i} status={} \u{1b}[32mok\u{1b}[0m",
                if i % 7 == 0 { 500 } else { 200 }
            ),
        );
        r.revision = Some(if i < n / 2 { "r1" } else { "r2" }.to_owned());
        if i % 10 == 3 {
            obatch.push(record(i * 1000 + 1, "bbbbbbbbbbbb", &format!("job {i}")));
        } else {
            batch.push(r);
        }
        if batch.len() == 10_000 {
            store
                .commit(&[
                    append(&key(), std::mem::take(&mut batch), None),
                    append(&other, std::mem::take(&mut obatch), None),
                ])
                .expect("commit");
        }
    }
    store
        .commit(&[append(&key(), batch, None), append(&other, obatch, None)])
        .expect("commit");
    let web = |q: Query| Query {
        env: Some("prod".into()),
        stack: Some("shop/main".into()),
        service: Some("web".into()),
        ..q
    };
    let in_web = |i: i64| i % 10 != 3;
    // grep, exact count, on the text without ANSI.
    let q = web(Query {
        grep: Some(regex::Regex::new("status=500 ok$").expect("re")),
        ..Query::default()
    });
    let got = store.query(&q).expect("query");
    assert_eq!(
        got.len() as i64,
        (0..n).filter(|&i| i % 7 == 0 && in_web(i)).count() as i64
    );
    // since/until.
    let q = web(Query {
        since_ns: Some(250_000_000),
        until_ns: Some(260_000_000),
        ..Query::default()
    });
    let got = store.query(&q).expect("query");
    assert_eq!(got.len(), (250_000..260_000).filter(|&i| in_web(i)).count());
    assert_eq!(got[0].1.record.time_ns, 250_000_000);
    // revision, combined with grep.
    let q = web(Query {
        revision: Some("r2".into()),
        grep: Some(regex::Regex::new("request 99999[0-9]").expect("re")),
        ..Query::default()
    });
    assert_eq!(
        store.query(&q).expect("query").len(),
        (999_990..1_000_000).filter(|&i| in_web(i)).count()
    );
    // Merged by time across services, and a tail.
    let q = Query {
        tail: Some(5),
        ..Query::default()
    };
    let got = store.query(&q).expect("query");
    let times: Vec<i64> = got.iter().map(|(_, p)| p.record.time_ns).collect();
    assert_eq!(
        times,
        [
            999_995_000,
            999_996_000,
            999_997_000,
            999_998_000,
            999_999_000
        ]
    );
    let q = Query {
        since_ns: Some(12_000_000),
        until_ns: Some(14_000_000),
        ..Query::default()
    };
    let got = store.query(&q).expect("query");
    assert_eq!(got.len(), 2000);
    assert_eq!(got[3].0, other);
    assert_eq!(got[3].1.record.line, "job 12003");
    // Reopened: closed segments' sparse indexes read back, the active one's rebuilt;
    // the same answers.
    let idx = std::fs::read_dir(dir.path().join("prod/shop%2Fmain/web"))
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".idx"))
        .count();
    assert!(idx >= 3, "{idx} indexes");
    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default()).expect("reopen");
    assert_eq!(store.query(&q).expect("query"), got);
    let q = web(Query {
        since_ns: Some(250_000_000),
        until_ns: Some(260_000_000),
        ..Query::default()
    });
    let got = store.query(&q).expect("query");
    assert_eq!(got.len(), (250_000..260_000).filter(|&i| in_web(i)).count());
    let q = web(Query {
        since_ns: Some(999_000_000),
        ..Query::default()
    });
    assert_eq!(
        store.query(&q).expect("query").len(),
        (999_000..1_000_000).filter(|&i| in_web(i)).count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_gives_the_tail_then_new_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).expect("open"));
    let recs: Vec<Record> = (0..10)
        .map(|i| record(i, C1, &format!("old {i}")))
        .collect();
    store.commit(&[append(&key(), recs, None)]).expect("commit");
    let mut f = store.follow(Query {
        tail: Some(3),
        grep: Some(regex::Regex::new("^(old|new)").expect("re")),
        ..Query::default()
    });
    let first = f.next().await.expect("tail");
    assert_eq!(
        first
            .iter()
            .map(|(_, p)| p.record.line.as_str())
            .collect::<Vec<_>>(),
        ["old 7", "old 8", "old 9"]
    );
    let s2 = store.clone();
    let writer = tokio::task::spawn_blocking(move || {
        for i in 0..5 {
            std::thread::sleep(Duration::from_millis(20));
            s2.commit(&[append(
                &key(),
                vec![
                    record(100 + i, C1, &format!("new {i}")),
                    record(100 + i, C1, "skip"),
                ],
                None,
            )])
            .expect("commit");
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let got = tokio::time::timeout(Duration::from_secs(10), f.next())
            .await
            .expect("in time")
            .expect("next");
        seen.extend(got.into_iter().map(|(_, p)| p.record.line));
    }
    assert_eq!(seen, ["new 0", "new 1", "new 2", "new 3", "new 4"]);
    writer.await.expect("writer");
}
