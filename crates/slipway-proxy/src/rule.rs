//! Traefik router rules, read into the keys a route table can hold.
//!
//! v2/v3 expressions ([`parse`]): matchers ``Name(`arg`, ...)`` (backticks or double
//! quotes) joined by `&&`, `||`, `!` and parentheses; `!` binds tightest, then `&&`, then
//! `||`, and both binary operators group to the left, as Traefik's parser does. v1 rules
//! ([`parse_v1`]): `Host:a,b;PathPrefix:/x`, `;` between matchers that all apply and `,`
//! between alternatives of one.
//!
//! [`to_targets`] turns an expression into (host, path) keys: the expression is put in
//! disjunctive normal form, each conjunction must name exactly one host (several are
//! satisfied by no request) and at most one path. What the table cannot express is a
//! diagnostic, and that conjunction is not routed: `Method`, `Header*`, `Query*`,
//! `ClientIP` and `PathRegexp` (routing without them would widen the route, which for
//! `ClientIP` would open what the user closed), a `HostRegexp` that is not one label under
//! a fixed domain, and a negated path that overlaps the route's own. A negation that only
//! restates another condition (`Host(a) && !Host(b)`) is dropped.

use serde::Serialize;

use crate::route::{Host, RouteKey, parse_path};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Rule {
    Matcher { name: String, args: Vec<String> },
    Not { rule: Box<Rule> },
    And { left: Box<Rule>, right: Box<Rule> },
    Or { left: Box<Rule>, right: Box<Rule> },
}

/// A rule that did not parse: where (a character offset) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub offset: usize,
    pub message: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at character {}: {}", self.offset + 1, self.message)
    }
}

/// Deepest nesting of parentheses and `!` accepted (bounds the recursion).
const MAX_DEPTH: usize = 64;
/// Most conjunctions a rule may expand to.
const MAX_TERMS: usize = 64;
/// Most matchers in one rule: bounds the recursion of the passes after parsing, which
/// follow `&&` and `||` chains.
const MAX_MATCHERS: usize = 256;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    LParen,
    RParen,
    Comma,
    And,
    Or,
    Not,
}

fn lex(text: &str) -> Result<Vec<(usize, Tok)>, RuleError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |offset, message: &str| RuleError {
        offset,
        message: message.to_owned(),
    };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        match c {
            _ if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => out.push((i, Tok::LParen)),
            ')' => out.push((i, Tok::RParen)),
            ',' => out.push((i, Tok::Comma)),
            '!' => out.push((i, Tok::Not)),
            '&' | '|' => {
                if chars.get(i + 1) != Some(&c) {
                    return Err(err(i, &format!("`{c}` alone: write `{c}{c}`")));
                }
                out.push((i, if c == '&' { Tok::And } else { Tok::Or }));
                i += 1;
            }
            '`' | '"' => {
                let close = chars[i + 1..]
                    .iter()
                    .position(|&d| d == c)
                    .ok_or_else(|| err(i, &format!("`{c}` opens a string that is never closed")))?;
                out.push((
                    start,
                    Tok::Str(chars[i + 1..i + 1 + close].iter().collect()),
                ));
                i += close + 1;
            }
            _ if c.is_ascii_alphabetic() => {
                let mut j = i;
                while j < chars.len() && chars[j].is_ascii_alphanumeric() {
                    j += 1;
                }
                out.push((start, Tok::Ident(chars[i..j].iter().collect())));
                i = j;
                continue;
            }
            _ => return Err(err(i, &format!("unexpected `{c}`"))),
        }
        i += 1;
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    at: usize,
    end: usize,
    matchers: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(_, t)| t)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.at).map_or(self.end, |(o, _)| *o)
    }

    fn fail<T>(&self, message: String) -> Result<T, RuleError> {
        Err(RuleError {
            offset: self.offset(),
            message,
        })
    }

    fn or(&mut self, depth: usize) -> Result<Rule, RuleError> {
        let mut left = self.and(depth)?;
        while self.peek() == Some(&Tok::Or) {
            self.at += 1;
            let right = self.and(depth)?;
            left = Rule::Or {
                left: Box::new(left),
                right: Box::new(right),
            };
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Rule, RuleError> {
        let mut left = self.unary(depth)?;
        while self.peek() == Some(&Tok::And) {
            self.at += 1;
            let right = self.unary(depth)?;
            left = Rule::And {
                left: Box::new(left),
                right: Box::new(right),
            };
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Rule, RuleError> {
        if depth > MAX_DEPTH {
            return self.fail(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        match self.peek().cloned() {
            Some(Tok::Not) => {
                self.at += 1;
                Ok(Rule::Not {
                    rule: Box::new(self.unary(depth + 1)?),
                })
            }
            Some(Tok::LParen) => {
                self.at += 1;
                let inner = self.or(depth + 1)?;
                if self.peek() != Some(&Tok::RParen) {
                    return self.fail("expected `)`".to_owned());
                }
                self.at += 1;
                Ok(inner)
            }
            Some(Tok::Ident(name)) => {
                self.matchers += 1;
                if self.matchers > MAX_MATCHERS {
                    return self.fail(format!("more than {MAX_MATCHERS} matchers in one rule"));
                }
                self.at += 1;
                if self.peek() != Some(&Tok::LParen) {
                    return self.fail(format!("expected `(` after `{name}`"));
                }
                self.at += 1;
                let mut args = Vec::new();
                loop {
                    match self.peek().cloned() {
                        Some(Tok::Str(s)) => {
                            self.at += 1;
                            args.push(s);
                        }
                        Some(Tok::RParen) if args.is_empty() => {
                            return self.fail(format!("`{name}()` needs an argument"));
                        }
                        _ => {
                            return self.fail(format!(
                                "expected a string in backticks as `{name}`'s argument"
                            ));
                        }
                    }
                    match self.peek() {
                        Some(Tok::Comma) => self.at += 1,
                        Some(Tok::RParen) => {
                            self.at += 1;
                            break;
                        }
                        _ => return self.fail("expected `,` or `)`".to_owned()),
                    }
                }
                Ok(Rule::Matcher { name, args })
            }
            Some(_) => self.fail("expected a matcher such as Host(`example.com`)".to_owned()),
            None => self.fail("the rule ends where a matcher was expected".to_owned()),
        }
    }
}

/// Parses a v2/v3 rule.
pub fn parse(text: &str) -> Result<Rule, RuleError> {
    let toks = lex(text)?;
    let mut p = Parser {
        toks,
        at: 0,
        end: text.chars().count(),
        matchers: 0,
    };
    let rule = p.or(0)?;
    if p.at < p.toks.len() {
        return p.fail("unexpected text after the rule (a missing `&&` or `||`?)".to_owned());
    }
    Ok(rule)
}

/// Prints a rule in v3 syntax, with only the parentheses it needs; [`parse`] reads it back
/// to the same tree.
pub fn print(rule: &Rule) -> String {
    fn go(rule: &Rule, min: u8, out: &mut String) {
        let (prec, body) = match rule {
            Rule::Or { left, right } => {
                let mut s = String::new();
                go(left, 1, &mut s);
                s.push_str(" || ");
                go(right, 2, &mut s);
                (1, s)
            }
            Rule::And { left, right } => {
                let mut s = String::new();
                go(left, 2, &mut s);
                s.push_str(" && ");
                go(right, 3, &mut s);
                (2, s)
            }
            Rule::Not { rule } => {
                let mut s = String::from("!");
                go(rule, 3, &mut s);
                (3, s)
            }
            Rule::Matcher { name, args } => {
                let args: Vec<String> = args
                    .iter()
                    .map(|a| {
                        if a.contains('`') {
                            format!("\"{a}\"")
                        } else {
                            format!("`{a}`")
                        }
                    })
                    .collect();
                (3, format!("{name}({})", args.join(", ")))
            }
        };
        if prec < min {
            out.push('(');
            out.push_str(&body);
            out.push(')');
        } else {
            out.push_str(&body);
        }
    }
    let mut out = String::new();
    go(rule, 1, &mut out);
    out
}

/// Parses a Traefik v1 `frontend.rule` into the same tree; the second value is whether a
/// `*Strip` matcher asked to remove the matched path before sending the request on.
pub fn parse_v1(text: &str) -> Result<(Rule, bool), RuleError> {
    let mut strip = false;
    let mut conj: Option<Rule> = None;
    let mut offset = 0;
    for part in text.split(';') {
        let here = offset;
        offset += part.chars().count() + 1;
        if part.trim().is_empty() {
            continue;
        }
        let Some((name, args)) = part.split_once(':') else {
            return Err(RuleError {
                offset: here,
                message: format!("`{}` is not `Matcher:value`", part.trim()),
            });
        };
        let mut name = name.trim().to_owned();
        if let Some(base) = name.strip_suffix("Strip") {
            strip = true;
            name = base.to_owned();
        }
        // v1 regex-ish prefixes (`PathPrefix:/a/{id}`) keep their braces: to_targets reports them.
        let args: Vec<String> = args
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        if args.is_empty() {
            return Err(RuleError {
                offset: here,
                message: format!("`{name}` has no value"),
            });
        }
        let m = Rule::Matcher { name, args };
        conj = Some(match conj {
            None => m,
            Some(left) => Rule::And {
                left: Box::new(left),
                right: Box::new(m),
            },
        });
    }
    conj.map(|r| (r, strip)).ok_or(RuleError {
        offset: 0,
        message: "the rule is empty".to_owned(),
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Host(Host),
    Path {
        path: String,
        exact: bool,
    },
    /// Something the table cannot express: the message says what.
    Unsupported(String),
}

/// Expands a rule into keys; the strings are problems, each about a part not routed.
pub fn to_targets(rule: &Rule) -> (Vec<RouteKey>, Vec<String>) {
    let mut problems = Vec::new();
    let terms = match dnf(rule, false) {
        Ok(t) => t,
        Err(e) => return (Vec::new(), vec![e]),
    };
    let mut keys: Vec<RouteKey> = Vec::new();
    'term: for term in terms {
        let mut hosts: Vec<Host> = Vec::new();
        let mut paths: Vec<(String, bool)> = Vec::new();
        let mut not_hosts: Vec<Host> = Vec::new();
        let mut not_paths: Vec<(String, bool)> = Vec::new();
        for (negated, lit) in term {
            match (negated, lit) {
                (_, Lit::Unsupported(msg)) => {
                    problems.push(msg);
                    continue 'term;
                }
                (false, Lit::Host(h)) => hosts.push(h),
                (true, Lit::Host(h)) => not_hosts.push(h),
                (false, Lit::Path { path, exact }) => paths.push((path, exact)),
                (true, Lit::Path { path, exact }) => not_paths.push((path, exact)),
            }
        }
        hosts.dedup();
        let host = match hosts.as_slice() {
            [] => {
                problems.push(
                    "a rule with no Host matches every host: Slipway routes by host, so add Host(`...`)"
                        .to_owned(),
                );
                continue;
            }
            [h] => h.clone(),
            [a, b, ..] => {
                problems.push(format!(
                    "Host(`{a}`) && Host(`{b}`) is matched by no request"
                ));
                continue;
            }
        };
        if not_hosts
            .iter()
            .any(|n| n == &host || (n.is_wildcard() && n.matches(host.as_str())))
        {
            problems.push(format!("`{host}` is both required and excluded"));
            continue;
        }
        if host.is_wildcard() && not_hosts.iter().any(|n| host.matches(n.as_str())) {
            problems.push(format!(
                "`!Host` inside `{host}` cannot be expressed: the table has no exclusions; list the hosts instead"
            ));
            continue;
        }
        // The most specific path; two that cannot both hold are matched by no request.
        paths.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let mut path: Option<(String, bool)> = None;
        for (p, exact) in paths {
            match &path {
                None => path = Some((p, exact)),
                Some((q, q_exact)) => {
                    let compatible = if *q_exact {
                        if exact {
                            p == *q
                        } else {
                            q.starts_with(p.as_str())
                        }
                    } else {
                        !exact && q.starts_with(p.as_str())
                    };
                    if !compatible {
                        problems.push(format!(
                            "paths `{q}` and `{p}` are matched by no one request"
                        ));
                        continue 'term;
                    }
                }
            }
        }
        for (n, n_exact) in &not_paths {
            let overlaps = match &path {
                None => true,
                Some((p, exact)) => {
                    if *exact {
                        if *n_exact {
                            n == p
                        } else {
                            p.starts_with(n.as_str())
                        }
                    } else {
                        n.starts_with(p.as_str()) || p.starts_with(n.as_str())
                    }
                }
            };
            if overlaps {
                problems.push(format!(
                    "`!Path`/`!PathPrefix(`{n}`)` cannot be expressed: the table matches path prefixes and has no exclusions; route the paths you serve instead"
                ));
                continue 'term;
            }
        }
        let (path, exact) = match path {
            Some((p, e)) => (Some(p), e),
            None => (None, false),
        };
        let mut key = RouteKey::new(host, path);
        key.exact = exact && key.path.is_some();
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    (keys, problems)
}

/// `!(a && b)` → `!a || !b` and so on, then distribution: a list of conjunctions of
/// (negated, literal).
fn dnf(rule: &Rule, negated: bool) -> Result<Vec<Vec<(bool, Lit)>>, String> {
    let too_many = || format!("the rule expands to more than {MAX_TERMS} alternatives");
    match (rule, negated) {
        (Rule::Not { rule }, n) => dnf(rule, !n),
        (Rule::Or { left, right }, false) | (Rule::And { left, right }, true) => {
            let mut l = dnf(left, negated)?;
            l.extend(dnf(right, negated)?);
            if l.len() > MAX_TERMS {
                return Err(too_many());
            }
            Ok(l)
        }
        (Rule::And { left, right }, false) | (Rule::Or { left, right }, true) => {
            let l = dnf(left, negated)?;
            let r = dnf(right, negated)?;
            if l.len().saturating_mul(r.len()) > MAX_TERMS {
                return Err(too_many());
            }
            let mut out = Vec::new();
            for a in &l {
                for b in &r {
                    let mut t = a.clone();
                    t.extend(b.iter().cloned());
                    out.push(t);
                }
            }
            Ok(out)
        }
        (Rule::Matcher { name, args }, n) => {
            let lits = matcher(name, args);
            if n {
                // !(a || b) = !a && !b: one conjunction.
                Ok(vec![lits.into_iter().map(|l| (true, l)).collect()])
            } else {
                Ok(lits.into_iter().map(|l| vec![(false, l)]).collect())
            }
        }
    }
}

/// A matcher's alternatives (v2's ``Host(`a`,`b`)`` is `a` or `b`).
fn matcher(name: &str, args: &[String]) -> Vec<Lit> {
    match name.to_ascii_lowercase().as_str() {
        "host" | "hostheader" => args
            .iter()
            .map(|a| match Host::parse(a) {
                Ok(h) => Lit::Host(h),
                Err(e) => Lit::Unsupported(format!("Host(`{a}`): {e}")),
            })
            .collect(),
        "hostregexp" => args.iter().map(|a| host_regexp(a)).collect(),
        "pathprefix" | "path" => {
            let exact = name.eq_ignore_ascii_case("path");
            args.iter()
                .map(|a| {
                    if a.contains('{') {
                        return Lit::Unsupported(format!(
                            "{name}(`{a}`): path variables (`{{name:regex}}`) are not supported; route the fixed prefix before them"
                        ));
                    }
                    match parse_path(a) {
                        Ok(path) => Lit::Path { path, exact },
                        Err(e) => Lit::Unsupported(format!("{name}(`{a}`): {e}")),
                    }
                })
                .collect()
        }
        "method" | "headers" | "header" | "headersregexp" | "headerregexp" | "query"
        | "queryregexp" | "clientip" | "pathregexp" => vec![Lit::Unsupported(format!(
            "{name}(...) is not supported: Slipway routes by host and path only, and routing without it would widen the route"
        ))],
        _ => vec![Lit::Unsupported(format!(
            "unknown matcher `{name}`: Host, HostRegexp, Path and PathPrefix are supported"
        ))],
    }
}

/// A `HostRegexp` that is one label under a fixed domain becomes `*.domain`: v2's
/// `{sub:[a-z]+}.example.com` and v3's `^[a-z0-9-]+\.example\.com$` (or `.+`, `[^.]+`).
fn host_regexp(re: &str) -> Lit {
    let unsupported = || {
        Lit::Unsupported(format!(
            "HostRegexp(`{re}`) is not one label under a fixed domain: list the hosts, or use `*.domain`"
        ))
    };
    let r = re.strip_prefix('^').unwrap_or(re);
    let r = r.strip_suffix('$').unwrap_or(r);
    let rest = if r.starts_with('{') {
        r.split_once("}.").map(|(_, rest)| rest.to_owned())
    } else {
        [
            "[a-z0-9-]+\\.",
            "[a-z]+\\.",
            "[^.]+\\.",
            ".+\\.",
            "[a-zA-Z0-9-]+\\.",
            "\\w+\\.",
        ]
        .iter()
        .find_map(|p| r.strip_prefix(p))
        .map(|rest| rest.replace("\\.", "."))
    };
    let Some(rest) = rest else {
        return unsupported();
    };
    if rest.chars().any(|c| "\\[](){}*+?|^$".contains(c)) {
        return unsupported();
    }
    match Host::parse(&format!("*.{rest}")) {
        Ok(h) => Lit::Host(h),
        Err(_) => unsupported(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(rule: &str) -> (Vec<String>, Vec<String>) {
        let r = parse(rule).expect("parses");
        let (k, p) = to_targets(&r);
        (k.iter().map(ToString::to_string).collect(), p)
    }

    #[test]
    fn forms_of_the_issue() {
        assert_eq!(keys("Host(`a.com`)").0, ["a.com"]);
        assert_eq!(keys("Host(`a.com`,`b.com`)").0, ["a.com", "b.com"]);
        assert_eq!(keys("Host(`a.com`) && PathPrefix(`/api`)").0, ["a.com/api"]);
        assert_eq!(keys("Host(`a.com`) && Path(`/x`)").0, ["a.com/x (exact)"]);
        assert_eq!(
            keys("(Host(`a.com`) || Host(`b.com`)) && PathPrefix(`/api`)").0,
            ["a.com/api", "b.com/api"]
        );
        // && binds tighter than ||.
        assert_eq!(
            keys("Host(`a.com`) || Host(`b.com`) && PathPrefix(`/api`)").0,
            ["a.com", "b.com/api"]
        );
        assert_eq!(keys("Host(\"a.com\")").0, ["a.com"]);
        assert_eq!(keys("HostRegexp(`{sub:[a-z]+}.a.com`)").0, ["*.a.com"]);
        assert_eq!(keys("HostRegexp(`^[a-z0-9-]+\\.a\\.com$`)").0, ["*.a.com"]);
    }

    #[test]
    fn negations_are_dropped_when_redundant_and_reported_otherwise() {
        assert_eq!(keys("Host(`a.com`) && !Host(`b.com`)").0, ["a.com"]);
        assert_eq!(
            keys("Host(`a.com`) && PathPrefix(`/api`) && !PathPrefix(`/web`)").0,
            ["a.com/api"]
        );
        let (k, p) = keys("Host(`a.com`) && !PathPrefix(`/admin`)");
        assert!(k.is_empty());
        assert!(p[0].contains("cannot be expressed"), "{p:?}");
        let (k, p) = keys("!(Host(`a.com`) || Host(`b.com`))");
        assert!(k.is_empty() && p[0].contains("no Host"), "{p:?}");
    }

    #[test]
    fn unsupported_matchers_are_reported_not_widened() {
        let (k, p) = keys("Host(`a.com`) && Method(`GET`)");
        assert!(k.is_empty());
        assert!(p[0].contains("Method"), "{p:?}");
        let (k, p) = keys("Host(`a.com`) && ClientIP(`10.0.0.0/8`) || Host(`b.com`)");
        assert_eq!(k, ["b.com"]);
        assert_eq!(p.len(), 1);
        let (_, p) = keys("HostRegexp(`^(a|b)\\.com$`)");
        assert!(p[0].contains("HostRegexp"), "{p:?}");
        assert!(!keys("Host(`a.com`) && Host(`b.com`)").1.is_empty());
    }

    #[test]
    fn syntax_errors_say_where() {
        let e = parse("Host(`a.com`) & Host(`b`)").expect_err("single &");
        assert_eq!(e.offset, 14);
        assert!(parse("Host(`a.com`").is_err());
        assert!(parse("Host(`a.com) ").is_err());
        assert!(parse("Host(`a`) Host(`b`)").is_err());
        assert!(parse("").is_err());
        assert!(parse("Host()").is_err());
    }

    #[test]
    fn v1_rules() {
        let (r, strip) = parse_v1("Host:a.com,b.com;PathPrefixStrip:/x").expect("v1");
        assert!(strip);
        let k: Vec<String> = to_targets(&r).0.iter().map(ToString::to_string).collect();
        assert_eq!(k, ["a.com/x", "b.com/x"]);
        let (r, strip) = parse_v1("Host: a.com; Path:/only").expect("v1");
        assert!(!strip);
        assert_eq!(to_targets(&r).0[0].to_string(), "a.com/only (exact)");
        let (r, strip) = parse_v1("Host:a.com;PathStrip:/p").expect("v1");
        assert!(strip);
        assert_eq!(to_targets(&r).0[0].to_string(), "a.com/p (exact)");
        assert!(parse_v1("Host").is_err());
        assert!(parse_v1(";").is_err());
    }
}
