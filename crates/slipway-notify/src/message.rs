//! The message model, independent of the service, and its plain and Markdown forms.

use serde::{Deserialize, Serialize};

/// How the thing reported went; gives the colour where a service has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Success,
    Failure,
    Error,
    Killed,
    Running,
}

impl Status {
    /// Drone's names (`DRONE_BUILD_STATUS`); anything unknown is `running`.
    pub fn from_drone(status: &str) -> Status {
        match status {
            "success" | "fixed" | "succeeded" => Status::Success,
            "failure" | "broken" | "failed" => Status::Failure,
            "error" => Status::Error,
            "killed" | "rolled_back" => Status::Killed,
            _ => Status::Running,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Error => "error",
            Status::Killed => "killed",
            Status::Running => "running",
        }
    }

    /// `#RRGGBB`: green, red, orange, grey, blue.
    pub fn color(self) -> &'static str {
        match self {
            Status::Success => "#2EB67D",
            Status::Failure => "#E01E5A",
            Status::Error => "#E8912D",
            Status::Killed => "#808080",
            Status::Running => "#1D9BD1",
        }
    }

    /// The colour as a number (Discord embeds).
    pub fn color_number(self) -> u32 {
        u32::from_str_radix(self.color().trim_start_matches('#'), 16).unwrap_or(0)
    }
}

/// A name and a value shown beside the text (commit, author, duration, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    pub value: String,
}

/// Where the reader goes next: the build, or the deployed URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub url: String,
    /// The button's text (WeChat Work's `btntxt`, a Slack or Teams button).
    pub label: String,
}

/// What is said. `text` is the body (from a template, or the default), plain text with
/// Markdown where a service renders it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub title: String,
    pub status: Option<Status>,
    pub text: String,
    pub fields: Vec<Field>,
    pub link: Option<Link>,
    /// The event's data (the template context), for the generic webhook's JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Message {
    pub fn new(title: impl Into<String>, text: impl Into<String>) -> Message {
        Message {
            title: title.into(),
            text: text.into(),
            ..Message::default()
        }
    }

    pub fn status(mut self, status: Status) -> Message {
        self.status = Some(status);
        self
    }

    pub fn field(mut self, name: impl Into<String>, value: impl Into<String>) -> Message {
        self.fields.push(Field {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    pub fn link(mut self, url: impl Into<String>, label: impl Into<String>) -> Message {
        self.link = Some(Link {
            url: url.into(),
            label: label.into(),
        });
        self
    }

    /// The text and the fields, one `name: value` a line.
    pub fn plain_body(&self) -> String {
        let mut body = self.text.trim_end().to_string();
        for field in &self.fields {
            if !body.is_empty() {
                body.push('\n');
            }
            body.push_str(&format!("{}: {}", field.name, field.value));
        }
        body
    }

    /// Title, text, fields and link as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        if !self.title.is_empty() {
            out.push_str(&format!("**{}**\n", self.title));
        }
        if !self.text.trim().is_empty() {
            out.push_str(self.text.trim_end());
            out.push('\n');
        }
        for field in &self.fields {
            out.push_str(&format!("> {}: {}\n", field.name, field.value));
        }
        if let Some(link) = &self.link {
            out.push_str(&format!("[{}]({})\n", link.label, link.url));
        }
        out.trim_end().to_string()
    }

    /// Title, body and link as plain text.
    pub fn plain(&self) -> String {
        let mut out = self.title.clone();
        let body = self.plain_body();
        if !body.is_empty() {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&body);
        }
        if let Some(link) = &self.link {
            out.push('\n');
            out.push_str(&link.url);
        }
        out
    }
}
