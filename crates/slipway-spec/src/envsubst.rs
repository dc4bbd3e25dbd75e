//! `${...}` substitution with the semantics of drone/envsubst v1.0.3, the library the
//! Drone server runs over the raw pipeline text before it parses the YAML.
//!
//! Owns [`substitute`] (expand with a lookup function), [`check`] (syntax only),
//! [`parse`] (the expression tree, for lint and for comparing against upstream's
//! parser tables) and [`SubstError`].
//!
//! Invariants:
//! - Nothing here panics, whatever the input or the variable values. Nesting deeper
//!   than [`MAX_DEPTH`] is an error instead of a stack overflow, and a result larger
//!   than [`MAX_OUTPUT`] is an error instead of running out of memory (the only
//!   errors [`substitute`] adds to those of [`check`]).
//! - Parsing finishes before evaluation starts, as in drone: a syntax error anywhere
//!   means no lookup is made and nothing is substituted.
//! - Unset and empty variables are the same thing (drone's lookup returns a string).
//! - The output is drone's output byte for byte wherever drone's output is valid UTF-8.
//!   Drone works on Go byte strings and can cut a multi-byte character in two
//!   (`${X:1}`, `${X#?}` on non-ASCII values); each stray byte becomes U+FFFD here,
//!   which is also what Go does when it next decodes such a string.
//!
//! Behaviour worth knowing (all of it drone's, verified against its parser and tests):
//! - `$$` is a literal `$` (`$${X}` gives `${X}`); a bare `$X` is plain text.
//! - v1.0.3, not v2: outside `${...}` `\\` gives `\` and `\/` gives `/`; every other
//!   backslash is kept. (drone/envsubst v2 keeps both; the Drone server pins v1.)
//! - Defaults: `=`, `:=`, `:-`, `:?` and `:+` all mean "the concatenated default if the
//!   value is empty"; nothing is assigned, nothing fails. `${X+y}` and `${X?y}` are
//!   *rejected* by drone's parser ("missing closing brace"): without a colon only `=`
//!   is an operator there. One departure: Slipway also accepts `${X-y}` as a default
//!   (drone rejects it), the shell form users expect.
//! - `#`, `##`, `%`, `%%` match glob patterns (`*` and `?` also match `/`); the suffix
//!   forms reverse both value and pattern, exactly like drone, so a class like
//!   `[a-z]` does not work there. The shortest-match forms never remove an empty
//!   prefix: `${X#*}` drops one byte, as in drone.
//! - `/`, `//`, `/#`, `/%` replace a *literal* string, not a glob; `\/` is a slash in
//!   their pattern. `/#` and `/%` with an empty replacement (`${X/#a/}`) change
//!   nothing, because drone requires two arguments there.
//! - `${X:pos}` and `${X:pos:len}` count bytes; an unparsable number returns the value
//!   unchanged, a negative `pos` counts from the end. A negative `len` makes drone
//!   panic; here it counts back from the end as in bash (empty if before `pos`).

/// How deep `${...}` may nest inside default values and arguments.
pub const MAX_DEPTH: usize = 100;

/// The largest text [`substitute`] produces. Nested replacements multiply
/// (`${X//${E}/${X//${E}/${X}}}` triples per level), so without a cap a short template
/// could exhaust memory; past it [`substitute`] fails instead.
pub const MAX_OUTPUT: usize = 16 << 20;

/// A syntax error in a `${...}` expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SubstError {
    /// Byte offset into the input of the `${` that starts the bad expression (the
    /// innermost one being read when the error was found).
    pub offset: usize,
    /// What went wrong, with the expression quoted, e.g.
    /// ``missing closing brace in `${FOO` ``.
    pub message: String,
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// Literal text, escapes already resolved.
    Text(String),
    /// A `${...}` expression.
    Expr(Expr),
}

/// A `${...}` expression, shaped like upstream's `FuncNode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    /// Byte offset of the `${` in the input.
    pub offset: usize,
    /// The variable name.
    pub name: String,
    /// The operator as written: `""` for `${X}`, `"#"` for `${#X}` (no arguments) and
    /// for `${X#pat}`, otherwise one of `, ,, ^ ^^ : # ## % %% / // /# /% = := :- :? :+`
    /// (the casing operator also accepts any two of `,` and `^`, which do nothing).
    pub op: String,
    /// The arguments, each one text or one nested expression. For defaults they are
    /// the pieces of the default value, concatenated.
    pub args: Vec<Node>,
}

/// Substitutes `${...}` expressions in `input`. `lookup` returns the value of a
/// variable, `None` if unset (treated exactly like empty, as drone does).
pub fn substitute<F: FnMut(&str) -> Option<String>>(
    input: &str,
    lookup: F,
) -> Result<String, SubstError> {
    let nodes = parse(input)?;
    let mut lookup = lookup;
    let mut out = Vec::with_capacity(input.len());
    for node in &nodes {
        eval_node(node, &mut lookup, &mut out, 0)?;
    }
    Ok(go_lossy(out))
}

/// Checks syntax only. Drone's parser stops at the first error and so does this one:
/// the error returned is the first in the text.
pub fn check(input: &str) -> Result<(), SubstError> {
    parse(input).map(|_| ())
}

/// Parses `input` into text and expressions, as drone/envsubst's parser does.
pub fn parse(input: &str) -> Result<Vec<Node>, SubstError> {
    let mut parser = Parser {
        src: input,
        pos: 0,
        depth: 0,
    };
    parser.parse_all()
}

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

/// The errors drone's parser can report, with its wording.
#[derive(Debug, Clone, Copy)]
enum Kind {
    BadSubstitution,
    MissingClosingBrace,
    VariableName,
    FuncSubstitution,
    TooDeep,
}

impl Kind {
    fn text(self) -> &'static str {
        match self {
            Kind::BadSubstitution => "bad substitution",
            Kind::MissingClosingBrace => "missing closing brace",
            Kind::VariableName => "unable to parse variable name",
            Kind::FuncSubstitution => "unable to parse substitution within function",
            Kind::TooDeep => "expressions nested too deeply",
        }
    }
}

/// Which characters a run of argument text may contain (the run also always stops
/// before `${`, where a nested expression starts).
#[derive(Debug, Clone, Copy)]
enum Accept {
    Any,
    NotClose,
    NotSlash,
    NotColonOrClose,
}

impl Accept {
    fn allows(self, c: char) -> bool {
        match self {
            Accept::Any => true,
            Accept::NotClose => c != '}',
            Accept::NotSlash => c != '/',
            Accept::NotColonOrClose => c != ':' && c != '}',
        }
    }
}

/// Go's `unicode.IsLetter || unicode.IsDigit || '_'`. Rust's alphabetic/numeric sets
/// are slightly larger outside ASCII (letter numbers, combining marks); identical for
/// every name a pipeline uses in practice.
fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

#[derive(Debug)]
struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_second(&self) -> Option<char> {
        self.rest().chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn at_open(&self) -> bool {
        self.rest().starts_with("${")
    }

    fn error(&self, start: usize, kind: Kind) -> SubstError {
        SubstError {
            offset: start,
            message: format!(
                "{} in `{}`",
                kind.text(),
                snippet(self.src, start, self.pos)
            ),
        }
    }

    /// Top level: text (with `$$`, `\\`, `\/` escapes) and expressions.
    fn parse_all(&mut self) -> Result<Vec<Node>, SubstError> {
        let mut nodes = Vec::new();
        while self.peek().is_some() {
            if self.at_open() {
                let start = self.pos;
                self.pos += 2;
                nodes.push(Node::Expr(self.parse_expr(start)?));
            } else {
                // `Any` accepts every character, so the run is never empty here.
                let text = self.text_run(Accept::Any, true).unwrap_or_default();
                nodes.push(Node::Text(text));
            }
        }
        Ok(nodes)
    }

    /// Reads literal text up to `${`, the end, or a character `accept` refuses.
    /// Returns `None` when the very first character is refused. With `escapes`,
    /// `$$`, `\\` and `\/` stand for their second character, which is taken even
    /// where `accept` would refuse it (that is how `\/` gets a slash into a pattern).
    fn text_run(&mut self, accept: Accept, escapes: bool) -> Option<String> {
        let mut out = String::new();
        let mut first = true;
        loop {
            let rest = self.rest();
            let Some(c) = rest.chars().next() else { break };
            if rest.starts_with("${") {
                break;
            }
            if escapes && let Some(lit) = escaped(rest) {
                out.push(lit);
                self.pos += 2;
                first = false;
                continue;
            }
            if !accept.allows(c) {
                if first {
                    return None;
                }
                break;
            }
            out.push(c);
            self.pos += c.len_utf8();
            first = false;
        }
        Some(out)
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.pos;
        while self.peek().is_some_and(is_ident) {
            self.bump();
        }
        let name = self.src.get(start..self.pos).unwrap_or("");
        (!name.is_empty()).then(|| name.to_owned())
    }

    /// One argument: a nested expression or a non-empty run of text.
    fn param(&mut self, start: usize, accept: Accept, escapes: bool) -> Result<Node, SubstError> {
        if self.peek().is_none() {
            return Err(self.error(start, Kind::FuncSubstitution));
        }
        if self.at_open() {
            let inner = self.pos;
            self.pos += 2;
            return Ok(Node::Expr(self.parse_expr(inner)?));
        }
        match self.text_run(accept, escapes) {
            Some(text) => Ok(Node::Text(text)),
            None => Err(self.error(start, Kind::FuncSubstitution)),
        }
    }

    fn expect_close(&mut self, start: usize) -> Result<(), SubstError> {
        match self.bump() {
            Some('}') => Ok(()),
            _ => Err(self.error(start, Kind::BadSubstitution)),
        }
    }

    /// After `${` (at `start`): the whole expression up to and including its `}`.
    fn parse_expr(&mut self, start: usize) -> Result<Expr, SubstError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(start, Kind::TooDeep));
        }
        self.depth += 1;
        let result = self.parse_expr_body(start);
        self.depth -= 1;
        result
    }

    fn parse_expr_body(&mut self, start: usize) -> Result<Expr, SubstError> {
        let mut expr = Expr {
            offset: start,
            name: String::new(),
            op: String::new(),
            args: Vec::new(),
        };
        if self.peek() == Some('#') {
            // `${#X}`: length. Only an identifier may follow.
            self.bump();
            expr.op.push('#');
            expr.name = self
                .ident()
                .ok_or_else(|| self.error(start, Kind::BadSubstitution))?;
            self.expect_close(start)?;
            return Ok(expr);
        }
        expr.name = self
            .ident()
            .ok_or_else(|| self.error(start, Kind::VariableName))?;
        match self.peek() {
            Some(':') if matches!(self.peek_second(), Some('=' | '-' | '?' | '+')) => {
                self.take_op(&mut expr.op, 2);
                self.default_args(start, &mut expr)?;
            }
            Some(':') => self.substring_args(start, &mut expr)?,
            // `-` is Slipway's addition (drone rejects `${X-y}`), so accepting it changes
            // the meaning of no file drone accepts; it is the shell form users write.
            Some('=' | '-') => {
                self.take_op(&mut expr.op, 1);
                self.default_args(start, &mut expr)?;
            }
            Some(c @ (',' | '^')) => {
                expr.op.push(c);
                self.bump();
                if let Some(c2 @ (',' | '^')) = self.peek() {
                    expr.op.push(c2);
                    self.bump();
                }
                self.expect_close(start)?;
            }
            Some('/') => self.replace_args(start, &mut expr)?,
            Some(c @ ('#' | '%')) => {
                expr.op.push(c);
                self.bump();
                if self.peek() == Some(c) {
                    expr.op.push(c);
                    self.bump();
                }
                expr.args.push(self.param(start, Accept::NotClose, false)?);
                self.expect_close(start)?;
            }
            Some('}') => {
                self.bump();
            }
            _ => return Err(self.error(start, Kind::MissingClosingBrace)),
        }
        Ok(expr)
    }

    fn take_op(&mut self, op: &mut String, chars: usize) {
        for _ in 0..chars {
            if let Some(c) = self.bump() {
                op.push(c);
            }
        }
    }

    /// Default value: any number of pieces up to the `}`.
    fn default_args(&mut self, start: usize, expr: &mut Expr) -> Result<(), SubstError> {
        loop {
            if self.peek() == Some('}') {
                self.bump();
                return Ok(());
            }
            expr.args.push(self.param(start, Accept::NotClose, false)?);
        }
    }

    /// `:pos}` or `:pos:len}`; the separator may be several colons.
    fn substring_args(&mut self, start: usize, expr: &mut Expr) -> Result<(), SubstError> {
        self.take_op(&mut expr.op, 1);
        expr.args
            .push(self.param(start, Accept::NotColonOrClose, false)?);
        match self.bump() {
            Some('}') => return Ok(()),
            Some(':') => {
                while self.peek() == Some(':') {
                    self.bump();
                }
            }
            _ => return Err(self.error(start, Kind::BadSubstitution)),
        }
        expr.args.push(self.param(start, Accept::NotClose, false)?);
        self.expect_close(start)
    }

    /// `/pat/rep}`, `//pat/rep}`, `/#pat/rep}`, `/%pat/rep}`; the replacement may be
    /// empty and the separator may be several slashes.
    fn replace_args(&mut self, start: usize, expr: &mut Expr) -> Result<(), SubstError> {
        self.take_op(&mut expr.op, 1);
        if let Some(c @ ('/' | '#' | '%')) = self.peek() {
            expr.op.push(c);
            self.bump();
        }
        expr.args.push(self.param(start, Accept::NotSlash, true)?);
        if self.bump() != Some('/') {
            return Err(self.error(start, Kind::BadSubstitution));
        }
        while self.peek() == Some('/') {
            self.bump();
        }
        if self.peek() == Some('}') {
            self.bump();
            return Ok(());
        }
        expr.args.push(self.param(start, Accept::NotClose, true)?);
        self.expect_close(start)
    }
}

/// The character an escape at the start of `s` stands for, if there is one.
fn escaped(s: &str) -> Option<char> {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some('$'), Some('$')) => Some('$'),
        (Some('\\'), Some(c @ ('\\' | '/'))) => Some(c),
        _ => None,
    }
}

/// The expression quoted in an error: from its `${` to the `}` that balances it (or
/// the end of the input), never stopping before where the error was found, at most
/// 80 characters.
fn snippet(src: &str, start: usize, err_pos: usize) -> String {
    let tail = src.get(start..).unwrap_or("");
    let mut depth = 0usize;
    let mut end = src.len();
    for (i, c) in tail.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    end = start + i + 1;
                    break;
                }
            }
            _ => {}
        }
    }
    let end = end.max(err_pos).min(src.len());
    let mut out = String::new();
    for (n, c) in src.get(start..end).unwrap_or("").chars().enumerate() {
        if n == 80 {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------
// Evaluation (on bytes, like Go strings)
// ---------------------------------------------------------------------------

type Lookup<'l> = dyn FnMut(&str) -> Option<String> + 'l;

/// Appends `node`'s result; `offset` names the expression blamed if it gets too big.
fn eval_node(
    node: &Node,
    lookup: &mut Lookup<'_>,
    out: &mut Vec<u8>,
    offset: usize,
) -> Result<(), SubstError> {
    match node {
        Node::Text(text) => append(out, text.as_bytes(), offset),
        Node::Expr(expr) => {
            let value = eval_expr(expr, lookup)?;
            append(out, &value, expr.offset)
        }
    }
}

fn eval_expr(expr: &Expr, lookup: &mut Lookup<'_>) -> Result<Vec<u8>, SubstError> {
    // Drone evaluates every argument before looking the variable up.
    let mut args = Vec::with_capacity(expr.args.len());
    for arg in &expr.args {
        let mut buf = Vec::new();
        eval_node(arg, lookup, &mut buf, expr.offset)?;
        args.push(buf);
    }
    let value = lookup(&expr.name).unwrap_or_default();
    apply(&expr.op, value, &args).ok_or_else(|| too_large(expr.offset))
}

fn append(out: &mut Vec<u8>, more: &[u8], offset: usize) -> Result<(), SubstError> {
    if out.len().saturating_add(more.len()) > MAX_OUTPUT {
        return Err(too_large(offset));
    }
    out.extend_from_slice(more);
    Ok(())
}

fn too_large(offset: usize) -> SubstError {
    SubstError {
        offset,
        message: format!(
            "the result of the expression at byte {offset} would exceed {} MiB",
            MAX_OUTPUT >> 20
        ),
    }
}

/// Applies an operator as drone's `lookupFunc` does; `None` when the result would be
/// larger than [`MAX_OUTPUT`] (only replacing and concatenating can grow text).
fn apply(op: &str, value: String, args: &[Vec<u8>]) -> Option<Vec<u8>> {
    let first = args.first().map(Vec::as_slice);
    let second = args.get(1).map(Vec::as_slice);
    let out = match op {
        "," => map_first(&value, simple_lower).into_bytes(),
        ",," => value
            .chars()
            .map(simple_lower)
            .collect::<String>()
            .into_bytes(),
        "^" => map_first(&value, simple_upper).into_bytes(),
        "^^" => value
            .chars()
            .map(simple_upper)
            .collect::<String>()
            .into_bytes(),
        "#" if args.is_empty() => value.len().to_string().into_bytes(),
        "#" | "##" | "%" | "%%" => match first {
            Some(pat) => trim(op, value.as_bytes(), pat),
            None => value.into_bytes(),
        },
        ":" => substring(value.as_bytes(), first, second),
        "/" | "//" => match first {
            Some(old) => {
                let limit = if op == "/" { Some(1) } else { None };
                replace(value.as_bytes(), old, second.unwrap_or(b""), limit)?
            }
            None => value.into_bytes(),
        },
        // Drone wants exactly two arguments here: `${X/#a/}` leaves X alone.
        "/#" => match args {
            [old, new] if value.as_bytes().starts_with(old) => {
                let mut out = new.clone();
                out.extend_from_slice(value.as_bytes().get(old.len()..).unwrap_or(b""));
                out
            }
            _ => value.into_bytes(),
        },
        "/%" => match args {
            [old, new] if value.as_bytes().ends_with(old) => {
                let keep = value.len().saturating_sub(old.len());
                let mut out = value.as_bytes().get(..keep).unwrap_or(b"").to_vec();
                out.extend_from_slice(new);
                out
            }
            _ => value.into_bytes(),
        },
        // Every default operator, the plain `${X}` and unknown casing pairs.
        _ => {
            if value.is_empty() && !args.is_empty() {
                let total = args.iter().fold(0usize, |n, a| n.saturating_add(a.len()));
                if total > MAX_OUTPUT {
                    return None;
                }
                args.concat()
            } else {
                value.into_bytes()
            }
        }
    };
    Some(out)
}

/// Go's `unicode.ToUpper`: a one-to-one mapping. Where Rust's full mapping gives
/// several characters (`ß` → `SS`) Go has no simple mapping for nearly all of them and
/// keeps the character, so we keep it too.
fn simple_upper(c: char) -> char {
    let mut it = c.to_uppercase();
    match (it.next(), it.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

/// Go's `unicode.ToLower`, see [`simple_upper`]. Per character, so no final-sigma rule.
fn simple_lower(c: char) -> char {
    let mut it = c.to_lowercase();
    match (it.next(), it.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

fn map_first(s: &str, f: fn(char) -> char) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => {
            let mut out = String::with_capacity(s.len());
            out.push(f(c));
            out.push_str(chars.as_str());
            out
        }
        None => String::new(),
    }
}

/// Go's `strconv.Atoi`: optional sign, decimal digits, must fit in 64 bits.
fn atoi(arg: Option<&[u8]>) -> Option<i64> {
    std::str::from_utf8(arg?).ok()?.parse().ok()
}

/// `${X:pos}` / `${X:pos:len}` on bytes, as drone's `toSubstr`.
fn substring(s: &[u8], pos: Option<&[u8]>, len: Option<&[u8]>) -> Vec<u8> {
    let total = i128::try_from(s.len()).unwrap_or(i128::MAX);
    let Some(pos) = atoi(pos) else {
        return s.to_vec();
    };
    let mut pos = i128::from(pos);
    if pos < 0 {
        pos = (total + pos).max(0);
    }
    let slice = |from: i128, to: i128| -> Vec<u8> {
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        let to = usize::try_from(to).unwrap_or(usize::MAX);
        s.get(from..to).unwrap_or(b"").to_vec()
    };
    let Some(len_arg) = len else {
        return if pos < total {
            slice(pos, total)
        } else {
            Vec::new()
        };
    };
    let Some(length) = atoi(Some(len_arg)) else {
        return s.to_vec();
    };
    let length = i128::from(length);
    if pos + length >= total {
        return if pos < total {
            slice(pos, total)
        } else {
            Vec::new()
        };
    }
    if length < 0 {
        // Drone panics here (slice bounds out of range); bash counts from the end.
        let end = total + length;
        return if end < pos {
            Vec::new()
        } else {
            slice(pos, end)
        };
    }
    slice(pos, pos + length)
}

/// Go's `strings.Replace(s, old, new, n)`; `limit` None means all. `None` when the
/// result would be larger than [`MAX_OUTPUT`].
fn replace(s: &[u8], old: &[u8], new: &[u8], limit: Option<usize>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut done = 0usize;
    let allowed = |done: usize| limit.is_none_or(|n| done < n);
    let mut rest = s;
    if old.is_empty() {
        // An empty pattern matches before every character and at the end.
        while allowed(done) {
            if done > 0 {
                if rest.is_empty() {
                    break;
                }
                let (head, tail) = rest.split_at(go_decode(rest).1.min(rest.len()));
                out.extend_from_slice(head);
                rest = tail;
            }
            if out.len().saturating_add(new.len()) > MAX_OUTPUT {
                return None;
            }
            out.extend_from_slice(new);
            done += 1;
        }
    } else {
        while allowed(done) {
            let Some(at) = find(rest, old) else { break };
            if out.len().saturating_add(at).saturating_add(new.len()) > MAX_OUTPUT {
                return None;
            }
            out.extend_from_slice(rest.get(..at).unwrap_or(b""));
            out.extend_from_slice(new);
            rest = rest.get(at + old.len()..).unwrap_or(b"");
            done += 1;
        }
    }
    if out.len().saturating_add(rest.len()) > MAX_OUTPUT {
        return None;
    }
    out.extend_from_slice(rest);
    Some(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `#`, `##`, `%`, `%%`. The suffix forms reverse value and pattern by characters
/// (Go's `[]rune`), trim a prefix, and reverse back, exactly as drone does.
fn trim(op: &str, s: &[u8], pat: &[u8]) -> Vec<u8> {
    let shortest = op.len() == 1;
    if op.starts_with('%') {
        let rs = go_reverse(s);
        let rpat = go_reverse(pat);
        go_reverse(&trim_prefix(&rs, &rpat, shortest))
    } else {
        trim_prefix(s, pat, shortest)
    }
}

/// Drone's `trimShortest`/`trimLongest`: the shortest or longest non-empty byte prefix
/// matching `pat` is removed; a malformed pattern leaves the value unchanged, but only
/// if matching some prefix reaches the malformed part. Patterns that cannot be
/// malformed take shortcuts with the same answer (checked by a property test), so
/// the usual forms (`*/`, `.*`, literals) stay near-linear; the worst case is still
/// O(len² × pattern), as in drone.
fn trim_prefix(s: &[u8], pat: &[u8], shortest: bool) -> Vec<u8> {
    let rest_after = |cut: usize| s.get(cut..).unwrap_or(b"").to_vec();
    let matches = |cut: usize| {
        s.get(..cut)
            .is_some_and(|prefix| glob_prefix_match(pat, prefix, true).unwrap_or(false))
    };
    if pattern_is_sound(pat) {
        // No prefix can fail with a bad pattern, so the first hit is the answer; and a
        // pattern without `*` consumes at most four bytes per pattern byte.
        let max = if has_star(pat) {
            s.len()
        } else {
            pat.len().saturating_mul(4).min(s.len())
        };
        let hit = if shortest {
            (1..=max).find(|&cut| matches(cut))
        } else {
            (1..=max).rev().find(|&cut| matches(cut))
        };
        return hit.map_or_else(|| s.to_vec(), rest_after);
    }
    trim_prefix_exhaustive(s, pat, shortest)
}

/// Drone's loop as written: every prefix, so that a bad pattern is noticed wherever
/// drone would notice it.
fn trim_prefix_exhaustive(s: &[u8], pat: &[u8], shortest: bool) -> Vec<u8> {
    let mut best = None;
    for cut in (1..=s.len()).rev() {
        let Some(prefix) = s.get(..cut) else { continue };
        match glob_prefix_match(pat, prefix, false) {
            Err(BadPattern) => return s.to_vec(),
            Ok(true) => {
                best = Some(cut);
                if !shortest {
                    break;
                }
            }
            Ok(false) => {}
        }
    }
    best.map_or_else(|| s.to_vec(), |cut| s.get(cut..).unwrap_or(b"").to_vec())
}

/// Whether matching `pat` can never report a bad pattern, whatever the text: the
/// pattern side of [`match_chunk`] does not depend on the text, so walk it alone.
fn pattern_is_sound(mut pat: &[u8]) -> bool {
    while !pat.is_empty() {
        let (_, mut chunk, rest) = scan_chunk(pat);
        pat = rest;
        while let Some(&c0) = chunk.first() {
            chunk = chunk.get(1..).unwrap_or(b"");
            match c0 {
                b'[' => {
                    if chunk.first() == Some(&b'^') {
                        chunk = chunk.get(1..).unwrap_or(b"");
                    }
                    let mut ranges = 0;
                    loop {
                        if chunk.first() == Some(&b']') && ranges > 0 {
                            chunk = chunk.get(1..).unwrap_or(b"");
                            break;
                        }
                        let Ok((_, rest)) = class_char(chunk) else {
                            return false;
                        };
                        chunk = rest;
                        if chunk.first() == Some(&b'-') {
                            let Ok((_, rest)) = class_char(chunk.get(1..).unwrap_or(b"")) else {
                                return false;
                            };
                            chunk = rest;
                        }
                        ranges += 1;
                    }
                }
                b'\\' => {
                    if chunk.is_empty() {
                        return false;
                    }
                    chunk = chunk.get(1..).unwrap_or(b"");
                }
                _ => {}
            }
        }
    }
    true
}

fn has_star(mut pat: &[u8]) -> bool {
    while !pat.is_empty() {
        let (star, _, rest) = scan_chunk(pat);
        if star {
            return true;
        }
        pat = rest;
    }
    false
}

/// A malformed glob, detected only where matching reaches it (as in Go).
#[derive(Debug)]
struct BadPattern;

/// drone's copy of Go's `path.Match`, where `*` and `?` also match `/`. With `sound`
/// (see [`pattern_is_sound`]) the last chunk is only tried where it can end exactly at
/// the end of `name`, which gives the same answer without the quadratic scan.
fn glob_prefix_match(mut pat: &[u8], mut name: &[u8], sound: bool) -> Result<bool, BadPattern> {
    'chunks: while !pat.is_empty() {
        let (star, chunk, rest) = scan_chunk(pat);
        pat = rest;
        if star && chunk.is_empty() {
            return Ok(true);
        }
        match match_chunk(chunk, name)? {
            Some(t) if t.is_empty() || !pat.is_empty() => {
                name = t;
                continue;
            }
            _ => {}
        }
        if star {
            // A chunk consumes at most four bytes per pattern byte.
            let first = if sound && pat.is_empty() {
                name.len()
                    .saturating_sub(chunk.len().saturating_mul(4))
                    .max(1)
            } else {
                1
            };
            for skip in first..=name.len() {
                let Some(tail) = name.get(skip..) else { break };
                if let Some(t) = match_chunk(chunk, tail)? {
                    // The last chunk has to use up the name.
                    if pat.is_empty() && !t.is_empty() {
                        continue;
                    }
                    name = t;
                    continue 'chunks;
                }
            }
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Splits off leading stars and the run of single-character terms after them.
fn scan_chunk(pat: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut p = pat;
    let mut star = false;
    while let [b'*', rest @ ..] = p {
        p = rest;
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while let Some(&b) = p.get(i) {
        match b {
            b'\\' if i + 1 < p.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    let (chunk, rest) = p.split_at(i.min(p.len()));
    (star, chunk, rest)
}

/// Matches `chunk` at the start of `s`; the rest of `s` on success.
fn match_chunk<'s>(mut chunk: &[u8], mut s: &'s [u8]) -> Result<Option<&'s [u8]>, BadPattern> {
    while let Some(&c0) = chunk.first() {
        if s.is_empty() {
            return Ok(None);
        }
        match c0 {
            b'[' => {
                let (r, n) = go_decode(s);
                s = s.get(n..).unwrap_or(b"");
                chunk = chunk.get(1..).unwrap_or(b"");
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = chunk.get(1..).unwrap_or(b"");
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && ranges > 0 {
                        chunk = chunk.get(1..).unwrap_or(b"");
                        break;
                    }
                    let (lo, rest) = class_char(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let (h, rest) = class_char(chunk.get(1..).unwrap_or(b""))?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    return Ok(None);
                }
            }
            b'?' => {
                let n = go_decode(s).1;
                s = s.get(n..).unwrap_or(b"");
                chunk = chunk.get(1..).unwrap_or(b"");
            }
            _ => {
                let lit = if c0 == b'\\' {
                    chunk = chunk.get(1..).unwrap_or(b"");
                    *chunk.first().ok_or(BadPattern)?
                } else {
                    c0
                };
                if s.first() != Some(&lit) {
                    return Ok(None);
                }
                s = s.get(1..).unwrap_or(b"");
                chunk = chunk.get(1..).unwrap_or(b"");
            }
        }
    }
    Ok(Some(s))
}

/// One possibly escaped character of a class; it must be followed by more pattern.
fn class_char(chunk: &[u8]) -> Result<(char, &[u8]), BadPattern> {
    let mut c = match chunk.first() {
        None | Some(b'-' | b']') => return Err(BadPattern),
        Some(_) => chunk,
    };
    if c.first() == Some(&b'\\') {
        c = c.get(1..).unwrap_or(b"");
        if c.is_empty() {
            return Err(BadPattern);
        }
    }
    let (r, n) = go_decode(c);
    if r == char::REPLACEMENT_CHARACTER && n == 1 {
        return Err(BadPattern);
    }
    let rest = c.get(n..).unwrap_or(b"");
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((r, rest))
}

/// Go's `utf8.DecodeRune`: the first character, or U+FFFD and width 1 for a byte
/// that does not start a valid encoding. Width 0 only for empty input.
fn go_decode(b: &[u8]) -> (char, usize) {
    let head = b.get(..b.len().min(4)).unwrap_or(b);
    let valid = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(head.get(..e.valid_up_to()).unwrap_or(b"")).unwrap_or(""),
    };
    match valid.chars().next() {
        Some(c) => (c, c.len_utf8()),
        None if b.is_empty() => (char::REPLACEMENT_CHARACTER, 0),
        None => (char::REPLACEMENT_CHARACTER, 1),
    }
}

/// Go's `string([]rune(s))` reversed: invalid bytes become U+FFFD each.
fn go_reverse(b: &[u8]) -> Vec<u8> {
    let chars: Vec<char> = go_chars(b);
    chars.into_iter().rev().collect::<String>().into_bytes()
}

fn go_chars(b: &[u8]) -> Vec<char> {
    let mut out = Vec::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        out.extend(chunk.valid().chars());
        out.extend(chunk.invalid().iter().map(|_| char::REPLACEMENT_CHARACTER));
    }
    out
}

/// Bytes to text, one U+FFFD per invalid byte (what Go's decoders see).
fn go_lossy(b: Vec<u8>) -> String {
    match String::from_utf8(b) {
        Ok(s) => s,
        Err(e) => {
            let bytes = e.into_bytes();
            let mut out = String::with_capacity(bytes.len() + 8);
            for chunk in bytes.utf8_chunks() {
                out.push_str(chunk.valid());
                for _ in chunk.invalid() {
                    out.push(char::REPLACEMENT_CHARACTER);
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{pattern_is_sound, trim_prefix, trim_prefix_exhaustive};

    fn pieces(list: Vec<&'static str>, len: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(list), 0..len).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The shortcuts for sound patterns give drone's answer.
        #[test]
        fn shortcuts_match_the_exhaustive_loop(
            value in pieces(vec!["a", "b", "/", ".", "中", "é", "-"], 14),
            pat in pieces(vec!["*", "?", "a", "b", "/", ".", "中", "[ab]", "[^a]", "[a-z]", "\\.", "é"], 6),
        ) {
            prop_assume!(pattern_is_sound(pat.as_bytes()));
            for shortest in [true, false] {
                prop_assert_eq!(
                    trim_prefix(value.as_bytes(), pat.as_bytes(), shortest),
                    trim_prefix_exhaustive(value.as_bytes(), pat.as_bytes(), shortest)
                );
            }
        }
    }
}
