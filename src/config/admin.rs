//! `[admin]`: the admin listener. `/healthz`, `/readyz` and `/metrics` on
//! their own address, so probes and scrapes answer while the public listener
//! is saturated, and metrics are not public.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::value;

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Unset: the endpoints stay on the main listener.
    #[serde(
        deserialize_with = "value::some_socket_addr",
        skip_serializing_if = "Option::is_none"
    )]
    pub addr: Option<SocketAddr>,
}
