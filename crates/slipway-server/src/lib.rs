//! The Slipway server. It will own the HTTP server (REST API, webhooks endpoint, SSE), the
//! store (SQLite / PostgreSQL), the build queue and scheduler, secrets, users and tokens,
//! the event bus and the web UI, and it will mount the registry and wire deploy, proxy,
//! notify and logs (see `DESIGN.md`).
//!
//! For now it holds one module, [`webhook`]: git-host webhook deliveries (GitHub,
//! Gitea/Forgejo, GitLab and a generic JSON trigger) verified and parsed into a
//! [`webhook::Hook`] — the facts a build will be created from — or an
//! [`webhook::Parsed::Ignored`] with the reason. That module is pure (no IO, no async):
//! the HTTP handler, the delivery log and the build it creates come later and call it.
//!
//! Invariants of [`webhook`]: nothing panics on any body or header value (a property test
//! feeds it arbitrary bytes); a signature is only accepted when it matches in constant
//! time; every error maps to one HTTP status ([`webhook::WebhookError::status`]: 401 for
//! signatures, 400 for bodies) and names the header, JSON position or field at fault; a deleted ref
//! never becomes a build; and a tag is built from exactly one of the deliveries a host
//! sends for it.

pub mod webhook;
