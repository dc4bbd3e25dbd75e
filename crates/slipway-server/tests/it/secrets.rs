//! The secret box: sealing, opening, and the key file.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use slipway_server::secrets::{SecretBox, SecretError};

const AAD: &str = "repo:1:docker_password";

#[test]
fn secrets_round_trip() {
    let sb = SecretBox::generate();
    for plain in [
        "",
        "hunter2",
        "multi\nline\nvalue",
        "ünïcödé ✓",
        &"x".repeat(100_000),
    ] {
        let sealed = sb.seal(plain, AAD);
        assert!(!sealed.contains(plain) || plain.is_empty());
        assert_eq!(sb.open(&sealed, AAD).expect("opens"), plain);
    }
}

#[test]
fn secrets_wrong_aad_fails() {
    let sb = SecretBox::generate();
    let sealed = sb.seal("hunter2", AAD);
    let err = sb
        .open(&sealed, "repo:2:docker_password")
        .expect_err("another row's aad must not open it");
    assert!(matches!(err, SecretError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("repo:2:docker_password"), "{err}");
    assert!(!err.to_string().contains("hunter2"));
}

#[test]
fn secrets_wrong_key_fails() {
    let a = SecretBox::generate();
    let b = SecretBox::generate();
    let sealed = a.seal("hunter2", AAD);
    let err = b
        .open(&sealed, AAD)
        .expect_err("another key must not open it");
    assert!(matches!(err, SecretError::Open { .. }), "{err:?}");
}

#[test]
fn secrets_tampered_ciphertext_fails() {
    let sb = SecretBox::generate();
    let sealed = sb.seal("hunter2", AAD);
    let bytes = STANDARD.decode(&sealed).expect("sealed is base64");
    assert_eq!(
        bytes.len(),
        24 + "hunter2".len() + 16,
        "nonce + ciphertext + tag"
    );
    for i in 0..bytes.len() {
        let mut tampered = bytes.clone();
        tampered[i] ^= 0x01;
        let err = sb
            .open(&STANDARD.encode(&tampered), AAD)
            .expect_err("a flipped bit must not open");
        assert!(matches!(err, SecretError::Open { .. }), "byte {i}: {err:?}");
    }
    // Truncated and non-base64 inputs are malformed, not panics.
    for bad in ["", "not base64!", &STANDARD.encode([0u8; 30])] {
        let err = sb.open(bad, AAD).expect_err("malformed");
        assert!(
            matches!(err, SecretError::Malformed { .. }),
            "{bad:?}: {err:?}"
        );
    }
}

#[test]
fn secrets_two_seals_differ() {
    let sb = SecretBox::generate();
    let a = sb.seal("same value", AAD);
    let b = sb.seal("same value", AAD);
    assert_ne!(a, b, "a fresh nonce per seal");
    assert_eq!(sb.open(&a, AAD).expect("a opens"), "same value");
    assert_eq!(sb.open(&b, AAD).expect("b opens"), "same value");
}

#[test]
fn secrets_key_file_created_0600_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data").join("secret.key");
    let first = SecretBox::load_or_create(&path).expect("created");
    let meta = std::fs::metadata(&path).expect("key file exists");
    assert_eq!(meta.len(), 32);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let before = std::fs::read(&path).expect("read key");
    let sealed = first.seal("hunter2", AAD);

    let second = SecretBox::load_or_create(&path).expect("loaded");
    assert_eq!(
        std::fs::read(&path).expect("read key"),
        before,
        "not rewritten"
    );
    assert_eq!(second.open(&sealed, AAD).expect("same key"), "hunter2");
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("secret.key")]);
    // Debug never shows the key.
    let debug = format!("{second:?}");
    assert!(debug.contains("redacted"), "{debug}");
    assert!(!debug.contains(&hex::encode(&before)));
}

#[test]
fn secrets_key_file_bad_mode_or_size_is_an_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");

    let open = dir.path().join("open.key");
    std::fs::write(&open, [7u8; 32]).expect("write");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = SecretBox::load_or_create(&open).expect_err("group/other readable");
    assert!(
        matches!(err, SecretError::KeyFilePermissions { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");

    let short = dir.path().join("short.key");
    std::fs::write(&short, [7u8; 31]).expect("write");
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let err = SecretBox::load_or_create(&short).expect_err("wrong size");
    assert!(
        matches!(err, SecretError::KeyFileSize { len: 31, .. }),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read(&short).expect("read").len(),
        31,
        "left untouched"
    );

    // A hex key text written by hand is accepted.
    let text = dir.path().join("text.key");
    std::fs::write(&text, format!("{}\n", "ab".repeat(32))).expect("write");
    std::fs::set_permissions(&text, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let from_file = SecretBox::load_or_create(&text).expect("hex key file");
    let from_text = SecretBox::from_key_text(&"AB".repeat(32)).expect("hex text");
    let sealed = from_file.seal("v", AAD);
    assert_eq!(from_text.open(&sealed, AAD).expect("same key"), "v");
}

#[test]
fn secrets_key_text_hex_and_base64() {
    let key = [0x5au8; 32];
    let by_hex = SecretBox::from_key_text(&hex::encode(key)).expect("hex");
    let by_b64 = SecretBox::from_key_text(&format!(" {}\n", STANDARD.encode(key))).expect("b64");
    let by_raw = SecretBox::from_key(key);
    let sealed = by_hex.seal("v", AAD);
    assert_eq!(by_b64.open(&sealed, AAD).expect("b64 same key"), "v");
    assert_eq!(by_raw.open(&sealed, AAD).expect("raw same key"), "v");

    for bad in [
        "",
        "abc",
        &hex::encode([1u8; 31]),
        &STANDARD.encode([1u8; 33]),
    ] {
        let err = SecretBox::from_key_text(bad).expect_err("bad key text");
        assert!(
            matches!(err, SecretError::KeyText { .. }),
            "{bad:?}: {err:?}"
        );
        if !bad.is_empty() {
            assert!(
                !err.to_string().contains(bad),
                "never quotes the key: {err}"
            );
        }
    }
}
