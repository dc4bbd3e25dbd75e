//! Sinks: one connection (or HTTP client) to one receiver, taking batches of records.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::format::{self, Outgoing};
use super::http::{Elasticsearch, Loki};
use super::relp::Relp;
use super::uri::{Framing, RouteUri, Scheme};

/// How far a batch got.
#[derive(Debug, Default)]
pub struct Sent {
    /// How many records from the start of the batch are done with: delivered, or rejected
    /// for good. The cursor moves past these and no further.
    pub done: usize,
    /// Records (by index in the batch, all below `done`) the receiver refused for good,
    /// and why: reported and counted, never sent again.
    pub rejected: Vec<(usize, String)>,
    /// Why the rest of the batch was not delivered: a retryable failure (the receiver is
    /// down, busy or dropped the connection); the rest is sent again after a backoff.
    pub error: Option<SinkError>,
}

impl Sent {
    pub(crate) fn all(n: usize) -> Sent {
        Sent {
            done: n,
            ..Sent::default()
        }
    }

    pub(crate) fn failed(done: usize, error: SinkError) -> Sent {
        Sent {
            done,
            rejected: Vec::new(),
            error: Some(error),
        }
    }
}

/// A retryable delivery failure, saying where.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("sending to {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS setup for {addr}: {reason}")]
    Tls { addr: String, reason: String },
    #[error("{addr}: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("{addr} answered HTTP {status}: {body}")]
    Http {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("{addr}: {reason}")]
    Request { addr: String, reason: String },
}

/// One receiver. An enum rather than a trait object: each variant keeps its connection
/// between batches and reconnects after a failure.
#[derive(Debug)]
pub enum Sink {
    Syslog(StreamSink),
    Udp(UdpSink),
    Relp(Relp),
    Elasticsearch(Elasticsearch),
    Loki(Loki),
}

impl Sink {
    /// The sink for `uri` (no connection yet: the first batch connects).
    pub fn new(uri: &RouteUri) -> Result<Sink, SinkError> {
        Ok(match uri.scheme {
            Scheme::SyslogTcp | Scheme::SyslogTls | Scheme::RawTcp | Scheme::GelfTcp => {
                Sink::Syslog(StreamSink::new(uri)?)
            }
            Scheme::SyslogUdp | Scheme::GelfUdp => Sink::Udp(UdpSink {
                addr: uri.authority(),
                gelf: uri.scheme == Scheme::GelfUdp,
                socket: None,
                counter: 0,
            }),
            Scheme::Relp => Sink::Relp(Relp::new(uri)),
            Scheme::Elasticsearch { .. } => Sink::Elasticsearch(Elasticsearch::new(uri)?),
            Scheme::Loki { .. } => Sink::Loki(Loki::new(uri)?),
        })
    }

    /// Sends `batch` (in order) and says how far it got. A sink whose receiver
    /// acknowledges message by message (RELP) also calls `progress` with the acknowledged
    /// prefix's length as it grows, so the caller can keep its cursor that close behind.
    pub async fn send(
        &mut self,
        batch: &[Outgoing<'_>],
        progress: &mut (dyn FnMut(usize) + Send),
    ) -> Sent {
        match self {
            Sink::Syslog(s) => s.send(batch).await,
            Sink::Udp(s) => s.send(batch).await,
            Sink::Relp(s) => s.send(batch, progress).await,
            Sink::Elasticsearch(s) => s.send(batch).await,
            Sink::Loki(s) => s.send(batch).await,
        }
    }

    /// Whether a connection is open (HTTP sinks: whether the last request got an answer).
    pub fn connected(&self) -> bool {
        match self {
            Sink::Syslog(s) => s.conn.is_some(),
            Sink::Udp(s) => s.socket.is_some(),
            Sink::Relp(s) => s.connected(),
            Sink::Elasticsearch(s) => s.connected,
            Sink::Loki(s) => s.connected,
        }
    }

    /// Ends the session politely where the protocol has a way (RELP `close`).
    pub async fn close(&mut self) {
        match self {
            Sink::Relp(s) => s.close().await,
            Sink::Syslog(s) => {
                if let Some(mut c) = s.conn.take() {
                    let _ = c.shutdown().await;
                }
            }
            _ => {}
        }
    }
}

pub(crate) trait Conn:
    AsyncRead + AsyncWrite + Unpin + Send + Sync + std::fmt::Debug
{
}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + std::fmt::Debug> Conn for T {}

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// TCP to `addr`, TLS over it when `tls` is given.
pub(crate) async fn connect(
    addr: &str,
    host: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Box<dyn Conn>, SinkError> {
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            return Err(SinkError::Connect {
                addr: addr.into(),
                source,
            });
        }
        Err(_) => {
            return Err(SinkError::Connect {
                addr: addr.into(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
            });
        }
    };
    let _ = tcp.set_nodelay(true);
    let Some(config) = tls else {
        return Ok(Box::new(tcp));
    };
    let name =
        rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| SinkError::Tls {
            addr: addr.into(),
            reason: format!("`{host}` is not a server name: {e}"),
        })?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(Box::new(s)),
        Ok(Err(source)) => Err(SinkError::Connect {
            addr: addr.into(),
            source,
        }),
        Err(_) => Err(SinkError::Connect {
            addr: addr.into(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"),
        }),
    }
}

/// A rustls client configuration trusting `ca` (a PEM file) or else the webpki roots.
pub(crate) fn tls_config(uri: &RouteUri) -> Result<Arc<rustls::ClientConfig>, SinkError> {
    use rustls_pki_types::pem::PemObject;
    let addr = uri.authority();
    let mut roots = rustls::RootCertStore::empty();
    match &uri.tls_ca {
        Some(path) => {
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|e| {
                SinkError::Tls {
                    addr: addr.clone(),
                    reason: format!("reading tls.ca {}: {e}", path.display()),
                }
            })?;
            for cert in certs {
                let cert = cert.map_err(|e| SinkError::Tls {
                    addr: addr.clone(),
                    reason: format!("tls.ca {}: {e}", path.display()),
                })?;
                roots.add(cert).map_err(|e| SinkError::Tls {
                    addr: addr.clone(),
                    reason: format!("tls.ca {}: {e}", path.display()),
                })?;
            }
            if roots.is_empty() {
                return Err(SinkError::Tls {
                    addr,
                    reason: format!("tls.ca {} holds no certificate", path.display()),
                });
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| SinkError::Tls {
        addr,
        reason: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What a stream sink writes per record.
#[derive(Debug)]
enum Encoding {
    /// RFC 5424, framed.
    Syslog(Framing),
    /// A minijinja template, newline-terminated.
    Raw(Box<minijinja::Environment<'static>>),
    /// GELF JSON, NUL-terminated.
    Gelf,
}

/// Records written to a TCP (or TLS) stream: syslog, raw or GELF. No acknowledgements:
/// a record is counted delivered once written to the socket, so what was in flight when
/// the receiver died is lost, and after a reconnect what had not been counted is sent
/// again (at least once while the receiver stays up; RELP for no loss).
#[derive(Debug)]
pub struct StreamSink {
    addr: String,
    host: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    encoding: Encoding,
    conn: Option<Box<dyn Conn>>,
}

impl StreamSink {
    fn new(uri: &RouteUri) -> Result<StreamSink, SinkError> {
        let encoding = match uri.scheme {
            Scheme::RawTcp => {
                let mut env = minijinja::Environment::new();
                env.add_template_owned(
                    "raw",
                    uri.template.clone().unwrap_or_else(|| "{{ line }}".into()),
                )
                .map_err(|e| SinkError::Protocol {
                    addr: uri.authority(),
                    reason: format!("template: {e}"),
                })?;
                Encoding::Raw(Box::new(env))
            }
            Scheme::GelfTcp => Encoding::Gelf,
            _ => Encoding::Syslog(uri.framing),
        };
        Ok(StreamSink {
            addr: uri.authority(),
            host: uri.host.clone(),
            tls: if uri.scheme == Scheme::SyslogTls {
                Some(tls_config(uri)?)
            } else {
                None
            },
            encoding,
            conn: None,
        })
    }

    fn encode(&self, o: &Outgoing<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        match &self.encoding {
            Encoding::Syslog(Framing::Octet) => {
                let msg = format::rfc5424(o);
                out.extend_from_slice(format!("{} ", msg.len()).as_bytes());
                out.extend_from_slice(msg.as_bytes());
            }
            Encoding::Syslog(Framing::Newline) => {
                let msg = format::rfc5424(o).replace(['\n', '\r'], " ");
                out.extend_from_slice(msg.as_bytes());
                out.push(b'\n');
            }
            Encoding::Raw(env) => {
                let t = env.get_template("raw").map_err(|e| e.to_string())?;
                let text = t
                    .render(format::template_context(o))
                    .map_err(|e| format!("template: {e}"))?;
                out.extend_from_slice(text.as_bytes());
                out.push(b'\n');
            }
            Encoding::Gelf => {
                out.extend_from_slice(format::gelf(o).to_string().as_bytes());
                out.push(0);
            }
        }
        Ok(())
    }

    async fn send(&mut self, batch: &[Outgoing<'_>]) -> Sent {
        if self.conn.is_none() {
            match connect(&self.addr, &self.host, self.tls.as_ref()).await {
                Ok(c) => self.conn = Some(c),
                Err(e) => return Sent::failed(0, e),
            }
        }
        let mut sent = Sent::default();
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut i = 0;
        while i < batch.len() {
            // Write in chunks of about 64 KiB; each written chunk is counted.
            buf.clear();
            let start = i;
            while i < batch.len() && (buf.len() < 64 * 1024 || i == start) {
                if let Err(reason) = self.encode(&batch[i], &mut buf) {
                    sent.rejected.push((i, reason));
                }
                i += 1;
            }
            let Some(conn) = self.conn.as_mut() else {
                return Sent::failed(
                    start,
                    SinkError::Protocol {
                        addr: self.addr.clone(),
                        reason: "no connection".into(),
                    },
                );
            };
            let res = tokio::time::timeout(IO_TIMEOUT, async {
                conn.write_all(&buf).await?;
                conn.flush().await
            })
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "write timed out",
                ))
            });
            if let Err(source) = res {
                self.conn = None;
                sent.rejected.retain(|(j, _)| *j < start);
                sent.done = start;
                sent.error = Some(SinkError::Io {
                    addr: self.addr.clone(),
                    source,
                });
                return sent;
            }
            sent.done = i;
        }
        sent
    }
}

/// Syslog or GELF over UDP: one datagram per record (GELF: chunked), nothing to know
/// whether it arrived.
#[derive(Debug)]
pub struct UdpSink {
    addr: String,
    gelf: bool,
    socket: Option<UdpSocket>,
    counter: u64,
}

impl UdpSink {
    async fn send(&mut self, batch: &[Outgoing<'_>]) -> Sent {
        if self.socket.is_none() {
            let res = async {
                let target = tokio::net::lookup_host(&self.addr)
                    .await?
                    .next()
                    .ok_or_else(|| {
                        std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
                    })?;
                let bind = if target.is_ipv6() {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                };
                let s = UdpSocket::bind(bind).await?;
                s.connect(target).await?;
                Ok::<_, std::io::Error>(s)
            }
            .await;
            match res {
                Ok(s) => self.socket = Some(s),
                Err(source) => {
                    return Sent::failed(
                        0,
                        SinkError::Connect {
                            addr: self.addr.clone(),
                            source,
                        },
                    );
                }
            }
        }
        for (i, o) in batch.iter().enumerate() {
            let datagrams = if self.gelf {
                self.counter += 1;
                let id = message_id(o, self.counter);
                format::gelf_chunks(format::gelf(o).to_string().as_bytes(), id)
            } else {
                let msg = format::rfc5424(o);
                vec![
                    format::truncate_utf8(&msg, format::UDP_MAX)
                        .as_bytes()
                        .to_vec(),
                ]
            };
            let Some(socket) = self.socket.as_ref() else {
                return Sent::failed(
                    i,
                    SinkError::Protocol {
                        addr: self.addr.clone(),
                        reason: "no socket".into(),
                    },
                );
            };
            for d in datagrams {
                if let Err(source) = socket.send(&d).await {
                    // ECONNREFUSED from an earlier datagram's ICMP: the receiver is down.
                    self.socket = None;
                    return Sent::failed(
                        i,
                        SinkError::Io {
                            addr: self.addr.clone(),
                            source,
                        },
                    );
                }
            }
        }
        Sent::all(batch.len())
    }
}

/// A GELF message id: unique per message of this process (a counter mixed with the
/// record's position and time).
fn message_id(o: &Outgoing<'_>, counter: u64) -> [u8; 8] {
    let mixed = counter.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ o.position.rotate_left(17)
        ^ (o.record.time_ns as u64).rotate_left(41);
    mixed.to_be_bytes()
}
