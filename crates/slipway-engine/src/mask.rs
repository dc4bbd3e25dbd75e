//! Secret masking: every log line of a build passes through a [`Masker`] before it becomes an
//! event, so no secret value of the build ever leaves the engine in clear, neither in the raw
//! text nor in the text a reader is shown.
//!
//! Owns [`Masker`] and [`displayed`], the engine's one notion of what the UI's log view
//! (`crates/slipway-server/src/ui/static/app.js`, `renderAnsi`) draws of a line. A line is
//! masked twice: against its raw text, then against its displayed text, so a secret with
//! escape sequences or invisible characters planted between its characters
//! (`s\x1b[0me\x1b[1mcret`) is masked although it never occurs in the raw text. Should the
//! UI's handling of escapes change, [`displayed`] must change with it.

/// Replaces every occurrence of the build's secret values in a line with [`Masker::MASK`].
///
/// Masking works on whole lines (output is split into lines first, see
/// [`crate::LineSplitter`]), so a value split across two reads of a stream is still found. For
/// that reason a multi-line value is masked line by line: each of its non-blank lines (with a
/// trailing `\r` removed) is a pattern of its own. Patterns are matched longest first at each
/// position, so a secret that contains another secret is masked as a whole. Empty and
/// whitespace-only patterns are ignored: they would mask every line without protecting anything.
///
/// Then the same patterns (as they are displayed) are looked for in the line's [`displayed`]
/// text; each occurrence replaces the whole raw stretch it was drawn from (escapes between its
/// characters included) with the mask.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Longest first; no duplicates, no blanks.
    patterns: Vec<String>,
    /// [`displayed`] of each pattern, longest first; no duplicates, no blanks.
    shown: Vec<String>,
}

/// Longest first, then in order; duplicates and blank patterns removed.
fn normalized(mut patterns: Vec<String>) -> Vec<String> {
    patterns.retain(|p| !p.trim().is_empty());
    patterns.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    patterns.dedup();
    patterns
}

impl Masker {
    pub const MASK: &'static str = "******";

    pub fn new<I, S>(secrets: I) -> Masker
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut patterns: Vec<String> = Vec::new();
        for secret in secrets {
            for line in secret.as_ref().split('\n') {
                let line = line.strip_suffix('\r').unwrap_or(line);
                patterns.push(line.to_string());
            }
        }
        let patterns = normalized(patterns);
        let shown = normalized(patterns.iter().map(|p| displayed(p)).collect());
        Masker { patterns, shown }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Masks text that may span several lines (error messages), line by line.
    pub fn mask_text(&self, text: &str) -> String {
        text.split('\n')
            .map(|line| self.mask(line))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `line` with every secret replaced by [`Masker::MASK`], in its raw text and in its
    /// [`displayed`] text.
    pub fn mask(&self, line: &str) -> String {
        let raw = self.mask_raw(line);
        // Most lines draw exactly as they are: then the raw pass was enough.
        if self.shown.is_empty() || !raw.chars().any(starts_hidden) {
            return raw;
        }
        self.mask_displayed(raw)
    }

    fn mask_raw(&self, line: &str) -> String {
        if !self.patterns.iter().any(|p| line.contains(p.as_str())) {
            return line.to_string();
        }
        // One left-to-right pass, longest pattern first at each position: replacing pattern
        // by pattern instead could leave the tail of a long secret visible after a shorter
        // secret inside it was replaced first.
        let mut out = String::with_capacity(line.len());
        let mut rest = line;
        'scan: while !rest.is_empty() {
            for pattern in &self.patterns {
                if let Some(after) = rest.strip_prefix(pattern.as_str()) {
                    out.push_str(Self::MASK);
                    rest = after;
                    continue 'scan;
                }
            }
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                out.push(c);
            }
            rest = chars.as_str();
        }
        out
    }

    /// Finds the patterns in the displayed text of `line` and masks the raw stretches they
    /// were drawn from.
    fn mask_displayed(&self, line: String) -> String {
        let view = View::of(&line);
        if !self.shown.iter().any(|p| view.text.contains(p.as_str())) {
            return line;
        }
        // Raw byte ranges to replace, left to right and disjoint (the same longest-first scan
        // as the raw pass, over the displayed text).
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        let mut at = 0;
        'scan: while at < view.chars.len() {
            let offset = view.chars[at].shown;
            for pattern in &self.shown {
                if view.text[offset..].starts_with(pattern.as_str()) {
                    let end = offset + pattern.len();
                    // The pattern ends on a char boundary of the view: the first char at or
                    // past `end` is the one after the match.
                    let next = view.chars[at..]
                        .iter()
                        .position(|c| c.shown >= end)
                        .map_or(view.chars.len(), |i| at + i);
                    let last = &view.chars[next - 1];
                    ranges.push((view.chars[at].raw_start, last.raw_end));
                    at = next;
                    continue 'scan;
                }
            }
            at += 1;
        }
        let mut out = String::with_capacity(line.len());
        let mut copied = 0;
        for (start, end) in ranges {
            out.push_str(&line[copied..start]);
            out.push_str(Self::MASK);
            copied = end;
        }
        out.push_str(&line[copied..]);
        out
    }
}

/// The text the UI's log view draws of one line (no `\n` in it).
///
/// What the view does, in its order: the line is cut at each carriage return and only the
/// part after the last one is drawn (a redrawn progress line); in it, these escape sequences
/// are removed (the regular expression `ESCAPES` of `app.js`):
/// - CSI: `ESC [`, parameter bytes `0-9:;<=>?`, intermediate bytes (space to `/`), one final
///   byte `@` to `~` (colours, cursor moves);
/// - OSC: `ESC ]` up to and including `BEL` or `ESC \`, or to the end of the line when
///   unterminated (titles, hyperlinks);
/// - `ESC` and one byte of `@` to `Z`, `\` to `_` (other two-byte escapes), else a lone
///   `ESC`.
///
/// Here every part between carriage returns is kept (not only the last: a terminal or the raw
/// log shows the others), each with its escapes removed, joined without separator, so the
/// UI's text is always a part of this one. Also removed, because a browser draws them as
/// nothing: the other C0 controls but tab, DEL, the C1 controls and the usual invisible
/// format characters (soft hyphen, zero-width spaces and joiners, direction marks, word
/// joiner, byte order mark).
pub fn displayed(line: &str) -> String {
    View::of(line).text
}

/// A char of the displayed text and where it came from.
#[derive(Debug, Clone, Copy)]
struct ShownChar {
    /// Byte offset in [`View::text`].
    shown: usize,
    /// Byte range in the raw line.
    raw_start: usize,
    raw_end: usize,
}

#[derive(Debug)]
struct View {
    text: String,
    chars: Vec<ShownChar>,
}

const ESC: u8 = 0x1b;
const BEL: u8 = 0x07;

/// Whether `c` is, or starts, something [`displayed`] leaves out.
fn starts_hidden(c: char) -> bool {
    (c.is_control() && c != '\t') || invisible(c)
}

/// Format characters browsers draw as nothing.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{34f}'
            | '\u{61c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
    )
}

impl View {
    fn of(line: &str) -> View {
        let bytes = line.as_bytes();
        let mut view = View {
            text: String::with_capacity(line.len()),
            chars: Vec::new(),
        };
        let mut segment_start = 0;
        for segment in line.split('\r') {
            let end = segment_start + segment.len();
            let mut i = segment_start;
            while i < end {
                if bytes[i] == ESC {
                    i = escape_end(bytes, i, end);
                    continue;
                }
                let Some(c) = line[i..end].chars().next() else {
                    break;
                };
                let width = c.len_utf8();
                if !starts_hidden(c) {
                    view.chars.push(ShownChar {
                        shown: view.text.len(),
                        raw_start: i,
                        raw_end: i + width,
                    });
                    view.text.push(c);
                }
                i += width;
            }
            segment_start = end + 1;
        }
        view
    }
}

/// Where the escape sequence starting with the `ESC` at `start` ends (exclusive), within a
/// part of the line ending at `end`; byte-wise, which is safe in UTF-8 since every byte
/// looked for is ASCII.
fn escape_end(bytes: &[u8], start: usize, end: usize) -> usize {
    let at = |i: usize| (i < end).then(|| bytes[i]);
    match at(start + 1) {
        Some(b'[') => {
            let mut i = start + 2;
            while at(i).is_some_and(|b| (0x30..=0x3f).contains(&b)) {
                i += 1;
            }
            while at(i).is_some_and(|b| (0x20..=0x2f).contains(&b)) {
                i += 1;
            }
            match at(i) {
                Some(b) if (0x40..=0x7e).contains(&b) => i + 1,
                // Not a complete CSI: the view removes the ESC alone, `[` stays.
                _ => start + 1,
            }
        }
        Some(b']') => {
            let mut i = start + 2;
            while at(i).is_some_and(|b| b != BEL && b != ESC) {
                i += 1;
            }
            match (at(i), at(i + 1)) {
                (Some(BEL), _) => i + 1,
                (Some(ESC), Some(b'\\')) => i + 2,
                _ => i,
            }
        }
        Some(b) if (0x40..=0x5a).contains(&b) || (0x5c..=0x5f).contains(&b) => start + 2,
        _ => start + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_plain_and_embedded() {
        let m = Masker::new(["hunter2"]);
        assert_eq!(m.mask("hunter2"), "******");
        assert_eq!(
            m.mask("pw=hunter2; again hunter2!"),
            "pw=******; again ******!"
        );
        assert_eq!(m.mask("nothing here"), "nothing here");
    }

    #[test]
    fn longer_secret_containing_shorter_is_fully_masked() {
        let m = Masker::new(["abc", "xxabcxx"]);
        assert_eq!(m.mask("1 xxabcxx 2 abc"), "1 ****** 2 ******");
    }

    #[test]
    fn multi_line_secret_is_masked_line_by_line() {
        let m = Masker::new(["first-line\r\nsecond-line\n\n   \n"]);
        assert_eq!(m.mask("a first-line b"), "a ****** b");
        assert_eq!(m.mask("second-line"), "******");
        // Blank lines of the value are not patterns.
        assert_eq!(m.mask("   spaced   "), "   spaced   ");
    }

    #[test]
    fn empty_values_are_ignored() {
        let m = Masker::new(["", "\n"]);
        assert!(m.is_empty());
        assert_eq!(m.mask("abc"), "abc");
    }

    #[test]
    fn non_ascii_text_survives() {
        let m = Masker::new(["geheim"]);
        assert_eq!(m.mask("ünïcødé geheim ✓"), "ünïcødé ****** ✓");
    }

    #[test]
    fn displayed_text_is_what_the_ui_draws() {
        assert_eq!(displayed("plain text"), "plain text");
        assert_eq!(displayed("\x1b[1;31mred\x1b[0m bold"), "red bold");
        assert_eq!(displayed("\x1b[38;5;208mo\x1b[?25lk"), "ok");
        assert_eq!(
            displayed("a\x1b]0;title\x07b\x1b]8;;http://x\x1b\\c"),
            "abc"
        );
        assert_eq!(displayed("a\x1b]unterminated"), "a");
        assert_eq!(
            displayed("a\x1bMb\x1b7c"),
            "ab7c",
            "ESC 7 is a lone ESC: the 7 stays"
        );
        assert_eq!(
            displayed("a\x1b[12"),
            "a[12",
            "an incomplete CSI loses its ESC only"
        );
        assert_eq!(displayed("50%\r100%\r\r"), "50%100%");
        assert_eq!(displayed("z\u{200b}w\u{ad}j\x08\x00\tk"), "zwj\tk");
        assert_eq!(displayed("ünï\x1b[0mcødé"), "ünïcødé");
    }

    #[test]
    fn secrets_split_by_escapes_are_masked() {
        let m = Masker::new(["secret"]);
        for line in [
            "s\x1b[0me\x1b[1mcret",
            "x s\x1b]0;t\x07ecret y",
            "s\x1b]8;;u\x1b\\ecre\x1bMt",
            "se\u{200b}cr\x08et",
            "noise\rs\x1b[me\x1b[mcret",
        ] {
            let masked = m.mask(line);
            assert!(!masked.contains("secret"), "{masked:?}");
            assert!(!displayed(&masked).contains("secret"), "{masked:?}");
            assert!(displayed(&masked).contains(Masker::MASK), "{masked:?}");
        }
        assert_eq!(m.mask("a s\x1b[0me\x1b[1mcret b"), "a ****** b");
        assert_eq!(
            m.mask("\x1b[31mred\x1b[0m s\x1b[0mecret!"),
            "\x1b[31mred\x1b[0m ******!",
            "escapes outside the secret stay"
        );
    }

    #[test]
    fn coloured_text_without_secrets_is_unchanged() {
        let m = Masker::new(["secret"]);
        for line in [
            "\x1b[32mok\x1b[0m",
            "50%\r100%",
            "a\x1b]0;secre\x07",
            "t\tsecre t",
        ] {
            assert_eq!(m.mask(line), line);
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Escape sequences the view removes whole.
        fn escape() -> impl Strategy<Value = String> {
            prop_oneof![
                ("[0-9;:?<=>]{0,6}", "[ -/]{0,2}", "[@-~]")
                    .prop_map(|(p, i, f)| format!("\x1b[{p}{i}{f}")),
                (
                    "[^\x07\x1b\r\n]{0,12}",
                    prop_oneof![Just("\x07"), Just("\x1b\\")]
                )
                    .prop_map(|(body, end)| format!("\x1b]{body}{end}")),
                "[@-Z\\\\^_]".prop_map(|c| format!("\x1b{c}")),
                Just("\x1b".to_string()),
                Just("\u{200b}".to_string()),
                Just("\x08".to_string()),
            ]
        }

        proptest! {
            #[test]
            fn escapes_anywhere_in_a_secret_are_masked(
                secret in "[a-z0-9]{4,16}",
                cuts in proptest::collection::vec((0usize..16, escape()), 1..6),
                before in "[ -~]{0,20}",
                after in "[ -~]{0,20}",
            ) {
                let mut planted = secret.clone();
                let mut cuts = cuts;
                cuts.sort_by_key(|cut| std::cmp::Reverse(cut.0));
                for (at, escape) in cuts {
                    let at = at.min(secret.len());
                    planted.insert_str(at, &escape);
                }
                let line = format!("{before}{planted}{after}");
                let m = Masker::new([secret.as_str()]);
                let masked = m.mask(&line);
                prop_assert!(!masked.contains(&secret), "{:?} -> {:?}", line, masked);
                prop_assert!(!displayed(&masked).contains(&secret), "{:?} -> {:?}", line, masked);
                if displayed(&line).contains(&secret) {
                    prop_assert!(displayed(&masked).contains(Masker::MASK));
                }
            }

            #[test]
            fn ordinary_text_is_unchanged(
                text in "[ -~\t\u{e0}-\u{ff}]{0,60}",
                coloured in any::<bool>(),
            ) {
                let m = Masker::new(["Zq9-never-in-the-text"]);
                let line = if coloured { format!("\x1b[1;32m{text}\x1b[0m") } else { text };
                prop_assert_eq!(m.mask(&line), line);
            }
        }
    }
}
