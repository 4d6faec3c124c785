//! Direct Line 3.0: routing, the REST relay, the WebSocket relay.

pub mod activity;
pub mod credentials;
pub mod inspect;
pub mod relay;
pub mod rest;
pub mod route;
pub mod stream;
pub mod stream_url;
