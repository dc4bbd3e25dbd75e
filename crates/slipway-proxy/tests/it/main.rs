//! Integration tests of slipway-proxy: one binary, modules by subject.

mod file;
mod table;

mod corpus;
mod docker;
mod health;
mod labels;
mod rules;
mod serve;
