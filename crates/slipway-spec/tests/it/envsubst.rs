//! `envsubst`: upstream's tables from `../shared/corpus/envsubst` (read at run time),
//! an explicit table for every form, error offsets, and properties.

use std::collections::HashMap;
use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::Value;
use slipway_spec::envsubst::{MAX_DEPTH, MAX_OUTPUT, Node, check, parse, substitute};

// ---------------------------------------------------------------------------
// (a) upstream tables
// ---------------------------------------------------------------------------

fn corpus_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/envsubst");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipping: ../shared/corpus not found ({})", dir.display());
        None
    }
}

fn load(dir: &std::path::Path, file: &str) -> Vec<Value> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    match serde_json::from_str(&text) {
        Ok(Value::Array(items)) => items,
        other => panic!("{} is not a JSON array: {other:?}", path.display()),
    }
}

/// Upstream's TestExpand case 33 only holds for drone/envsubst v2: v1.0.3, which the
/// Drone server uses and we follow, turns `\\` outside `${...}` into `\`.
const V2_ONLY_EXPAND_INPUT: &str = r"\\something ${var=${default_var}}";

#[test]
fn corpus_expand_cases() {
    let Some(dir) = corpus_dir() else { return };
    let cases = load(&dir, "cases.json");
    assert_eq!(
        cases.len(),
        34,
        "cases.json should hold upstream's 34 cases"
    );
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &cases {
        let input = case["input"].as_str().unwrap_or_default();
        let expected = case["expected"].as_str().unwrap_or_default();
        let source = case["source"].as_str().unwrap_or_default();
        if input == V2_ONLY_EXPAND_INPUT {
            continue; // v2-only, see above; the v1.0.3 result is checked below
        }
        let env: HashMap<String, String> = case["env"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        checked += 1;
        match substitute(input, |name| env.get(name).cloned()) {
            Ok(got) if got == expected => {}
            other => failures.push(format!(
                "{source}: {input:?} → {other:?}, want {expected:?}"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, 33);

    let env = HashMap::from([("default_var", "foo")]);
    let got = substitute(V2_ONLY_EXPAND_INPUT, |n| env.get(n).map(|v| v.to_string()));
    assert_eq!(got.as_deref(), Ok(r"\something foo"));
}

/// Flattens upstream's right-nested `ListNode`s into a list of nodes.
fn flatten(ast: &Value) -> Vec<&Value> {
    if ast["__type__"] == "ListNode" {
        ast["Nodes"]
            .as_array()
            .map(|nodes| nodes.iter().flat_map(flatten).collect())
            .unwrap_or_default()
    } else {
        vec![ast]
    }
}

fn same_node(ours: &Node, theirs: &Value) -> bool {
    match ours {
        Node::Text(text) => theirs["__type__"] == "TextNode" && theirs["Value"] == text.as_str(),
        Node::Expr(expr) => {
            let their_args: &[Value] = theirs["Args"].as_array().map_or(&[], Vec::as_slice);
            theirs["__type__"] == "FuncNode"
                && theirs["Param"] == expr.name.as_str()
                && theirs["Name"].as_str().unwrap_or_default() == expr.op
                && their_args.len() == expr.args.len()
                && expr
                    .args
                    .iter()
                    .zip(their_args)
                    .all(|(a, b)| same_node(a, b))
        }
    }
}

#[test]
fn corpus_parse_cases() {
    let Some(dir) = corpus_dir() else { return };
    let cases = load(&dir, "parse_cases.json");
    assert_eq!(
        cases.len(),
        44,
        "parse_cases.json should hold upstream's 44 inputs"
    );
    let mut failures = Vec::new();
    let mut compared = 0;
    for case in &cases {
        let input = case["input"].as_str().unwrap_or_default();
        let source = case["source"].as_str().unwrap_or_default();
        let nodes = match parse(input) {
            Ok(nodes) => nodes,
            Err(e) => {
                failures.push(format!("{source}: {input:?} must parse, got {e}"));
                continue;
            }
        };
        // Entries marked v2-only differ from v1.0.3 in how `\\` outside `${...}` reads
        // (v1.0.3 makes it one backslash); they must still parse.
        if case["note"].as_str().is_some_and(|n| n.contains("v2")) {
            continue;
        }
        compared += 1;
        let theirs = flatten(&case["ast"]);
        let same = theirs.len() == nodes.len()
            && nodes
                .iter()
                .zip(&theirs)
                .all(|(ours, theirs)| same_node(ours, theirs));
        if !same {
            failures.push(format!(
                "{source}: {input:?} parsed as {nodes:?}, upstream {}",
                case["ast"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(compared, 41);
}

// ---------------------------------------------------------------------------
// (b) every form, explicitly
// ---------------------------------------------------------------------------

fn env(name: &str) -> Option<String> {
    let value = match name {
        "SET" => "abc",
        "EMPTY" => "",
        "MIXED" => "abcdEFGH28ij",
        "UPPER" => "ABCDEFGH28IJ",
        "PATH_NAME" => "/home/bozo/ideas/thoughts.for.today",
        "FILE" => "bash.string.txt",
        "REF" => "refs/heads/feature/x",
        "SLASHES" => "foo/bar/baz",
        "STRINGZ" => "abcABC123ABCabc",
        "TAG" => "v1.2.3",
        "NEG" => "-1",
        "NEG_BIG" => "-99",
        "ZH" => "中文字符",
        "SPANISH" => "ñandú",
        "SHARP" => "straße",
        "变量" => "值",
        _ => return None,
    };
    Some(value.to_owned())
}

fn check_table(table: &[(&str, &str)]) {
    let mut failures = Vec::new();
    for &(input, want) in table {
        match substitute(input, env) {
            Ok(got) if got == want => {}
            other => failures.push(format!("{input:?} → {other:?}, want {want:?}")),
        }
        if let Err(e) = check(input) {
            failures.push(format!("check({input:?}) → {e:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn plain_variables_and_text() {
    check_table(&[
        ("", ""),
        ("plain text", "plain text"),
        ("${SET}", "abc"),
        ("${UNSET}", ""),
        ("${EMPTY}", ""),
        ("a${SET}b${SET}c", "aabcbabcc"),
        ("${变量}", "值"),
        ("}text{", "}text{"),
        ("{SET}", "{SET}"),
        ("http://github.com", "http://github.com"),
    ]);
}

#[test]
fn dollar_escapes_and_bare_variables() {
    check_table(&[
        ("$$", "$"),
        ("$${SET}", "${SET}"),
        ("$$SET", "$SET"),
        ("$$${SET}", "$abc"),
        ("$$$${SET}", "$${SET}"),
        ("$SET", "$SET"),
        ("$SET and ${SET}", "$SET and abc"),
        ("cost: $5", "cost: $5"),
        ("$", "$"),
        ("$}", "$}"),
        ("a$", "a$"),
        (
            "some text ${SET}$${var$${SET}$SET${SET}",
            "some text abc${var${SET}$SETabc",
        ),
    ]);
}

#[test]
fn backslashes_outside_expressions_follow_v1_0_3() {
    check_table(&[
        (r"\\server", r"\server"),
        (r"a\/b", "a/b"),
        (r"C:\path\to", r"C:\path\to"),
        (r"\${SET}", r"\abc"),
        (r"\\\\.\pipe\name", r"\\.\pipe\name"),
        (r"\", r"\"),
        (r"\$$", r"\$"),
    ]);
}

#[test]
fn length() {
    check_table(&[
        ("${#SET}", "3"),
        ("${#UNSET}", "0"),
        ("${#EMPTY}", "0"),
        ("${#ZH}", "12"),
        ("hello ${#SET} world", "hello 3 world"),
    ]);
}

#[test]
fn case_conversion() {
    check_table(&[
        ("${MIXED^}", "AbcdEFGH28ij"),
        ("${MIXED^^}", "ABCDEFGH28IJ"),
        ("${UPPER,}", "aBCDEFGH28IJ"),
        ("${UPPER,,}", "abcdefgh28ij"),
        ("${UNSET^^}", ""),
        ("${ZH^}", "中文字符"),
        ("${ZH^^}", "中文字符"),
        ("${ZH,,}", "中文字符"),
        ("${SPANISH^}", "Ñandú"),
        ("${SPANISH^^}", "ÑANDÚ"),
        // Go's one-to-one mapping keeps ß (Rust's full mapping would give "SS").
        ("${SHARP^^}", "STRAßE"),
        // Any two of `,` and `^` parse; the mixed pairs do nothing.
        ("${SET,^}", "abc"),
        ("${UPPER^,}", "ABCDEFGH28IJ"),
    ]);
}

#[test]
fn substring() {
    check_table(&[
        ("${PATH_NAME:11}", "ideas/thoughts.for.today"),
        ("${PATH_NAME:11:5}", "ideas"),
        ("${SET:0}", "abc"),
        ("${SET:1}", "bc"),
        ("${SET:3}", ""),
        ("${SET:99}", ""),
        ("${SET:1:1}", "b"),
        ("${SET:1:99}", "bc"),
        ("${SET:0:0}", ""),
        ("${SET:5:1}", ""),
        ("${SET:+1:1}", "abc"),  // `:+` is a default operator, not a position
        ("${SET:1::1}", "b"),    // several colons separate like one
        ("${SET:1:2:3}", "abc"), // length "2:3" is not a number
        // Not a number: drone (like bash) returns the value unchanged.
        ("${SET:x}", "abc"),
        ("${SET: -1}", "abc"),
        ("${SET:1:x}", "abc"),
        ("${SET:99999999999999999999}", "abc"),
        // Negative positions count from the end (they can only come from a nested
        // expression: `${X:-1}` is a default).
        ("${SET:-1}", "abc"),
        ("${SET:${NEG}}", "c"),
        ("${SET:${NEG}:1}", "c"),
        ("${SET:${NEG_BIG}}", "abc"),
        // Negative length: drone panics; we count back from the end like bash.
        ("${SET:1:${NEG}}", "b"),
        ("${SET:2:-2}", ""),
        ("${SET:2:${NEG_BIG}}", ""),
        ("${UNSET:1}", ""),
        ("${UNSET:1:2}", ""),
        // Positions are bytes; a cut through a character leaves U+FFFD per stray byte.
        ("${ZH:3}", "文字符"),
        ("${ZH:3:3}", "文"),
        ("${ZH:1}", "\u{FFFD}\u{FFFD}文字符"),
        ("${ZH:0:4}", "中\u{FFFD}"),
        ("${ZH:1:1}", "\u{FFFD}"),
        ("${ZH:${NEG}}", "\u{FFFD}"),
    ]);
}

#[test]
fn remove_prefix_and_suffix() {
    check_table(&[
        ("${FILE#*.}", "string.txt"),
        ("${FILE##*.}", "txt"),
        ("${FILE%.*}", "bash.string"),
        ("${FILE%%.*}", "bash"),
        ("${FILE#nomatch}", "bash.string.txt"),
        ("${FILE#b?sh.}", "string.txt"),
        ("${FILE#[a-c]}", "ash.string.txt"),
        ("${FILE#[^a-c]}", "bash.string.txt"),
        ("${FILE%t}", "bash.string.tx"),
        ("${REF#refs/heads/}", "feature/x"),
        ("${REF#*/}", "heads/feature/x"),
        // drone's `*` also matches `/`.
        ("${REF##*/}", "x"),
        ("${REF%/*}", "refs/heads/feature"),
        ("${REF%%/*}", "refs"),
        // drone never trims an empty prefix: the shortest match of `*` is one byte.
        ("${FILE#*}", "ash.string.txt"),
        ("${FILE##*}", ""),
        ("${FILE%*}", "bash.string.tx"),
        // The suffix forms reverse the pattern too, which breaks classes (drone).
        ("${FILE%[tx]}", "bash.string.txt"),
        // A malformed pattern changes nothing.
        ("${FILE#[}", "bash.string.txt"),
        ("${FILE###}", "bash.string.txt"),
        ("${FILE#$%:*{}", "bash.string.txt"),
        ("${UNSET#*}", ""),
        ("${FILE#${UNSET}}", "bash.string.txt"),
        ("${ZH#中}", "文字符"),
        ("${ZH%符}", "中文字"),
        ("${ZH##?}", "文字符"),
        // drone works on bytes: the shortest `?` is a single byte.
        ("${ZH#?}", "\u{FFFD}\u{FFFD}文字符"),
        ("${ZH%?}", "中文字\u{FFFD}\u{FFFD}"),
    ]);
}

#[test]
fn replace() {
    check_table(&[
        ("${STRINGZ/abc/xyz}", "xyzABC123ABCabc"),
        ("${STRINGZ//abc/xyz}", "xyzABC123ABCxyz"),
        ("${STRINGZ/#abc/XYZ}", "XYZABC123ABCabc"),
        ("${STRINGZ/%abc/XYZ}", "abcABC123ABCXYZ"),
        ("${STRINGZ/#ABC/XYZ}", "abcABC123ABCabc"),
        ("${STRINGZ/%ABC/XYZ}", "abcABC123ABCabc"),
        ("${STRINGZ/abc/}", "ABC123ABCabc"),
        ("${STRINGZ//abc/}", "ABC123ABC"),
        // drone needs two arguments for `/#` and `/%`: an empty replacement does nothing.
        ("${STRINGZ/#abc/}", "abcABC123ABCabc"),
        ("${STRINGZ/%abc/}", "abcABC123ABCabc"),
        (r"${SLASHES/\//-}", "foo-bar/baz"),
        (r"${SLASHES//\//-}", "foo-bar-baz"),
        ("${SET/x/X}", "abc"),
        ("${SET/b/x/y}", "ax/yc"),
        ("${SET/b//y}", "ayc"), // several slashes separate like one
        (r"${SET/b/\/}", "a/c"),
        (r"${SET/b/\\}", r"a\c"),
        ("${SET/b/$$}", "a$c"),
        ("${SET/b/${TAG}}", "av1.2.3c"),
        ("${SLASHES//${UNSET}/-}", "-f-o-o-/-b-a-r-/-b-a-z-"),
        ("${SET/${EMPTY}/X}", "Xabc"),
        // Patterns are literal strings in drone, not globs.
        ("${MIXED//[a-z]/X}", "abcdEFGH28ij"),
        ("${FILE/*/X}", "bash.string.txt"),
        // The pattern may even contain `}`.
        ("${SET/}/X}", "abc"),
        ("${ZH/文/-}", "中-字符"),
        ("${UNSET/a/b}", ""),
    ]);
}

#[test]
fn defaults_with_set_empty_and_unset() {
    let mut table = Vec::new();
    for op in ["=", "-", ":=", ":-", ":?", ":+"] {
        table.push((format!("${{SET{op}x}}"), "abc".to_owned()));
        table.push((format!("${{EMPTY{op}x}}"), "x".to_owned()));
        table.push((format!("${{UNSET{op}x}}"), "x".to_owned()));
        table.push((format!("${{UNSET{op}}}"), String::new()));
        table.push((format!("${{UNSET{op}${{SET}}}}"), "abc".to_owned()));
    }
    let table: Vec<(&str, &str)> = table
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    check_table(&table);
}

#[test]
fn default_values() {
    check_table(&[
        ("${UNSET==x}", "=x"),
        ("${UNSET:-a:b}", "a:b"),
        ("${UNSET:-a b c}", "a b c"),
        (
            "${DRONE_TAG:---next-tag unreleased unreleased}",
            "--next-tag unreleased unreleased",
        ),
        ("${TAG:---next-tag unreleased unreleased}", "v1.2.3"),
        ("${UNSET=}}", "}"),
        // Default text has no escapes: `$$` stays, `\\` stays.
        ("${UNSET=$$}", "$$"),
        ("${UNSET=$${SET}}", "$abc"),
        (r"${UNSET=a\\b}", r"a\\b"),
        ("${UNSET=中文}", "中文"),
    ]);
}

#[test]
fn nested_defaults() {
    check_table(&[
        ("something ${UNSET=${SET}}", "something abc"),
        ("foo: ${UNSET=${SET}-suffix}", "foo: abc-suffix"),
        ("foo: ${UNSET=prefix${SET}-suffix}", "foo: prefixabc-suffix"),
        ("${UNSET=a${SET}b${SET}c}", "aabcbabcc"),
        ("${UNSET=${UNSET2=${SET}}}", "abc"),
        ("${UNSET:-${EMPTY:-deep}}", "deep"),
        ("${SET=${UNSET}}", "abc"),
        ("${UNSET=${MIXED^^}}", "ABCDEFGH28IJ"),
        ("${UNSET:-${ZH:3:3}}", "文"),
        ("${UNSET=${UNSET}}", ""),
        ("${PATH_NAME:${UNSET:-11}:${UNSET:-5}}", "ideas"),
    ]);
}

#[test]
fn lookups_happen_only_after_a_clean_parse() {
    let mut calls = Vec::new();
    let result = substitute("${A} ${B=${C}} ${", |name| {
        calls.push(name.to_owned());
        None
    });
    assert!(result.is_err());
    assert!(
        calls.is_empty(),
        "looked up {calls:?} despite a syntax error"
    );

    // Arguments first, then the variable itself, as in drone.
    let out = substitute("${A} ${B=${C}}", |name| {
        calls.push(name.to_owned());
        Some(name.to_lowercase())
    });
    assert_eq!(out.as_deref(), Ok("a b"));
    assert_eq!(calls, ["A", "C", "B"]);
}

// ---------------------------------------------------------------------------
// errors
// ---------------------------------------------------------------------------

#[test]
fn errors_with_offsets() {
    let cases: &[(&str, usize, &str)] = &[
        ("${", 0, "unable to parse variable name in `${`"),
        ("${}", 0, "unable to parse variable name in `${}`"),
        ("${ SET}", 0, "unable to parse variable name in `${ SET}`"),
        ("${.x}", 0, "unable to parse variable name"),
        ("${SET", 0, "missing closing brace in `${SET`"),
        ("abc ${SET", 4, "missing closing brace in `${SET`"),
        ("中 ${SET", 4, "missing closing brace in `${SET`"),
        ("${中文", 0, "missing closing brace in `${中文`"),
        ("${SET x}", 0, "missing closing brace in `${SET x}`"),
        ("${SET.x}", 0, "missing closing brace"),
        // Without a colon, only `=` is a default operator in drone.
        ("${SET+x}", 0, "missing closing brace"),
        ("${SET?x}", 0, "missing closing brace"),
        ("${#}", 0, "bad substitution in `${#}`"),
        ("${#SET:1}", 0, "bad substitution"),
        ("${##SET}", 0, "bad substitution"),
        (
            "${SET:}",
            0,
            "unable to parse substitution within function in `${SET:}`",
        ),
        (
            "${SET::1}",
            0,
            "unable to parse substitution within function",
        ),
        (
            "${SET:1:}",
            0,
            "unable to parse substitution within function",
        ),
        ("${SET:1x", 0, "bad substitution in `${SET:1x`"),
        ("${SET:1${TAG}}", 0, "bad substitution"),
        ("${SET#}", 0, "unable to parse substitution within function"),
        (
            "${SET%%}",
            0,
            "unable to parse substitution within function",
        ),
        ("${SET#a${TAG}}", 0, "bad substitution"),
        ("${SET/b}", 0, "bad substitution"),
        ("${SET/}", 0, "bad substitution"),
        (
            "${SET///x}",
            0,
            "unable to parse substitution within function",
        ),
        ("${SET/b/c${TAG}}", 0, "bad substitution"),
        ("${SET^^^}", 0, "bad substitution"),
        ("${SET,x}", 0, "bad substitution"),
        (
            "${SET:-x",
            0,
            "unable to parse substitution within function in `${SET:-x`",
        ),
        ("${SET=", 0, "unable to parse substitution within function"),
        ("${SET}${", 6, "unable to parse variable name in `${`"),
        (
            "ok ${SET} ${UNSET:-${}}",
            19,
            "unable to parse variable name in `${}`",
        ),
        ("${a#x${b}y}", 0, "bad substitution in `${a#x${b}y}`"),
        ("$${SET} ${", 8, "unable to parse variable name"),
    ];
    let mut failures = Vec::new();
    for &(input, offset, message) in cases {
        let got = substitute(input, env);
        match &got {
            Err(e) if e.offset == offset && e.message.starts_with(message) => {}
            _ => failures.push(format!(
                "{input:?} → {got:?}, want offset {offset} {message:?}"
            )),
        }
        if check(input) != got.map(|_| ()) {
            failures.push(format!("check({input:?}) disagrees with substitute"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn error_display_is_the_message() {
    let err = check("x ${FOO").expect_err("unclosed");
    assert_eq!(err.offset, 2);
    assert_eq!(err.to_string(), "missing closing brace in `${FOO`");
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let nest = |n: usize| format!("{}x{}", "${a=".repeat(n), "}".repeat(n));
    assert_eq!(substitute(&nest(MAX_DEPTH), |_| None).as_deref(), Ok("x"));
    let err = check(&nest(MAX_DEPTH + 1)).expect_err("too deep");
    assert_eq!(err.offset, MAX_DEPTH * 4);
    assert!(
        err.message.starts_with("expressions nested too deeply"),
        "{err}"
    );
    assert!(check(&nest(100_000)).is_err());
}

#[test]
fn explosive_replacement_is_an_error_not_an_abort() {
    // Each level replaces the empty string in X with the level below: ×3 per level.
    let mut template = "${X}".to_owned();
    for _ in 0..60 {
        template = format!("${{X//${{E}}/{template}}}");
    }
    assert_eq!(check(&template), Ok(()));
    let err = substitute(&template, |n| (n == "X").then(|| "ab".to_owned())).expect_err("cap");
    assert!(err.message.contains("would exceed"), "{err}");
    assert!(
        template
            .get(err.offset..)
            .is_some_and(|t| t.starts_with("${X//")),
        "{err:?}"
    );

    // Big but under the cap is fine.
    let big = "a".repeat(MAX_OUTPUT / 8);
    let out = substitute("${X//a/bbbb}", |_| Some(big.clone())).expect("under the cap");
    assert_eq!(out.len(), MAX_OUTPUT / 2);
    // A default made of 7 or 9 pieces of an eighth of the cap each.
    let pieces = |n: usize| format!("${{U={}}}", "${X}".repeat(n));
    let lookup = |n: &str| (n == "X").then(|| big.clone());
    assert!(substitute(&pieces(7), lookup).is_ok());
    assert!(substitute(&pieces(9), lookup).is_err());
}

// ---------------------------------------------------------------------------
// (c) properties
// ---------------------------------------------------------------------------

/// Text built from the characters the parser cares about.
fn template() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "$", "${", "$$", "{", "}", ":", "#", "%", "/", "\\", "a", "B", "_", "1", "-", "=", "?",
        "+", "^", ",", "[", "]", "*", "中", "é", " ", "X", "ZH", "NEG",
    ]);
    prop::collection::vec(pieces, 0..48).prop_map(|parts| parts.concat())
}

fn prop_env(name: &str) -> Option<String> {
    match name {
        "X" => Some("a/b.c*[?]".to_owned()),
        "ZH" => Some("中文字符é".to_owned()),
        "NEG" => Some("-3".to_owned()),
        "a" => Some(String::new()),
        _ => None,
    }
}

/// What v1.0.3 does to text without `$`: only `\\` and `\/` change.
fn unescape_backslashes(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next @ ('\\' | '/')) = chars.peek()
        {
            out.push(next);
            chars.next();
        } else {
            out.push(c);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_templates(input in template()) {
        let result = substitute(&input, prop_env);
        prop_assert_eq!(check(&input), result.map(|_| ()));
    }

    #[test]
    fn never_panics_on_arbitrary_text(input in any::<String>()) {
        let result = substitute(&input, prop_env);
        prop_assert_eq!(check(&input), result.map(|_| ()));
    }

    #[test]
    fn error_offsets_point_at_an_expression(input in template()) {
        if let Err(e) = check(&input) {
            prop_assert!(input.get(e.offset..).is_some_and(|rest| rest.starts_with("${")), "{:?}", e);
        }
    }

    #[test]
    fn text_without_dollar_is_unchanged(input in "[^$\\\\]*") {
        prop_assert_eq!(substitute(&input, prop_env), Ok(input.clone()));
    }

    #[test]
    fn text_without_dollar_only_loses_backslash_escapes(input in "[^$]*") {
        prop_assert_eq!(substitute(&input, prop_env), Ok(unescape_backslashes(&input)));
    }
}
