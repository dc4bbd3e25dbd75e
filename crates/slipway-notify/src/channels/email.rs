//! Email over SMTP with lettre and rustls (no OpenSSL): STARTTLS (required, not
//! opportunistic), implicit TLS (SMTPS, usually port 465) or, only when asked for, plain
//! SMTP. A `multipart/alternative` message: plain text and a small HTML version, or, when
//! the HTML is given ([`Email::html`], a plugin's body template), that HTML and its text.
//!
//! Replies 4xx (transient) and connection failures are retryable; 5xx (permanent), TLS
//! and address errors are final.

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::error::{Class, DeliveryError};
use crate::notifier::{Accepted, Notifier};
use crate::{Kind, Message, Secret};

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmailTls {
    /// `STARTTLS` after connecting; refused if the server does not offer it.
    #[default]
    StartTls,
    /// TLS from the first byte (SMTPS).
    Implicit,
    /// No TLS at all (a relay on the same host).
    None,
}

#[derive(Debug, Clone)]
pub struct Email {
    pub host: String,
    pub port: u16,
    pub tls: EmailTls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub from: String,
    pub to: Vec<String>,
    /// Extra trusted root certificates (PEM), for a server with a private CA.
    pub root_pem: Option<String>,
    /// The name the server's certificate is checked against (default `host`).
    pub tls_name: Option<String>,
    /// The name given in `EHLO` (default this machine's host name).
    pub hello_name: Option<String>,
    /// The HTML part as given, instead of the one made from the message; the plain part is
    /// then its text ([`html_text`]). The subject stays the message's title.
    pub html: Option<String>,
}

fn kind() -> Kind {
    Kind::Email
}

fn setting(name: &str, reason: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::new(kind(), Class::Final, format!("setting `{name}`: {reason}"))
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(message: &Message) -> String {
    let color = message.status.map_or("#333333", |s| s.color());
    let mut out = format!(
        "<div style=\"font-family:sans-serif\"><h2 style=\"color:{color}\">{}</h2>",
        html_escape(&message.title)
    );
    for line in message.text.lines() {
        out.push_str(&format!("<p>{}</p>", html_escape(line)));
    }
    if !message.fields.is_empty() {
        out.push_str("<table>");
        for field in &message.fields {
            out.push_str(&format!(
                "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
                html_escape(&field.name),
                html_escape(&field.value)
            ));
        }
        out.push_str("</table>");
    }
    if let Some(link) = &message.link {
        out.push_str(&format!(
            "<p><a href=\"{}\">{}</a></p>",
            html_escape(&link.url),
            html_escape(&link.label)
        ));
    }
    out.push_str("</div>");
    out
}

/// The text of an HTML document, for the plain part beside it: `head`, `style` and
/// `script` dropped, white space collapsed as HTML does, a line break for `br`, `div`,
/// `tr` and `li` and a blank line around paragraphs, headings, tables and lists, a space
/// between table cells, the other tags removed, the common entities decoded.
pub fn html_text(html: &str) -> String {
    const DROPPED: [&str; 4] = ["head", "style", "script", "title"];
    const LINES: [&str; 4] = ["br", "div", "tr", "li"];
    const PARAGRAPHS: [&str; 12] = [
        "p",
        "table",
        "ul",
        "ol",
        "hr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "blockquote",
    ];
    fn text(out: &mut String, segment: &str) {
        let mut space = false;
        for c in segment.chars() {
            if c.is_whitespace() {
                space = true;
            } else {
                if space && !out.is_empty() && !out.ends_with(['\n', ' ']) {
                    out.push(' ');
                }
                space = false;
                out.push(c);
            }
        }
        if space && !out.is_empty() && !out.ends_with(['\n', ' ']) {
            out.push(' ');
        }
    }
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        text(&mut out, &rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('>') else {
            text(&mut out, &rest[start..]);
            rest = "";
            break;
        };
        let tag = &after[..end];
        rest = &after[end + 1..];
        let closing = tag.starts_with('/');
        let name = tag
            .trim_start_matches('/')
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase();
        if !closing && DROPPED.contains(&name.as_str()) {
            // Up to the end of the matching end tag, or of the document.
            let lower = rest.to_ascii_lowercase();
            rest = match lower.find(&format!("</{name}")) {
                Some(i) => rest[i..].find('>').map_or("", |j| &rest[i + j + 1..]),
                None => "",
            };
            continue;
        }
        let breaks = if PARAGRAPHS.contains(&name.as_str()) {
            2
        } else if LINES.contains(&name.as_str()) {
            1
        } else {
            if matches!(name.as_str(), "td" | "th") && !closing {
                text(&mut out, " ");
            }
            0
        };
        if breaks > 0 && !out.is_empty() {
            while out.ends_with(' ') {
                out.pop();
            }
            let present = out.len() - out.trim_end_matches('\n').len();
            for _ in present..breaks {
                out.push('\n');
            }
        }
    }
    text(&mut out, rest);
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    let mut result = String::with_capacity(decoded.len());
    let mut blank_lines = 0;
    for line in decoded.trim().lines().map(str::trim) {
        if line.is_empty() {
            blank_lines += 1;
            if blank_lines > 1 {
                continue;
            }
        } else {
            blank_lines = 0;
        }
        result.push_str(line);
        result.push('\n');
    }
    result.trim_end().to_string()
}

pub(crate) fn build(config: &Email, message: &Message) -> Result<lettre::Message, DeliveryError> {
    let from: Mailbox = config.from.parse().map_err(|e| setting("from", e))?;
    let mut builder = lettre::Message::builder()
        .from(from)
        .subject(&message.title);
    if config.to.is_empty() {
        return Err(setting("recipients", "no recipient is set"));
    }
    for to in &config.to {
        let mailbox: Mailbox = to
            .parse()
            .map_err(|e| setting("recipients", format!("`{to}`: {e}")))?;
        builder = builder.to(mailbox);
    }
    let (plain, html) = match &config.html {
        Some(given) => (html_text(given), given.clone()),
        None => (message.plain(), html(message)),
    };
    builder
        .multipart(MultiPart::alternative_plain_html(plain, html))
        .map_err(|e| {
            DeliveryError::new(
                kind(),
                Class::Final,
                format!("building the email failed: {e}"),
            )
        })
}

fn transport(
    notifier: &Notifier,
    config: &Email,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, DeliveryError> {
    let tls_name = config
        .tls_name
        .clone()
        .unwrap_or_else(|| config.host.clone());
    let parameters = || -> Result<TlsParameters, DeliveryError> {
        let mut builder = TlsParameters::builder(tls_name.clone());
        if let Some(pem) = &config.root_pem {
            let certificate = Certificate::from_pem(pem.as_bytes())
                .map_err(|e| setting("root certificate", e))?;
            builder = builder.add_root_certificate(certificate);
        }
        builder.build_rustls().map_err(|e| setting("tls", e))
    };
    let tls = match config.tls {
        EmailTls::StartTls => Tls::Required(parameters()?),
        EmailTls::Implicit => Tls::Wrapper(parameters()?),
        EmailTls::None => Tls::None,
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
        .port(config.port)
        .tls(tls)
        .timeout(Some(notifier.timeout));
    if let Some(name) = config.hello_name.as_ref().filter(|n| !n.is_empty()) {
        builder = builder.hello_name(ClientId::Domain(name.clone()));
    }
    if let Some(username) = &config.username {
        builder = builder.credentials(Credentials::new(
            username.clone(),
            config
                .password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default(),
        ));
    }
    Ok(builder.build())
}

pub(crate) async fn send(
    notifier: &Notifier,
    config: &Email,
    message: &Message,
) -> Result<Accepted, DeliveryError> {
    let email = build(config, message)?;
    let transport = transport(notifier, config)?;
    let server = format!("{}:{}", config.host, config.port);
    match transport.send(email).await {
        Ok(response) => Ok(Accepted {
            status: None,
            answer: format!(
                "{} {}",
                response.code(),
                response.message().collect::<Vec<_>>().join(" ")
            ),
        }),
        Err(error) => {
            let text = super::error_chain(&error);
            // A certificate the client does not trust stays untrusted on a retry; lettre
            // reports it as a connection error.
            let certificate = text.contains("certificate");
            let class =
                if error.is_permanent() || error.is_tls() || error.is_client() || certificate {
                    Class::Final
                } else {
                    Class::Retryable { after: None }
                };
            Err(DeliveryError::new(
                kind(),
                class,
                format!("sending through {server} failed: {text}"),
            ))
        }
    }
}
