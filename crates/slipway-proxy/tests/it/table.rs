//! The route table: merge, conflicts, lookup.

use slipway_proxy::RouteTable;
use slipway_proxy::route::{
    Address, Backend, BackendSet, Host, Route, RouteKey, RouteSet, RouteSource, Tls,
};

fn route(host: &str, path: Option<&str>, backend: &str, source: RouteSource) -> Route {
    let key = RouteKey::new(Host::parse(host).expect("host"), path.map(str::to_owned));
    let b = Backend::new(Address::parse(backend).expect("address"));
    Route::new(key, vec![BackendSet::single("default", vec![b])], source)
}

fn file() -> RouteSource {
    RouteSource::File {
        path: "routes.yml".to_owned(),
    }
}

fn labels(c: &str) -> RouteSource {
    RouteSource::Labels {
        container: c.to_owned(),
    }
}

fn backend_of(t: &RouteTable, host: &str, path: &str) -> Option<String> {
    t.lookup(host, path).map(|r| {
        r.backends()
            .next()
            .map(|b| b.address.to_string())
            .unwrap_or_default()
    })
}

#[test]
fn lookup_is_host_then_longest_prefix_then_priority() {
    let mut hi = route("a.com", Some("/api/v2"), "10.0.0.9:1", file());
    hi.priority = 5;
    let t = RouteTable::build([RouteSet {
        routes: vec![
            route("a.com", None, "10.0.0.1:1", file()),
            route("a.com", Some("/api"), "10.0.0.2:1", file()),
            hi,
            route("*.a.com", None, "10.0.0.3:1", file()),
            route("x.a.com", Some("/only"), "10.0.0.4:1", file()),
        ],
    }]);
    assert_eq!(backend_of(&t, "a.com", "/"), Some("10.0.0.1:1".into()));
    assert_eq!(
        backend_of(&t, "A.COM:8443", "/api/x"),
        Some("10.0.0.2:1".into())
    );
    assert_eq!(
        backend_of(&t, "a.com.", "/api/v2/y"),
        Some("10.0.0.9:1".into())
    );
    assert_eq!(backend_of(&t, "b.a.com", "/api"), Some("10.0.0.3:1".into()));
    // An exact host that has no route for the path falls back to the wildcard.
    assert_eq!(
        backend_of(&t, "x.a.com", "/other"),
        Some("10.0.0.3:1".into())
    );
    assert_eq!(
        backend_of(&t, "x.a.com", "/only/1"),
        Some("10.0.0.4:1".into())
    );
    assert_eq!(backend_of(&t, "b.c.a.com", "/"), None);
    assert_eq!(backend_of(&t, "unknown.com", "/"), None);
    assert!(t.conflicts().is_empty());
}

#[test]
fn a_file_route_beats_labels_and_the_loser_is_a_conflict() {
    let t = RouteTable::build([
        RouteSet {
            routes: vec![route("a.com", None, "10.0.0.1:80", labels("container web"))],
        },
        RouteSet {
            routes: vec![route("a.com", None, "10.0.0.2:80", file())],
        },
    ]);
    assert_eq!(backend_of(&t, "a.com", "/"), Some("10.0.0.2:80".into()));
    assert_eq!(t.routes().len(), 1);
    let c = &t.conflicts()[0];
    assert_eq!(c.winner, file());
    assert_eq!(c.loser, labels("container web"));
    assert_eq!(c.key.to_string(), "a.com");
    // The public URL outranks everything.
    let t = RouteTable::build([
        RouteSet {
            routes: vec![route("a.com", None, "10.0.0.2:80", file())],
        },
        RouteSet {
            routes: vec![route(
                "a.com",
                None,
                "127.0.0.1:8080",
                RouteSource::PublicUrl,
            )],
        },
    ]);
    assert_eq!(backend_of(&t, "a.com", "/"), Some("127.0.0.1:8080".into()));
    assert_eq!(t.conflicts().len(), 1);
}

#[test]
fn replicas_merge_but_differing_labels_conflict() {
    let a = route("a.com", None, "10.0.0.1:80", labels("container web-1"));
    let b = route("a.com", None, "10.0.0.2:80", labels("container web-2"));
    let mut c = route("a.com", None, "10.0.0.3:80", labels("container evil"));
    c.tls = Tls::Acme;
    let t = RouteTable::build([RouteSet {
        routes: vec![a, b, c],
    }]);
    let r = t.lookup("a.com", "/").expect("route");
    let addrs: Vec<String> = r.backends().map(|b| b.address.to_string()).collect();
    assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.2:80"]);
    assert_eq!(t.conflicts().len(), 1);
    assert_eq!(t.conflicts()[0].loser, labels("container evil"));
    assert!(
        t.conflicts()[0].reason.contains("TLS"),
        "{:?}",
        t.conflicts()
    );
}

#[test]
fn canary_sets_from_two_sources_of_a_kind_join_one_route() {
    let mut stable = route("a.com", None, "10.0.0.1:80", labels("container v1"));
    stable.backend_sets[0].name = "stable".into();
    stable.backend_sets[0].weight = 90;
    let mut canary = route("a.com", None, "10.0.0.2:80", labels("container v2"));
    canary.backend_sets[0].name = "canary".into();
    canary.backend_sets[0].weight = 10;
    let t = RouteTable::build([RouteSet {
        routes: vec![stable, canary],
    }]);
    let r = t.lookup("a.com", "/x").expect("route");
    let sets: Vec<(String, u32)> = r
        .backend_sets
        .iter()
        .map(|s| (s.name.clone(), s.weight))
        .collect();
    assert_eq!(sets, [("stable".into(), 90), ("canary".into(), 10)]);
    // The same set with another weight is a conflict, not a guess.
    let mut a = route("b.com", None, "10.0.0.1:80", labels("container v1"));
    a.backend_sets[0].weight = 2;
    let b = route("b.com", None, "10.0.0.2:80", labels("container v2"));
    let t = RouteTable::build([RouteSet { routes: vec![a, b] }]);
    assert!(
        t.conflicts()[0].reason.contains("weight"),
        "{:?}",
        t.conflicts()
    );
}

#[test]
fn the_table_serializes_routes_and_conflicts() {
    let t = RouteTable::build([
        RouteSet {
            routes: vec![route(
                "a.com",
                Some("/api"),
                "10.0.0.1:80",
                labels("service web"),
            )],
        },
        RouteSet {
            routes: vec![route("a.com", Some("/api"), "10.0.0.2:80", file())],
        },
    ]);
    let v = serde_json::to_value(&t).expect("json");
    assert_eq!(v["routes"][0]["host"], "a.com");
    assert_eq!(v["routes"][0]["path"], "/api");
    assert_eq!(v["routes"][0]["source"]["kind"], "file");
    assert_eq!(
        v["routes"][0]["backend_sets"][0]["backends"][0]["address"],
        "10.0.0.2:80"
    );
    assert_eq!(v["conflicts"][0]["loser"]["container"], "service web");
}
