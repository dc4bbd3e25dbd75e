//! Route URIs: logspout's examples, options, bad URIs and their error texts, filters.

use slipway_logs::Stream;
use slipway_logs::route::{Filter, Framing, RouteUri, Scheme, parse_route_uris};

use crate::route_support::meta;

#[test]
fn logspout_examples_parse() {
    let u = RouteUri::parse("syslog+tls://logs.papertrailapp.com:55555").expect("papertrail");
    assert_eq!(u.scheme, Scheme::SyslogTls);
    assert_eq!((u.host.as_str(), u.port), ("logs.papertrailapp.com", 55555));
    assert!(u.filter.is_empty());

    let u = RouteUri::parse("syslog://10.0.0.1").expect("default port");
    assert_eq!((u.scheme, u.port), (Scheme::SyslogUdp, 514));

    let u = RouteUri::parse(
        "syslog+tcp://h:514?filter.name=*_db&filter.sources=stdout,stderr&framing=newline",
    )
    .expect("filters");
    assert_eq!(u.filter.name.as_deref(), Some("*_db"));
    assert_eq!(u.filter.sources, vec![Stream::Stdout, Stream::Stderr]);
    assert_eq!(u.framing, Framing::Newline);

    let u = RouteUri::parse("relp://[::1]:2514?window=16&filter.labels=app:web*,tier:front")
        .expect("relp");
    assert_eq!((u.host.as_str(), u.port, u.window), ("::1", 2514, 16));
    assert_eq!(u.authority(), "[::1]:2514");
    assert_eq!(
        u.filter.labels,
        vec![
            ("app".into(), "web*".into()),
            ("tier".into(), "front".into())
        ]
    );

    let u = RouteUri::parse(
        "elasticsearch+https://elastic:s3cr%40t@es.example:9243/logs-app?tls.ca=/etc/ca.pem",
    )
    .expect("es");
    assert_eq!(u.scheme, Scheme::Elasticsearch { https: true });
    assert_eq!(u.path, "logs-app");
    assert_eq!(u.password.as_deref(), Some("s3cr@t"));
    assert_eq!(
        u.to_string(),
        "elasticsearch+https://elastic:******@es.example:9243/logs-app?tls.ca=/etc/ca.pem"
    );
    assert!(!format!("{u:?}").contains("s3cr"));
    assert_eq!(
        RouteUri::parse("elasticsearch://h").expect("es").path,
        "slipway"
    );

    let u = RouteUri::parse("raw://h:5000?template={{ service }} {{ line }}").expect("raw");
    assert_eq!(u.template.as_deref(), Some("{{ service }} {{ line }}"));
    assert_eq!(RouteUri::parse("gelf://h").expect("gelf").port, 12201);
    assert_eq!(RouteUri::parse("loki://h").expect("loki").port, 3100);
}

#[test]
fn ids_are_stable_and_short() {
    let a = RouteUri::parse("relp://h:1").expect("a");
    let b = RouteUri::parse("relp://h:1").expect("b");
    let c = RouteUri::parse("relp://h:2").expect("c");
    assert_eq!(a.id(), b.id());
    assert_ne!(a.id(), c.id());
    assert_eq!(a.id().len(), 12);
}

#[test]
fn lists_split_on_commas_between_uris_only() {
    let list = parse_route_uris(
        "syslog+tcp://a:514?filter.sources=stdout,stderr, relp://b:2514?filter.labels=x:1,y:2,loki://c",
    )
    .expect("list");
    assert_eq!(list.len(), 3);
    assert_eq!(list[0].filter.sources.len(), 2);
    assert_eq!(list[1].filter.labels.len(), 2);
    assert_eq!(list[2].scheme, Scheme::Loki { https: false });
    assert!(parse_route_uris("").expect("empty").is_empty());
}

#[test]
fn bad_uris_say_what_and_where() {
    let e = RouteUri::parse("kafka://u:pw@h:9092").expect_err("unknown scheme");
    let text = e.to_string();
    assert!(
        text.starts_with("log route `kafka://u:******@h:9092`: unknown scheme `kafka`"),
        "{text}"
    );
    assert!(
        text.contains("supported schemes: syslog (= syslog+udp)"),
        "{text}"
    );
    assert!(!text.contains("pw"));

    let e = RouteUri::parse("localhost:514").expect_err("no scheme");
    assert!(e.to_string().contains("not SCHEME://HOST:PORT"), "{e}");
    let e = RouteUri::parse("raw://h").expect_err("raw needs a port");
    assert_eq!(
        e.to_string(),
        "log route `raw://h`: no port (`raw` has no default port)"
    );
    let e = RouteUri::parse("syslog://h:99999").expect_err("port");
    assert_eq!(
        e.to_string(),
        "log route `syslog://h:99999`: port `99999` is not a number from 1 to 65535"
    );
    let e = RouteUri::parse("relp://h?window=0").expect_err("window");
    assert_eq!(
        e.to_string(),
        "log route `relp://h?window=0`: option `window=0`: the window is a number from 1 to 65535"
    );
    let e = RouteUri::parse("syslog://h?framing=newline").expect_err("framing is for tcp");
    assert!(
        e.to_string()
            .contains("option `framing=newline`: unknown option for `syslog`"),
        "{e}"
    );
    let e = RouteUri::parse("syslog+tcp://h?filter.sources=stdin").expect_err("sources");
    assert!(
        e.to_string().contains("sources are `stdout` and `stderr`"),
        "{e}"
    );
    let e = RouteUri::parse("raw://h:1?template={{ line").expect_err("template");
    assert!(e.to_string().contains("the template does not parse"), "{e}");
    let e = RouteUri::parse("elasticsearch://h/Logs").expect_err("index");
    assert!(e.to_string().contains("one lowercase name"), "{e}");
    let e = RouteUri::parse("relp://:2514").expect_err("host");
    assert!(e.to_string().ends_with("no host"), "{e}");
    let e = parse_route_uris("relp://a:1,loki://b?nope=1").expect_err("second");
    assert!(
        e.to_string().starts_with("log route `loki://b?nope=1`"),
        "{e}"
    );
}

#[test]
fn filters_match_name_id_labels_sources() {
    let web = meta(
        "abc123",
        "shop-web-1",
        &[("tier", "front"), ("app", "web-v2")],
    );
    let db = meta("def456", "shop_db", &[("tier", "back")]);
    let f = |q: &str| -> Filter {
        RouteUri::parse(&format!("relp://h?{q}"))
            .expect("uri")
            .filter
    };
    assert!(f("").matches(&db, Stream::Stderr));
    assert!(f("filter.name=*_db").matches(&db, Stream::Stdout));
    assert!(!f("filter.name=*_db").matches(&web, Stream::Stdout));
    assert!(f("filter.id=abc1").matches(&web, Stream::Stdout));
    assert!(!f("filter.id=abc1").matches(&db, Stream::Stdout));
    assert!(f("filter.labels=app:web*,tier:front").matches(&web, Stream::Stdout));
    assert!(!f("filter.labels=app:web*,tier:back").matches(&web, Stream::Stdout));
    assert!(f("filter.labels=tier").matches(&db, Stream::Stdout));
    assert!(!f("filter.labels=app").matches(&db, Stream::Stdout));
    assert!(f("filter.sources=stderr").matches(&db, Stream::Stderr));
    assert!(!f("filter.sources=stderr").matches(&db, Stream::Stdout));
    assert!(!f("filter.name=shop*&filter.sources=stderr").matches(&web, Stream::Stdout));
}
