//! Who may do what: principals, their grants, and the [`Authenticator`] the caller provides
//! to check Basic credentials (`docker login -u USER -p TOKEN`) and whether the credential
//! behind a bearer token still stands.
//!
//! The registry never stores users or tokens itself: the server passes an authenticator
//! backed by its token store; [`StaticAuthenticator`] holds a fixed list (the admin token of
//! `slipway registry`, tests). Deny by default: a principal can only do what a [`Grant`]
//! allows, and the anonymous principal only pulls repositories configured as public.
//!
//! Credentials end: a [`Principal`] names the credential that authenticated it
//! ([`Principal::credential`], an id only the authenticator interprets); every bearer token
//! issued to it carries that id, and every use of the token asks
//! [`Authenticator::credential_live`] again, so a token revoked (or a pipeline's token whose
//! stage attempt ended) takes its bearer tokens with it at once, not when they expire.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// An action on a repository, as named in token scopes (`repository:NAME:pull,push`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    /// `*` expands to every action.
    pub fn parse_list(text: &str) -> Vec<Action> {
        let mut out = Vec::new();
        for a in text.split(',') {
            match a.trim() {
                "pull" => out.push(Action::Pull),
                "push" => out.push(Action::Push),
                "delete" => out.push(Action::Delete),
                "*" => out.extend([Action::Pull, Action::Push, Action::Delete]),
                _ => {}
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Which repositories a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoPattern {
    /// Every repository (`*`).
    All,
    /// Every repository under a namespace (`team/*` matches `team/app` and `team/x/y`).
    Namespace(String),
    /// One repository (`team/app`).
    Exact(String),
    /// A path and everything below it, `*` matching any run of characters but `/` within
    /// one segment: `team/app` covers `team/app` and `team/app/x`, `team/shared-*` covers
    /// `team/shared-lib` and `team/shared-lib/x`, neither covers `team/other`. Made by
    /// [`RepoPattern::parse_path`]; what pipeline tokens push to.
    Path(String),
}

/// Why a path pattern ([`RepoPattern::parse_path`]) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registry path pattern `{pattern}`: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

impl RepoPattern {
    /// `*`, `NAMESPACE/*` or an exact repository name.
    pub fn parse(text: &str) -> RepoPattern {
        if text == "*" {
            RepoPattern::All
        } else if let Some(ns) = text.strip_suffix("/*") {
            RepoPattern::Namespace(ns.to_string())
        } else {
            RepoPattern::Exact(text.to_string())
        }
    }

    /// A path pattern: lowercase segments of repository-name characters (`a-z 0-9 . _ -`)
    /// and `*`, separated by `/`, the first segment (the owner) spelled out without `*`, so
    /// no pattern reaches every owner. E.g. `team/app`, `team/shared-*`, `team/*/cache`,
    /// `team` (all of the owner's paths).
    pub fn parse_path(text: &str) -> Result<RepoPattern, PatternError> {
        let fail = |reason: &str| PatternError {
            pattern: text.to_string(),
            reason: format!(
                "{reason}; write lowercase segments separated by `/`, `*` within a segment, \
                 the owner first and in full (e.g. `team/shared-*`)"
            ),
        };
        if text.is_empty() {
            return Err(fail("it is empty"));
        }
        if text.len() > 255 {
            return Err(fail("it is longer than 255 characters"));
        }
        for (i, segment) in text.split('/').enumerate() {
            if segment.is_empty() {
                return Err(fail(
                    "it has an empty segment (a leading, trailing or double `/`)",
                ));
            }
            if let Some(c) = segment
                .chars()
                .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-' | '*'))
            {
                return Err(fail(&format!("`{c}` is not allowed in a repository path")));
            }
            if i == 0 && segment.contains('*') {
                return Err(fail("the first segment (the owner) may not hold `*`"));
            }
            if segment.chars().all(|c| c == '.') {
                return Err(fail("a segment may not be `.` or `..`"));
            }
        }
        Ok(RepoPattern::Path(text.to_string()))
    }

    pub fn matches(&self, repo: &str) -> bool {
        match self {
            RepoPattern::All => true,
            RepoPattern::Path(pattern) => path_matches(pattern, repo),
            RepoPattern::Namespace(ns) => repo
                .strip_prefix(ns.as_str())
                .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1),
            RepoPattern::Exact(name) => name == repo,
        }
    }
}

impl fmt::Display for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoPattern::All => f.write_str("*"),
            RepoPattern::Namespace(ns) => write!(f, "{ns}/*"),
            RepoPattern::Exact(name) | RepoPattern::Path(name) => f.write_str(name),
        }
    }
}

/// Whether `repo` is the path `pattern` names or below it: its first segments match the
/// pattern's one for one (`*` any run of characters but `/`), and any rest starts with `/`.
fn path_matches(pattern: &str, repo: &str) -> bool {
    let mut names = repo.split('/');
    pattern.split('/').all(|p| {
        names
            .next()
            .is_some_and(|n| glob_segment(p.as_bytes(), n.as_bytes()))
    })
}

/// `*` matches any run of bytes (a segment holds no `/`); everything else itself. Greedy,
/// going back only to the last `*` seen: a later `*` can take whatever an earlier one would
/// have, so O(pattern × name) however many stars an admin's pattern holds (trying every
/// split per star would be exponential, on every registry request).
fn glob_segment(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // The last `*` (its index) and where in `name` its run ends for now.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(c) if name.get(n) == Some(c) => {
                p += 1;
                n += 1;
            }
            _ => match star {
                // Let the last `*` take one byte more, and match the rest after it again.
                Some((at, end)) => {
                    star = Some((at, end + 1));
                    p = at + 1;
                    n = end + 1;
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|c| *c == b'*'))
}

/// Permission to do `actions` on the repositories matching `repositories`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub repositories: RepoPattern,
    pub actions: Vec<Action>,
}

impl Grant {
    pub fn new(repositories: RepoPattern, actions: &[Action]) -> Grant {
        Grant {
            repositories,
            actions: actions.to_vec(),
        }
    }
}

/// An authenticated caller (or the anonymous one) and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Account name, reported as the event actor and the token subject; empty for anonymous.
    pub name: String,
    pub grants: Vec<Grant>,
    /// The credential that authenticated it, as the [`Authenticator`] names it (a token's
    /// id, say): bearer tokens issued to the principal carry it and are accepted only while
    /// [`Authenticator::credential_live`] says it stands. `None` (anonymous, or a principal
    /// made for an internal action): a bearer token issued for it is refused on use unless
    /// it is anonymous.
    pub credential: Option<String>,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal {
            name: String::new(),
            grants: Vec::new(),
            credential: None,
        }
    }

    /// The same principal, authenticated by `credential` (see [`Principal::credential`]).
    pub fn with_credential(mut self, credential: impl Into<String>) -> Principal {
        self.credential = Some(credential.into());
        self
    }

    /// Every action on every repository.
    pub fn admin(name: impl Into<String>) -> Principal {
        Principal {
            name: name.into(),
            grants: vec![Grant::new(
                RepoPattern::All,
                &[Action::Pull, Action::Push, Action::Delete],
            )],
            credential: None,
        }
    }

    /// Pull from every repository and nothing else: what the deployer's token gets.
    pub fn puller(name: impl Into<String>) -> Principal {
        Principal {
            name: name.into(),
            grants: vec![Grant::new(RepoPattern::All, &[Action::Pull])],
            credential: None,
        }
    }

    /// Pull and push below one namespace and nothing else: what robot tokens get.
    pub fn robot(name: impl Into<String>, namespace: &str) -> Principal {
        Principal::pusher(name, vec![RepoPattern::Namespace(namespace.to_string())])
    }

    /// Pull and push on the repositories `patterns` match and nothing else: what pipeline
    /// tokens get (their repository's path and the paths its settings add).
    pub fn pusher(name: impl Into<String>, patterns: Vec<RepoPattern>) -> Principal {
        Principal {
            name: name.into(),
            grants: patterns
                .into_iter()
                .map(|p| Grant::new(p, &[Action::Pull, Action::Push]))
                .collect(),
            credential: None,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.name.is_empty()
    }

    pub fn allows(&self, repo: &str, action: Action) -> bool {
        self.grants
            .iter()
            .any(|g| g.actions.contains(&action) && g.repositories.matches(repo))
    }
}

/// A boxed future, so that [`Authenticator`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Checks the username and password (an API token) of Basic credentials, and whether the
/// credential behind a bearer token still stands.
pub trait Authenticator: Send + Sync + fmt::Debug + 'static {
    /// Returns `None` for unknown users and wrong passwords alike; implementations log their
    /// own failures. The principal should name its credential
    /// ([`Principal::with_credential`]): bearer tokens made for a principal without one are
    /// refused on use.
    fn authenticate<'a>(
        &'a self,
        username: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Option<Principal>>;

    /// Whether `credential` (a [`Principal::credential`] this authenticator handed out)
    /// still stands: `false` once it was revoked or has ended. Asked on every request made
    /// with a bearer token, so it should be cheap (an in-memory answer, mostly).
    fn credential_live<'a>(&'a self, credential: &'a str) -> BoxFuture<'a, bool>;
}

/// A fixed set of accounts, tokens kept only as SHA-256 hashes.
#[derive(Debug, Clone, Default)]
pub struct StaticAuthenticator {
    accounts: Vec<Account>,
}

#[derive(Clone)]
struct Account {
    username: String,
    token_hash: [u8; 32],
    grants: Vec<Grant>,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("username", &self.username)
            .field("grants", &self.grants)
            .finish_non_exhaustive()
    }
}

impl StaticAuthenticator {
    pub fn new() -> StaticAuthenticator {
        StaticAuthenticator::default()
    }

    /// User `admin` with every permission, password `token`.
    pub fn with_admin(self, token: &str) -> StaticAuthenticator {
        self.with_user("admin", token, Principal::admin("admin").grants)
    }

    /// A robot that may pull and push below `namespace` only.
    ///
    /// Each account is its own credential (`static:<username>`); a fixed list never revokes.
    pub fn with_robot(self, name: &str, token: &str, namespace: &str) -> StaticAuthenticator {
        let grants = Principal::robot(name, namespace).grants;
        self.with_user(name, token, grants)
    }

    pub fn with_user(mut self, username: &str, token: &str, grants: Vec<Grant>) -> Self {
        self.accounts.push(Account {
            username: username.to_string(),
            token_hash: sha2::Sha256::digest(token.as_bytes()).into(),
            grants,
        });
        self
    }

    fn check(&self, username: &str, password: &str) -> Option<Principal> {
        let hash: [u8; 32] = sha2::Sha256::digest(password.as_bytes()).into();
        self.accounts
            .iter()
            .find(|a| a.username == username && constant_time_eq(&a.token_hash, &hash))
            .map(|a| Principal {
                name: a.username.clone(),
                grants: a.grants.clone(),
                credential: Some(format!("static:{}", a.username)),
            })
    }
}

impl Authenticator for StaticAuthenticator {
    fn authenticate<'a>(
        &'a self,
        username: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Option<Principal>> {
        Box::pin(std::future::ready(self.check(username, password)))
    }

    fn credential_live<'a>(&'a self, credential: &'a str) -> BoxFuture<'a, bool> {
        let live = credential
            .strip_prefix("static:")
            .is_some_and(|user| self.accounts.iter().any(|a| a.username == user));
        Box::pin(std::future::ready(live))
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One requested scope: `repository:NAME:ACTIONS` (other resource types are kept so a
/// token response can echo them, but grant nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<Action>,
}

impl Scope {
    /// Parses `type:name:actions`; the name may itself contain `:` (a `host:port/` prefix).
    pub fn parse(text: &str) -> Option<Scope> {
        let (kind, rest) = text.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        // `repository(plugin)` and similar resource classes are treated as `repository`.
        let kind = kind.split('(').next().unwrap_or(kind).to_string();
        if name.is_empty() {
            return None;
        }
        Some(Scope {
            kind,
            name: name.to_string(),
            actions: Action::parse_list(actions),
        })
    }

    /// Every scope in the `scope` query values (each may hold several, space separated).
    pub fn parse_all<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Scope> {
        values
            .into_iter()
            .flat_map(|v| v.split(' '))
            .filter_map(Scope::parse)
            .collect()
    }
}
