//! End-to-end tests: the real proxy and the emulator in-process on port 0,
//! real sockets in between.

/// Read by `common`: these suites run against the compliant emulator
/// (the `rough` test binary runs some of them against the rough one).
const ROUGH_EMULATOR: bool = false;

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod copilot;
mod credentials;
mod demo;
mod failures;
mod hardening;
mod metrics;
mod reload;
mod shutdown;
mod sso;
mod sso_trust;
mod stream_url;
mod telemetry;
mod tls;
mod transparency;
mod websocket;
