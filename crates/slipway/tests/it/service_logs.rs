//! Service logs through a real `slipway up`: a deployed service's 100,000 numbered records
//! collected while the server is killed (SIGKILL) twice and the container restarted once,
//! then read back with `slipway logs` (every record exactly once, in order, joined), and
//! forwarded to Debian's rsyslog over RELP and syslog over TCP (every record at least once;
//! the repeats are counted, and over RELP they are only what was in flight at a kill).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::deploy::Fixture;
use super::server::{ADMIN, Up};
use super::{slipway, test_image, text};

const RECORDS: u32 = 100_000;
const CHUNKS: u32 = 100;

/// rsyslogd with a RELP and a plain TCP input, each writing the messages it receives to a
/// file of its own; killed on drop.
struct Rsyslog {
    child: Child,
    dir: tempfile::TempDir,
    relp: u16,
    tcp: u16,
}

impl Rsyslog {
    fn start() -> Option<Rsyslog> {
        let bin = Path::new("/usr/sbin/rsyslogd");
        if !bin.exists()
            || !Path::new("/usr/lib/x86_64-linux-gnu/rsyslog/imrelp.so").exists()
                && !Path::new("/usr/lib/rsyslog/imrelp.so").exists()
        {
            eprintln!("skipping: rsyslog with rsyslog-relp is not installed");
            return None;
        }
        let dir = tempfile::tempdir().expect("rsyslog dir");
        let (relp, tcp) = (free_port(), free_port());
        let d = dir.path().display();
        let conf = format!(
            r#"global(workDirectory="{d}" maxMessageSize="64k" parser.escapeControlCharactersOnReceive="off")
module(load="imrelp")
module(load="imtcp")
template(name="message" type="string" string="%msg%\n")
ruleset(name="relp") {{ action(type="omfile" file="{d}/relp.log" template="message") }}
ruleset(name="tcp") {{ action(type="omfile" file="{d}/tcp.log" template="message") }}
input(type="imrelp" port="{relp}" address="127.0.0.1" ruleset="relp" maxDataSize="64k")
input(type="imtcp" port="{tcp}" address="127.0.0.1" ruleset="tcp")
"#
        );
        let path = dir.path().join("rsyslog.conf");
        std::fs::write(&path, conf).expect("rsyslog.conf");
        let child = Command::new(bin)
            .arg("-n")
            .arg("-f")
            .arg(&path)
            .arg("-i")
            .arg(dir.path().join("rsyslog.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rsyslogd starts");
        let r = Rsyslog {
            child,
            dir,
            relp,
            tcp,
        };
        for port in [relp, tcp] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "rsyslogd never listened on {port}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(r)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The stack: `gen` serves httpd (so it is healthy at once) and writes RECORDS numbered
/// records in CHUNKS chunks: every 997th a three-line stack trace, every 4999th a line of
/// 20,000 characters (Docker splits it into 16 KiB partials). Its progress is kept in the
/// container's file system and it stops only between chunks, so a restart of the container
/// neither repeats nor skips a record.
fn stack(image: &str) -> String {
    let per = RECORDS / CHUNKS;
    let script = format!(
        "mkdir -p /www && echo ok > /www/index.html && httpd -p 8080 -h /www; \
         trap 'stop=1' TERM; c=$(cat /next 2>/dev/null || echo 0); \
         while [ $c -lt {CHUNKS} ]; do \
           awk -v c=$c 'BEGIN {{ for (i = c * {per} + 1; i <= (c + 1) * {per}; i++) {{ \
             if (i % 997 == 0) printf \"trace %d\\n  at frame one\\n  at frame two\\n\", i; \
             else if (i % 4999 == 0) {{ s = sprintf(\"%20000s\", \"\"); gsub(/ /, \"x\", s); printf \"long %d %s\\n\", i, s }} \
             else printf \"line %d\\n\", i }} }}'; \
           c=$((c + 1)); echo $c > /next; [ -n \"$stop\" ] && exit 0; sleep 0.1; \
         done; \
         while [ -z \"$stop\" ]; do sleep 1; done"
    );
    // `$$` is a `$` after the stack file's interpolation.
    let script = script.replace('$', "$$");
    format!(
        "services:\n  gen:\n    image: {image}\n    command: [\"sh\", \"-c\", {script:?}]\n    expose: [\"8080\"]\n    stop_grace_period: 10s\n    x-slipway:\n      logs: {{multiline: '^(line|trace|long) '}}\n"
    )
}

/// The record numbers in `text`, one per record (a record starts `line N`, `trace N` or
/// `long N`; a trace's frames follow on lines of their own).
fn numbers<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<u32> {
    lines
        .filter_map(|l| {
            let mut words = l.trim_start_matches('\u{feff}').split_whitespace();
            match words.next() {
                Some("line" | "trace" | "long") => words.next()?.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

/// The records of `gen` as `slipway logs --json` prints them (all of the last hour, or
/// the last `tail`): (number, whole text).
fn stored(up: &Up, target: &str, tail: Option<usize>) -> Vec<(u32, String)> {
    let tail = tail.map(|t| t.to_string());
    let out = slipway()
        .args(["logs", target, "--since", "1h", "--json"])
        .args(tail.iter().flat_map(|t| ["--tail", t.as_str()]))
        .args(["--server", &up.url, "--token", ADMIN])
        .output()
        .expect("slipway logs runs");
    assert!(out.status.success(), "{}", text(&out).1);
    text(&out)
        .0
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).expect("a JSON record");
            let line = r["line"].as_str().expect("line").to_owned();
            let n = numbers(std::iter::once(line.as_str()))
                .first()
                .copied()
                .unwrap_or(0);
            (n, line)
        })
        .collect()
}

fn count(numbers: &[u32]) -> BTreeMap<u32, u32> {
    let mut seen = BTreeMap::new();
    for n in numbers {
        *seen.entry(*n).or_insert(0) += 1;
    }
    seen
}

/// Waits until `done` says yes, at most `limit`.
fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn every_record_is_stored_and_relayed_once_across_two_kills_and_a_container_restart() {
    let Some(syslog) = Rsyslog::start() else {
        return;
    };
    let routes = format!(
        "relp://127.0.0.1:{},syslog+tcp://127.0.0.1:{}",
        syslog.relp, syslog.tcp
    );
    let Some(mut fx) = Fixture::start_with("logs", &["--log-route", &routes]) else {
        return;
    };
    let env = fx.env.clone();
    super::server::api(&fx.up, &["env", "add", &env]);
    let target = format!("{env}/app");
    let out = fx.deploy_text(&target, &stack(&test_image()));
    assert!(out.status.success(), "{}", text(&out).1);
    let container = String::from_utf8_lossy(
        &Command::new("docker")
            .args(["ps", "-q", "--filter"])
            .arg(format!("label=io.slipway.env={env}"))
            .output()
            .expect("docker ps")
            .stdout,
    )
    .trim()
    .to_owned();
    assert!(!container.is_empty(), "the service runs");

    // While it writes: SIGKILL the server, restart the container, SIGKILL again.
    std::thread::sleep(Duration::from_millis(2500));
    fx.kill_and_restart();
    std::thread::sleep(Duration::from_millis(1500));
    let restart = Command::new("docker")
        .args(["restart", "-t", "10", &container])
        .output()
        .expect("docker restart");
    assert!(restart.status.success(), "{}", text(&restart).1);
    std::thread::sleep(Duration::from_millis(1500));
    fx.kill_and_restart();

    let service = format!("{target}/gen");
    wait_for("the last record stored", Duration::from_secs(120), || {
        stored(&fx.up, &service, Some(1)).last().map(|(n, _)| *n) == Some(RECORDS)
    });
    let records = stored(&fx.up, &service, None);
    let got: Vec<u32> = records.iter().map(|(n, _)| *n).collect();
    let want: Vec<u32> = (1..=RECORDS).collect();
    if got != want {
        let seen = count(&got);
        let missing: Vec<u32> = want
            .iter()
            .filter(|n| !seen.contains_key(n))
            .copied()
            .take(10)
            .collect();
        let twice: Vec<u32> = seen
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(n, _)| *n)
            .take(10)
            .collect();
        panic!(
            "stored {} records, want {RECORDS} once in order; missing (first): {missing:?}, twice (first): {twice:?}",
            got.len()
        );
    }
    // Joined as they were written: partials into one line, a trace with its frames.
    let long = &records[4998].1;
    assert_eq!(long.len(), "long 4999 ".len() + 20_000, "{}", &long[..40]);
    assert_eq!(records[996].1, "trace 997\n  at frame one\n  at frame two");

    // RELP: every record exactly once. Syslog over TCP: at least once.
    let read = |name: &str| std::fs::read_to_string(syslog.file(name)).unwrap_or_default();
    wait_for(
        "rsyslog got every record over RELP",
        Duration::from_secs(60),
        || numbers(read("relp.log").lines()).contains(&RECORDS),
    );
    wait_for(
        "rsyslog got every record over TCP",
        Duration::from_secs(60),
        || numbers(read("tcp.log").lines()).contains(&RECORDS),
    );
    let relp = count(&numbers(read("relp.log").lines()));
    let relp_missing = (1..=RECORDS).filter(|n| !relp.contains_key(n)).count();
    let relp_twice: u32 = relp.values().map(|c| c - 1).sum();
    assert_eq!(relp_missing, 0, "RELP lost records");
    // What was in flight when the server was killed (written by rsyslog, its
    // acknowledgement never read) is sent again: RELP cannot say what a receiver already
    // has. Acknowledged records are not: the cursor follows each group of acks.
    assert!(
        relp_twice <= 2 * 128,
        "RELP: {relp_twice} duplicates, more than two windows in flight"
    );
    let tcp = count(&numbers(read("tcp.log").lines()));
    let tcp_missing = (1..=RECORDS).filter(|n| !tcp.contains_key(n)).count();
    let tcp_extra: u32 = tcp.values().map(|c| c - 1).sum();
    assert_eq!(tcp_missing, 0, "syslog over TCP lost records");
    eprintln!(
        "after two kills: RELP every record, {relp_twice} again (in flight at a kill); \
         syslog over TCP every record at least once, {tcp_extra} again"
    );
}
