//! Soak test of a release build: steady mixed Direct Line load through the
//! proxy for N minutes, with upstream kills and SSO provider outages,
//! checking every activity and watching the proxy's memory, file
//! descriptors and tokio tasks. Run it with `scripts/soak.sh [MINUTES]`.
//!
//! - The emulator (`directline-proxy emulator`) and the proxy
//!   (`directline-proxy run`, SSO with an `http` provider that this program
//!   serves, `[admin]` listener for `/metrics`) run as child processes.
//! - `--conversations` clients each run one conversation after another:
//!   start, stream (or, one in five, poll), 3 to 7 numbered messages,
//!   in two of five a `signin exchange`, in one of five streams a close and
//!   reconnect with the watermark, then close.
//! - Every few minutes, alternately: the emulator is killed with SIGKILL
//!   and restarted on its port, or the provider answers 503, refuses
//!   connections, or hangs past `sso.timeout_ms`, for a while.
//! - For every conversation no kill interrupted, everything posted must come
//!   back exactly once and in order (the echo and the bot's reply), no
//!   invoke may reach the client, and a sign-in must end without a card
//!   while the provider is up, with the card byte-identical to the bot's
//!   while it is down.
//! - RSS and fds (from /proc) and `directline_proxy_tasks_alive` are
//!   sampled every 10 s. After the load stops and the proxy is quiet, it
//!   fails on growth: RSS at the end above the first sample after warm-up
//!   by more than [`RSS_TOLERANCE`] (or [`RSS_SLACK_MIB`] if larger), or
//!   fds or tasks above the pre-load baseline by more than [`FD_SLACK`] /
//!   [`TASK_SLACK`].

mod conversation;
mod procs;
mod provider;
mod rng;
mod sampler;
mod stats;
mod web;
mod world;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

use procs::{Emulator, Proxy, ProxySetup};
use provider::{Mode, Provider};
use sampler::Sample;
use stats::{Snapshot, Stats};
use world::World;

/// RSS at the end may exceed the first sample after warm-up by this share...
const RSS_TOLERANCE: f64 = 0.20;
/// ...or by this many MiB, whichever is larger.
const RSS_SLACK_MIB: f64 = 4.0;
/// Open fds at quiescence may exceed the baseline by this many.
const FD_SLACK: u64 = 2;
/// Tasks alive at quiescence may exceed the baseline by this many.
const TASK_SLACK: u64 = 2;
/// How long the proxy gets to become quiet after the load stops: idle
/// upstream and provider connections are closed after the pool's idle
/// timeout (90 s), checked on a timer of the same period, so up to 180 s.
const QUIESCENCE: Duration = Duration::from_secs(240);

#[derive(Parser)]
#[command(about = "Soak test of directline-proxy (see scripts/soak.sh)")]
struct Args {
    /// Minutes of load (fractions allowed).
    #[arg(long, default_value_t = 30.0, env = "SOAK_MINUTES")]
    minutes: f64,
    /// The release `directline-proxy` binary.
    #[arg(long, env = "SOAK_BIN")]
    bin: PathBuf,
    /// Where logs and the proxy's config go.
    #[arg(long, default_value = "target/soak", env = "SOAK_OUT")]
    out: PathBuf,
    /// Concurrent conversations.
    #[arg(long, default_value_t = 30, env = "SOAK_CONVERSATIONS")]
    conversations: usize,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10, env = "SOAK_SAMPLE_SECS")]
    sample_secs: u64,
    /// Seed of the load's randomness (default: from the clock).
    #[arg(long, env = "SOAK_SEED")]
    seed: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Outage(Mode),
}

/// The faults and when (after the load started) they begin.
struct Schedule {
    warmup: Duration,
    outage: Duration,
    faults: Vec<(Duration, Fault)>,
}

impl Schedule {
    fn new(total: Duration) -> Schedule {
        let warmup = (total / 10).clamp(Duration::from_secs(30), Duration::from_secs(120));
        let step = (total / 20).clamp(Duration::from_secs(15), Duration::from_secs(90));
        let outage = (step / 3).clamp(Duration::from_secs(5), Duration::from_secs(30));
        let kinds = [Mode::Fail503, Mode::Refuse, Mode::Hang];
        let mut faults = Vec::new();
        let mut at = warmup + step;
        let mut k = 0;
        while at + outage + Duration::from_secs(15) <= total {
            let fault = if k % 2 == 0 {
                Fault::Kill
            } else {
                Fault::Outage(kinds[(k / 2) % kinds.len()])
            };
            faults.push((at, fault));
            at += step;
            k += 1;
        }
        Schedule {
            warmup,
            outage,
            faults,
        }
    }
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// A fatal problem seen by a background task (the proxy died, the emulator
/// does not restart...): the soak stops and fails.
#[derive(Default)]
struct Fatal(Mutex<Option<String>>);

impl Fatal {
    fn set(&self, what: String) {
        eprintln!("FATAL: {what}");
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(what);
    }
    fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn header() {
    println!(
        "{:>6} {:>8} {:>5} {:>6} {:>5} {:>5} {:>6} {:>6} {:>9} {:>7} {:>6} {:>6}  event",
        "time",
        "rss MiB",
        "fds",
        "tasks",
        "ws",
        "live",
        "convs",
        "intr",
        "posted",
        "signin",
        "cards",
        "fails"
    );
}

fn row(sample: &Sample, s: &Snapshot, event: &str) {
    println!(
        "{:>6} {:>8.1} {:>5} {:>6} {:>5} {:>5} {:>6} {:>6} {:>9} {:>7} {:>6} {:>6}  {event}",
        clock(sample.at),
        sample.rss_mib(),
        sample.fds,
        sample.tasks,
        sample.websockets,
        s.conversations_live,
        s.conversations_started,
        s.conversations_interrupted,
        s.messages_posted,
        s.signins,
        s.cards_shown,
        s.activity_failures(),
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match soak(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("soak: FAILED to run: {error}");
            ExitCode::from(2)
        }
    }
}

async fn soak(args: Args) -> Result<bool, String> {
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("create {}: {e}", args.out.display()))?;
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let schedule = Schedule::new(total);
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let proxy_log = args.out.join("proxy.log");
    let emulator_log = args.out.join("emulator.log");
    for log in [&proxy_log, &emulator_log] {
        let _ = std::fs::remove_file(log);
    }

    let stats = Arc::new(Stats::default());
    let provider = Provider::start(stats.clone()).await?;
    let mut emulator = Emulator::start(&args.bin, &emulator_log).await?;
    let setup = ProxySetup {
        upstream: &emulator.base_url(),
        provider_url: &provider.url(),
        config_path: &args.out.join("proxy.toml"),
    };
    let mut proxy = Proxy::start(&args.bin, &setup, &proxy_log).await?;
    let (pid, admin) = (proxy.pid, proxy.admin);
    println!(
        "soak: {:.1} min of load, {} conversations at once, seed {seed}",
        args.minutes, args.conversations
    );
    println!(
        "soak: proxy {} (pid {pid}, admin {admin}), emulator {}, provider {}; logs in {}",
        proxy.base_url(),
        emulator.base_url(),
        provider.url(),
        args.out.display()
    );
    println!(
        "soak: warm-up {}, then {} faults ({} kills, {} provider outages of {} s)",
        clock(schedule.warmup),
        schedule.faults.len(),
        schedule
            .faults
            .iter()
            .filter(|(_, f)| matches!(f, Fault::Kill))
            .count(),
        schedule
            .faults
            .iter()
            .filter(|(_, f)| matches!(f, Fault::Outage(_)))
            .count(),
        schedule.outage.as_secs()
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = sampler::take(pid, admin, Duration::ZERO).await?;
    header();
    row(&baseline, &stats.snapshot(), "baseline, before any load");

    let world = Arc::new(World::new(
        proxy.base_url(),
        emulator.base_url(),
        provider.clone(),
        stats.clone(),
    ));
    let fatal = Arc::new(Fatal::default());
    let started = Instant::now();
    let samples = Arc::new(Mutex::new(vec![baseline.clone()]));
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let note = {
        let events = events.clone();
        move |what: String| {
            let stamped = format!("{} {what}", clock(started.elapsed()));
            eprintln!("event: {stamped}");
            events.lock().unwrap_or_else(|e| e.into_inner()).push(what);
        }
    };

    // The clients.
    let mut clients = tokio::task::JoinSet::new();
    for slot in 0..args.conversations {
        let world = world.clone();
        let mut rng = rng::Rng::new(seed ^ (slot as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        clients.spawn(async move {
            tokio::time::sleep(Duration::from_millis(rng.range(0, 5000))).await;
            let mut n = 0;
            while !world.stopping() {
                let plan = conversation::Plan::random(&mut rng, slot, n);
                conversation::run(&world, plan).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(rng.range(100, 1000))).await;
            }
        });
    }

    // The faults.
    let faults = {
        let world = world.clone();
        let fatal = fatal.clone();
        let note = note.clone();
        let provider = provider.clone();
        let stats = stats.clone();
        let plan = schedule.faults.clone();
        let outage = schedule.outage;
        tokio::spawn(async move {
            for (at, fault) in plan {
                tokio::time::sleep_until((started + at).into()).await;
                if world.stopping() {
                    break;
                }
                let c = &stats.counters;
                match fault {
                    Fault::Kill => {
                        world.bump_epoch();
                        let restarted = emulator.kill_and_restart().await;
                        world.bump_epoch();
                        match restarted {
                            Ok(down) => {
                                stats.inc(&c.upstream_kills);
                                note(format!(
                                    "upstream SIGKILLed, back after {} ms",
                                    down.as_millis()
                                ));
                            }
                            Err(e) => {
                                fatal.set(e);
                                break;
                            }
                        }
                    }
                    Fault::Outage(mode) => {
                        let counter = match mode {
                            Mode::Fail503 => &c.outages_503,
                            Mode::Refuse => &c.outages_refused,
                            _ => &c.outages_hang,
                        };
                        stats.inc(counter);
                        note(format!(
                            "provider outage ({}) for {} s",
                            mode.name(),
                            outage.as_secs()
                        ));
                        if let Err(e) = provider.set_mode(mode).await {
                            fatal.set(e);
                            break;
                        }
                        tokio::time::sleep(outage).await;
                        if let Err(e) = provider.set_mode(Mode::Up).await {
                            fatal.set(e);
                            break;
                        }
                        note("provider up".into());
                    }
                }
            }
            emulator
        })
    };

    // The samples.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler_task = {
        let samples = samples.clone();
        let events = events.clone();
        let stats = stats.clone();
        let fatal = fatal.clone();
        let sampling = sampling.clone();
        let every = Duration::from_secs(args.sample_secs.max(1));
        tokio::spawn(async move {
            let mut next = started + every;
            while sampling.load(Ordering::SeqCst) {
                tokio::time::sleep_until(next.into()).await;
                next += every;
                if !sampling.load(Ordering::SeqCst) {
                    break;
                }
                match sampler::take(pid, admin, started.elapsed()).await {
                    Ok(sample) => {
                        let happened: Vec<String> =
                            std::mem::take(&mut *events.lock().unwrap_or_else(|e| e.into_inner()));
                        row(&sample, &stats.snapshot(), &happened.join("; "));
                        samples
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(sample);
                    }
                    Err(e) => fatal.set(format!("sampling the proxy: {e}")),
                }
            }
        })
    };

    // Run for the time asked, unless something fatal happens.
    while started.elapsed() < total && fatal.get().is_none() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Err(e) = proxy.alive() {
            fatal.set(e);
        }
    }
    let load_time = started.elapsed();
    world.stop();
    println!(
        "soak: load stops at {}; waiting for the clients to finish",
        clock(load_time)
    );
    let finish = async { while clients.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(60), finish)
        .await
        .is_err()
    {
        fatal.set("clients did not finish within 60 s of the stop".into());
        clients.abort_all();
    }
    sampling.store(false, Ordering::SeqCst);
    sampler_task.abort();
    let mut emulator = match tokio::time::timeout(Duration::from_secs(60), faults).await {
        Ok(Ok(emulator)) => Some(emulator),
        _ => {
            fatal.set("the fault task did not finish".into());
            None
        }
    };
    if provider.mode() != Mode::Up {
        provider.set_mode(Mode::Up).await?;
    }
    // Dropping the clients' HTTP pool closes their keep-alive connections.
    drop(world);

    // Quiescence: no requests or streams, fds and tasks back near the baseline.
    let quiet_since = Instant::now();
    let end = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let sample = sampler::take(pid, admin, started.elapsed()).await?;
        let quiet = sample.requests == 0
            && sample.websockets == 0
            && sample.fds <= baseline.fds + FD_SLACK
            && sample.tasks <= baseline.tasks + TASK_SLACK;
        if quiet || quiet_since.elapsed() > QUIESCENCE {
            let what = if quiet { "quiet" } else { "not quiet in time" };
            row(&sample, &stats.snapshot(), &format!("end ({what})"));
            break sample;
        }
    };
    let quiet_after = quiet_since.elapsed();
    samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(end.clone());
    let final_metrics = sampler::metrics(admin).await.unwrap_or_default();

    let proxy_stop = proxy.stop().await;
    if let Some(emulator) = emulator.as_mut() {
        emulator.stop().await;
    }

    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let report = Report {
        load_time,
        quiet_after,
        schedule: &schedule,
        baseline: &baseline,
        end: &end,
        samples: &samples,
        stats: stats.snapshot(),
        failures: stats.failures(),
        fatal: fatal.get(),
        proxy_stop,
        proxy_log: &proxy_log,
        metrics: &final_metrics,
        driver_cpu_secs: sampler::cpu_secs("self"),
    };
    Ok(report.print())
}

struct Report<'a> {
    load_time: Duration,
    quiet_after: Duration,
    schedule: &'a Schedule,
    baseline: &'a Sample,
    end: &'a Sample,
    samples: &'a [Sample],
    stats: Snapshot,
    failures: Vec<String>,
    fatal: Option<String>,
    proxy_stop: Result<(), String>,
    proxy_log: &'a Path,
    metrics: &'a str,
    driver_cpu_secs: f64,
}

impl Report<'_> {
    /// Prints the summary and returns the verdict.
    fn print(&self) -> bool {
        let s = &self.stats;
        let warm = self
            .samples
            .iter()
            .find(|x| x.at >= self.schedule.warmup)
            .unwrap_or(self.end);
        let under_load: Vec<Sample> = self
            .samples
            .iter()
            .filter(|x| x.at >= self.schedule.warmup && x.at <= self.load_time)
            .cloned()
            .collect();
        let rss_min = self
            .samples
            .iter()
            .map(Sample::rss_mib)
            .fold(f64::MAX, f64::min);
        let rss_max = self.samples.iter().map(Sample::rss_mib).fold(0.0, f64::max);
        let rss_limit = warm.rss_mib() + (warm.rss_mib() * RSS_TOLERANCE).max(RSS_SLACK_MIB);
        let log = std::fs::read_to_string(self.proxy_log).unwrap_or_default();
        let panics = log.lines().filter(|l| l.contains("panicked")).count();
        let errors = log.lines().filter(|l| l.contains("ERROR")).count();
        let warnings = log.lines().filter(|l| l.contains("WARN")).count();

        let mut problems: Vec<String> = Vec::new();
        if let Some(fatal) = &self.fatal {
            problems.push(format!("fatal: {fatal}"));
        }
        if s.activity_failures() > 0 {
            problems.push(format!(
                "{} activity or request failures (see FAILURE lines)",
                s.activity_failures()
            ));
        }
        if s.conversations_verified == 0 {
            problems.push("no conversation was verified".into());
        }
        if s.signins == 0 {
            problems.push("no sign-in ended without a card".into());
        }
        let outages = s.outages_503 + s.outages_refused + s.outages_hang;
        if outages > 0 && s.cards_shown == 0 {
            problems.push("provider outages happened but no card was shown".into());
        }
        if self.end.rss_mib() > rss_limit {
            problems.push(format!(
                "RSS grew: {:.1} MiB at the end, {:.1} MiB after warm-up (limit {:.1})",
                self.end.rss_mib(),
                warm.rss_mib(),
                rss_limit
            ));
        }
        if self.end.fds > self.baseline.fds + FD_SLACK {
            problems.push(format!(
                "open fds grew: {} at quiescence, {} before the load (slack {FD_SLACK})",
                self.end.fds, self.baseline.fds
            ));
        }
        if self.end.tasks > self.baseline.tasks + TASK_SLACK {
            problems.push(format!(
                "tasks grew: {} at quiescence, {} before the load (slack {TASK_SLACK})",
                self.end.tasks, self.baseline.tasks
            ));
        }
        if self.end.websockets > 0 || self.end.requests > 0 {
            problems.push(format!(
                "connections still active at the end: {} streams, {} requests",
                self.end.websockets, self.end.requests
            ));
        }
        if let Err(e) = &self.proxy_stop {
            problems.push(e.clone());
        }
        if panics > 0 {
            problems.push(format!("{panics} panics in the proxy's log"));
        }

        println!();
        println!("## Soak summary");
        println!();
        println!("| | |");
        println!("|---|---|");
        let line = |k: &str, v: String| println!("| {k} | {v} |");
        line(
            "load",
            format!(
                "{} min {:02} s, then quiet after {} s",
                self.load_time.as_secs() / 60,
                self.load_time.as_secs() % 60,
                self.quiet_after.as_secs()
            ),
        );
        line(
            "conversations",
            format!(
                "{} started ({} stream, {} polling, {} stream reconnects); {} verified, {} interrupted by upstream kills",
                s.conversations_started,
                s.stream_conversations,
                s.polling_conversations,
                s.reconnects,
                s.conversations_verified,
                s.conversations_interrupted
            ),
        );
        line(
            "messages posted (200)",
            format!(
                "{} ({} in verified conversations)",
                s.messages_posted, s.messages_verified
            ),
        );
        line(
            "activities received and matched",
            format!(
                "{} in verified conversations ({} polls)",
                s.activities_verified, s.polls
            ),
        );
        line(
            "SSO sign-ins without a card",
            format!(
                "{} (provider gave {} tokens to {} requests)",
                s.signins, s.provider_tokens, s.provider_requests
            ),
        );
        line(
            "cards shown during outages (byte-identical)",
            format!(
                "{} ({} sign-ins overlapped a provider change: either outcome accepted)",
                s.cards_shown, s.signins_ambiguous
            ),
        );
        line(
            "upstream kills (SIGKILL + restart)",
            s.upstream_kills.to_string(),
        );
        line(
            "provider outages",
            format!(
                "{outages} ({} × 503, {} × refused, {} × hang past the timeout), {} s each",
                s.outages_503,
                s.outages_refused,
                s.outages_hang,
                self.schedule.outage.as_secs()
            ),
        );
        line(
            "lost / duplicated / reordered / unexpected",
            format!(
                "{} / {} / {} / {}",
                s.lost, s.duplicated, s.reordered, s.unexpected
            ),
        );
        line(
            "invoke echoes leaked / cards changed / cards while up / provider mismatches",
            format!(
                "{} / {} / {} / {}",
                s.invoke_leaks, s.cards_changed, s.cards_while_up, s.provider_mismatches
            ),
        );
        line(
            "request errors / unexpected stream closes",
            format!("{} / {}", s.request_errors, s.stream_errors),
        );
        line(
            "RSS min / max / after warm-up / end",
            format!(
                "{rss_min:.1} / {rss_max:.1} / {:.1} / {:.1} MiB (limit {rss_limit:.1}; trend under load {:+.2} MiB/h)",
                warm.rss_mib(),
                self.end.rss_mib(),
                sampler::rss_slope_mib_per_hour(&under_load)
            ),
        );
        line(
            "open fds start / max / end",
            format!(
                "{} / {} / {} (limit {})",
                self.baseline.fds,
                self.samples.iter().map(|x| x.fds).max().unwrap_or(0),
                self.end.fds,
                self.baseline.fds + FD_SLACK
            ),
        );
        line(
            "tasks alive start / max / end",
            format!(
                "{} / {} / {} (limit {})",
                self.baseline.tasks,
                self.samples.iter().map(|x| x.tasks).max().unwrap_or(0),
                self.end.tasks,
                self.baseline.tasks + TASK_SLACK
            ),
        );
        line(
            "threads start / end",
            format!("{} / {}", self.baseline.threads, self.end.threads),
        );
        let load_secs = self.load_time.as_secs_f64().max(1.0);
        line(
            "CPU used (share of one core)",
            format!(
                "proxy {:.0} s ({:.0} %), soak driver {:.0} s ({:.0} %)",
                self.end.cpu_secs,
                100.0 * self.end.cpu_secs / load_secs,
                self.driver_cpu_secs,
                100.0 * self.driver_cpu_secs / load_secs
            ),
        );
        line(
            "proxy log",
            format!("{warnings} WARN, {errors} ERROR, {panics} panics"),
        );
        let verdict = if problems.is_empty() { "PASS" } else { "FAIL" };
        line("verdict", verdict.to_string());
        println!();
        let counted = sampler::nonzero_lines(
            self.metrics,
            &[
                "directline_proxy_sso_decisions_total",
                "directline_proxy_errors_total",
                "directline_proxy_quota_rejections_total",
            ],
        );
        if !counted.is_empty() {
            println!("proxy counters at the end:");
            for l in counted {
                println!("  {l}");
            }
            println!();
        }
        if !self.failures.is_empty() {
            println!("first failures:");
            for f in &self.failures {
                println!("  - {f}");
            }
            println!();
        }
        if problems.is_empty() {
            println!("soak: PASS");
            true
        } else {
            for p in &problems {
                println!("soak: FAIL: {p}");
            }
            false
        }
    }
}
