//! tracing set-up: `RUST_LOG` picks the level (default `info`), the config
//! picks text or JSON lines.
//!
//! What is logged is chosen at each call site so that tokens, secrets,
//! cookies and `Authorization` values never reach a line: headers and query
//! strings are never logged.

use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
