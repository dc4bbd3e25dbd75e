//! Email over SMTP with lettre and rustls (no OpenSSL): STARTTLS (required, not
//! opportunistic), implicit TLS (SMTPS, usually port 465) or, only when asked for, plain
//! SMTP. A `multipart/alternative` message: plain text and a small HTML version.
//!
//! Replies 4xx (transient) and connection failures are retryable; 5xx (permanent), TLS
//! and address errors are final.

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
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
    builder
        .multipart(MultiPart::alternative_plain_html(
            message.plain(),
            html(message),
        ))
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
