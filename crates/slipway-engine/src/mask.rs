//! Secret masking: every log line of a build passes through a [`Masker`] before it becomes an
//! event, so no secret value of the build ever leaves the engine in clear.

/// Replaces every occurrence of the build's secret values in a line with [`Masker::MASK`].
///
/// Masking works on whole lines (output is split into lines first, see
/// [`crate::LineSplitter`]), so a value split across two reads of a stream is still found. For
/// that reason a multi-line value is masked line by line: each of its non-blank lines (with a
/// trailing `\r` removed) is a pattern of its own. Patterns are matched longest first at each
/// position, so a secret that contains another secret is masked as a whole. Empty and
/// whitespace-only patterns are ignored: they would mask every line without protecting anything.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Longest first; no duplicates, no blanks.
    patterns: Vec<String>,
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
                if !line.trim().is_empty() {
                    patterns.push(line.to_string());
                }
            }
        }
        patterns.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        patterns.dedup();
        Masker { patterns }
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

    /// `line` with every secret replaced by [`Masker::MASK`].
    pub fn mask(&self, line: &str) -> String {
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
}
