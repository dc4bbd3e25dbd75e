//! Push and delete events. The registry sends each [`RegistryEvent`] on a
//! `tokio::sync::broadcast` channel the embedding server subscribes to
//! ([`crate::Registry::subscribe`]); [`RegistryEvent::envelope`] renders events in
//! distribution's notification format (`application/vnd.docker.distribution.events.v1+json`)
//! for webhooks, which [`crate::notify::Notifier`] delivers.

use serde::Serialize;

use crate::digest::Digest;

/// Media type of a notification envelope.
pub const ENVELOPE_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventAction {
    Push,
    Delete,
}

/// What was pushed or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventTarget {
    /// Empty for blob and tag deletes.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub size: u64,
    pub digest: Digest,
    pub repository: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// One registry event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEvent {
    pub id: String,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
    pub action: EventAction,
    pub target: EventTarget,
    /// The principal's name; empty for anonymous.
    pub actor: String,
}

impl RegistryEvent {
    /// Distribution's notification envelope for `events`; `base_url` is the registry's
    /// address (`http://host:port`), used for the target URL.
    pub fn envelope(events: &[RegistryEvent], base_url: &str) -> serde_json::Value {
        let events: Vec<serde_json::Value> = events
            .iter()
            .map(|e| {
                let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.timestamp);
                let url = format!(
                    "{base_url}/v2/{}/manifests/{}",
                    e.target.repository, e.target.digest
                );
                serde_json::json!({
                    "id": e.id,
                    "timestamp": humantime::format_rfc3339_seconds(time).to_string(),
                    "action": e.action,
                    "target": {
                        "mediaType": e.target.media_type,
                        "size": e.target.size,
                        "length": e.target.size,
                        "digest": e.target.digest,
                        "repository": e.target.repository,
                        "url": url,
                        "tag": e.target.tag,
                    },
                    "actor": { "name": e.actor },
                    "source": { "addr": base_url.trim_start_matches("http://").trim_start_matches("https://") },
                })
            })
            .collect();
        serde_json::json!({ "events": events })
    }
}
