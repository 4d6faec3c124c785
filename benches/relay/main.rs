//! A fair benchmark of the hop (`cargo bench --bench relay`, or
//! `scripts/bench.sh`, which installs nginx first when it is missing).
//!
//! Three processes besides the hop, all on 127.0.0.1: this harness, a
//! minimal Direct Line-shaped upstream ([`upstream`], far cheaper than the
//! emulator, so the hop's cost is what differs) and a load generator
//! ([`load`]), one process per run. Both are this same binary started with
//! `upstream` or `load ...` as its first argument, so `cargo bench` builds
//! everything in one release build and no helper binary can be stale or
//! missing. Every workload runs against the upstream directly, through
//! nginx and through the proxy, the three in turn, `BENCH_REPS` times; the
//! medians are reported, with the hop's CPU time read from
//! `/proc/PID/stat` (nginx: master and workers) and its memory from
//! `/proc/PID/status`. A fourth hop, the floor ([`floor`]), relays with
//! tokio and hyper alone, so the proxy's own cost can be told from the
//! stack's.
//!
//! Settings (environment): `BENCH_REPS` (3), `BENCH_WORKLOADS`
//! (`rtt,latency,firehose,poll,idle,sso`), `BENCH_RTT_STREAMS` (50),
//! `BENCH_RTT_MESSAGES` (per stream, 2000), `BENCH_LATENCY_MESSAGES`
//! (20000), `BENCH_FIREHOSE_STREAMS` (20), `BENCH_FIREHOSE_FRAMES` (per
//! stream, 50000), `BENCH_POLL_CONNECTIONS` (50), `BENCH_POLL_REQUESTS`
//! (per connection, 2000), `BENCH_IDLE` (conversations, 9900: at most what
//! the file descriptor limit lets the hop hold, two per conversation),
//! `BENCH_SSO_CONVERSATIONS` (50), `BENCH_SSO_SIGNINS` (per conversation,
//! 40; all conversations at once), `BENCH_SSO_ALONE` (sign-ins one at a
//! time before those, 200), `BENCH_SSO_PACED_RATE` (the same sign-ins of
//! all conversations on a schedule offering this many per second, 1000,
//! also before), `NGINX` (the nginx binary; `none` skips it), `BENCH_FLOOR`
//! (`0` skips the floor), `PROXY_BIN` (the proxy
//! binary; default the one this build made). `cargo test --bench relay`
//! runs every workload once at tiny sizes without nginx (a smoke test of
//! the harness, a few seconds).

mod floor;
mod hops;
mod load;
mod upstream;

use std::collections::BTreeMap;
use std::path::PathBuf;

use hops::{Hop, Run, SsoSettings};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// For helper processes: exit as soon as the harness closes our stdin (it
/// finished, or died), so no helper outlives it.
fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("upstream") => upstream::run().await,
        Some("load") => load::run(args).await,
        Some("floor") => floor::run(args).await,
        Some("--list") => Ok(()),
        mode => {
            // `cargo bench` passes `--bench`; `cargo test --bench relay`
            // (or `--benches`, `--all-targets`) passes nothing: a smoke run.
            let settings = if mode == Some("--bench") {
                Settings::from_env()
            } else {
                Settings::smoke()
            };
            let harness = tokio::task::spawn_blocking(|| harness(settings));
            tokio::select! {
                result = harness => result?,
                () = signalled() => {
                    hops::kill_all();
                    if let Some(dir) = lock_scratch().take() {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                    std::process::exit(130);
                }
            }
        }
    }
}

/// The harness's temporary directory (configs, logs), for the signal
/// handler to remove: exiting on a signal skips its destructor.
static SCRATCH: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

fn lock_scratch() -> std::sync::MutexGuard<'static, Option<PathBuf>> {
    SCRATCH.lock().unwrap_or_else(|p| p.into_inner())
}

async fn signalled() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}

fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(value) => value.parse().unwrap_or_else(|_| {
            eprintln!("{name}={value} is not a number; using {default}");
            default
        }),
        Err(_) => default,
    }
}

fn which(program: &str) -> Option<String> {
    let paths = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&format!("{paths}:/usr/sbin:/usr/local/sbin"))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .map(|p| p.display().to_string())
}

struct Settings {
    reps: usize,
    workloads: Vec<String>,
    nginx: Option<String>,
    /// Whether to run the floor hop ([`floor`]) too.
    floor: bool,
    proxy: PathBuf,
    params: BTreeMap<&'static str, Vec<String>>,
    idle: usize,
    /// Sizes too small to judge the targets by.
    smoke: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let nginx = match std::env::var("NGINX") {
            Ok(value) if value == "none" => None,
            Ok(path) => Some(path),
            Err(_) => which("nginx"),
        };
        let proxy = std::env::var_os("PROXY_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_directline-proxy")));
        let workloads = std::env::var("BENCH_WORKLOADS")
            .unwrap_or_else(|_| "rtt,latency,firehose,poll,idle,sso".into())
            .split(',')
            .map(|w| w.trim().to_string())
            .filter(|w| !w.is_empty())
            .collect();
        // The hop holds two sockets per idle conversation, plus listeners,
        // logs and a pool of upstream connections.
        let idle_max = hops::fd_limit().saturating_sub(120) / 2;
        let idle = env_number("BENCH_IDLE", 9900);
        let idle = if idle > idle_max {
            eprintln!(
                "BENCH_IDLE={idle} is over what {} open files per process allow the hop (two sockets per conversation); using {idle_max}",
                hops::fd_limit()
            );
            idle_max
        } else {
            idle
        };
        let p =
            |key: &str, env: &str, default: usize| format!("{key}={}", env_number(env, default));
        let mut params = BTreeMap::new();
        params.insert(
            "rtt",
            vec![
                p("streams", "BENCH_RTT_STREAMS", 50),
                p("messages", "BENCH_RTT_MESSAGES", 2000),
            ],
        );
        params.insert(
            "latency",
            vec![p("messages", "BENCH_LATENCY_MESSAGES", 20_000)],
        );
        params.insert(
            "firehose",
            vec![
                p("streams", "BENCH_FIREHOSE_STREAMS", 20),
                p("frames", "BENCH_FIREHOSE_FRAMES", 50_000),
            ],
        );
        params.insert(
            "poll",
            vec![
                p("connections", "BENCH_POLL_CONNECTIONS", 50),
                p("requests", "BENCH_POLL_REQUESTS", 2000),
            ],
        );
        params.insert("idle", vec![format!("conversations={idle}")]);
        params.insert(
            "sso",
            vec![
                p("conversations", "BENCH_SSO_CONVERSATIONS", 50),
                p("signins", "BENCH_SSO_SIGNINS", 40),
                p("unloaded", "BENCH_SSO_ALONE", 200),
                p("paced_rate", "BENCH_SSO_PACED_RATE", 1000),
            ],
        );
        Settings {
            reps: env_number("BENCH_REPS", 3).max(1),
            workloads,
            nginx,
            floor: env_number("BENCH_FLOOR", 1) != 0,
            proxy,
            params,
            idle,
            smoke: false,
        }
    }
}

impl Settings {
    /// Every workload once, tiny, without nginx: checks that the harness,
    /// the upstream, the load generator and the proxy still fit together.
    fn smoke() -> Settings {
        let params = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        let mut all = BTreeMap::new();
        all.insert("rtt", params(&["streams=4", "messages=50"]));
        all.insert("latency", params(&["messages=100"]));
        all.insert("firehose", params(&["streams=2", "frames=500"]));
        all.insert("poll", params(&["connections=4", "requests=50"]));
        all.insert("idle", params(&["conversations=50"]));
        all.insert(
            "sso",
            params(&[
                "conversations=2",
                "signins=3",
                "unloaded=3",
                "paced_rate=100",
            ]),
        );
        Settings {
            reps: 1,
            workloads: all.keys().map(|k| k.to_string()).collect(),
            nginx: None,
            floor: true,
            proxy: PathBuf::from(env!("CARGO_BIN_EXE_directline-proxy")),
            params: all,
            idle: 50,
            smoke: true,
        }
    }
}

/// All runs of one workload on one hop.
type Runs = BTreeMap<(String, &'static str), Vec<Run>>;

fn harness(settings: Settings) -> Result<(), BoxError> {
    for workload in &settings.workloads {
        if !settings.params.contains_key(workload.as_str()) {
            return Err(format!("BENCH_WORKLOADS: no workload {workload:?}").into());
        }
    }
    let dir = tempfile::tempdir()?;
    *lock_scratch() = Some(dir.path().to_path_buf());
    let upstream = hops::start_upstream()?;
    let mut hops = vec![Hop::direct(&upstream)];
    if let Some(nginx) = settings.nginx.clone() {
        let (dir, upstream) = (dir.path().to_path_buf(), upstream.base.clone());
        hops.push(hops::restartable(move || {
            hops::start_nginx(&nginx, &dir, &upstream)
        })?);
    }
    if settings.floor {
        hops.push(hops::start_floor(dir.path(), &upstream.base)?);
    }
    {
        let (binary, dir) = (settings.proxy.clone(), dir.path().to_path_buf());
        let upstream = upstream.base.clone();
        hops.push(hops::restartable(move || {
            hops::start_proxy(&binary, &dir, "proxy", &upstream, None)
        })?);
    }
    let mut sso_proxy = if settings.workloads.iter().any(|w| w == "sso") {
        let sso = SsoSettings {
            provider_url: format!("{}/bot-token", upstream.base),
        };
        Some(hops::start_proxy(
            &settings.proxy,
            dir.path(),
            "proxy-sso",
            &upstream.base,
            Some(&sso),
        )?)
    } else {
        None
    };
    let ticks = hops::clock_ticks();
    println!(
        "hop benchmark: {} reps; hops: {}; proxy {}; open files per process {}; load {}",
        settings.reps,
        hops.iter().map(|h| h.name).collect::<Vec<_>>().join(", "),
        settings.proxy.display(),
        hops::fd_limit(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
    );
    let mut runs = Runs::new();
    for rep in 0..settings.reps {
        for workload in &settings.workloads {
            let params = &settings.params[workload.as_str()];
            if workload == "sso" {
                let Some(hop) = sso_proxy.as_mut() else {
                    continue;
                };
                let mut params = params.clone();
                params.push(format!("upstream={}", upstream.base));
                let run = hops::run_load(hop, workload, &params, ticks)
                    .map_err(|e| format!("sso through the proxy: {e}"))?;
                progress(rep, workload, "proxy", &run);
                runs.entry((workload.clone(), "proxy"))
                    .or_default()
                    .push(run);
                continue;
            }
            // The three in turn, starting with a different one each rep.
            let count = hops.len();
            for i in 0..count {
                let hop = &mut hops[(i + rep) % count];
                if workload == "idle" && (hop.is_direct() || hop.name == "floor") {
                    // No hop, no hop memory; the floor's is tokio's copy
                    // buffers, no yardstick for the proxy's.
                    continue;
                }
                if workload == "idle" {
                    hop.restart()?;
                }
                let run = hops::run_load(hop, workload, params, ticks)
                    .map_err(|e| format!("{workload} through {}: {e}", hop.name))?;
                progress(rep, workload, hop.name, &run);
                runs.entry((workload.clone(), hop.name))
                    .or_default()
                    .push(run);
            }
        }
    }
    println!(
        "load after the runs: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    report(&settings, &runs);
    Ok(())
}

fn progress(rep: usize, workload: &str, hop: &str, run: &Run) {
    let count = run.result["count"].as_f64().unwrap_or(0.0);
    let secs = run.result["secs"].as_f64().unwrap_or(0.0);
    let mut line = format!(
        "  rep {} {workload:<8} {hop:<9} {count:>9.0} in {secs:>6.2} s",
        rep + 1
    );
    if let Some(cpu) = run.cpu_secs {
        line.push_str(&format!("  hop CPU {cpu:.2} s"));
    }
    if let Some(rss) = run.rss_delta_kib {
        line.push_str(&format!("  hop RSS +{rss} KiB"));
    }
    for key in [
        "p50_us",
        "p99_us",
        "decision_p99_us",
        "paced_decision_p99_us",
    ] {
        if let Some(v) = run.result[key].as_f64() {
            line.push_str(&format!("  {key} {v:.0}"));
        }
    }
    eprintln!("{line}");
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// The median of `measure` over a hop's runs of a workload.
fn med(
    runs: &Runs,
    workload: &str,
    hop: &str,
    measure: impl Fn(&Run) -> Option<f64>,
) -> Option<f64> {
    median(
        runs.get(&(workload.to_string(), hop))
            .map(|r| r.iter().filter_map(&measure).collect())
            .unwrap_or_default(),
    )
}

fn rate(run: &Run) -> Option<f64> {
    Some(run.result["count"].as_f64()? / run.result["secs"].as_f64()?)
}

fn cpu_us_per_unit(run: &Run) -> Option<f64> {
    Some(run.cpu_secs? * 1e6 / run.result["count"].as_f64()?)
}

fn field(name: &'static str) -> impl Fn(&Run) -> Option<f64> {
    move |run| run.result[name].as_f64()
}

fn kib_per_conversation(run: &Run) -> Option<f64> {
    Some(run.rss_delta_kib? as f64 / run.result["count"].as_f64()?)
}

fn cell(value: Option<f64>) -> String {
    match value {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn verdict(holds: Option<bool>) -> &'static str {
    match holds {
        Some(true) => "holds",
        Some(false) => "does not hold",
        None => "not measured",
    }
}

fn report(settings: &Settings, runs: &Runs) {
    println!();
    println!(
        "medians of {} reps; idle: {} conversations",
        settings.reps, settings.idle
    );
    println!(
        "| workload | measure | direct | nginx | floor | proxy | proxy/nginx | proxy/direct | floor/nginx |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let row = |workload: &str, what: &str, measure: &dyn Fn(&Run) -> Option<f64>| {
        let medians @ [d, n, f, p] =
            ["direct", "nginx", "floor", "proxy"].map(|h| med(runs, workload, h, measure));
        if medians.iter().all(Option::is_none) {
            return medians;
        }
        println!(
            "| {workload} | {what} | {} | {} | {} | {} | {} | {} | {} |",
            cell(d),
            cell(n),
            cell(f),
            cell(p),
            ratio(p, n),
            ratio(p, d),
            ratio(f, n)
        );
        medians
    };
    let rtt = row("rtt", "round trips/s", &rate);
    let rtt_cpu = row("rtt", "hop CPU µs/round trip", &cpu_us_per_unit);
    row("latency", "p50 µs", &field("p50_us"));
    let p99 = row("latency", "p99 µs", &field("p99_us"));
    let fire = row("firehose", "frames/s", &rate);
    let fire_cpu = row("firehose", "hop CPU µs/frame", &cpu_us_per_unit);
    let poll = row("poll", "req/s", &rate);
    let poll_cpu = row("poll", "hop CPU µs/req", &cpu_us_per_unit);
    let idle = row("idle", "KiB/conversation", &kib_per_conversation);
    row("sso", "sign-ins/s, all at once", &rate);
    let mut sso = BTreeMap::new();
    for (what, key) in [
        ("sign-in p99 µs (client), all at once", "p99_us"),
        ("provider p99 µs", "provider_p99_us"),
        ("decision p50 µs, all at once", "decision_p50_us"),
        ("decision p99 µs, all at once", "decision_p99_us"),
        ("sign-in p99 µs (client), one at a time", "alone_p99_us"),
        ("decision p50 µs, one at a time", "alone_decision_p50_us"),
        ("decision p99 µs, one at a time", "alone_decision_p99_us"),
        ("paced: sign-ins/s offered", "paced_rate"),
        ("decision p50 µs, all paced", "paced_decision_p50_us"),
        ("decision p99 µs, all paced", "paced_decision_p99_us"),
    ] {
        sso.insert(key, row("sso", what, &field(key)));
    }
    let sso_p99 = |key: &str| sso.get(key).and_then(|[_, _, _, proxy]| *proxy);

    let added = |hop: Option<f64>| Some(hop? - p99[0]?);
    let [nginx_added, floor_added, proxy_added] = [p99[1], p99[2], p99[3]].map(added);
    println!();
    println!(
        "added p99 (hop minus direct): nginx {} µs, floor {} µs, proxy {} µs",
        cell(nginx_added),
        cell(floor_added),
        cell(proxy_added)
    );
    if settings.smoke {
        println!("smoke run: the sizes are too small to judge the targets");
        return;
    }
    // The hop's medians are at index 2 (the floor) or 3 (the proxy).
    let faster = |hop: usize, m: [Option<f64>; 4]| Some(m[hop]? >= 1.2 * m[1]?);
    let cheaper = |hop: usize, m: [Option<f64>; 4]| Some(m[hop]? <= m[1]?);
    let wire_speed = |hop: usize, added: Option<f64>| {
        [
            ("rtt round trips/s >= 1.2x nginx", faster(hop, rtt)),
            ("firehose frames/s >= 1.2x nginx", faster(hop, fire)),
            ("poll req/s >= 1.2x nginx", faster(hop, poll)),
            ("rtt hop CPU/round trip <= nginx", cheaper(hop, rtt_cpu)),
            ("firehose hop CPU/frame <= nginx", cheaper(hop, fire_cpu)),
            ("poll hop CPU/req <= nginx", cheaper(hop, poll_cpu)),
            (
                "added p99 <= nginx's",
                added.zip(nginx_added).map(|(hop, n)| hop <= n),
            ),
        ]
    };
    if settings.floor {
        println!("the floor (tokio and hyper relaying, nothing else) against the same targets:");
        for (what, holds) in wire_speed(2, floor_added) {
            println!("  {what}: {}", verdict(holds));
        }
    }
    println!("targets:");
    for (what, holds) in wire_speed(3, proxy_added).into_iter().chain([
        ("idle <= 8 KiB/conversation", idle[3].map(|k| k <= 8.0)),
        (
            "idle <= 4 KiB/conversation (aim)",
            idle[3].map(|k| k <= 4.0),
        ),
        (
            "SSO decision p99 <= 1 ms beyond provider and invoke, one at a time",
            sso_p99("alone_decision_p99_us").map(|us| us <= 1000.0),
        ),
        (
            "SSO decision p99 <= 1 ms beyond provider and invoke, all paced",
            sso_p99("paced_decision_p99_us").map(|us| us <= 1000.0),
        ),
        (
            "SSO decision p99 <= 1 ms beyond provider and invoke, all at once (saturated: queueing)",
            sso_p99("decision_p99_us").map(|us| us <= 1000.0),
        ),
    ]) {
        println!("  {what}: {}", verdict(holds));
    }
}
