//! What the proxy holds while it runs: the settings in force, which a
//! reload swaps whole, and the parts that live as long as the process.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::directline::filter::ActivityFilter;
use crate::directline::state::RelayState;
use crate::metrics::Metrics;
use crate::origin::OriginPolicy;
use crate::sso::decisions::Decisions;
use crate::sso::{Sso, SsoSetupError};
use crate::upstream::Upstream;

/// The settings in force, swapped whole by a reload: a request reads one
/// snapshot, so it never pairs the origin list of one config with the SSO
/// provider of another, and nothing keeps an older copy of the config.
pub struct Live {
    /// The config in force: after a reload, the new file's reloadable
    /// settings over the sections only a restart changes.
    pub config: Config,
    /// `listen.allowed_origins`: a provider that reads the user's request
    /// must never run without it.
    pub origins: OriginPolicy,
    /// Server-side sign-in; `None` when `sso.provider = "none"`. Requests
    /// and streams keep the one they started with.
    pub sso: Option<Arc<dyn ActivityFilter>>,
}

impl Live {
    /// The settings `config` asks for; `decisions` outlives them.
    pub fn new(
        config: Config,
        upstream: &Arc<Upstream>,
        metrics: &Arc<Metrics>,
        decisions: &Arc<Decisions>,
    ) -> Result<Live, SsoSetupError> {
        let sso = Sso::new(
            &config.sso,
            upstream.clone(),
            metrics.clone(),
            decisions.clone(),
        )?;
        Ok(Live {
            origins: OriginPolicy::new(&config.listen.allowed_origins),
            sso: sso.map(|sso| Arc::new(sso) as Arc<dyn ActivityFilter>),
            config,
        })
    }
}

pub struct Shared {
    pub upstream: Arc<Upstream>,
    /// Swapped whole by a reload.
    pub live: ArcSwap<Live>,
    /// Exchange-once memory, kept across SSO reloads.
    pub decisions: Arc<Decisions>,
    pub metrics: Arc<Metrics>,
    /// What the Direct Line relays read.
    pub relays: RelayState,
    pub tls: bool,
    /// Open WebSocket relays, so shutdown can wait for their close.
    pub streams: TaskTracker,
    /// Cancelled at shutdown: relays close both sides with 1001.
    pub shutdown: CancellationToken,
    /// Client connections and open relays share this bound.
    pub connection_slots: Arc<Semaphore>,
    /// False once draining has begun, so `/readyz` takes the replica out.
    pub ready: AtomicBool,
}

impl Shared {
    /// The settings in force now; hold it for a whole request.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }
}
