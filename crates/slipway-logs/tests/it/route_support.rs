//! What route tests share: an in-memory [`LogSource`], records, free ports, a per-test
//! rsyslogd, and a TCP line collector.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_logs::{Batch, ContainerMeta, LogSource, Positioned, Record, ServiceKey, Stream};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

/// Records kept in memory, positions growing by each line's length plus 16.
#[derive(Debug)]
pub struct MemSource {
    logs: Mutex<BTreeMap<ServiceKey, Vec<Positioned>>>,
    metas: Mutex<HashMap<String, ContainerMeta>>,
    tx: watch::Sender<u64>,
}

impl MemSource {
    pub fn new() -> Arc<MemSource> {
        Arc::new(MemSource {
            logs: Mutex::new(BTreeMap::new()),
            metas: Mutex::new(HashMap::new()),
            tx: watch::channel(0).0,
        })
    }

    pub fn add_container(&self, meta: ContainerMeta) {
        self.metas
            .lock()
            .expect("metas lock")
            .insert(meta.short_id().to_string(), meta);
    }

    /// Appends `record` to `key`'s log and returns its position.
    pub fn push(&self, key: &ServiceKey, record: Record) -> u64 {
        let pos = {
            let mut logs = self.logs.lock().expect("logs lock");
            let log = logs.entry(key.clone()).or_default();
            let pos = log
                .last()
                .map(|p| p.position + p.record.line.len() as u64 + 16)
                .unwrap_or(0);
            log.push(Positioned {
                position: pos,
                record,
            });
            pos
        };
        self.tx.send_modify(|v| *v += 1);
        pos
    }
}

impl LogSource for MemSource {
    fn services(&self) -> Vec<ServiceKey> {
        self.logs
            .lock()
            .expect("logs lock")
            .keys()
            .cloned()
            .collect()
    }

    fn read(&self, key: &ServiceKey, from: u64, max: usize) -> io::Result<Batch> {
        let logs = self.logs.lock().expect("logs lock");
        let Some(log) = logs.get(key) else {
            return Ok(Batch {
                records: vec![],
                next: from,
                skipped: 0,
            });
        };
        let start = log.partition_point(|p| p.position < from);
        let records: Vec<Positioned> = log[start..].iter().take(max).cloned().collect();
        let next = records
            .last()
            .map(|p| p.position + p.record.line.len() as u64 + 16)
            .unwrap_or(from);
        Ok(Batch {
            records,
            next,
            skipped: 0,
        })
    }

    fn end(&self, key: &ServiceKey) -> u64 {
        self.logs
            .lock()
            .expect("logs lock")
            .get(key)
            .and_then(|l| l.last())
            .map(|p| p.position + p.record.line.len() as u64 + 16)
            .unwrap_or(0)
    }

    fn container(&self, _key: &ServiceKey, id: &str) -> Option<ContainerMeta> {
        let metas = self.metas.lock().expect("metas lock");
        metas.get(id.get(..12).unwrap_or(id)).cloned()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

pub fn meta(id: &str, name: &str, labels: &[(&str, &str)]) -> ContainerMeta {
    ContainerMeta {
        id: format!("{id:0<64}"),
        name: name.into(),
        image: "img:1".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

pub fn record(meta: &ContainerMeta, time_ns: i64, stream: Stream, line: &str) -> Record {
    Record {
        time_ns,
        stream,
        container: meta.short_id().to_string(),
        replica: Some(1),
        revision: Some("r1".into()),
        line: line.into(),
        fields: None,
    }
}

/// A port nothing listens on (bound, read, closed).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

pub async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// Whether rsyslogd is here (tests that need it print why they skip).
pub fn have_rsyslog(test: &str) -> bool {
    let ok = Path::new(RSYSLOGD).exists();
    if !ok {
        eprintln!(
            "skipping {test}: {RSYSLOGD} is not installed (scripts/lib/prepare.sh installs rsyslog and rsyslog-relp)"
        );
    }
    ok
}

/// One rsyslogd with its own configuration, work directory and pid file, writing every
/// message's MSG (`%msg%\n`) to `out`. Killed when dropped.
#[derive(Debug)]
pub struct Rsyslog {
    pub port: u16,
    pub out: PathBuf,
    dir: PathBuf,
    relp: bool,
    child: Option<Child>,
}

impl Rsyslog {
    pub fn start(dir: &Path, relp: bool) -> Rsyslog {
        let mut r = Rsyslog {
            port: free_port(),
            out: dir.join("out.log"),
            dir: dir.to_path_buf(),
            relp,
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let work = self.dir.join("work");
        std::fs::create_dir_all(&work).expect("rsyslog work dir");
        let input = if self.relp {
            format!(
                "module(load=\"imrelp\")\ninput(type=\"imrelp\" port=\"{}\" address=\"127.0.0.1\" maxDataSize=\"256k\")\n",
                self.port
            )
        } else {
            format!(
                "module(load=\"imtcp\" maxSessions=\"50\")\ninput(type=\"imtcp\" port=\"{}\" address=\"127.0.0.1\")\n",
                self.port
            )
        };
        let conf = format!(
            "global(workDirectory=\"{work}\" maxMessageSize=\"256k\" \
             parser.escapeControlCharactersOnReceive=\"off\")\n\
             main_queue(queue.type=\"Direct\")\n\
             {input}\
             template(name=\"msgonly\" type=\"string\" string=\"%msg%\\n\")\n\
             action(type=\"omfile\" file=\"{out}\" template=\"msgonly\" flushOnTXEnd=\"on\")\n",
            work = work.display(),
            out = self.out.display(),
        );
        let conf_path = self.dir.join("rsyslog.conf");
        std::fs::write(&conf_path, conf).expect("write rsyslog.conf");
        let pid = self.dir.join("rsyslogd.pid");
        let _ = std::fs::remove_file(&pid);
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(&pid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn rsyslogd");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect_timeout(
                &format!("127.0.0.1:{}", self.port).parse().expect("addr"),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                break;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("rsyslogd exited at start: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "rsyslogd did not listen on {} within 15 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no chance to flush or close sessions.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP server on loopback collecting every line any connection sends.
#[derive(Debug, Clone)]
pub struct LineCollector {
    pub lines: Arc<Mutex<Vec<String>>>,
    pub port: u16,
}

impl LineCollector {
    pub async fn start_on(port: u16) -> LineCollector {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the collector");
        let port = listener.local_addr().expect("addr").port();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let lines = l2.clone();
                tokio::spawn(async move {
                    let mut r = tokio::io::BufReader::new(conn).lines();
                    while let Ok(Some(line)) = r.next_line().await {
                        lines.lock().expect("lines lock").push(line);
                    }
                });
            }
        });
        LineCollector { lines, port }
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }
}
