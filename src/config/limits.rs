//! `[limits]`: body sizes and per-client quotas.

use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

use super::value;

#[derive(Debug, Clone, PartialEq, SmartDefault, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body forwarded upstream (uploads included).
    #[default(32 * 1024 * 1024)]
    #[serde(deserialize_with = "value::within::<1024, 1_073_741_824, _, _>")]
    pub max_request_body_bytes: u64,
    /// Largest response body the proxy reads whole to rewrite it.
    #[default(4 * 1024 * 1024)]
    #[serde(deserialize_with = "value::within::<65_536, 268_435_456, _, _>")]
    pub max_rewrite_body_bytes: usize,
    /// Conversation starts per client per minute (also the burst); 0: no quota.
    #[default(300)]
    #[serde(deserialize_with = "value::within::<0, 1_000_000, _, _>")]
    pub conversations_per_minute_per_client: u32,
    /// Activities posted (and uploads) per conversation per minute (also the
    /// burst); 0: no quota.
    #[default(300)]
    #[serde(deserialize_with = "value::within::<0, 1_000_000, _, _>")]
    pub activities_per_minute_per_conversation: u32,
    /// WebSocket streams one client may hold open at once; 0: no quota.
    #[default(500)]
    #[serde(deserialize_with = "value::within::<0, 1_000_000, _, _>")]
    pub max_streams_per_client: u32,
}
