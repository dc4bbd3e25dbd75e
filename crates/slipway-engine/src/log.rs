//! From output bytes to masked [`Event::Log`] lines.

use std::sync::Arc;
use std::time::SystemTime;

use crate::event::{Event, EventSink};
use crate::mask::Masker;

/// Longest line kept in memory while waiting for its `\n`; a longer run of bytes is emitted
/// as a line of its own so a process that never prints a newline cannot exhaust memory.
const MAX_LINE: usize = 1 << 20;

/// Splits a byte stream that arrives in arbitrary chunks into lines.
///
/// Lines are cut at `\n` (a trailing `\r` is dropped) and decoded as UTF-8 only once
/// complete, so neither a multi-byte character nor a secret that straddles two chunks is
/// broken in two. Call [`LineSplitter::finish`] at the end of the stream for a last line
/// that has no `\n`.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn new() -> LineSplitter {
        LineSplitter::default()
    }

    /// Adds a chunk; returns the lines it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|&b| b == b'\n') {
            lines.push(decode(&self.pending[start..start + pos]));
            start += pos + 1;
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_LINE {
            lines.push(decode(&self.pending));
            self.pending.clear();
        }
        lines
    }

    /// The unterminated last line, if any.
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let line = decode(&self.pending);
        self.pending.clear();
        Some(line)
    }
}

fn decode(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

/// Where the lines of one step go: masked, then sent to the sink as [`Event::Log`].
/// Cheap to clone, so output readers running in their own tasks can each hold one.
#[derive(Clone)]
pub(crate) struct StepLog {
    pipeline: Arc<str>,
    step: Arc<str>,
    sink: Arc<dyn EventSink>,
    masker: Arc<Masker>,
}

impl std::fmt::Debug for StepLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepLog")
            .field("pipeline", &self.pipeline)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl StepLog {
    pub(crate) fn new(
        pipeline: &str,
        step: &str,
        sink: Arc<dyn EventSink>,
        masker: Arc<Masker>,
    ) -> StepLog {
        StepLog {
            pipeline: pipeline.into(),
            step: step.into(),
            sink,
            masker,
        }
    }

    pub(crate) fn pipeline(&self) -> &str {
        &self.pipeline
    }

    pub(crate) fn step(&self) -> &str {
        &self.step
    }

    /// Emits one line (which must not contain `\n`; text that may is split first).
    pub(crate) fn line(&self, line: &str) {
        self.sink.event(Event::Log {
            pipeline: self.pipeline.to_string(),
            step: self.step.to_string(),
            time: SystemTime::now(),
            line: self.masker.mask(line),
        });
    }

    /// Emits text that may span several lines (error messages, git's stderr).
    pub(crate) fn text(&self, text: &str) {
        let mut splitter = LineSplitter::new();
        for line in splitter.push(text.as_bytes()) {
            self.line(&line);
        }
        if let Some(line) = splitter.finish() {
            self.line(&line);
        }
    }

    /// A [`LineSplitter`] bound to this log: push raw output, lines come out as events.
    pub(crate) fn stream(&self) -> LogStream {
        LogStream {
            log: self.clone(),
            splitter: LineSplitter::new(),
        }
    }

    pub(crate) fn emit(&self, event: Event) {
        self.sink.event(event);
    }
}

/// One output stream (stdout or stderr) of a step being turned into log events.
#[derive(Debug)]
pub(crate) struct LogStream {
    log: StepLog,
    splitter: LineSplitter,
}

impl LogStream {
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        for line in self.splitter.push(chunk) {
            self.log.line(&line);
        }
    }

    /// Flushes a last line without `\n`. Must be called when the stream ends.
    pub(crate) fn finish(&mut self) {
        if let Some(line) = self.splitter.finish() {
            self.log.line(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn splits_lines_across_chunks() {
        let mut s = LineSplitter::new();
        assert_eq!(s.push(b"ab"), Vec::<String>::new());
        assert_eq!(
            s.push(b"c\r\nde\nf"),
            vec!["abc".to_string(), "de".to_string()]
        );
        assert_eq!(s.finish(), Some("f".to_string()));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn multibyte_character_split_across_chunks_is_kept() {
        let bytes = "é\n".as_bytes();
        let mut s = LineSplitter::new();
        assert!(s.push(&bytes[..1]).is_empty());
        assert_eq!(s.push(&bytes[1..]), vec!["é".to_string()]);
    }

    #[derive(Default)]
    struct Collect(Mutex<Vec<String>>);

    impl EventSink for Collect {
        fn event(&self, event: Event) {
            if let Event::Log { line, .. } = event {
                self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        }
    }

    #[test]
    fn secret_split_across_chunks_is_masked() {
        let sink = Arc::new(Collect::default());
        let masker = Arc::new(Masker::new(["topsecret", "multi-one\nmulti-two"]));
        let log = StepLog::new("p", "s", sink.clone(), masker);
        let mut stream = log.stream();
        // The secret arrives in three pieces, and the partial last line too.
        stream.push(b"value: top");
        stream.push(b"sec");
        stream.push(b"ret done\nmulti-");
        stream.push(b"one\nmul");
        stream.push(b"ti-two");
        stream.finish();
        let lines = sink.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(lines, vec!["value: ****** done", "******", "******"]);
    }
}
