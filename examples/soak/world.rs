//! What every client task shares: the HTTP client, the addresses, the
//! provider, the counters, and the upstream's epoch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::provider::Provider;
use crate::stats::Stats;
use crate::web::Web;

pub struct World {
    pub web: Web,
    /// `http://127.0.0.1:PORT` of the proxy.
    pub proxy: String,
    /// `http://127.0.0.1:PORT` of the emulator (only to compare cards).
    pub emulator: String,
    pub provider: Provider,
    pub stats: Arc<Stats>,
    /// Bumped twice per upstream kill: before the SIGKILL and once the new
    /// emulator listens. Odd while the upstream is down. A conversation
    /// that saw it change (or started while odd) was interrupted.
    epoch: AtomicU64,
    stop: AtomicBool,
}

impl World {
    pub fn new(proxy: String, emulator: String, provider: Provider, stats: Arc<Stats>) -> World {
        World {
            web: Web::new(),
            proxy,
            emulator,
            provider,
            stats,
            epoch: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
