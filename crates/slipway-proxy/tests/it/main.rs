//! Integration tests of slipway-proxy: one binary, modules by subject.

mod file;
mod table;

mod labels;
mod rules;
