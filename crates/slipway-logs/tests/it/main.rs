//! Integration tests of slipway-logs. Routes: URI parsing, the wire formats, every sink
//! against a loopback receiver (a real rsyslogd for RELP and TCP syslog, axum stand-ins
//! following Elasticsearch's and Loki's documented answers), and the worker's cursors.

mod route_format;
mod route_http;
mod route_rsyslog;
mod route_support;
mod route_uri;
mod route_worker;
