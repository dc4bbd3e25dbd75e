//! The worker over an in-memory source.
