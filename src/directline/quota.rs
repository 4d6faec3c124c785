//! Quotas: token mints and conversation starts per client, activities per
//! conversation, open streams per client. Rates use governor's GCRA over a
//! state store of our own that is bounded in keys and never cleared whole,
//! so a spray of fresh addresses neither grows memory without end nor
//! resets anyone's limit: past the bound, unknown keys share one overflow
//! bucket (and old, fully refilled keys are dropped first).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, Response};

use crate::body::ProxyBody;
use crate::config::LimitsConfig;
use crate::directline::route::Route;
use crate::error::ProxyError;
use crate::header_hygiene::{ClientInfo, X_FORWARDED_FOR, nearest_forwarded};
use crate::metrics::Metrics;

/// Keys one limiter remembers at most (about 100 bytes each).
pub const MAX_KEYS: usize = 100_000;
/// What unknown keys share once a limiter is full.
const OVERFLOW_KEY: &str = "\u{0}overflow";
/// A full limiter drops refilled keys at most this often (a sweep walks
/// every key, so it must not run on every request of a spray).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Who a client is for quotas: the bound user when the proxy knows it, else
/// the address (an IPv6 address by its /64, which one subscriber holds).
pub fn client_key(
    bound_user: Option<&str>,
    headers: &HeaderMap,
    client: &ClientInfo,
    trust_forwarded: bool,
) -> String {
    if let Some(user) = bound_user {
        return format!("user:{user}");
    }
    let address = trust_forwarded
        .then(|| {
            nearest_forwarded(headers, &X_FORWARDED_FOR)?
                .parse::<IpAddr>()
                .ok()
        })
        .flatten()
        .unwrap_or(client.ip);
    match address {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let s = v6.segments();
                format!("ip6:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// A rate per key: `per_minute` on average, `burst` at once.
pub struct KeyedRate {
    limiter: RateLimiter<String, BoundedStore, DefaultClock>,
    last_sweep: Mutex<Option<std::time::Instant>>,
}

impl KeyedRate {
    /// Zero values are raised to one (config validation refuses them).
    pub fn new(per_minute: u32, burst: u32) -> KeyedRate {
        let one = NonZeroU32::MIN;
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(one))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(one));
        KeyedRate {
            limiter: RateLimiter::new(quota, BoundedStore::default(), DefaultClock::default()),
            last_sweep: Mutex::new(None),
        }
    }

    /// Takes one cell for `key`, or says how long until one is there.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if self.limiter.len() >= MAX_KEYS && self.sweep_due() {
            self.limiter.retain_recent();
        }
        let now = self.limiter.clock().now();
        self.limiter
            .check_key(&key.to_string())
            .map_err(|not_until| not_until.wait_time_from(now))
    }

    fn sweep_due(&self) -> bool {
        let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= SWEEP_INTERVAL);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.limiter.len()
    }
}

/// Theoretical arrival times by key, at most [`MAX_KEYS`] of them.
#[derive(Default)]
struct BoundedStore {
    states: Mutex<HashMap<String, u64>>,
}

impl BoundedStore {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StateStore for BoundedStore {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut states = self.lock();
        // One place stays free for the overflow key itself.
        let key = if states.contains_key(key) || states.len() + 1 < MAX_KEYS {
            key.as_str()
        } else {
            OVERFLOW_KEY
        };
        let (outcome, next) = f(states.get(key).copied().map(Nanos::from))?;
        states.insert(key.to_string(), next.into());
        Ok(outcome)
    }
}

impl ShrinkableKeyedStateStore<String> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = u64::from(drop_below);
        self.lock().retain(|_, arrival| *arrival >= drop_below);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Open WebSocket streams per client, at most `max` each.
pub struct StreamCounts {
    max: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// Held while a stream is open; gives its place back when dropped.
pub struct OpenStream {
    key: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl StreamCounts {
    pub fn new(max: usize) -> StreamCounts {
        StreamCounts {
            max,
            open: Arc::default(),
        }
    }

    /// A place for one more stream of `key`, unless it has `max` open. The
    /// map holds only clients with open streams, so it is bounded by the
    /// connection limit.
    pub fn open(&self, key: String) -> Option<OpenStream> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(OpenStream {
            key,
            open: self.open.clone(),
        })
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The quotas of `[limits]`; a zero setting turns its quota off.
pub struct Quotas {
    conversations: Option<KeyedRate>,
    activities: Option<KeyedRate>,
    streams: Option<StreamCounts>,
}

impl Quotas {
    pub fn new(limits: &LimitsConfig) -> Quotas {
        let rate =
            |per_minute: u32| (per_minute > 0).then(|| KeyedRate::new(per_minute, per_minute));
        Quotas {
            conversations: rate(limits.conversations_per_minute_per_client),
            activities: rate(limits.activities_per_minute_per_conversation),
            streams: (limits.max_streams_per_client > 0)
                .then(|| StreamCounts::new(limits.max_streams_per_client as usize)),
        }
    }

    /// Why a start or a send is over its rate, if it is; `client` is only
    /// asked for when a client quota applies.
    pub fn admit(
        &self,
        route: &Route,
        client: impl FnOnce() -> String,
        metrics: &Metrics,
    ) -> Option<OverQuota> {
        let (quota, name, key, message) = match route {
            Route::StartConversation => (
                self.conversations.as_ref()?,
                "conversations",
                client(),
                "Too many conversations started; retry later.",
            ),
            Route::Send { conversation_id } => (
                self.activities.as_ref()?,
                "activities",
                conversation_id.clone(),
                "Too many activities in this conversation; retry later.",
            ),
            _ => return None,
        };
        let retry_after = quota.check(&key).err()?;
        metrics.quota_rejected(name);
        Some(OverQuota {
            retry_after,
            message,
        })
    }

    /// A place for one more open stream of `client`, unless it has its
    /// share open; `Ok(None)` when there is no stream quota.
    pub fn open_stream(
        &self,
        client: impl FnOnce() -> String,
        metrics: &Metrics,
    ) -> Result<Option<OpenStream>, OverQuota> {
        let Some(streams) = &self.streams else {
            return Ok(None);
        };
        match streams.open(client()) {
            Some(open) => Ok(Some(open)),
            None => {
                metrics.quota_rejected("streams");
                Err(OverQuota {
                    retry_after: Duration::from_secs(1),
                    message: "Too many open streams for this client; close one first.",
                })
            }
        }
    }
}

/// A request over a quota: answered 429.
#[derive(Debug)]
pub struct OverQuota {
    retry_after: Duration,
    message: &'static str,
}

impl From<OverQuota> for ProxyError {
    fn from(over: OverQuota) -> ProxyError {
        ProxyError::OverQuota {
            retry_after: over.retry_after,
            message: over.message,
        }
    }
}

impl OverQuota {
    pub fn into_response(self) -> Response<ProxyBody> {
        ProxyError::from(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn client(ip: &str) -> ClientInfo {
        ClientInfo::new(ip.parse().expect("ip"), "http", None)
    }

    #[test]
    fn the_burst_passes_then_the_client_waits_and_others_do_not() {
        let rate = KeyedRate::new(60, 2);
        assert!(rate.check("a").is_ok());
        assert!(rate.check("a").is_ok());
        let wait = rate.check("a").expect_err("over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(rate.check("b").is_ok(), "other clients are not affected");
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_ipv4_by_address() {
        let headers = HeaderMap::new();
        let key = |ip| client_key(None, &headers, &client(ip), false);
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_eq!(
            client_key(Some("dl_u"), &headers, &client("192.0.2.1"), false),
            "user:dl_u"
        );
    }

    #[test]
    fn behind_a_trusted_ingress_the_address_it_appended_counts() {
        let mut headers = HeaderMap::new();
        headers.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_static("203.0.113.9, 198.51.100.7"),
        );
        let peer = client("10.0.0.1");
        assert_eq!(client_key(None, &headers, &peer, true), "ip:198.51.100.7");
        assert_eq!(client_key(None, &headers, &peer, false), "ip:10.0.0.1");
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("not-an-ip"));
        assert_eq!(client_key(None, &headers, &peer, true), "ip:10.0.0.1");
    }

    #[test]
    fn a_spray_of_keys_neither_grows_memory_nor_resets_a_limit() {
        let rate = KeyedRate::new(1, 1);
        assert!(rate.check("victim-of-the-spray").is_ok());
        for i in 0..MAX_KEYS + 5_000 {
            let _ = rate.check(&format!("spray-{i}"));
        }
        assert!(rate.keys() <= MAX_KEYS, "{} keys", rate.keys());
        assert!(
            rate.check("victim-of-the-spray").is_err(),
            "the limit was not reset"
        );
    }

    #[test]
    fn streams_are_counted_per_client_and_freed() {
        let counts = StreamCounts::new(2);
        let first = counts.open("a".into()).expect("room");
        let _second = counts.open("a".into()).expect("room");
        assert!(counts.open("a".into()).is_none());
        assert!(counts.open("b".into()).is_some());
        drop(first);
        assert!(counts.open("a".into()).is_some());
    }
}
