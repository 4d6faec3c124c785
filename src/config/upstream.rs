//! `[upstream]`: the Direct Line service the proxy forwards to.

use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

use super::value;

#[derive(Debug, Clone, PartialEq, SmartDefault, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Direct Line base URL (scheme and host, optionally a path prefix).
    #[default(Uri::from_static("https://directline.botframework.com"))]
    #[serde(
        deserialize_with = "value::base_url",
        serialize_with = "value::display"
    )]
    pub url: Uri,
    /// Extra PEM trust roots for the upstream, added to the platform's.
    pub ca_file: Option<PathBuf>,
    #[default(Duration::from_secs(5))]
    #[serde(
        rename = "connect_timeout_ms",
        deserialize_with = "value::millis::<1, 600_000, _>",
        serialize_with = "value::as_millis"
    )]
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers arrive.
    #[default(Duration::from_secs(30))]
    #[serde(
        rename = "request_timeout_ms",
        deserialize_with = "value::millis::<1, 3_600_000, _>",
        serialize_with = "value::as_millis"
    )]
    pub request_timeout: Duration,
    #[default(Duration::from_secs(90))]
    #[serde(
        rename = "pool_idle_timeout_ms",
        deserialize_with = "value::millis::<0, 3_600_000, _>",
        serialize_with = "value::as_millis"
    )]
    pub pool_idle_timeout: Duration,
    #[default(64)]
    #[serde(deserialize_with = "value::within::<0, 100_000, _, _>")]
    pub pool_max_idle_per_host: usize,
}
