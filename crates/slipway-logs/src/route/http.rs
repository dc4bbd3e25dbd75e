//! HTTP sinks: Elasticsearch `_bulk` and Loki's push API.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::format::{Outgoing, rfc3339_micros};
use super::sink::{Sent, SinkError};
use super::uri::{RouteUri, Scheme};
use crate::record::strip_ansi;

fn client(uri: &RouteUri) -> Result<reqwest::Client, SinkError> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10));
    if let Some(ca) = &uri.tls_ca {
        let pem = std::fs::read(ca).map_err(|e| SinkError::Tls {
            addr: uri.authority(),
            reason: format!("reading tls.ca {}: {e}", ca.display()),
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SinkError::Tls {
            addr: uri.authority(),
            reason: format!("tls.ca {}: {e}", ca.display()),
        })?;
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| SinkError::Tls {
        addr: uri.authority(),
        reason: e.without_url().to_string(),
    })
}

fn base(uri: &RouteUri, https: bool) -> String {
    format!(
        "{}://{}",
        if https { "https" } else { "http" },
        uri.authority()
    )
}

fn request_error(addr: &str, e: reqwest::Error) -> SinkError {
    SinkError::Request {
        addr: addr.into(),
        reason: e.without_url().to_string(),
    }
}

/// An answer's body for an error text: at most 500 bytes.
fn excerpt(body: &str) -> String {
    let t = body.trim();
    super::format::truncate_utf8(t, 500).to_string()
}

/// Elasticsearch `_bulk`: each record indexed with `_id` `CONTAINER-POSITION`, so a resend
/// overwrites the same document instead of adding one.
#[derive(Debug)]
pub struct Elasticsearch {
    client: reqwest::Client,
    url: String,
    addr: String,
    index: String,
    auth: Option<(String, Option<String>)>,
    pub(crate) connected: bool,
}

/// The `_id` of a record in Elasticsearch.
pub fn es_id(o: &Outgoing<'_>) -> String {
    format!("{}-{}", o.record.container, o.position)
}

/// The document indexed for a record.
pub fn es_doc(o: &Outgoing<'_>) -> Value {
    let r = o.record;
    let mut doc = json!({
        "@timestamp": rfc3339_micros(r.time_ns),
        "message": strip_ansi(&r.line),
        "host": {"name": o.hostname},
        "env": o.key.env,
        "stack": o.key.stack,
        "service": o.key.service,
        "container": {"name": o.meta.name, "id": r.container},
        "stream": r.stream.as_str(),
    });
    if let Some(replica) = r.replica {
        doc["replica"] = replica.into();
    }
    if let Some(rev) = &r.revision {
        doc["revision"] = rev.clone().into();
    }
    if let Some(fields) = &r.fields {
        doc["fields"] = Value::Object(fields.clone());
    }
    doc
}

impl Elasticsearch {
    pub(crate) fn new(uri: &RouteUri) -> Result<Elasticsearch, SinkError> {
        let https = matches!(uri.scheme, Scheme::Elasticsearch { https: true });
        Ok(Elasticsearch {
            client: client(uri)?,
            url: format!("{}/_bulk", base(uri, https)),
            addr: uri.authority(),
            index: uri.path.clone(),
            auth: uri.user.clone().map(|u| (u, uri.password.clone())),
            connected: false,
        })
    }

    /// Sends the batch; items answered 429 (or 5xx) are sent again on their own, up to
    /// three rounds, before the rest of the batch waits for the worker's backoff.
    pub(crate) async fn send(&mut self, batch: &[Outgoing<'_>]) -> Sent {
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut rejected = Vec::new();
        let mut last = None;
        for round in 0..3u32 {
            if pending.is_empty() {
                break;
            }
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(200 << round)).await;
            }
            match self.bulk(batch, &pending).await {
                Err(e) => {
                    last = Some(e);
                    break;
                }
                Ok(results) => {
                    let mut retry = Vec::new();
                    for (i, r) in results {
                        match r {
                            Item::Ok => {}
                            Item::Retry(e) => {
                                retry.push(i);
                                last = Some(e);
                            }
                            Item::Reject(reason) => rejected.push((i, reason)),
                        }
                    }
                    pending = retry;
                    if pending.is_empty() {
                        last = None;
                    }
                }
            }
        }
        let done = pending.first().copied().unwrap_or(batch.len());
        rejected.retain(|(i, _)| *i < done);
        rejected.sort_by_key(|(i, _)| *i);
        Sent {
            done,
            rejected,
            error: if done < batch.len() { last } else { None },
        }
    }

    async fn bulk(
        &mut self,
        batch: &[Outgoing<'_>],
        which: &[usize],
    ) -> Result<Vec<(usize, Item)>, SinkError> {
        let mut body = String::new();
        for &i in which {
            let o = &batch[i];
            body.push_str(&json!({"index": {"_index": self.index, "_id": es_id(o)}}).to_string());
            body.push('\n');
            body.push_str(&es_doc(o).to_string());
            body.push('\n');
        }
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/x-ndjson")
            .body(body);
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, p.as_ref());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.connected = false;
                return Err(request_error(&self.addr, e));
            }
        };
        self.connected = true;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            // 429 and 5xx are the documented retryable answers; any other whole-request
            // refusal (bad credentials, a closed index...) is not a verdict on the records
            // and may be fixed on the other side: retried too, and reported.
            return Err(SinkError::Http {
                addr: self.addr.clone(),
                status,
                body: excerpt(&text),
            });
        }
        let answer: Value = serde_json::from_str(&text).map_err(|e| SinkError::Protocol {
            addr: self.addr.clone(),
            reason: format!("`_bulk` answer is not JSON ({e}): {}", excerpt(&text)),
        })?;
        if answer.get("errors").and_then(Value::as_bool) != Some(true) {
            return Ok(which.iter().map(|&i| (i, Item::Ok)).collect());
        }
        let items = answer
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if items.len() != which.len() {
            return Err(SinkError::Protocol {
                addr: self.addr.clone(),
                reason: format!("`_bulk` answered {} items for {}", items.len(), which.len()),
            });
        }
        let mut out = Vec::with_capacity(which.len());
        for (&i, item) in which.iter().zip(&items) {
            let item = item.get("index").or_else(|| item.get("create"));
            let st = item
                .and_then(|it| it.get("status"))
                .and_then(Value::as_u64)
                .unwrap_or(0) as u16;
            if (200..300).contains(&st) {
                out.push((i, Item::Ok));
                continue;
            }
            let err = item.and_then(|it| it.get("error"));
            let etype = err
                .and_then(|e| e.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            let reason = err
                .and_then(|e| e.get("reason"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let id = es_id(&batch[i]);
            if st == 429 || st >= 500 || st == 0 {
                out.push((
                    i,
                    Item::Retry(SinkError::Http {
                        addr: self.addr.clone(),
                        status: st,
                        body: format!("document {id}: {etype}: {reason}"),
                    }),
                ));
            } else {
                out.push((
                    i,
                    Item::Reject(format!(
                        "Elasticsearch refused document {id} (HTTP {st}): {etype}: {reason}"
                    )),
                ));
            }
        }
        Ok(out)
    }
}

enum Item {
    Ok,
    Retry(SinkError),
    Reject(String),
}

/// Loki's push API. Streams are labelled env, stack, service and container (the name):
/// a service's containers interleave and Loki wants each stream in time order, which
/// holds per container (not per service).
#[derive(Debug)]
pub struct Loki {
    client: reqwest::Client,
    url: String,
    addr: String,
    auth: Option<(String, Option<String>)>,
    pub(crate) connected: bool,
}

/// The labels of a record's Loki stream.
pub fn loki_labels(o: &Outgoing<'_>) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("env".to_string(), o.key.env.clone()),
        ("stack".to_string(), o.key.stack.clone()),
        ("service".to_string(), o.key.service.clone()),
        ("container".to_string(), o.meta.name.clone()),
    ])
}

impl Loki {
    pub(crate) fn new(uri: &RouteUri) -> Result<Loki, SinkError> {
        let https = matches!(uri.scheme, Scheme::Loki { https: true });
        let prefix = if uri.path.is_empty() {
            String::new()
        } else {
            format!("/{}", uri.path)
        };
        Ok(Loki {
            client: client(uri)?,
            url: format!("{}{prefix}/loki/api/v1/push", base(uri, https)),
            addr: uri.authority(),
            auth: uri.user.clone().map(|u| (u, uri.password.clone())),
            connected: false,
        })
    }

    pub(crate) async fn send(&mut self, batch: &[Outgoing<'_>]) -> Sent {
        if batch.is_empty() {
            return Sent::all(0);
        }
        let mut streams: Vec<(BTreeMap<String, String>, Vec<Value>)> = Vec::new();
        for o in batch {
            let labels = loki_labels(o);
            let value = json!([o.record.time_ns.to_string(), o.record.line]);
            match streams.iter_mut().find(|(l, _)| *l == labels) {
                Some((_, values)) => values.push(value),
                None => streams.push((labels, vec![value])),
            }
        }
        let body = json!({"streams": streams.into_iter().map(|(l, v)| json!({"stream": l, "values": v})).collect::<Vec<_>>()});
        let mut req = self.client.post(&self.url).json(&body);
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, p.as_ref());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.connected = false;
                return Sent::failed(0, request_error(&self.addr, e));
            }
        };
        self.connected = true;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if (200..300).contains(&status) {
            return Sent::all(batch.len());
        }
        if status == 400 {
            // Loki keeps the entries it accepts and lists the others, one line each:
            // `entry with timestamp … ignored, reason: '…' for stream: {…}`. Out of order
            // and duplicate entries are what a resend after a crash gives: delivered.
            let mut sent = Sent::all(batch.len());
            let others: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .filter(|l| {
                    !(l.contains("entry out of order")
                        || l.contains("entry too far behind")
                        || l.contains("duplicate"))
                })
                .filter(|l| !l.starts_with("total ignored"))
                .collect();
            for line in others {
                // Name the record when the line says which (by timestamp and container).
                let idx = batch
                    .iter()
                    .position(|o| {
                        line.contains(&format!("timestamp {} ignored", go_time(o.record.time_ns)))
                            && line.contains(&format!("container=\"{}\"", o.meta.name))
                    })
                    .unwrap_or(0);
                sent.rejected
                    .push((idx, format!("Loki refused: {}", excerpt(line))));
            }
            return sent;
        }
        Sent::failed(
            0,
            SinkError::Http {
                addr: self.addr.clone(),
                status,
                body: excerpt(&text),
            },
        )
    }
}

/// How Loki prints an entry's timestamp in its errors (Go's `time.Time` String, UTC):
/// `2026-12-07 22:35:46.123456789 +0000 UTC`, the fraction without trailing zeros.
pub fn go_time(time_ns: i64) -> String {
    let s = rfc3339_micros(time_ns);
    let nanos = time_ns.rem_euclid(1_000_000_000);
    let mut frac = format!("{nanos:09}");
    while frac.ends_with('0') {
        frac.pop();
    }
    let frac = if frac.is_empty() {
        String::new()
    } else {
        format!(".{frac}")
    };
    format!("{}{frac} +0000 UTC", s[..19].replace('T', " "))
}
