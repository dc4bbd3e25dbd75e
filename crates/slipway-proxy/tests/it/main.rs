//! Integration tests of slipway-proxy: one binary, modules by subject.

mod file;
mod table;

mod clients;
mod corpus;
mod docker;
mod engine_cli;
mod health;
mod labels;
mod observe;
mod relay;
mod rules;
mod serve;
mod takeover;
mod tls;
