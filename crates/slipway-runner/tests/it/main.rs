//! The runner against an in-test fake server (axum on 127.0.0.1) and the real Docker
//! engine: what arrives at the server, in which order, how often, and what happens when the
//! server fails, cancels or takes the lease away.

mod control;
mod failures;
mod fake;
mod proxy;
mod stages;
mod support;
