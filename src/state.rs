//! What the proxy holds while it runs: the settings in force, which a
//! reload swaps whole, and the parts that live as long as the process.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::directline::filter::ActivityFilter;
use crate::directline::state::{RelayState, StreamLifecycle};
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

/// The settings in force and what building the next ones takes: all a
/// reload touches, so the reloader holds this and not the server's state.
pub struct Settings {
    live: ArcSwap<Live>,
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
    /// Exchange-once memory, kept across SSO reloads.
    decisions: Arc<Decisions>,
}

impl Settings {
    /// The settings `config` asks for, in force from now on.
    pub fn new(
        config: Config,
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
        decisions: Arc<Decisions>,
    ) -> Result<Settings, SsoSetupError> {
        let live = Live::new(config, &upstream, &metrics, &decisions)?;
        Ok(Settings {
            live: ArcSwap::from_pointee(live),
            upstream,
            metrics,
            decisions,
        })
    }

    /// The settings in force now; hold it for a whole request.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The settings `config` asks for, over the same upstream, metrics and
    /// decisions; not in force until [`Settings::install`].
    pub fn build(&self, config: Config) -> Result<Live, SsoSetupError> {
        Live::new(config, &self.upstream, &self.metrics, &self.decisions)
    }

    /// Puts `live` in force for every request that starts from now on.
    pub fn install(&self, live: Live) {
        self.live.store(Arc::new(live));
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// What the server and the router read: the settings in force, the relays'
/// state and the process's lifecycle.
pub struct Shared {
    /// Swapped whole by a reload.
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    /// What the Direct Line relays read.
    pub relays: RelayState,
    /// The connection bound, open relays and shutdown, shared with the relays.
    pub lifecycle: StreamLifecycle,
    /// False once draining has begun, so `/readyz` takes the replica out.
    pub ready: AtomicBool,
}

impl Shared {
    /// The settings in force now; hold it for a whole request.
    pub fn live(&self) -> Arc<Live> {
        self.settings.live()
    }
}
