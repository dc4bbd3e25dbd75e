//! Integration tests of slipway-deploy: one binary, modules by subject.

mod docker_env;
mod rollout;
mod target;
