//! The route table: the merge of every provider's [`RouteSet`], and lookup.
//!
//! Merge: routes are grouped by [`RouteKey`] (host, path, exactness). Within a key:
//! - routes that agree on everything but their backends (TLS, options, priority) and come
//!   from sources of one kind are one route whose backend sets are the union of theirs: the
//!   replicas of one compose service, or the stable and canary containers of one host
//!   (a set named in both must have one weight in both);
//! - otherwise the source with the higher [`RouteSource::rank`] wins (`--public-url` >
//!   deploy > file > labels); between equal ranks the first in source order wins. Every
//!   route that lost is reported as a [`Conflict`], never dropped in silence.
//!
//! Lookup: the request's host (lowercased, port and trailing dot removed) picks exact-host
//! routes first, then wildcards (there is one label under a wildcard, so at most one
//! wildcard matches a host); among those, the longest path that matches wins (an exact
//! path beats a prefix of the same length), then the higher priority.
//!
//! A table is immutable once built: the data plane holds it behind an `Arc` and swaps the
//! whole of it when a provider changes, so a request sees one consistent table.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::route::{Route, RouteKey, RouteSet, RouteSource};

/// Two sources claim one key with different routes: `winner` serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub key: RouteKey,
    pub winner: RouteSource,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub winner_origin: Option<String>,
    pub loser: RouteSource,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loser_origin: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} wins over {} ({})",
            self.key, self.winner, self.loser, self.reason
        )
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteTable {
    /// Sorted by key.
    routes: Vec<Route>,
    conflicts: Vec<Conflict>,
    /// Exact host → indexes into `routes`, best first.
    #[serde(skip)]
    exact: HashMap<String, Vec<usize>>,
    /// Wildcard suffix (`example.com` of `*.example.com`) → indexes, best first.
    #[serde(skip)]
    wildcard: HashMap<String, Vec<usize>>,
}

impl RouteTable {
    /// Merges the providers' sets (in the order given, which breaks ties of rank).
    pub fn build(sets: impl IntoIterator<Item = RouteSet>) -> RouteTable {
        let mut by_key: BTreeMap<RouteKey, Vec<Route>> = BTreeMap::new();
        for set in sets {
            for route in set.routes {
                by_key.entry(route.key.clone()).or_default().push(route);
            }
        }
        let mut routes = Vec::new();
        let mut conflicts = Vec::new();
        for (key, mut claims) in by_key {
            // Stable: among equal ranks the earlier claim stays first.
            claims.sort_by_key(|r| std::cmp::Reverse(r.source.rank()));
            let mut winner = claims.remove(0);
            for other in claims {
                match merge(&mut winner, &other) {
                    Ok(()) => {}
                    Err(reason) => conflicts.push(Conflict {
                        key: key.clone(),
                        winner: winner.source.clone(),
                        winner_origin: winner.origin.clone(),
                        loser: other.source.clone(),
                        loser_origin: other.origin.clone(),
                        reason,
                    }),
                }
            }
            routes.push(winner);
        }
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            match r.key.host.wildcard_suffix() {
                Some(suffix) => wildcard.entry(suffix.to_owned()).or_default().push(i),
                None => exact
                    .entry(r.key.host.as_str().to_owned())
                    .or_default()
                    .push(i),
            }
        }
        let order = |v: &mut Vec<usize>| {
            v.sort_by_key(|&i| {
                let r = &routes[i];
                std::cmp::Reverse((r.key.path_len(), r.key.exact, r.priority))
            })
        };
        exact.values_mut().for_each(order);
        wildcard.values_mut().for_each(order);
        RouteTable {
            routes,
            conflicts,
            exact,
            wildcard,
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }

    /// The route for a request's `Host` (as sent, port and case allowed) and path.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Route> {
        self.lookup_index(host, path).map(|i| &self.routes[i])
    }

    /// As [`RouteTable::lookup`], the route's index in [`RouteTable::routes`]: the data
    /// plane keeps per-route state (balancer counters, live backends) beside the table.
    pub fn lookup_index(&self, host: &str, path: &str) -> Option<usize> {
        let host = normalize_host(host);
        let pick = |idx: Option<&Vec<usize>>| {
            idx.into_iter()
                .flatten()
                .copied()
                .find(|&i| self.routes[i].key.matches_path(path))
        };
        if let Some(i) = pick(self.exact.get(host.as_str())) {
            return Some(i);
        }
        let (_, suffix) = host.split_once('.')?;
        pick(self.wildcard.get(suffix))
    }
}

/// `App.Example.com:8443.` → `app.example.com`; `[::1]:80` → `[::1]`.
pub(crate) fn normalize_host(host: &str) -> String {
    let h = host.trim();
    let h = if h.starts_with('[') {
        h.split_once(']').map_or(h, |(ip, _)| &h[..=ip.len()])
    } else {
        h.rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(h, |(name, _)| name)
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// Folds `other` into `winner` when they are one route (see the module doc), or says why
/// they are not.
fn merge(winner: &mut Route, other: &Route) -> Result<(), String> {
    if std::mem::discriminant(&winner.source) != std::mem::discriminant(&other.source) {
        return Err(format!(
            "{} outranks {}",
            kind(&winner.source),
            kind(&other.source)
        ));
    }
    if winner.tls != other.tls {
        return Err("their TLS differs".to_owned());
    }
    if winner.priority != other.priority {
        return Err("their priorities differ".to_owned());
    }
    if winner.options != other.options {
        return Err("their options differ".to_owned());
    }
    for set in &other.backend_sets {
        match winner.backend_sets.iter_mut().find(|s| s.name == set.name) {
            Some(mine) if mine.weight != set.weight => {
                return Err(format!(
                    "backend set `{}` has weight {} in one and {} in the other",
                    set.name, mine.weight, set.weight
                ));
            }
            Some(mine) => {
                for b in &set.backends {
                    if !mine.backends.iter().any(|m| m.address == b.address) {
                        mine.backends.push(b.clone());
                    }
                }
            }
            None => winner.backend_sets.push(set.clone()),
        }
    }
    Ok(())
}

fn kind(source: &RouteSource) -> &'static str {
    match source {
        RouteSource::PublicUrl => "--public-url",
        RouteSource::Deploy { .. } => "a deploy",
        RouteSource::File { .. } => "the routes file",
        RouteSource::Labels { .. } => "labels",
    }
}
