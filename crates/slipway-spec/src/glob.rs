//! Glob patterns for `when` and `trigger` conditions (branches, refs, events, paths).
//!
//! Owns [`glob_match`] (does a text match a pattern) and [`check_glob`] (is a pattern
//! well formed, for lint).
//!
//! Syntax: `*` matches any run of characters except `/`; `**` (two or more stars)
//! any run including `/`, and `**/` also matches nothing at all (zero directories); `?` one character except `/`; `[abc]`, `[a-z]` one listed
//! character, `[!a-z]` or `[^a-z]` one character not listed (a class never matches
//! `/`, and a `]` right after `[`, `[!` or `[^` is a member); `\x` is a literal `x`.
//! Everything else is literal, including `{`, `}` and `,`: there is no brace
//! expansion. Matching is on characters, not bytes.
//!
//! Invariants:
//! - Never panics, and runs in O(pattern × text) time: matching simulates the
//!   pattern as a small automaton, so there is no backtracking to blow up on
//!   patterns like `*a*a*a*a*b`.
//! - A pattern without metacharacters (`*`, `?`, `[`, `\`) is an exact comparison.
//! - A malformed pattern (unclosed `[`, trailing `\`) matches nothing, like Go's
//!   `filepath.Match`, and [`check_glob`] says why.

/// Matches `text` against a glob: `*` any run of characters except `/`, `**` any run
/// including `/`, `?` one character except `/`, `[abc]`, `[a-z]`, `[!a-z]`/`[^a-z]`
/// classes, `\x` escapes x. A pattern without metacharacters is an exact comparison.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    if !pattern.contains(['*', '?', '[', '\\']) {
        return pattern == text;
    }
    let Ok(tokens) = compile(pattern) else {
        return false;
    };
    run(&tokens, text)
}

/// `Err(message)` when the pattern is malformed (unclosed `[`, trailing `\`), for lint.
pub fn check_glob(pattern: &str) -> Result<(), String> {
    compile(pattern).map(|_| ())
}

#[derive(Debug)]
enum Token {
    Literal(char),
    /// `?`
    One,
    /// `*`
    Star,
    /// `**`
    DoubleStar,
    /// Put before `**` `/` when a pattern has `**/`: lets the three match nothing.
    /// A token of its own so that only the state *before* `**` may skip, not one where
    /// `**` has already consumed text.
    SkipDirs,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    /// Whether this token consumes `c` and moves on (stars are handled apart).
    fn takes(&self, c: char) -> bool {
        match self {
            Token::Literal(l) => *l == c,
            Token::One => c != '/',
            Token::Class { negated, ranges } => {
                c != '/' && ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
            Token::Star | Token::DoubleStar | Token::SkipDirs => false,
        }
    }
}

fn compile(pattern: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = pattern.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '*' => {
                let mut double = false;
                while chars.next_if(|&(_, c)| c == '*').is_some() {
                    double = true;
                }
                if double && chars.peek().is_some_and(|&(_, c)| c == '/') {
                    tokens.push(Token::SkipDirs);
                }
                // `a**b` and `a***b` mean the same, `*` after `**` adds nothing.
                tokens.push(if double {
                    Token::DoubleStar
                } else {
                    Token::Star
                });
            }
            '?' => tokens.push(Token::One),
            '\\' => match chars.next() {
                Some((_, escaped)) => tokens.push(Token::Literal(escaped)),
                None => return Err(format!("trailing `\\` at byte {at} of `{pattern}`")),
            },
            '[' => {
                let negated = chars.next_if(|&(_, c)| c == '!' || c == '^').is_some();
                let mut ranges = Vec::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    if c == ']' && !ranges.is_empty() {
                        closed = true;
                        break;
                    }
                    let lo = if c == '\\' {
                        match chars.next() {
                            Some((_, e)) => e,
                            None => break,
                        }
                    } else {
                        c
                    };
                    // `a-z` is a range unless the `-` is last (`[a-]` lists `-`).
                    let mut hi = lo;
                    let mut ahead = chars.clone();
                    if let (Some((_, '-')), Some((_, next))) = (ahead.next(), ahead.next())
                        && next != ']'
                    {
                        chars.next();
                        chars.next();
                        hi = if next == '\\' {
                            match chars.next() {
                                Some((_, e)) => e,
                                None => break,
                            }
                        } else {
                            next
                        };
                    }
                    ranges.push((lo, hi));
                }
                if !closed {
                    return Err(format!("unclosed `[` at byte {at} of `{pattern}`"));
                }
                tokens.push(Token::Class { negated, ranges });
            }
            c => tokens.push(Token::Literal(c)),
        }
    }
    Ok(tokens)
}

/// Simulates the pattern on `text`: `live[i]` says the first `i` tokens can have
/// matched what has been read so far.
fn run(tokens: &[Token], text: &str) -> bool {
    let mut live = vec![false; tokens.len() + 1];
    let mut next = vec![false; tokens.len() + 1];
    if let Some(first) = live.first_mut() {
        *first = true;
    }
    close(tokens, &mut live);
    for c in text.chars() {
        next.iter_mut().for_each(|n| *n = false);
        let mut any = false;
        for (i, token) in tokens.iter().enumerate() {
            if !live.get(i).copied().unwrap_or(false) {
                continue;
            }
            let stay = match token {
                Token::Star => c != '/',
                Token::DoubleStar => true,
                _ => false,
            };
            if stay && let Some(n) = next.get_mut(i) {
                *n = true;
                any = true;
            }
            if token.takes(c)
                && let Some(n) = next.get_mut(i + 1)
            {
                *n = true;
                any = true;
            }
        }
        if !any {
            return false;
        }
        close(tokens, &mut next);
        std::mem::swap(&mut live, &mut next);
    }
    live.last().copied().unwrap_or(false)
}

/// Stars may match nothing: being before one means being after it too. `**/` may also
/// match nothing, slash included, so `src/**/*.rs` matches `src/main.rs` and `**/*.go`
/// matches `main.go`, as in the doublestar matching users know from `paths` filters.
fn close(tokens: &[Token], live: &mut [bool]) {
    // Tokens are visited in order and epsilon moves only go forward, so one pass
    // reaches every state.
    for (i, token) in tokens.iter().enumerate() {
        if !live.get(i).copied().unwrap_or(false) {
            continue;
        }
        let skip = match token {
            Token::Star | Token::DoubleStar => 1,
            // Skip `SkipDirs`, `**` and `/` together, or enter `**`.
            Token::SkipDirs => {
                if let Some(after) = live.get_mut(i + 3) {
                    *after = true;
                }
                1
            }
            _ => continue,
        };
        if let Some(after) = live.get_mut(i + skip) {
            *after = true;
        }
    }
}
