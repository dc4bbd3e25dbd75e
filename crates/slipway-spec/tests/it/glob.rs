//! `glob`: table tests for condition patterns, malformed patterns, and properties
//! (no panics, literal patterns are equality, agreement with a slow reference matcher).

use std::time::{Duration, Instant};

use proptest::prelude::*;
use slipway_spec::glob::{check_glob, glob_match};

fn check_table(table: &[(&str, &str, bool)]) {
    let mut failures = Vec::new();
    for &(pattern, text, want) in table {
        let got = glob_match(pattern, text);
        if got != want {
            failures.push(format!(
                "glob_match({pattern:?}, {text:?}) = {got}, want {want}"
            ));
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
fn branches_and_refs() {
    check_table(&[
        ("feature/*", "feature/x", true),
        ("feature/*", "feature/x/y", false),
        ("feature/*", "feature/", true),
        ("feature/*", "feature", false),
        ("feature/*", "features/x", false),
        ("release/**", "release/1.0", true),
        ("release/**", "release/1.0/hotfix", true),
        ("release/**", "release/", true),
        ("release/**", "release", false),
        ("release/**", "releases/1.0", false),
        ("refs/tags/v*", "refs/tags/v1.2.3", true),
        ("refs/tags/v*", "refs/tags/v", true),
        ("refs/tags/v*", "refs/tags/1.2.3", false),
        ("refs/tags/v*", "refs/tags/v1/rc", false),
        ("refs/heads/*", "refs/heads/main", true),
        ("main", "main", true),
        ("main", "Main", false),
        ("main", "main2", false),
        ("main", "", false),
    ]);
}

#[test]
fn braces_are_literal() {
    check_table(&[
        ("refs/heads/{main,dev}", "refs/heads/main", false),
        ("refs/heads/{main,dev}", "refs/heads/dev", false),
        ("refs/heads/{main,dev}", "refs/heads/{main,dev}", true),
        ("{a,b}*", "{a,b}x", true),
        ("{a,b}*", "ax", false),
    ]);
}

#[test]
fn stars() {
    check_table(&[
        ("*", "", true),
        ("*", "anything", true),
        ("*", "a/b", false),
        ("**", "", true),
        ("**", "a/b/c", true),
        ("***", "a/b/c", true),
        ("*/*", "a/b", true),
        ("*/*", "a/b/c", false),
        ("a*b*c", "abc", true),
        ("a*b*c", "aXXbYYc", true),
        ("a*b*c", "aXXbYYcZ", false),
        ("a*b*c", "aX/bc", false),
        ("a**c", "aX/Y/c", true),
        ("**/*.go", "cmd/app/main.go", true),
        ("**/*.go", "cmd/main.go", true),
        // `**/` also matches zero directories, as in doublestar `paths` filters.
        ("**/*.go", "main.go", true),
        ("**/*.go", "main.rs", false),
        ("a/**/b", "a/x/y/b", true),
        ("a/**/b", "a/x/b", true),
        ("a/**/b", "a/b", true),
        ("a/**/b", "ab", false),
        ("src/**/*.rs", "src/main.rs", true),
        ("*.md", "README.md", true),
        ("*.md", "docs/README.md", false),
        ("docs/**.md", "docs/a/b.md", true),
    ]);
}

#[test]
fn question_mark() {
    check_table(&[
        ("v?.?", "v1.2", true),
        ("v?.?", "v1.23", false),
        ("v?.?", "v.2", false),
        ("a?b", "a/b", false),
        ("a?b", "axb", true),
        ("?", "", false),
        ("?", "中", true),
        ("??", "中", false),
        ("?*", "", false),
        ("?*", "x", true),
    ]);
}

#[test]
fn classes() {
    check_table(&[
        ("[abc]x", "bx", true),
        ("[abc]x", "dx", false),
        ("[a-z]1", "q1", true),
        ("[a-z]1", "Q1", false),
        ("[a-zA-Z0-9_]", "_", true),
        ("[!a-z]1", "Q1", true),
        ("[!a-z]1", "q1", false),
        ("[^a-z]1", "Q1", true),
        ("[^a-z]1", "q1", false),
        ("a[!x]b", "a/b", false),
        ("a[/]b", "a/b", false),
        ("[]]", "]", true),
        ("[]a]", "a", true),
        ("[!]]", "]", false),
        ("[!]]", "x", true),
        ("[a-]", "-", true),
        ("[a-]", "b", false),
        ("[-a]", "-", true),
        (r"[\]]", "]", true),
        (r"[\-]", "-", true),
        ("[z-a]", "m", false),
        ("v[0-9].*", "v1.2", true),
        ("v[0-9].*", "vx.2", false),
        ("[中文]", "文", true),
        ("[一-龥]", "字", true),
        ("[一-龥]", "a", false),
    ]);
}

#[test]
fn escapes() {
    check_table(&[
        (r"\*", "*", true),
        (r"\*", "x", false),
        (r"a\?b", "a?b", true),
        (r"a\?b", "axb", false),
        (r"\[x]", "[x]", true),
        (r"\\", r"\", true),
        (r"\a", "a", true),
        (r"release/\*\*", "release/**", true),
        (r"release/\*\*", "release/x", false),
    ]);
}

#[test]
fn empty_pattern_and_text() {
    check_table(&[
        ("", "", true),
        ("", "a", false),
        ("a", "", false),
        ("[a]", "", false),
    ]);
}

#[test]
fn unicode() {
    check_table(&[
        ("分支/*", "分支/功能", true),
        ("分支/*", "分支/功能/子", false),
        ("*功能", "新功能", true),
        ("é*", "ecole", false),
        ("é*", "étude", true),
        ("caf?", "café", true),
        ("🚀-*", "🚀-launch", true),
    ]);
}

#[test]
fn lone_close_bracket_and_bang_are_literal() {
    check_table(&[
        ("feature/x]", "feature/x]", true),
        ("!main", "!main", true),
        ("!main", "main", false),
        ("a^b", "a^b", true),
    ]);
}

#[test]
fn malformed_patterns_match_nothing_and_are_reported() {
    for (pattern, needle) in [
        ("[abc", "unclosed `[`"),
        ("[", "unclosed `[`"),
        ("[]", "unclosed `[`"),
        ("[!]", "unclosed `[`"),
        ("x[a-", "unclosed `[`"),
        (r"a[\", "unclosed `[`"),
        (r"abc\", "trailing `\\`"),
        (r"\", "trailing `\\`"),
    ] {
        let err = check_glob(pattern).expect_err(pattern);
        assert!(err.contains(needle), "{pattern:?}: {err}");
        assert!(
            !glob_match(pattern, pattern),
            "{pattern:?} should match nothing"
        );
    }
    for pattern in [
        "",
        "main",
        "feature/*",
        "release/**",
        "[a-z]",
        "[!x]",
        "[]]",
        r"\*",
        "{a,b}",
    ] {
        assert_eq!(check_glob(pattern), Ok(()), "{pattern:?}");
    }
}

#[test]
fn no_exponential_backtracking() {
    let text = "a".repeat(20_000);
    let started = Instant::now();
    assert!(!glob_match("*a*a*a*a*a*a*a*a*a*a*b", &text));
    assert!(!glob_match("**a**a**a**a**a**a**b", &text));
    assert!(glob_match("*a*a*a*a*a*a*a*a*a*a*", &text));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// A slow, obviously correct backtracking matcher for patterns without classes.
fn reference(p: &[char], t: &[char]) -> bool {
    match p.split_first() {
        None => t.is_empty(),
        Some(('*', _)) => {
            let stars = p.iter().take_while(|&&c| c == '*').count();
            let rest = p.get(stars..).unwrap_or(&[]);
            // `**/` may match nothing, its slash included.
            if stars > 1 && rest.first() == Some(&'/') && reference(rest.get(1..).unwrap_or(&[]), t)
            {
                return true;
            }
            for k in 0..=t.len() {
                if stars == 1 && t.get(..k).is_some_and(|run| run.contains(&'/')) {
                    break;
                }
                if reference(rest, t.get(k..).unwrap_or(&[])) {
                    return true;
                }
            }
            false
        }
        Some(('?', rest)) => match t.split_first() {
            Some((c, t_rest)) => *c != '/' && reference(rest, t_rest),
            None => false,
        },
        Some(('\\', rest)) => match (rest.split_first(), t.split_first()) {
            (Some((e, p_rest)), Some((c, t_rest))) => e == c && reference(p_rest, t_rest),
            _ => false,
        },
        Some((lit, rest)) => match t.split_first() {
            Some((c, t_rest)) => lit == c && reference(rest, t_rest),
            None => false,
        },
    }
}

fn from_pieces(pieces: Vec<&'static str>, len: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(pieces), 0..len).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics(
        pattern in from_pieces(vec!["*", "**", "?", "[", "]", "!", "^", "-", "\\", "/", "a", "b", "中", "{", "}"], 24),
        text in from_pieces(vec!["a", "b", "/", "中", "-", "]", "*"], 24),
    ) {
        let _ = glob_match(&pattern, &text);
        let _ = check_glob(&pattern);
    }

    #[test]
    fn never_panics_on_arbitrary_strings(pattern in any::<String>(), text in any::<String>()) {
        let _ = glob_match(&pattern, &text);
        let _ = check_glob(&pattern);
    }

    #[test]
    fn literal_patterns_are_equality(
        pattern in "[a-z0-9/{},!^\\]\\-.中é]{0,12}",
        text in "[a-z0-9/{},!^\\]\\-.中é]{0,12}",
    ) {
        prop_assert!(glob_match(&pattern, &pattern));
        prop_assert_eq!(glob_match(&pattern, &text), pattern == text);
        prop_assert_eq!(check_glob(&pattern), Ok(()));
    }

    #[test]
    fn agrees_with_reference(
        pattern in from_pieces(vec!["*", "**", "?", "\\", "/", "a", "b", "中"], 10),
        text in from_pieces(vec!["a", "b", "/", "中", "*", "?"], 12),
    ) {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        prop_assert_eq!(glob_match(&pattern, &text), reference(&p, &t), "pattern {:?} text {:?}", pattern, text);
    }
}
