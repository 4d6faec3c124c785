//! The `directline-proxy` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;

use directline_proxy::config::Config;
use directline_proxy::reload::Reloader;
use directline_proxy::{demo, emulator, logging};

#[derive(Parser)]
#[command(
    version,
    about = "A transparent Direct Line 3.0 proxy with server-side SSO"
)]
struct Cli {
    /// TOML config file (see config.toml); DLPROXY_* variables override keys.
    #[arg(long, global = true, default_value = "config.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config and exit: 0 when valid, 2 with a message when not.
    Check,
    /// The built-in Direct Line emulator with the proxy in front, offline.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Run the proxy without server-side SSO (`sso.provider = "none"`).
        #[arg(long)]
        no_sso: bool,
    },
    /// Only the built-in Direct Line emulator and its scripted bot.
    Emulator {
        #[arg(long, default_value = "127.0.0.1:3978")]
        listen: SocketAddr,
        /// Behave like the real service's rougher edges: indented JSON with
        /// `\/` escapes, gzip when accepted, `permessage-deflate` accepted
        /// when offered, GUID user ids. For testing what sits in front (the
        /// proxy, which never passes the offer on): a browser connecting
        /// directly would negotiate compression the emulator cannot read.
        #[arg(long)]
        rough: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => run(&cli.config).await,
            Command::Check => check(&cli.config),
            Command::Demo { listen, no_sso } => {
                logging::init(false);
                report(demo::run(listen, !no_sso, shutdown_signal()).await)
            }
            Command::Emulator { listen, rough } => {
                logging::init(false);
                let config = emulator::EmulatorConfig {
                    listen,
                    rough,
                    ..Default::default()
                };
                report(emulator::run_standalone(config).await)
            }
        }
    })
}

fn report<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            println!("{}: valid", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

async fn run(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    logging::init(config.log.json());
    let watch_interval = config.reload.watch_interval();
    let proxy = match directline_proxy::start(config).await {
        Ok(proxy) => proxy,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(interval) = watch_interval {
        proxy.watch(path.to_path_buf(), interval);
    }
    reload_on_sighup(proxy.reloader(), path.to_path_buf());
    let stop = proxy.stop_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: draining");
        stop.cancel();
        shutdown_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    proxy.wait().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// SIGHUP reloads the TLS certificate and `[sso]` from the config file.
fn reload_on_sighup(reloader: Arc<Reloader>, path: PathBuf) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::warn!("SIGHUP cannot be watched; reload by changing the file instead");
            return;
        };
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            let _ = reloader.reload_file(&path);
        }
    });
    #[cfg(not(unix))]
    let _ = (reloader, path);
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
