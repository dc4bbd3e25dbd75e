//! RELP (librelp's Reliable Event Logging Protocol): frames
//! `TXNR SP COMMAND SP DATALEN [SP DATA] LF`, every `syslog` frame acknowledged by an
//! `rsp` with its txnr. A record counts as delivered only once its `rsp 200` arrived.

use std::collections::VecDeque;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::format::{self, Outgoing};
use super::sink::{Conn, IO_TIMEOUT, Sent, SinkError, connect};
use super::uri::RouteUri;

/// The largest DATALEN accepted in an answer.
const MAX_RSP: usize = 1 << 20;

#[derive(Debug)]
struct Session {
    conn: BufReader<Box<dyn Conn>>,
    next_txnr: u64,
}

/// A RELP client with a window of unacknowledged `syslog` frames.
#[derive(Debug)]
pub struct Relp {
    addr: String,
    host: String,
    window: usize,
    session: Option<Session>,
}

fn proto(addr: &str, reason: impl Into<String>) -> SinkError {
    SinkError::Protocol {
        addr: addr.into(),
        reason: reason.into(),
    }
}

impl Relp {
    pub(crate) fn new(uri: &RouteUri) -> Relp {
        Relp {
            addr: uri.authority(),
            host: uri.host.clone(),
            window: uri.window,
            session: None,
        }
    }

    pub(crate) fn connected(&self) -> bool {
        self.session.is_some()
    }

    async fn open(&self) -> Result<Session, SinkError> {
        let conn = connect(&self.addr, &self.host, None).await?;
        let mut s = Session {
            conn: BufReader::new(conn),
            next_txnr: 1,
        };
        let offer = b"relp_version=0\nrelp_software=slipway\ncommands=syslog";
        write_frame(&mut s, &self.addr, "open", offer).await?;
        s.conn.flush().await.map_err(|e| io(&self.addr, e))?;
        let (txnr, cmd, data) = read_frame(&mut s, &self.addr).await?;
        if cmd != "rsp" || txnr != 1 {
            return Err(proto(
                &self.addr,
                format!("answered `open` with `{txnr} {cmd}`"),
            ));
        }
        let text = String::from_utf8_lossy(&data);
        if !text.starts_with("200") {
            return Err(proto(
                &self.addr,
                format!("refused the session: {}", text.trim()),
            ));
        }
        let offers_syslog = text.lines().any(|l| {
            l.strip_prefix("commands=")
                .is_some_and(|c| c.split(',').any(|c| c.trim() == "syslog"))
        });
        if !offers_syslog {
            return Err(proto(&self.addr, "does not offer the `syslog` command"));
        }
        Ok(s)
    }

    pub(crate) async fn send(
        &mut self,
        batch: &[Outgoing<'_>],
        progress: &mut (dyn FnMut(usize) + Send),
    ) -> Sent {
        if self.session.is_none() {
            match self.open().await {
                Ok(s) => self.session = Some(s),
                Err(e) => return Sent::failed(0, e),
            }
        }
        let addr = self.addr.clone();
        let window = self.window;
        let Some(s) = self.session.as_mut() else {
            return Sent::failed(0, proto(&addr, "no session"));
        };
        let mut acked = 0;
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        let mut next = 0;
        let res: Result<(), SinkError> = async {
            while acked < batch.len() {
                let mut wrote = false;
                while next < batch.len() && in_flight.len() < window {
                    let msg = format::rfc5424(&batch[next]);
                    let txnr = write_frame(s, &addr, "syslog", msg.as_bytes()).await?;
                    in_flight.push_back(txnr);
                    next += 1;
                    wrote = true;
                }
                if wrote {
                    s.conn.flush().await.map_err(|e| io(&addr, e))?;
                }
                let (txnr, cmd, data) = read_frame(s, &addr).await?;
                let text = String::from_utf8_lossy(&data);
                match cmd.as_str() {
                    "serverclose" => return Err(proto(&addr, "closed the session (serverclose)")),
                    "rsp" => {}
                    other => return Err(proto(&addr, format!("sent `{other}`, not `rsp`"))),
                }
                let expected = in_flight.front().copied();
                if expected != Some(txnr) {
                    return Err(proto(
                        &addr,
                        format!("acknowledged txnr {txnr}, expected {expected:?}"),
                    ));
                }
                if !text.starts_with("200") {
                    return Err(proto(&addr, format!("answered {}", text.trim())));
                }
                in_flight.pop_front();
                acked += 1;
                // Once the acknowledgements that arrived together are read: a kill after
                // this repeats none of them.
                if s.conn.buffer().is_empty() {
                    progress(acked);
                }
            }
            Ok(())
        }
        .await;
        match res {
            Ok(()) => Sent::all(batch.len()),
            Err(e) => {
                // Whatever was not acknowledged is sent again in a new session.
                self.session = None;
                Sent::failed(acked, e)
            }
        }
    }

    /// Sends `close` and waits (briefly) for its answer.
    pub(crate) async fn close(&mut self) {
        let Some(mut s) = self.session.take() else {
            return;
        };
        let addr = self.addr.clone();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            write_frame(&mut s, &addr, "close", b"").await?;
            s.conn.flush().await.map_err(|e| io(&addr, e))?;
            let _ = read_frame(&mut s, &addr).await?;
            Ok::<_, SinkError>(())
        })
        .await;
        let _ = s.conn.get_mut().shutdown().await;
    }
}

fn io(addr: &str, source: std::io::Error) -> SinkError {
    SinkError::Io {
        addr: addr.into(),
        source,
    }
}

async fn write_frame(
    s: &mut Session,
    addr: &str,
    command: &str,
    data: &[u8],
) -> Result<u64, SinkError> {
    let txnr = s.next_txnr;
    s.next_txnr = if txnr >= 999_999_999 { 1 } else { txnr + 1 };
    let mut frame = Vec::with_capacity(data.len() + 32);
    frame.extend_from_slice(format!("{txnr} {command} {}", data.len()).as_bytes());
    if !data.is_empty() {
        frame.push(b' ');
        frame.extend_from_slice(data);
    }
    frame.push(b'\n');
    tokio::time::timeout(IO_TIMEOUT, s.conn.get_mut().write_all(&frame))
        .await
        .map_err(|_| proto(addr, "write timed out"))?
        .map_err(|e| io(addr, e))?;
    Ok(txnr)
}

async fn read_frame(s: &mut Session, addr: &str) -> Result<(u64, String, Vec<u8>), SinkError> {
    tokio::time::timeout(IO_TIMEOUT, read_frame_inner(s, addr))
        .await
        .map_err(|_| proto(addr, "no answer within 30 s"))?
}

async fn read_token(s: &mut Session, addr: &str) -> Result<(String, u8), SinkError> {
    let mut tok = Vec::new();
    loop {
        let buf = s.conn.fill_buf().await.map_err(|e| io(addr, e))?;
        if buf.is_empty() {
            return Err(proto(addr, "closed the connection"));
        }
        let b = buf[0];
        s.conn.consume(1);
        if b == b' ' || b == b'\n' {
            return Ok((String::from_utf8_lossy(&tok).into_owned(), b));
        }
        tok.push(b);
        if tok.len() > 32 {
            return Err(proto(addr, "sent a frame header that is not RELP"));
        }
    }
}

async fn read_frame_inner(
    s: &mut Session,
    addr: &str,
) -> Result<(u64, String, Vec<u8>), SinkError> {
    let (txnr, _) = read_token(s, addr).await?;
    let txnr: u64 = txnr
        .parse()
        .map_err(|_| proto(addr, format!("sent txnr `{txnr}`")))?;
    let (cmd, _) = read_token(s, addr).await?;
    let (len, sep) = read_token(s, addr).await?;
    let len: usize = len
        .parse()
        .map_err(|_| proto(addr, format!("sent DATALEN `{len}`")))?;
    if len > MAX_RSP {
        return Err(proto(addr, format!("sent DATALEN {len}")));
    }
    let mut data = vec![0; len];
    if sep == b'\n' {
        if len != 0 {
            return Err(proto(addr, "sent a frame without its data"));
        }
        return Ok((txnr, cmd, data));
    }
    s.conn
        .read_exact(&mut data)
        .await
        .map_err(|e| io(addr, e))?;
    let mut trailer = [0u8; 1];
    s.conn
        .read_exact(&mut trailer)
        .await
        .map_err(|e| io(addr, e))?;
    if trailer[0] != b'\n' {
        return Err(proto(addr, "sent a frame without its LF trailer"));
    }
    Ok((txnr, cmd, data))
}
