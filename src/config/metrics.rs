//! `[metrics]`: whether Prometheus metrics are served.

use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

#[derive(Debug, Clone, PartialEq, SmartDefault, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` on the listener.
    #[default(true)]
    pub enabled: bool,
}
