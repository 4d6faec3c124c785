//! tracing set-up: `RUST_LOG` picks the level (default `info`), the config
//! picks text or JSON lines.
//!
//! What is logged is chosen at each call site so that tokens, secrets,
//! cookies and `Authorization` values never reach a line: headers, query
//! strings and message contents are never logged. Libraries that print
//! frame payloads or headers at debug/trace level are capped at `info`
//! whatever `RUST_LOG` says.

use tracing_subscriber::EnvFilter;

/// Targets whose debug/trace output can carry message contents or headers.
const CAPPED_TARGETS: [&str; 5] = ["tungstenite", "tokio_tungstenite", "h2", "hyper", "rustls"];

/// `directives` (e.g. `RUST_LOG`'s value) with the capped targets added.
pub fn filter(directives: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_new(directives).unwrap_or_else(|error| {
        eprintln!("RUST_LOG is invalid ({error}); using \"info\"");
        EnvFilter::new("info")
    });
    for target in CAPPED_TARGETS {
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

pub fn init(json: bool) {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(&directives))
        .with_writer(std::io::stderr);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
    if let Err(error) = result {
        eprintln!("logging already initialised: {error}");
    }
}
