//! The `directline-proxy` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use directline_proxy::config::Config;
use directline_proxy::logging;
use directline_proxy::telemetry::Telemetry;
#[cfg(feature = "emulator")]
use directline_proxy::{demo, emulator};

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
    Check {
        /// Also print the config as the proxy would run it (defaults filled
        /// in, DLPROXY_* overrides applied, secrets redacted) as TOML.
        #[arg(long)]
        print_effective: bool,
    },
    /// The built-in Direct Line emulator with the proxy in front, offline.
    Demo(DemoArgs),
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

#[derive(Args)]
struct DemoArgs {
    /// Where the proxy listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the Web Chat page is served; the proxy allows its origin.
    #[arg(long, default_value = "127.0.0.1:8081")]
    page_listen: SocketAddr,
    /// Run the proxy without server-side SSO (`sso.provider = "none"`).
    #[arg(long)]
    no_sso: bool,
    /// Put the proxy in front of a Copilot Studio agent, as the emulator
    /// plays one: tokens from its token endpoint, no Direct Line secret.
    #[arg(long)]
    copilot: bool,
    /// Serve this webchat.js (e.g. botframework-webchat's dist/webchat.js)
    /// instead of loading Web Chat from its CDN: for offline use and tests.
    #[arg(long, value_name = "FILE")]
    webchat_bundle: Option<PathBuf>,
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
            Command::Check { print_effective } => check(&cli.config, print_effective),
            Command::Demo(args) => demo(args).await,
            Command::Emulator { listen, rough } => run_emulator(listen, rough).await,
        }
    })
}

#[cfg(feature = "emulator")]
async fn demo(args: DemoArgs) -> ExitCode {
    logging::init(false, None);
    let options = demo::DemoOptions {
        listen: args.listen,
        page_listen: args.page_listen,
        sso: !args.no_sso,
        copilot: args.copilot,
        webchat: args
            .webchat_bundle
            .map_or(demo::WebChatSource::Cdn, demo::WebChatSource::Bundle),
    };
    match Signals::install() {
        Ok(signals) => report(demo::run(options, signals.stop()).await),
        Err(error) => report(Err(error)),
    }
}

#[cfg(feature = "emulator")]
async fn run_emulator(listen: SocketAddr, rough: bool) -> ExitCode {
    logging::init(false, None);
    let config = emulator::EmulatorConfig {
        listen,
        rough,
        ..Default::default()
    };
    report(emulator::run_standalone(config).await)
}

/// A build for production may leave the emulator out (`--no-default-features`).
#[cfg(not(feature = "emulator"))]
async fn demo(_args: DemoArgs) -> ExitCode {
    without_emulator("demo")
}

#[cfg(not(feature = "emulator"))]
async fn run_emulator(_listen: SocketAddr, _rough: bool) -> ExitCode {
    without_emulator("emulator")
}

#[cfg(not(feature = "emulator"))]
fn without_emulator(command: &str) -> ExitCode {
    eprintln!(
        "error: `{command}` needs the built-in Direct Line emulator, which this build leaves out (build with the default feature `emulator`)"
    );
    ExitCode::FAILURE
}

#[cfg(feature = "emulator")]
fn report<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path, print_effective: bool) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            if !print_effective {
                println!("{}: valid", path.display());
                return ExitCode::SUCCESS;
            }
            match config.effective_toml() {
                Ok(text) => {
                    println!("{}", text.trim_end());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
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
    let telemetry = match Telemetry::start(&config.telemetry, tokio::runtime::Handle::current()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    logging::init(config.log.json(), telemetry.as_ref());
    // Before the port is bound: from then on an orchestrator may signal the
    // process, and a signal without a handler kills it (SIGHUP's default).
    let mut signals = match Signals::install() {
        Ok(signals) => signals,
        Err(error) => {
            tracing::error!(%error, "cannot watch signals");
            eprintln!("error: cannot watch signals: {error}");
            return ExitCode::FAILURE;
        }
    };
    let watch_interval = config.reload.watch_interval;
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
    let reloader = proxy.reloader();
    let path = path.to_path_buf();
    let stop = proxy.stop_token();
    tokio::spawn(async move {
        let mut draining = false;
        loop {
            match signals.next().await {
                Received::Hangup => {
                    tracing::info!("SIGHUP: reloading");
                    let _ = reloader.reload_file(&path);
                }
                Received::Stop if !draining => {
                    tracing::info!("shutting down: draining");
                    draining = true;
                    stop.cancel();
                }
                Received::Stop => {
                    tracing::warn!("second signal: exiting now");
                    std::process::exit(130);
                }
            }
        }
    });
    proxy.wait().await;
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// What a signal asks for.
enum Received {
    /// SIGHUP: reload the TLS certificate and `[sso]` from the config file.
    Hangup,
    /// SIGTERM or SIGINT (Ctrl-C): drain, or exit at once when draining.
    Stop,
}

/// The signals the proxy acts on, each watched from [`Signals::install`]
/// on: one delivered before [`Signals::next`] is polled is not lost.
struct Signals {
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    #[cfg(not(unix))]
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {})
    }

    #[cfg(unix)]
    async fn next(&mut self) -> Received {
        tokio::select! {
            _ = self.hangup.recv() => Received::Hangup,
            _ = self.terminate.recv() => Received::Stop,
            _ = self.interrupt.recv() => Received::Stop,
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> Received {
        let _ = tokio::signal::ctrl_c().await;
        Received::Stop
    }

    /// Resolves on the first SIGTERM or SIGINT; SIGHUP is ignored.
    #[cfg(feature = "emulator")]
    async fn stop(mut self) {
        while let Received::Hangup = self.next().await {}
    }
}
