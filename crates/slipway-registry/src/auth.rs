//! Who may do what: principals, their grants, and the [`Authenticator`] the caller provides
//! to check Basic credentials (`docker login -u USER -p TOKEN`).
//!
//! The registry never stores users or tokens itself: the server passes an authenticator
//! backed by its token store; [`StaticAuthenticator`] holds a fixed list (the admin token of
//! `slipway registry`, tests). Deny by default: a principal can only do what a [`Grant`]
//! allows, and the anonymous principal only pulls repositories configured as public.

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

    pub fn matches(&self, repo: &str) -> bool {
        match self {
            RepoPattern::All => true,
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
            RepoPattern::Exact(name) => f.write_str(name),
        }
    }
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
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal {
            name: String::new(),
            grants: Vec::new(),
        }
    }

    /// Every action on every repository.
    pub fn admin(name: impl Into<String>) -> Principal {
        Principal {
            name: name.into(),
            grants: vec![Grant::new(
                RepoPattern::All,
                &[Action::Pull, Action::Push, Action::Delete],
            )],
        }
    }

    /// Pull and push below one namespace and nothing else: what robot and pipeline tokens
    /// get.
    pub fn robot(name: impl Into<String>, namespace: &str) -> Principal {
        Principal {
            name: name.into(),
            grants: vec![Grant::new(
                RepoPattern::Namespace(namespace.to_string()),
                &[Action::Pull, Action::Push],
            )],
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

/// Checks the username and password (an API token) of Basic credentials. Returns `None`
/// for unknown users and wrong passwords alike; implementations log their own failures.
pub trait Authenticator: Send + Sync + fmt::Debug + 'static {
    fn authenticate<'a>(
        &'a self,
        username: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Option<Principal>>;
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
