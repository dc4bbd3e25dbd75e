//! Integration tests of the engine against the real Docker engine of this machine (and the
//! host backend). Each test builds its plan by hand, runs it with its own work directory and
//! checks, besides its own assertions, that nothing labelled with its build id is left.

mod cache;
mod clone;
mod docker;
mod docker_plugin;
mod host;
mod notify_email_dingtalk;
mod notify_plugins;
mod orphans;
mod prestart;
mod scheduling;
mod smtp;
mod support;
mod untrusted;
