//! `.dockerignore`: which files of a build context are not sent to the Docker engine.
//!
//! The rules are Docker's (moby's `patternmatcher`, as `docker build` applies them):
//! - one pattern a line; a line starting with `#` is a comment; lines are trimmed and blank
//!   ones skipped; a leading `!` makes the pattern an *exception* (re-includes what matched);
//! - each pattern is cleaned like a path (`./a//b/` is `a/b`, `a/../b` is `b`) and a
//!   leading `/` dropped, so patterns are relative to the context root;
//! - matching is on the whole `/`-separated path relative to the context: `*` any run of
//!   characters except `/`, `?` one character except `/`, `[...]` classes, `\` escapes,
//!   `**` any number of directories (also none) — [`slipway_spec::glob`], which has
//!   these semantics;
//! - a pattern also matches everything below a directory it matches (`build` excludes
//!   `build/out/app`), by matching the first N components of the path's parent directory
//!   against a pattern of N components;
//! - the last pattern that matches decides: excluded unless it is an exception.
//!
//! The caller keeps the Dockerfile and `.dockerignore` in the context whatever the rules
//! say, as `docker build` does.

use slipway_spec::glob::glob_match;

#[derive(Debug, Clone)]
struct Pattern {
    text: String,
    /// Number of `/`-separated components.
    dirs: usize,
    exception: bool,
}

/// The parsed content of a `.dockerignore` file.
#[derive(Debug, Clone, Default)]
pub(crate) struct IgnoreRules {
    patterns: Vec<Pattern>,
}

impl IgnoreRules {
    pub(crate) fn parse(text: &str) -> IgnoreRules {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (exception, line) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if line.is_empty() {
                continue;
            }
            let text = clean(line);
            patterns.push(Pattern {
                dirs: text.split('/').count(),
                text,
                exception,
            });
        }
        IgnoreRules { patterns }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether some pattern is an exception: then an excluded directory must still be
    /// walked, since an exception may re-include something below it.
    pub(crate) fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }

    /// Whether `path` (relative to the context, `/`-separated, no leading `/`) is left out.
    pub(crate) fn excluded(&self, path: &str) -> bool {
        let parents: Vec<&str> = match path.rsplit_once('/') {
            Some((parent, _)) => parent.split('/').collect(),
            None => Vec::new(),
        };
        let mut excluded = false;
        for pattern in &self.patterns {
            // Only a pattern that could change the outcome needs evaluating.
            if pattern.exception != excluded {
                continue;
            }
            let mut matched = glob_match(&pattern.text, path);
            if !matched && !parents.is_empty() && pattern.dirs <= parents.len() {
                matched = glob_match(&pattern.text, &parents[..pattern.dirs].join("/"));
            }
            if matched {
                excluded = !pattern.exception;
            }
        }
        excluded
    }
}

/// Go's `filepath.Clean` for `/`-separated patterns, with a leading `/` dropped.
fn clean(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_and_their_contents() {
        let rules = IgnoreRules::parse("# comment\n\nnode_modules\n/secret.txt\n./build/\n");
        assert!(rules.excluded("node_modules"));
        assert!(rules.excluded("node_modules/left-pad/index.js"));
        assert!(rules.excluded("secret.txt"));
        assert!(rules.excluded("build/out/app"));
        assert!(
            !rules.excluded("src/node_modules"),
            "patterns are anchored at the root"
        );
        assert!(!rules.excluded("app.txt"));
        assert!(!rules.excluded("# comment"));
    }

    #[test]
    fn stars_and_double_stars() {
        let rules = IgnoreRules::parse("*.log\n**/*.tmp\ndocs/*/draft\n");
        assert!(rules.excluded("a.log"));
        assert!(!rules.excluded("sub/a.log"), "* does not cross /");
        assert!(rules.excluded("x.tmp"));
        assert!(rules.excluded("deep/down/x.tmp"));
        assert!(rules.excluded("docs/v1/draft"));
        assert!(rules.excluded("docs/v1/draft/page.md"));
        assert!(!rules.excluded("docs/draft"));
    }

    #[test]
    fn last_match_wins_and_exceptions_reinclude() {
        let rules = IgnoreRules::parse("*.md\n!README.md\nREADME*\n");
        assert!(rules.excluded("CHANGES.md"));
        assert!(rules.excluded("README.md"), "README* comes last");
        let rules = IgnoreRules::parse("logs\n!logs/keep.txt\n");
        assert!(rules.excluded("logs/other.txt"));
        assert!(!rules.excluded("logs/keep.txt"));
        assert!(rules.has_exceptions());
    }

    #[test]
    fn patterns_are_cleaned() {
        let rules = IgnoreRules::parse("a//b/../c\n  spaced  \n!\n");
        assert!(rules.excluded("a/c"));
        assert!(rules.excluded("spaced"));
        assert!(!rules.has_exceptions());
    }
}
