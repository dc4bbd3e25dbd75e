//! The terminal view of a running build: each log line prefixed by its step, colour on a
//! terminal (never with `NO_COLOR` or when piped), and a summary table at the end.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use slipway_engine::{BuildReport, Event, EventSink, Status};

/// Whether to colour what goes to `stream`: a terminal, and `NO_COLOR` unset or empty.
pub fn use_color(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

const PALETTE: &[&str] = &["36", "35", "33", "32", "34", "96", "95", "93", "92", "94"];

#[derive(Debug)]
pub struct TerminalPrinter {
    color: bool,
    /// Prefix width, so columns line up across steps.
    width: usize,
    /// Whether several pipelines run: then prefixes name the pipeline too.
    multi: bool,
    /// Colour of each step name, in the order the steps were given, so that steps
    /// that run side by side look different.
    colors: std::collections::HashMap<String, &'static str>,
    lock: Mutex<()>,
}

impl TerminalPrinter {
    pub fn new(step_names: &[String], multi_pipeline: bool) -> Self {
        TerminalPrinter {
            color: use_color(&std::io::stdout()),
            width: step_names
                .iter()
                .map(|n| n.chars().count())
                .max()
                .unwrap_or(5)
                .clamp(5, 24),
            multi: multi_pipeline,
            colors: step_names
                .iter()
                .enumerate()
                .map(|(i, name)| (name.clone(), PALETTE[i % PALETTE.len()]))
                .collect(),
            lock: Mutex::new(()),
        }
    }

    fn prefix(&self, pipeline: &str, step: &str) -> String {
        let name = if self.multi {
            format!("{pipeline}/{step}")
        } else {
            step.to_owned()
        };
        let padded = format!("{name:<width$}", width = self.width);
        if self.color {
            let code = self.colors.get(step).copied().unwrap_or(PALETTE[0]);
            format!("\x1b[{code}m{padded}\x1b[0m │ ")
        } else {
            format!("{padded} | ")
        }
    }

    fn line(&self, text: &str) {
        let _guard = self.lock.lock();
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) must not kill the build: ignore write errors.
        let _ = writeln!(out, "{text}");
    }

    fn status_text(&self, status: Status) -> String {
        let (text, code) = match status {
            Status::Success => ("success", "32"),
            Status::Failure => ("failure", "31"),
            Status::Skipped => ("skipped", "90"),
            Status::Killed => ("killed", "33"),
            Status::Error => ("error", "31"),
            Status::Running => ("running", "36"),
            Status::Pending => ("pending", "90"),
        };
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// The table printed when the build ends.
    pub fn summary(&self, report: &BuildReport) {
        let mut rows = Vec::new();
        for p in &report.pipelines {
            for s in &p.steps {
                let name = if self.multi {
                    format!("{}/{}", p.name, s.name)
                } else {
                    s.name.clone()
                };
                rows.push((name, s.status, s.duration, s.error.clone()));
            }
        }
        let width = rows
            .iter()
            .map(|r| r.0.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        self.line("");
        self.line(&format!(
            "{:<width$}  {:<8}  {:>9}",
            "STEP", "STATUS", "DURATION"
        ));
        for (name, status, duration, error) in rows {
            // Pad before colouring so escape codes do not break the columns.
            let padded = format!("{:<8}", status.as_str());
            let shown = self.status_text(status);
            let status_cell = padded.replacen(status.as_str(), &shown, 1);
            let mut row = format!(
                "{name:<width$}  {status_cell}  {:>9}",
                fmt_duration(duration)
            );
            if let Some(error) = error {
                row.push_str(&format!("  {error}"));
            }
            self.line(&row);
        }
        self.line(&format!("build {}", self.status_text(report.status)));
    }
}

pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

impl EventSink for TerminalPrinter {
    fn event(&self, event: Event) {
        match event {
            Event::PipelineStarted { pipeline } => {
                if self.multi {
                    self.line(&format!("── pipeline {pipeline}"));
                }
            }
            Event::StepStarted { pipeline, step } => {
                self.line(&format!("{}started", self.prefix(&pipeline, &step)));
            }
            Event::Log {
                pipeline,
                step,
                line,
                ..
            } => self.line(&format!("{}{line}", self.prefix(&pipeline, &step))),
            Event::StepFinished {
                pipeline,
                step,
                status,
                exit_code,
                duration,
            } => {
                let code = exit_code
                    .map(|c| format!(" (exit {c})"))
                    .unwrap_or_default();
                self.line(&format!(
                    "{}{}{code} in {}",
                    self.prefix(&pipeline, &step),
                    self.status_text(status),
                    fmt_duration(duration)
                ));
            }
            Event::Artifact {
                pipeline,
                step,
                image,
                tags,
                digest,
            } => self.line(&format!(
                "{}image {image}:{} ({digest})",
                self.prefix(&pipeline, &step),
                tags.join(",")
            )),
            Event::PipelineFinished { pipeline, status } => {
                if self.multi {
                    self.line(&format!(
                        "── pipeline {pipeline}: {}",
                        self.status_text(status)
                    ));
                }
            }
        }
    }
}

/// `--json`: one JSON object a line per event, with the time it was seen (unix ms), and
/// the report last, for scripts and tests.
#[derive(Debug, Default)]
pub struct JsonPrinter {
    lock: Mutex<()>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl JsonPrinter {
    fn emit(&self, value: serde_json::Value) {
        let _guard = self.lock.lock();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    }

    pub fn report(&self, report: &BuildReport) {
        let mut value = serde_json::to_value(report).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("type".to_owned(), "report".into());
        }
        self.emit(value);
    }
}

impl EventSink for JsonPrinter {
    fn event(&self, event: Event) {
        let mut value = serde_json::to_value(&event).unwrap_or_default();
        // Log lines carry the time they were read; the others get the time they arrive.
        if let Some(object) = value.as_object_mut() {
            object.entry("time").or_insert_with(|| unix_ms().into());
        }
        self.emit(value);
    }
}
