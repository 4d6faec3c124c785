//! `[reload]`: how often the config and certificate files are checked.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

use super::value;

#[derive(Debug, Clone, SmartDefault, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// How often the files are checked for changes; `None` (0 in the file)
    /// turns watching off (SIGHUP still reloads).
    #[default(Some(Duration::from_secs(5)))]
    #[serde(
        rename = "watch_interval_ms",
        deserialize_with = "value::millis_or_off::<100, 3_600_000, _>",
        serialize_with = "value::as_millis_or_off"
    )]
    pub watch_interval: Option<Duration>,
}
