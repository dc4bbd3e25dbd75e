//! Basic authentication users in htpasswd form (`user:hash`), with the hashes Traefik and
//! nginx accept: bcrypt (`$2y$`, `htpasswd -B`), Apache MD5 (`$apr1$`, htpasswd's
//! default) and `{SHA}` (base64 SHA-1). Plain-text passwords are refused, so a routes file
//! or a label never holds one.

use base64::Engine;
use md5::{Digest, Md5};
use serde::{Serialize, Serializer};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PasswordHash {
    Bcrypt(String),
    Apr1 { salt: String, hash: String },
    Sha1(String),
}

impl PasswordHash {
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let t = text.trim();
        let hint = "make one with `htpasswd -nB USER` (bcrypt) or `htpasswd -n USER` (apr1)";
        if let Some(rest) = t.strip_prefix("$apr1$") {
            let (salt, hash) = rest
                .split_once('$')
                .ok_or_else(|| format!("an `$apr1$` hash is `$apr1$SALT$HASH` ({hint})"))?;
            if salt.is_empty() || salt.len() > 8 || hash.len() != 22 {
                return Err(format!("malformed `$apr1$` hash ({hint})"));
            }
            return Ok(PasswordHash::Apr1 {
                salt: salt.to_owned(),
                hash: hash.to_owned(),
            });
        }
        if let Some(b64) = t.strip_prefix("{SHA}") {
            let ok = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .is_ok_and(|d| d.len() == 20);
            if !ok {
                return Err(format!(
                    "a `{{SHA}}` hash is 28 characters of base64 ({hint})"
                ));
            }
            return Ok(PasswordHash::Sha1(b64.to_owned()));
        }
        if ["$2a$", "$2b$", "$2x$", "$2y$"]
            .iter()
            .any(|p| t.starts_with(p))
        {
            if t.len() != 60 || t.parse::<bcrypt::HashParts>().is_err() {
                return Err(format!("malformed bcrypt hash ({hint})"));
            }
            return Ok(PasswordHash::Bcrypt(t.to_owned()));
        }
        if t.starts_with('$') {
            return Err(format!(
                "unsupported hash `{}`: use bcrypt, apr1 or {{SHA}} ({hint})",
                t.split('$').nth(1).unwrap_or_default()
            ));
        }
        Err(format!(
            "this is not a password hash (plain text, or DES crypt?): {hint}"
        ))
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            PasswordHash::Bcrypt(_) => "bcrypt",
            PasswordHash::Apr1 { .. } => "apr1",
            PasswordHash::Sha1(_) => "sha1",
        }
    }

    /// Whether `password` is the one hashed. Comparisons are constant-time.
    pub fn verify(&self, password: &str) -> bool {
        match self {
            PasswordHash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            PasswordHash::Apr1 { salt, hash } => {
                let computed = apr1(password.as_bytes(), salt.as_bytes());
                computed.as_bytes().ct_eq(hash.as_bytes()).into()
            }
            PasswordHash::Sha1(b64) => {
                use sha1::Sha1;
                let digest = Sha1::digest(password.as_bytes());
                let computed = base64::engine::general_purpose::STANDARD.encode(digest);
                computed.as_bytes().ct_eq(b64.as_bytes()).into()
            }
        }
    }
}

/// Apache's MD5 crypt (`$apr1$`): 1,000 rounds of MD5 over password and salt, then its
/// own base-64 with bytes in a fixed shuffled order.
fn apr1(pw: &[u8], salt: &[u8]) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let alt = Md5::new()
        .chain_update(pw)
        .chain_update(salt)
        .chain_update(pw)
        .finalize();
    let mut ctx = Md5::new()
        .chain_update(pw)
        .chain_update(MAGIC)
        .chain_update(salt);
    let mut left = pw.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = pw.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&pw[..1]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(pw);
        } else {
            c.update(fin);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(pw);
        }
        if round & 1 == 1 {
            c.update(fin);
        } else {
            c.update(pw);
        }
        fin = c.finalize();
    }
    const ITOA: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(22);
    let mut put = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(char::from(ITOA[(v & 0x3f) as usize]));
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put(
            (u32::from(fin[a]) << 16) | (u32::from(fin[b]) << 8) | u32::from(fin[c]),
            4,
        );
    }
    put(u32::from(fin[11]), 2);
    out
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub hash: PasswordHash,
}

/// Users only by name and hash scheme in output: hashes stay out of `--json` and the API.
impl Serialize for User {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{} ({})", self.name, self.hash.scheme()))
    }
}

impl User {
    /// One `user:hash` entry.
    pub fn parse(text: &str) -> Result<User, String> {
        let t = text.trim();
        let (name, hash) = t.split_once(':').ok_or_else(|| {
            "a user is `NAME:HASH` (the output of `htpasswd -nB NAME`)".to_owned()
        })?;
        if name.is_empty() {
            return Err("a user's name is empty".to_owned());
        }
        let hash = PasswordHash::parse(hash).map_err(|e| format!("user `{name}`: {e}"))?;
        Ok(User {
            name: name.to_owned(),
            hash,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct BasicAuth {
    pub realm: String,
    pub users: Vec<User>,
}

impl BasicAuth {
    /// Traefik's default realm.
    pub const DEFAULT_REALM: &'static str = "traefik";

    /// A comma list of `user:hash` (Traefik's `basicauth.users`); errors name the entry.
    pub fn parse_users(text: &str) -> Result<Vec<User>, String> {
        let users = text
            .split(',')
            .filter(|u| !u.trim().is_empty())
            .map(User::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if users.is_empty() {
            return Err("no users: write `NAME:HASH[,NAME:HASH...]`".to_owned());
        }
        Ok(users)
    }

    /// Whether `name`/`password` is one of the users.
    pub fn check(&self, name: &str, password: &str) -> bool {
        self.users
            .iter()
            .any(|u| u.name == name && u.hash.verify(password))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apr1_matches_openssl() {
        // `openssl passwd -apr1 -salt abcdefgh 'secret p4ss'`
        let u = User::parse("ann:$apr1$abcdefgh$b4Kt/lZ3yrTtt4CboU4c6/").expect("user");
        assert!(u.hash.verify("secret p4ss"));
        assert!(!u.hash.verify("secret p4sS"));
    }

    #[test]
    fn sha1_and_bcrypt_verify() {
        // `printf 'secret p4ss' | openssl sha1 -binary | base64`
        let sha = PasswordHash::parse("{SHA}vxwVaHCynNyI/Wtw62mLQM7jAhA=").expect("sha");
        assert!(sha.verify("secret p4ss"));
        assert!(!sha.verify("secret"));
        // OpenBSD's bcrypt test vector.
        let b = PasswordHash::parse("$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW")
            .expect("bcrypt");
        assert!(b.verify("U*U"));
        assert!(!b.verify("U*V"));
        let y = bcrypt::hash_with_result("pw", 4)
            .expect("hash")
            .format_for_version(bcrypt::Version::TwoY);
        assert!(PasswordHash::parse(&y).expect("2y").verify("pw"));
    }

    #[test]
    fn plain_passwords_are_refused() {
        let e = User::parse("ann:hunter2").expect_err("plain");
        assert!(e.contains("htpasswd"), "{e}");
        assert!(User::parse("ann").is_err());
        assert!(PasswordHash::parse("$6$salt$hash").is_err());
    }
}
