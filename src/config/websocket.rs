//! `[websocket]`: the sizes and the close timeout of relayed streams.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

use super::{ConfigError, value};

/// Direct Line activities are limited to 256K characters; one character can
/// be up to four UTF-8 bytes, so smaller limits could refuse legal traffic.
const MIN_MESSAGE_BYTES: u64 = 1024 * 1024;
const MAX_MESSAGE_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, SmartDefault, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    #[default(2 * 1024 * 1024)]
    #[serde(deserialize_with = "value::within::<MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES, _, _>")]
    pub max_message_bytes: usize,
    /// At most `max_message_bytes`.
    #[default(2 * 1024 * 1024)]
    #[serde(deserialize_with = "value::within::<1024, MAX_MESSAGE_BYTES, _, _>")]
    pub max_frame_bytes: usize,
    /// Size of the read buffer a busy stream borrows from its worker's
    /// pool; an idle stream holds none, so this costs nothing per
    /// conversation.
    #[default(64 * 1024)]
    #[serde(deserialize_with = "value::within::<256, 1_048_576, _, _>")]
    pub read_buffer_bytes: usize,
    /// How long a close handshake may take before the socket is dropped.
    #[default(Duration::from_secs(5))]
    #[serde(
        rename = "close_timeout_ms",
        deserialize_with = "value::millis::<1, 600_000, _>",
        serialize_with = "value::as_millis"
    )]
    pub close_timeout: Duration,
}

impl WebSocketConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_frame_bytes > self.max_message_bytes {
            return Err(ConfigError::invalid(
                "websocket.max_frame_bytes",
                self.max_frame_bytes,
                format!(
                    "expected a number from 1024 to websocket.max_message_bytes ({})",
                    self.max_message_bytes
                ),
            ));
        }
        Ok(())
    }
}
