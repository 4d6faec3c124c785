//! End-to-end tests: the real proxy and the emulator in-process on port 0,
//! real sockets in between.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod credentials;
mod failures;
mod hardening;
mod metrics;
mod reload;
mod shutdown;
mod sso;
mod sso_trust;
mod stream_url;
mod tls;
mod transparency;
mod websocket;
