//! Traefik rules: the forms users write, round trips through the printer, and no panic on
//! any text.

use proptest::prelude::*;
use slipway_proxy::rule::{Rule, parse, parse_v1, print, to_targets};

fn keys(text: &str) -> Vec<String> {
    let rule = parse(text).expect("parses");
    to_targets(&rule)
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn rules_from_the_corpus_and_the_docs() {
    assert_eq!(keys("Host(`whoami.localhost`)"), ["whoami.localhost"]);
    assert_eq!(keys("Host(`grafana.example.com`)"), ["grafana.example.com"]);
    assert_eq!(
        keys("Host(`example.com`) && (PathPrefix(`/api`) || PathPrefix(`/v2`))"),
        ["example.com/api", "example.com/v2"]
    );
    assert_eq!(
        keys(
            "(Host(`a.com`) || HostRegexp(`{subdomain:[a-z]+}.b.com`)) && !Path(`/x`) && PathPrefix(`/app`)"
        ),
        ["a.com/app", "*.b.com/app"]
    );
    // v2's several hosts in one matcher, with spaces and double quotes.
    assert_eq!(keys("Host(\"a.com\", \"b.com\")"), ["a.com", "b.com"]);
    // Case of matcher names does not matter to Traefik v2's parser.
    assert_eq!(keys("host(`a.com`) && pathprefix(`/p`)"), ["a.com/p"]);
}

fn rule_tree() -> impl Strategy<Value = Rule> {
    let arg = prop_oneof!["[a-z0-9./*{}:-]{1,12}", "[a-z`]{1,6}"];
    let leaf = ("[A-Za-z][A-Za-z0-9]{0,8}", prop::collection::vec(arg, 1..3))
        .prop_map(|(name, args)| Rule::Matcher { name, args });
    leaf.prop_recursive(5, 48, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|r| Rule::Not { rule: Box::new(r) }),
            (inner.clone(), inner.clone()).prop_map(|(l, r)| Rule::And {
                left: Box::new(l),
                right: Box::new(r)
            }),
            (inner.clone(), inner).prop_map(|(l, r)| Rule::Or {
                left: Box::new(l),
                right: Box::new(r)
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn printed_rules_parse_back_to_the_same_tree(rule in rule_tree()) {
        let text = print(&rule);
        let back = parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(&back, &rule, "{}", text);
        // Expansion is total: keys or problems, never a panic.
        let _ = to_targets(&back);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,80}") {
        if let Ok(r) = parse(&text) {
            let _ = to_targets(&r);
        }
        if let Ok((r, _)) = parse_v1(&text) {
            let _ = to_targets(&r);
        }
    }

    #[test]
    fn rule_like_text_never_panics(text in "[()!&|`\" ,A-Za-z./{}*:;-]{0,60}") {
        if let Ok(r) = parse(&text) {
            let _ = to_targets(&r);
        }
        if let Ok((r, _)) = parse_v1(&text) {
            let _ = to_targets(&r);
        }
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = format!("{}Host(`a.com`){}", "(".repeat(10_000), ")".repeat(10_000));
    let e = parse(&deep).expect_err("too deep");
    assert!(e.message.contains("deeper"), "{e}");
    let long = vec!["Host(`a.com`)"; 5_000].join(" || ");
    assert!(
        parse(&long)
            .expect_err("too long")
            .message
            .contains("matchers")
    );
    let nots = format!("{}Host(`a.com`)", "!".repeat(10_000));
    assert!(parse(&nots).is_err());
    // Many alternatives are bounded too.
    let wide = (0..200)
        .map(|i| format!("Host(`h{i}.com`)"))
        .collect::<Vec<_>>()
        .join(" || ");
    let (k, p) = to_targets(&parse(&wide).expect("parses"));
    assert!(k.is_empty() && p[0].contains("more than"), "{p:?}");
}
