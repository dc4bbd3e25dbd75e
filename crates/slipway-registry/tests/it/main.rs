//! Integration tests of the registry: the HTTP API by hand, and the real `docker` and
//! `skopeo` clients against a registry served in-process on 127.0.0.1:0. Every test has its
//! own server, data directory, Docker config and image names, and removes the images it
//! tagged. With the `s3` feature, `s3` runs the registry on an in-process S3 server.

mod api;
mod auth;
mod crash;
mod docker;
mod gc;
mod notify;
mod props;
#[cfg(feature = "s3")]
mod s3;
mod skopeo;
mod support;
