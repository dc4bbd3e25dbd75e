//! A YAML tree that remembers where every node came from. Pure: no IO, no async.
//!
//! Slipway's readers of user files (pipeline files in `slipway-spec`, the proxy's routes
//! file and compose files in `slipway-proxy`) go through this instead of a serde
//! deserializer, because their errors must point at the line and column of every unknown
//! key or bad value, and because some parts are kept as raw trees (a step's `settings`,
//! other document kinds).
//!
//! Types: [`load`] reads a whole stream into [`Document`]s, each a tree of [`Node`]s (a
//! [`Value`] with its [`Pos`]), and [`YamlProblem`]s.
//!
//! Invariants: [`load`] never panics on any input; anchors and aliases are resolved while
//! loading and `<<` merge keys applied (a key the mapping writes itself wins, before or after
//! the `<<`), so no consumer sees either; alias expansion is
//! bounded (200,000 copied nodes) and nesting too (256 levels), against hostile input;
//! duplicate keys in a mapping are kept once (the first wins) and reported; a syntax error
//! is a fatal problem that ends the stream, with the documents read before it kept.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, SpannedEventReceiver};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// A scalar as written; `quoted` scalars are always strings, plain ones may be
    /// numbers or booleans to a consumer that cares.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

/// A problem found while reading YAML: a syntax error ends the document stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlProblem {
    pub pos: Pos,
    pub message: String,
    pub fatal: bool,
}

/// One `---` document of the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub pos: Pos,
    pub root: Node,
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// The value under `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// A short name of the node's kind, for messages.
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The node as JSON: plain scalars that read as YAML 1.2 core numbers or booleans
    /// become numbers or booleans, everything else a string.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Scalar { text, quoted } => {
                if *quoted {
                    return serde_json::Value::String(text.clone());
                }
                match text.as_str() {
                    "true" | "True" | "TRUE" => serde_json::Value::Bool(true),
                    "false" | "False" | "FALSE" => serde_json::Value::Bool(false),
                    _ => {
                        if let Ok(i) = text.parse::<i64>() {
                            serde_json::Value::from(i)
                        } else if looks_like_float(text) {
                            // Keep the text as written where a float would lose it
                            // (`1.10` is not `1.1` to a user naming a Go version).
                            match text.parse::<f64>() {
                                Ok(f) if format_float(f) == *text => serde_json::Value::from(f),
                                _ => serde_json::Value::String(text.clone()),
                            }
                        } else {
                            serde_json::Value::String(text.clone())
                        }
                    }
                }
            }
            Value::Seq(items) => {
                serde_json::Value::Array(items.iter().map(Node::to_json).collect())
            }
            Value::Map(entries) => {
                let mut map = serde_json::Map::new();
                for (k, v) in entries {
                    let key = match &k.value {
                        Value::Scalar { text, .. } => text.clone(),
                        Value::Null => "null".to_owned(),
                        _ => k.to_json().to_string(),
                    };
                    map.entry(key).or_insert_with(|| v.to_json());
                }
                serde_json::Value::Object(map)
            }
        }
    }
}

fn looks_like_float(text: &str) -> bool {
    let t = text.strip_prefix(['-', '+']).unwrap_or(text);
    !t.is_empty()
        && t.chars().any(|c| c.is_ascii_digit())
        && t.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || c == '-' || c == '+')
}

fn format_float(f: f64) -> String {
    format!("{f}")
}

/// Reads every document of a YAML stream. Never panics; a syntax error is returned as a
/// fatal problem with the documents read before it.
pub fn load(text: &str) -> (Vec<Document>, Vec<YamlProblem>) {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(err) = parser.load(&mut builder, true) {
        let m = err.marker();
        builder.problems.push(YamlProblem {
            pos: Pos {
                line: m.line(),
                col: m.col() + 1,
            },
            message: format!("invalid YAML: {}", err.info()),
            fatal: true,
        });
    }
    (builder.documents, builder.problems)
}

/// Deepest nesting accepted: guards the recursion of later passes against hostile input.
const MAX_DEPTH: usize = 256;

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        /// Per entry: it came from a `<<` merge, so a key written in the mapping itself
        /// replaces it, wherever the `<<` stands.
        merged: Vec<bool>,
        pending_key: Option<Node>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    documents: Vec<Document>,
    doc_pos: Pos,
    problems: Vec<YamlProblem>,
    too_deep: bool,
    /// Nodes copied by alias expansion so far: bounded so that nested aliases
    /// ("billion laughs") cannot exhaust memory.
    alias_nodes: usize,
}

/// Most nodes that alias expansion may copy in one stream.
const MAX_ALIAS_NODES: usize = 200_000;

fn node_count(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(node_count).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| node_count(k) + node_count(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

fn pos_of(span: &Span) -> Pos {
    Pos {
        line: span.start.line(),
        col: span.start.col() + 1,
    }
}

impl Builder {
    fn push_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.documents.push(Document {
                pos: self.doc_pos,
                root: node,
            }),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                merged,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => {
                    let existing = key.as_str().and_then(|name| {
                        entries.iter().position(|(k, _)| k.as_str() == Some(name))
                    });
                    if key.as_str() == Some("<<") && !matches!(key.value, Value::Null) {
                        merge_into(entries, merged, node);
                    } else if let Some(i) = existing
                        && merged[i]
                    {
                        entries[i] = (key, node);
                        merged[i] = false;
                    } else if let (Some(name), Some(_)) = (key.as_str(), existing) {
                        self.problems.push(YamlProblem {
                            pos: key.pos,
                            message: format!("duplicate key `{name}`: the first one is used"),
                            fatal: false,
                        });
                    } else {
                        entries.push((key, node));
                        merged.push(false);
                    }
                }
            },
        }
    }
}

/// `<<: *anchor` (or a list of them): keys the mapping writes itself win, before or after
/// the `<<`, and among several sources the first that has a key, as YAML's merge spec says.
fn merge_into(entries: &mut Vec<(Node, Node)>, merged: &mut Vec<bool>, source: Node) {
    let sources = match source.value {
        Value::Seq(items) => items,
        _ => vec![source],
    };
    for src in sources {
        if let Value::Map(src_entries) = src.value {
            for (k, v) in src_entries {
                let exists = entries.iter().any(|(ek, _)| ek.as_str() == k.as_str());
                if !exists {
                    entries.push((k, v));
                    merged.push(true);
                }
            }
        }
    }
}

impl<'input> SpannedEventReceiver<'input> for Builder {
    fn on_event(&mut self, ev: Event<'input>, span: Span) {
        let pos = pos_of(&span);
        match ev {
            Event::DocumentStart(_) => {
                self.doc_pos = pos;
                self.anchors.clear();
            }
            Event::Scalar(text, style, anchor, tag) => {
                let quoted = !matches!(style, ScalarStyle::Plain);
                let is_null = !quoted
                    && tag.is_none()
                    && matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL");
                let value = if is_null {
                    Value::Null
                } else {
                    Value::Scalar {
                        text: match text {
                            Cow::Borrowed(s) => s.to_owned(),
                            Cow::Owned(s) => s,
                        },
                        quoted: quoted || tag.is_some(),
                    }
                };
                self.push_node(Node { pos, value }, anchor);
            }
            Event::Alias(id) => {
                let node = match self.anchors.get(&id) {
                    Some(node) if self.alias_nodes + node_count(node) > MAX_ALIAS_NODES => {
                        self.problems.push(YamlProblem {
                            pos,
                            message: format!(
                                "aliases expand to more than {MAX_ALIAS_NODES} nodes; this one is ignored"
                            ),
                            fatal: false,
                        });
                        Node {
                            pos,
                            value: Value::Null,
                        }
                    }
                    Some(node) => {
                        self.alias_nodes += node_count(node);
                        Node {
                            pos,
                            value: node.value.clone(),
                        }
                    }
                    None => {
                        self.problems.push(YamlProblem {
                            pos,
                            message: "alias to an unknown anchor".to_owned(),
                            fatal: false,
                        });
                        Node {
                            pos,
                            value: Value::Null,
                        }
                    }
                };
                self.push_node(node, 0);
            }
            Event::SequenceStart(anchor, _) => {
                self.enter(pos);
                self.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, _) => {
                self.enter(pos);
                self.stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    merged: Vec::new(),
                    pending_key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq { pos, anchor, items }) => (
                        Node {
                            pos,
                            value: Value::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        pos,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            pos,
                            value: Value::Map(entries),
                        },
                        anchor,
                    ),
                    None => return,
                };
                if self.stack.len() >= MAX_DEPTH {
                    // Nodes below the limit are dropped; the problem was reported on entry.
                    return;
                }
                self.push_node(node, anchor);
            }
            _ => {}
        }
    }
}

impl Builder {
    fn enter(&mut self, pos: Pos) {
        if self.stack.len() == MAX_DEPTH && !self.too_deep {
            self.too_deep = true;
            self.problems.push(YamlProblem {
                pos,
                message: format!("nesting deeper than {MAX_DEPTH} levels is not supported"),
                fatal: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_keep_their_line_and_column() {
        let (docs, problems) = load("a:\n  b: [1, 'x']\n");
        assert!(problems.is_empty(), "{problems:?}");
        let b = docs[0].root.get("a").and_then(|a| a.get("b")).expect("b");
        assert_eq!(b.pos, Pos { line: 2, col: 6 });
        let items = b.as_seq().expect("list");
        assert_eq!(items[1].pos, Pos { line: 2, col: 10 });
        assert_eq!(
            items[1].value,
            Value::Scalar {
                text: "x".into(),
                quoted: true
            }
        );
    }

    #[test]
    fn merge_keys_fill_in_and_own_keys_win() {
        let (docs, _) = load("x: &d {a: 1, b: 2}\ny:\n  <<: *d\n  b: 3\n");
        let y = docs[0].root.get("y").expect("y");
        assert_eq!(y.get("a").and_then(Node::as_str), Some("1"));
        assert_eq!(y.get("b").and_then(Node::as_str), Some("3"));
    }

    #[test]
    fn duplicates_alias_bombs_and_syntax_errors_are_problems() {
        let (docs, problems) = load("a: 1\na: 2\n");
        assert_eq!(docs[0].root.get("a").and_then(Node::as_str), Some("1"));
        assert_eq!(problems[0].pos, Pos { line: 2, col: 1 });
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let (_, problems) = load(&bomb);
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("aliases expand"))
        );
        let (_, problems) = load("a: [1, 2\n");
        assert!(problems.iter().any(|p| p.fatal));
    }
}
