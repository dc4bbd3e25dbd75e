//! Integration tests of the log crate, one binary, modules by subject: the store, the
//! collector (with a real Docker engine when there is one), routes.

mod collect;
mod store;
mod support;
