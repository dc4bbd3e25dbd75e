//! Elasticsearch and Loki stand-ins.
