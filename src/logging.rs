//! tracing set-up: `RUST_LOG` picks the level (default `info`), the config
//! picks text or JSON lines.
//!
//! What is logged is chosen at each call site so that tokens, secrets,
//! cookies and `Authorization` values never reach a line: headers, query
//! strings and message contents are never logged. Libraries that print
//! frame payloads or headers at debug/trace level (hyper, h2, tungstenite,
//! rustls) are capped at `info` whatever `RUST_LOG` says, including a more
//! specific directive such as `tungstenite::protocol=trace`, unless
//! [`UNSAFE_WIRE_LOGS`] is set.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use crate::body::BoxError;
use crate::telemetry::Telemetry;

/// Targets whose debug/trace output can carry message contents or headers.
const CAPPED_TARGETS: [&str; 5] = ["tungstenite", "tokio_tungstenite", "h2", "hyper", "rustls"];

/// Set to `1` to let `RUST_LOG` raise the capped targets (this prints
/// payloads, including users' tokens: for debugging on a test system only).
pub const UNSAFE_WIRE_LOGS: &str = "DLPROXY_UNSAFE_WIRE_LOGS";

/// The filter for `directives` (e.g. `RUST_LOG`'s value), and whether the
/// caps held back something the directives asked for.
pub struct Filter {
    pub filter: EnvFilter,
    pub capped: bool,
}

/// `directives` with the capped targets held at `info` (unless `allow_wire`).
pub fn filter_for(directives: &str, allow_wire: bool) -> Filter {
    let (kept, capped) = if allow_wire {
        (directives.to_string(), false)
    } else {
        without_wire_directives(directives)
    };
    let mut filter = EnvFilter::try_new(&kept).unwrap_or_else(|error| {
        eprintln!("RUST_LOG is invalid ({error}); using \"info\"");
        EnvFilter::new("info")
    });
    if !allow_wire {
        // A directive of the user's for a capped target is at most `info`
        // by now: it stays, and the cap is added only where none is.
        let named = |target: &str| {
            kept.split(',')
                .any(|d| d.trim().split('=').next() == Some(target))
        };
        for target in CAPPED_TARGETS.iter().filter(|target| !named(target)) {
            if let Ok(directive) = format!("{target}=info").parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    Filter { filter, capped }
}

/// `directives` with the capped filter applied (for tests and embedders).
pub fn filter(directives: &str) -> EnvFilter {
    filter_for(directives, false).filter
}

/// Drops the directives that would raise a capped target above `info`;
/// says whether the directives asked for more than the caps allow (a
/// global `debug`/`trace` counts too).
fn without_wire_directives(directives: &str) -> (String, bool) {
    let mut asked_for_wire = false;
    let kept: Vec<&str> = directives
        .split(',')
        .map(str::trim)
        .filter(|directive| !directive.is_empty())
        .filter(|directive| {
            let (target, level) = match directive.split_once('=') {
                Some((target, level)) => (Some(target), Some(level)),
                None if is_level(directive) => (None, Some(*directive)),
                None => (Some(*directive), None),
            };
            // A bare target means every level of it.
            let verbose =
                level.is_none_or(|l| matches!(l.to_ascii_lowercase().as_str(), "debug" | "trace"));
            let capped_target = target.is_some_and(is_capped);
            if verbose && (capped_target || target.is_none()) {
                asked_for_wire = true;
            }
            !(verbose && capped_target)
        })
        .collect();
    (kept.join(","), asked_for_wire)
}

fn is_level(text: &str) -> bool {
    matches!(
        text.to_ascii_lowercase().as_str(),
        "off" | "error" | "warn" | "info" | "debug" | "trace"
    )
}

/// `tungstenite`, `tungstenite::protocol`, `hyper[span]`...
fn is_capped(target: &str) -> bool {
    let target = target.split('[').next().unwrap_or_default();
    CAPPED_TARGETS
        .iter()
        .any(|capped| target == *capped || target.starts_with(&format!("{capped}::")))
}

/// Installs the process's subscriber: log lines to stderr, and with
/// `telemetry` the layer that exports spans. Without it the subscriber is
/// the plain formatter alone, so telemetry that is off costs nothing.
pub fn init(json: bool, telemetry: Option<&Telemetry>) {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let allow_wire = std::env::var(UNSAFE_WIRE_LOGS).is_ok_and(|v| v == "1");
    let Filter { filter, capped } = filter_for(&directives, allow_wire);
    let result = match telemetry {
        Some(telemetry) => init_with_traces(json, filter, telemetry),
        None => init_logs_only(json, filter),
    };
    if let Err(error) = result {
        eprintln!("logging already initialised: {error}");
        return;
    }
    if capped {
        tracing::warn!(
            "RUST_LOG asks for debug/trace output of hyper, h2, tungstenite or rustls: they stay at info, since at those levels they print message payloads and headers (users' tokens); set {UNSAFE_WIRE_LOGS}=1 to lift this on a test system"
        );
    } else if allow_wire {
        tracing::warn!(
            "{UNSAFE_WIRE_LOGS}=1: wire-level logs are allowed and may print users' tokens"
        );
    }
}

fn init_logs_only(json: bool, filter: EnvFilter) -> Result<(), BoxError> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    }
}

/// The same log lines, the filter applying to them only: spans are
/// exported whatever `RUST_LOG` says.
fn init_with_traces(json: bool, filter: EnvFilter, telemetry: &Telemetry) -> Result<(), BoxError> {
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let result = if json {
        let lines = lines.json().flatten_event(true).with_current_span(true);
        tracing_subscriber::registry()
            .with(lines.with_filter(filter))
            .with(telemetry.layer())
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(lines.with_filter(filter))
            .with(telemetry.layer())
            .try_init()
    };
    result.map_err(BoxError::from)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What reaches the log with `directives`, of one event per level and target.
    fn logged(directives: &str, allow_wire: bool) -> String {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter_for(directives, allow_wire).filter)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "tungstenite::protocol", "frame payload T");
            tracing::debug!(target: "h2::codec", "header block D");
            tracing::info!(target: "hyper::proto", "hyper info I");
            tracing::debug!(target: "directline_proxy::relay", "own debug P");
        });
        let text = lines.0.lock().expect("lock").clone();
        String::from_utf8_lossy(&text).into_owned()
    }

    #[test]
    fn a_specific_wire_directive_does_not_lift_the_cap() {
        let text = logged("info,tungstenite::protocol=trace,h2=debug", false);
        assert!(!text.contains("frame payload"), "{text}");
        assert!(!text.contains("header block"), "{text}");
        assert!(text.contains("hyper info"), "info still passes: {text}");
    }

    #[test]
    fn a_global_trace_raises_the_proxy_but_not_the_wire() {
        let text = logged("trace", false);
        assert!(text.contains("own debug"), "{text}");
        assert!(!text.contains("frame payload"), "{text}");
    }

    #[test]
    fn the_unsafe_switch_lifts_the_cap() {
        let text = logged("info,tungstenite::protocol=trace", true);
        assert!(text.contains("frame payload"), "{text}");
    }

    #[test]
    fn lowering_a_capped_target_is_kept() {
        let text = logged("info,hyper=off", false);
        assert!(!text.contains("hyper info"), "{text}");
    }

    #[test]
    fn asking_for_wire_output_is_noticed() {
        assert!(filter_for("info,tungstenite::protocol=trace", false).capped);
        assert!(filter_for("debug", false).capped);
        assert!(filter_for("hyper", false).capped);
        assert!(!filter_for("info,directline_proxy=debug", false).capped);
        assert!(!filter_for("info,hyper=warn", false).capped);
    }
}
