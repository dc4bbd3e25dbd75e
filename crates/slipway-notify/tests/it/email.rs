//! Email through a real SMTP server: Debian's aiosmtpd (`python3-aiosmtpd`) writing to a
//! Maildir, with STARTTLS and with implicit TLS, certificates from a private CA made with
//! rcgen. Skipped, with a message, when aiosmtpd is not installed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use slipway_notify::{Channel, ChannelConfig, Class, Email, EmailTls};

use crate::support::*;

const PYTHON: &str = "/usr/bin/python3";

fn aiosmtpd_present() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A CA and a leaf for `localhost`/127.0.0.1: (CA PEM, leaf PEM, key PEM).
fn certificates() -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "notify test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("leaf params");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

struct Smtp {
    child: Child,
    port: u16,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// aiosmtpd on loopback; `tls` is `--tlscert/--tlskey` (STARTTLS) or
/// `--smtpscert/--smtpskey` (implicit TLS).
fn start_smtp(tls: &[&str], cert: &str, key: &str) -> Smtp {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert).expect("cert");
    std::fs::write(&key_path, key).expect("key");
    let maildir = dir.path().join("mail");
    let port = free_port();
    let mut command = Command::new(PYTHON);
    command.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")]);
    command.args(["-c", "aiosmtpd.handlers.Mailbox"]);
    if let [cert_flag, key_flag] = tls {
        command
            .arg(cert_flag)
            .arg(&cert_path)
            .arg(key_flag)
            .arg(&key_path);
    }
    command.arg(&maildir);
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("aiosmtpd starts");
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "aiosmtpd did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Smtp {
        child,
        port,
        maildir,
        _dir: dir,
    }
}

fn delivered(maildir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect()
}

fn email(port: u16, tls: EmailTls, ca: Option<&str>) -> Channel {
    Channel::new(
        "mail",
        ChannelConfig::Email(Email {
            host: "127.0.0.1".into(),
            port,
            tls,
            username: None,
            password: None,
            from: "Slipway <ci@example.com>".into(),
            to: vec!["dev@example.com".into(), "ops@example.com".into()],
            root_pem: ca.map(str::to_string),
            tls_name: Some("localhost".into()),
            hello_name: None,
            html: None,
        }),
    )
}

#[tokio::test]
async fn email_with_starttls() {
    if !aiosmtpd_present() {
        eprintln!(
            "skipped: python3-aiosmtpd is not installed (apt-get install -y python3-aiosmtpd)"
        );
        return;
    }
    let (ca, cert, key) = certificates();
    let smtp = start_smtp(&["--tlscert", "--tlskey"], &cert, &key);
    let accepted = notifier()
        .send(&email(smtp.port, EmailTls::StartTls, Some(&ca)), &message())
        .await
        .expect("sent");
    assert!(accepted.answer.starts_with("250"), "{}", accepted.answer);
    let mails = delivered(&smtp.maildir);
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert!(mail.contains("Subject: acme/app #42 success"), "{mail}");
    assert!(mail.contains("multipart/alternative"));
    assert!(mail.contains("Fix the login page"));

    // Without the CA the server's certificate is not trusted: a final error, nothing sent.
    let error = notifier()
        .send(&email(smtp.port, EmailTls::StartTls, None), &message())
        .await
        .expect_err("untrusted certificate");
    assert_eq!(error.class, Class::Final, "{error}");
    assert_eq!(delivered(&smtp.maildir).len(), 1);
}

#[tokio::test]
async fn email_with_implicit_tls() {
    if !aiosmtpd_present() {
        eprintln!(
            "skipped: python3-aiosmtpd is not installed (apt-get install -y python3-aiosmtpd)"
        );
        return;
    }
    let (ca, cert, key) = certificates();
    let smtp = start_smtp(&["--smtpscert", "--smtpskey"], &cert, &key);
    notifier()
        .send(&email(smtp.port, EmailTls::Implicit, Some(&ca)), &message())
        .await
        .expect("sent");
    assert_eq!(delivered(&smtp.maildir).len(), 1);
}

#[tokio::test]
async fn email_refused_when_starttls_is_required_but_not_offered() {
    if !aiosmtpd_present() {
        eprintln!(
            "skipped: python3-aiosmtpd is not installed (apt-get install -y python3-aiosmtpd)"
        );
        return;
    }
    let (_, cert, key) = certificates();
    let smtp = start_smtp(&[], &cert, &key);
    let error = notifier()
        .send(&email(smtp.port, EmailTls::StartTls, None), &message())
        .await
        .expect_err("no STARTTLS");
    assert_eq!(error.class, Class::Final, "{error}");
    // Plain SMTP, only when asked for, goes through.
    notifier()
        .send(&email(smtp.port, EmailTls::None, None), &message())
        .await
        .expect("plain");
    assert_eq!(delivered(&smtp.maildir).len(), 1);
}

#[test]
fn html_text_reads_like_the_page() {
    let html = r#"<!DOCTYPE html><html><head><title>t</title><style>p { color: red }</style></head>
<body><table><tr><td class="alert">
    Successful build #7
  </td></tr>
  <tr><td>Repo:</td><td>acme/app</td></tr></table>
<p>Fix &amp; ship &lt;now&gt;</p><br>bye</body></html>"#;
    assert_eq!(
        slipway_notify::html_text(html),
        "Successful build #7\nRepo: acme/app\n\nFix & ship <now>\n\nbye"
    );
}

/// A given HTML part goes as it is, with its text as the plain part (with a given `EHLO`
/// name, which the server takes but does not record).
#[tokio::test]
async fn email_with_a_given_html_part() {
    if !aiosmtpd_present() {
        eprintln!(
            "skipped: python3-aiosmtpd is not installed (apt-get install -y python3-aiosmtpd)"
        );
        return;
    }
    let (_, cert, key) = certificates();
    let smtp = start_smtp(&[], &cert, &key);
    let mut channel = email(smtp.port, EmailTls::None, None);
    if let ChannelConfig::Email(config) = &mut channel.config {
        config.html = Some("<h1>Build <b>ok</b></h1><p>all green</p>".into());
        config.hello_name = Some("ci.example.com".into());
    }
    notifier().send(&channel, &message()).await.expect("sent");
    let mails = delivered(&smtp.maildir);
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert!(mail.contains("Subject: acme/app #42 success"), "{mail}");
    assert!(mail.contains("<h1>Build <b>ok</b></h1>"), "{mail}");
    assert!(
        mail.contains("Build ok\r\n\r\nall green") || mail.contains("Build ok\n\nall green"),
        "{mail}"
    );
    assert!(!mail.contains("Fix the login page"), "{mail}");
}
