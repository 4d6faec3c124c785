//! Hot reload: SIGHUP, or a changed config/certificate file (Kubernetes
//! updates mounted ConfigMaps and Secrets in place), reloads the listener's
//! TLS certificate, `listen.allowed_origins` and the `[sso]` settings. Open
//! connections keep what they started with; new ones get the new settings.
//! A new config that does not validate, or a certificate that does not load,
//! is rejected as a whole and the running settings stay. The config in force
//! lives only in the proxy's [`Live`] snapshot, which a reload replaces.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, ListenConfig, SsoConfig};
use crate::sso::SsoSetupError;
use crate::state::Settings;
use crate::tls::{self, TlsError};

#[derive(Debug, Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listener TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("sso: {0}")]
    Sso(#[from] SsoSetupError),
    #[error("turning TLS on or off needs a restart")]
    TlsSwitch,
}

/// The listener's current TLS acceptor, read for every new connection.
/// The listener's certificate: new connections take the current one, a
/// reload swaps it whole.
pub type SharedAcceptor = Arc<ArcSwap<TlsAcceptor>>;

pub struct Reloader {
    settings: Arc<Settings>,
    tls: Option<SharedAcceptor>,
    /// Held while a config is applied, so two reloads never both build on
    /// the same settings in force.
    applying: Mutex<()>,
    /// Held across reading and applying a file, so a SIGHUP and the watcher
    /// never apply an older read after a newer one.
    file_reload: Mutex<()>,
}

impl Reloader {
    pub fn new(settings: Arc<Settings>, tls: Option<SharedAcceptor>) -> Reloader {
        Reloader {
            settings,
            tls,
            applying: Mutex::new(()),
            file_reload: Mutex::new(()),
        }
    }

    /// Applies `new`, all or nothing.
    pub fn apply(&self, new: Config) -> Result<(), ReloadError> {
        new.validate()?;
        let _one_at_a_time = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.settings.live();
        let current = &current.config;
        if current.listen.tls_enabled() != new.listen.tls_enabled() {
            return Err(ReloadError::TlsSwitch);
        }
        let acceptor = match (&new.listen.tls_cert, &new.listen.tls_key) {
            (Some(cert), Some(key)) => {
                Some(TlsAcceptor::from(Arc::new(tls::server_config(cert, key)?)))
            }
            _ => None,
        };
        let live = self.settings.build(in_force(current, new.clone()))?;
        warn_about_fixed_sections(current, &new);
        if let (Some(slot), Some(acceptor)) = (&self.tls, acceptor) {
            slot.store(Arc::new(acceptor));
        }
        self.settings.install(live);
        for warning in new.warnings() {
            tracing::warn!("{warning}");
        }
        Ok(())
    }

    /// Reads, validates and applies the config file; logs and counts the result.
    pub fn reload_file(&self, path: &Path) -> Result<(), ReloadError> {
        let _one_at_a_time = self.file_reload.lock().unwrap_or_else(|p| p.into_inner());
        let result = Config::load(path)
            .map_err(ReloadError::from)
            .and_then(|config| self.apply(config));
        match &result {
            Ok(()) => {
                self.settings.metrics().config_reload(true);
                tracing::info!(path = %path.display(), "config reloaded: TLS certificate and [sso] applied");
            }
            Err(error) => {
                self.settings.metrics().config_reload(false);
                tracing::error!(path = %path.display(), %error, "config reload rejected; the running config stays");
            }
        }
        result
    }

    /// The files whose change triggers a reload: the config and the
    /// certificate files it names.
    fn watched_files(&self, config_path: &Path) -> Vec<PathBuf> {
        let live = self.settings.live();
        let mut files = vec![config_path.to_path_buf()];
        files.extend(live.config.listen.tls_cert.clone());
        files.extend(live.config.listen.tls_key.clone());
        files
    }

    /// Polls the watched files every `interval` until `stop`, reloading when
    /// their contents change (mtime alone misses Kubernetes' symlink swaps).
    pub fn watch(self: Arc<Self>, path: PathBuf, interval: Duration, stop: CancellationToken) {
        tokio::spawn(async move {
            let mut seen = fingerprint(&self.watched_files(&path));
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
                let files = self.watched_files(&path);
                let now = fingerprint(&files);
                if now != seen {
                    // Remembered before reading, so a change made while the
                    // reload runs is seen on the next round.
                    seen = now;
                    tracing::info!(path = %path.display(), "watched files changed");
                    let _ = self.reload_file(&path);
                    let files_now = self.watched_files(&path);
                    if files_now != files {
                        seen = fingerprint(&files_now);
                    }
                }
            }
        });
    }
}

/// The config a reload puts in force: `new`'s reloadable settings (the
/// certificate, the allowed origins, `[sso]` but for its decision memory)
/// over the running rest, which only a restart changes.
fn in_force(current: &Config, new: Config) -> Config {
    let mut in_force = current.clone();
    in_force.listen.tls_cert = new.listen.tls_cert;
    in_force.listen.tls_key = new.listen.tls_key;
    in_force.listen.allowed_origins = new.listen.allowed_origins;
    in_force.sso = SsoConfig {
        decision_ttl: current.sso.decision_ttl,
        decision_capacity: current.sso.decision_capacity,
        ..new.sso
    };
    in_force
}

/// Sections that only a restart applies: a change is logged, not applied.
fn warn_about_fixed_sections(current: &Config, new: &Config) {
    let listen = |c: &Config| ListenConfig {
        tls_cert: None,
        tls_key: None,
        allowed_origins: Vec::new(),
        ..c.listen.clone()
    };
    let decision_memory = |c: &Config| (c.sso.decision_ttl, c.sso.decision_capacity);
    let changed = [
        ("listen", listen(current) != listen(new)),
        ("upstream", current.upstream != new.upstream),
        ("websocket", current.websocket != new.websocket),
        ("limits", current.limits != new.limits),
        ("log", current.log != new.log),
        ("metrics", current.metrics != new.metrics),
        ("admin", current.admin != new.admin),
        ("directline", current.directline != new.directline),
        (
            "sso.decision_ttl_secs/decision_capacity",
            decision_memory(current) != decision_memory(new),
        ),
    ];
    for (section, _) in changed.iter().filter(|(_, changed)| *changed) {
        tracing::warn!(
            section,
            "this section changed; it takes effect only after a restart"
        );
    }
}

/// A digest of the files' contents (a missing file counts as empty).
fn fingerprint(files: &[PathBuf]) -> Vec<u8> {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for file in files {
        context.update(file.as_os_str().as_encoded_bytes());
        context.update(&std::fs::read(file).unwrap_or_default());
    }
    context.finish().as_ref().to_vec()
}
