//! Integration tests of slipway-notify: every channel against a loopback stand-in that
//! follows the service's documented wire format (failure answers included), and email
//! through a real SMTP server (aiosmtpd).

mod email;
mod http_channels;
mod outbox;
mod rules;
mod support;
mod templates;
mod wechat;
