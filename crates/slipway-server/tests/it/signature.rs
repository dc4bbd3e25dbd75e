//! Signatures: HMACs computed here over real and small bodies, accepted when right and
//! refused (401) for a changed byte, another secret, a missing or malformed header.

use slipway_server::webhook::{self, Provider, WebhookError};

use crate::{KEY, corpus, headers, hmac_hex};

/// Small bodies, including the empty one.
const SMALL: &[&[u8]] = &[
    b"",
    b"{}",
    b"{\"zen\":\"Keep it logically awesome.\"}",
    b"\xff\x00",
];

/// The bodies to sign: the corpus's (when present) and [`SMALL`].
fn bodies() -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = SMALL.iter().map(|b| b.to_vec()).collect();
    if let Some(cases) = corpus() {
        all.extend(cases.into_iter().map(|c| c.body));
    }
    all
}

/// (provider, header, prefix): every documented way to sign a body.
const FORMS: &[(Provider, &str, &str)] = &[
    (Provider::GitHub, "X-Hub-Signature-256", "sha256="),
    (Provider::Gitea, "X-Gitea-Signature", ""),
    (Provider::Gitea, "X-Forgejo-Signature", ""),
    (Provider::Gitea, "X-Gogs-Signature", ""),
    (Provider::Gitea, "X-Hub-Signature-256", "sha256="),
    (Provider::Generic, "X-Slipway-Signature", "sha256="),
];

fn verify(provider: Provider, header: &str, value: &str, body: &[u8]) -> Result<(), WebhookError> {
    webhook::verify(provider, &headers(&[(header, value)]), body, KEY)
}

#[test]
fn right_signatures_are_accepted_and_changed_bodies_refused() {
    for body in bodies() {
        let mac = hmac_hex(KEY, &body);
        for &(provider, header, prefix) in FORMS {
            let value = format!("{prefix}{mac}");
            assert_eq!(
                verify(provider, header, &value, &body),
                Ok(()),
                "{provider} {header}"
            );

            let mut changed = body.clone();
            match changed.first_mut() {
                Some(byte) => *byte ^= 1,
                None => changed.push(b' '),
            }
            assert_eq!(
                verify(provider, header, &value, &changed),
                Err(WebhookError::BadSignature {
                    header: canonical(header)
                }),
                "{provider} {header}: one byte changed"
            );

            let other = format!("{prefix}{}", hmac_hex(b"another secret", &body));
            let err = verify(provider, header, &other, &body).expect_err("another secret");
            assert!(matches!(err, WebhookError::BadSignature { .. }), "{err:?}");
            assert_eq!(err.status(), 401);
        }
    }
}

/// The header names as the crate spells them (its errors quote them).
fn canonical(header: &str) -> &'static str {
    [
        "X-Hub-Signature-256",
        "X-Gitea-Signature",
        "X-Forgejo-Signature",
        "X-Gogs-Signature",
        "X-Slipway-Signature",
    ]
    .into_iter()
    .find(|h| h.eq_ignore_ascii_case(header))
    .expect("a known header")
}

#[test]
fn header_names_are_case_insensitive_and_hex_any_case() {
    let body = br#"{"ref":"refs/heads/main"}"#;
    let mac = hmac_hex(KEY, body);
    let ok = |provider, header: &str, value: String| verify(provider, header, &value, body);
    assert_eq!(
        ok(
            Provider::GitHub,
            "x-hub-signature-256",
            format!("sha256={mac}")
        ),
        Ok(())
    );
    assert_eq!(
        ok(
            Provider::GitHub,
            "X-HUB-SIGNATURE-256",
            format!("sha256={}", mac.to_uppercase())
        ),
        Ok(())
    );
    assert_eq!(
        ok(Provider::Gitea, "x-gitea-signature", format!(" {mac} ")),
        Ok(())
    );
}

#[test]
fn missing_signatures_are_refused() {
    let body = b"{}";
    for (provider, header) in [
        (Provider::GitHub, "X-Hub-Signature-256"),
        (Provider::Gitea, "X-Forgejo-Signature"),
        (Provider::GitLab, "X-Gitlab-Token"),
        (Provider::Generic, "X-Slipway-Signature"),
    ] {
        let none: [(&str, &str); 0] = [];
        let err = webhook::verify(provider, &none, body, KEY).expect_err("no header");
        assert_eq!(err, WebhookError::MissingSignature { provider, header });
        assert_eq!(err.status(), 401);
        assert!(err.to_string().contains(header), "{err}");
        // An empty value is no signature either.
        let empty = webhook::verify(provider, &headers(&[(header, "")]), body, KEY);
        assert_eq!(
            empty,
            Err(WebhookError::MissingSignature { provider, header })
        );
    }
    // GitHub's legacy SHA-1 signature alone is not enough.
    let sha1_only = headers(&[(
        "X-Hub-Signature",
        "sha1=0123456789abcdef0123456789abcdef01234567",
    )]);
    assert!(matches!(
        webhook::verify(Provider::GitHub, &sha1_only, body, KEY),
        Err(WebhookError::MissingSignature { .. })
    ));
}

#[test]
fn malformed_signature_headers_are_refused() {
    let body = b"{}";
    let mac = hmac_hex(KEY, body);
    let cases: Vec<(Provider, &str, String)> = vec![
        // Wrong or missing prefix.
        (
            Provider::GitHub,
            "X-Hub-Signature-256",
            format!("sha1={mac}"),
        ),
        (Provider::GitHub, "X-Hub-Signature-256", mac.clone()),
        (Provider::Generic, "X-Slipway-Signature", mac.clone()),
        (
            Provider::Gitea,
            "X-Gitea-Signature",
            format!("sha256={mac}"),
        ),
        // Not hex.
        (
            Provider::GitHub,
            "X-Hub-Signature-256",
            format!("sha256={}", "zz".repeat(32)),
        ),
        (
            Provider::Gitea,
            "X-Gitea-Signature",
            "not a signature".to_owned(),
        ),
        // Wrong length.
        (
            Provider::GitHub,
            "X-Hub-Signature-256",
            format!("sha256={}", &mac[..40]),
        ),
        (Provider::Gitea, "X-Gitea-Signature", format!("{mac}00")),
        (
            Provider::GitHub,
            "X-Hub-Signature-256",
            "sha256=".to_owned(),
        ),
        (Provider::GitHub, "X-Hub-Signature-256", "sha".to_owned()),
        (
            Provider::GitHub,
            "X-Hub-Signature-256",
            "sha256=é".to_owned(),
        ),
    ];
    for (provider, header, value) in cases {
        let err = verify(provider, header, &value, body).expect_err(&value);
        assert!(
            matches!(err, WebhookError::MalformedSignature { .. }),
            "{provider} {header}: {value}: {err:?}"
        );
        assert_eq!(err.status(), 401);
        assert!(err.to_string().contains(header), "{err}");
    }
}

#[test]
fn malformed_signature_messages_say_what_is_wrong() {
    let short = verify(Provider::GitHub, "X-Hub-Signature-256", "sha256=abc", b"{}");
    let message = short.expect_err("short").to_string();
    assert!(
        message.contains("expected `sha256=<64 hex digits>`, found 3 characters"),
        "{message}"
    );
    let prefix = verify(Provider::GitHub, "X-Hub-Signature-256", "sha1=abc", b"{}");
    let message = prefix.expect_err("prefix").to_string();
    assert!(
        message.contains("does not start with `sha256=`"),
        "{message}"
    );
    let not_hex = verify(Provider::Gitea, "X-Gitea-Signature", &"g".repeat(64), b"{}");
    let message = not_hex.expect_err("not hex").to_string();
    assert!(
        message.contains("`X-Gitea-Signature`") && message.contains("not hexadecimal"),
        "{message}"
    );
}

#[test]
fn gitea_checks_the_first_signature_header_present() {
    let body = b"{}";
    let mac = hmac_hex(KEY, body);
    // Gitea sends both; a right X-Gitea-Signature decides even beside a stale GitHub one.
    let both = headers(&[
        ("X-Hub-Signature-256", "sha256=00"),
        ("X-Gitea-Signature", mac.as_str()),
    ]);
    assert_eq!(webhook::verify(Provider::Gitea, &both, body, KEY), Ok(()));
    let wrong_first = headers(&[
        ("X-Gitea-Signature", "00".repeat(32).as_str()),
        ("X-Hub-Signature-256", format!("sha256={mac}").as_str()),
    ]);
    assert!(webhook::verify(Provider::Gitea, &wrong_first, body, KEY).is_err());
}

#[test]
fn gitlab_tokens_must_equal_the_secret() {
    let secret = std::str::from_utf8(KEY).expect("ASCII key");
    for body in bodies() {
        let ok = webhook::verify(
            Provider::GitLab,
            &headers(&[("X-Gitlab-Token", secret)]),
            &body,
            KEY,
        );
        assert_eq!(ok, Ok(()));
    }
    for wrong in [
        "an-example-webhook-secret-of-32-bytes?",
        "an-example-webhook-secret-of-32-bytes",
        "an-example-webhook-secret-of-32-bytes!!",
        "x",
        " an-example-webhook-secret-of-32-bytes!",
    ] {
        let err = webhook::verify(
            Provider::GitLab,
            &headers(&[("x-gitlab-token", wrong)]),
            b"{}",
            KEY,
        )
        .expect_err(wrong);
        assert_eq!(
            err,
            WebhookError::BadSignature {
                header: "X-Gitlab-Token"
            }
        );
        assert_eq!(err.status(), 401);
    }
}

#[test]
fn an_empty_secret_verifies_nothing() {
    for provider in [
        Provider::GitHub,
        Provider::Gitea,
        Provider::GitLab,
        Provider::Generic,
    ] {
        let signed = headers(&[
            (
                "X-Hub-Signature-256",
                &format!("sha256={}", hmac_hex(b"", b"{}")),
            ),
            ("X-Gitea-Signature", &hmac_hex(b"", b"{}")),
            ("X-Gitlab-Token", ""),
            (
                "X-Slipway-Signature",
                &format!("sha256={}", hmac_hex(b"", b"{}")),
            ),
        ]);
        let err = webhook::verify(provider, &signed, b"{}", b"").expect_err("empty secret");
        assert_eq!(err, WebhookError::NoSecret);
        assert_eq!(err.status(), 401);
    }
}

#[test]
fn sign_matches_an_independent_hmac() {
    for body in bodies() {
        assert_eq!(
            webhook::sign(KEY, &body),
            format!("sha256={}", hmac_hex(KEY, &body))
        );
    }
}
