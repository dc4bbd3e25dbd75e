//! Integration tests of slipway-logs, one binary, modules by subject: the store, the
//! collector (with a real Docker engine when there is one), and the routes: URI parsing,
//! the wire formats, every sink against a loopback receiver (a real rsyslogd for RELP and
//! TCP syslog, axum stand-ins following Elasticsearch's and Loki's documented answers), and
//! the worker's cursors.

mod collect;
mod route_format;
mod route_http;
mod route_rsyslog;
mod route_support;
mod route_uri;
mod route_worker;
mod store;
mod support;
