//! The processes the harness runs (the upstream, nginx, the proxy, the load
//! generator), what it reads of them from /proc, and their cleanup: every
//! child is killed when its handle drops, and on SIGINT/SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::BoxError;

/// Pids of every child alive, for the signal handler.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn children() -> std::sync::MutexGuard<'static, Vec<u32>> {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([name, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Stops every child still running and their own children (nginx's
/// workers): SIGTERM, then SIGKILL for what is left after 3 s (the signal
/// handler's last act).
pub fn kill_all() {
    let ours: Vec<u32> = children().drain(..).collect();
    let mut all = ours.clone();
    all.extend(ours.iter().flat_map(|pid| children_of(*pid)));
    for pid in &all {
        signal(*pid, "-TERM");
    }
    let running = |pid: &u32| stat_fields(*pid).is_some_and(|f| f[0] != "Z");
    let deadline = Instant::now() + Duration::from_secs(3);
    while all.iter().any(running) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in all.iter().filter(|pid| running(pid)) {
        signal(*pid, "-KILL");
    }
}

/// The processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat_fields(*pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(parent))
        .collect()
}

/// A child process, terminated when dropped (SIGTERM, so nginx's master
/// takes its workers with it; SIGKILL after 5 s).
pub struct Process {
    child: Child,
}

impl Process {
    pub fn spawn(command: &mut Command) -> Result<Process, BoxError> {
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        children().push(child.id());
        Ok(Process { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stdio(&mut self) -> Result<(ChildStdin, BufReader<ChildStdout>), BoxError> {
        let stdin = self.child.stdin.take().ok_or("no stdin")?;
        let stdout = self.child.stdout.take().ok_or("no stdout")?;
        Ok((stdin, BufReader::new(stdout)))
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let pid = self.child.id();
        if self.child.try_wait().ok().flatten().is_none() {
            signal(pid, "-TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        children().retain(|p| *p != pid);
    }
}

/// The upstream, in its own process: it exits when its stdin closes.
pub struct Upstream {
    pub base: String,
    _process: Process,
    _stdin: ChildStdin,
}

pub fn start_upstream() -> Result<Upstream, BoxError> {
    let mut process = Process::spawn(
        Command::new(std::env::current_exe()?)
            .arg("upstream")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    )?;
    let (stdin, mut stdout) = process.stdio()?;
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let port = line
        .trim()
        .strip_prefix("listening ")
        .ok_or_else(|| format!("upstream said {line:?}"))?;
    Ok(Upstream {
        base: format!("http://127.0.0.1:{port}"),
        _process: process,
        _stdin: stdin,
    })
}

/// What stands between the load generator and the upstream: nothing
/// (direct), nginx, the floor or the proxy.
pub struct Hop {
    pub name: &'static str,
    pub base: String,
    process: Option<Process>,
    log: Option<PathBuf>,
    /// How to start it afresh (see [`Hop::restart`]).
    start: Option<Starter>,
}

type Starter = Box<dyn Fn() -> Result<Hop, BoxError>>;

/// A hop that [`Hop::restart`] can start again.
pub fn restartable(start: impl Fn() -> Result<Hop, BoxError> + 'static) -> Result<Hop, BoxError> {
    let mut hop = start()?;
    hop.start = Some(Box::new(start));
    Ok(hop)
}

impl Hop {
    pub fn direct(upstream: &Upstream) -> Hop {
        Hop {
            name: "direct",
            base: upstream.base.clone(),
            process: None,
            log: None,
            start: None,
        }
    }

    /// Stops the hop and starts a fresh process (on a new port), so that
    /// memory freed by earlier workloads and kept by the allocator does not
    /// hide what idle conversations cost.
    pub fn restart(&mut self) -> Result<(), BoxError> {
        let Some(start) = self.start.take() else {
            return Ok(());
        };
        self.process = None;
        let mut fresh = start()?;
        fresh.start = Some(start);
        *self = fresh;
        Ok(())
    }

    pub fn is_direct(&self) -> bool {
        self.process.is_none()
    }

    /// The hop's process and its children (nginx's workers).
    fn pids(&self) -> Vec<u32> {
        let Some(process) = &self.process else {
            return Vec::new();
        };
        let main = process.pid();
        let mut pids = vec![main];
        pids.extend(children_of(main));
        pids
    }

    /// utime + stime of the hop, all its threads and children, in ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(stat_fields)
            .map(|f| {
                // Fields after the command: state is [0], utime [11], stime [12].
                let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                field(11) + field(12)
            })
            .sum()
    }

    /// Resident memory of the hop and its children, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pids().into_iter().map(vm_rss_kib).sum()
    }

    /// The end of the hop's log, for errors.
    pub fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    pub fn check_alive(&mut self) -> Result<(), BoxError> {
        if let Some(status) = self.process.as_mut().and_then(Process::exited) {
            return Err(format!("{} exited ({status}):\n{}", self.name, self.log_tail()).into());
        }
        Ok(())
    }
}

/// `/proc/PID/stat` from the state field on (the command may hold spaces).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_string).collect())
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Clock ticks per second of /proc's CPU times.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The hard limit on open files of this process (children inherit it).
pub fn fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(4)?.parse().ok()
        })
        .unwrap_or(1024)
}

fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A hop just spawned on `port`, once it accepts connections.
fn listening_hop(
    name: &'static str,
    port: u16,
    process: Process,
    log: PathBuf,
) -> Result<Hop, BoxError> {
    let mut hop = Hop {
        name,
        base: format!("http://127.0.0.1:{port}"),
        process: Some(process),
        log: Some(log),
        start: None,
    };
    wait_listening(&mut hop)?;
    Ok(hop)
}

fn wait_listening(hop: &mut Hop) -> Result<(), BoxError> {
    let addr = hop.base.trim_start_matches("http://").to_string();
    for _ in 0..200 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            return Ok(());
        }
        hop.check_alive()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{} never listened on {addr}:\n{}", hop.name, hop.log_tail()).into())
}

fn log_file(dir: &Path, name: &str) -> Result<(PathBuf, std::fs::File), BoxError> {
    let path = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}

/// The SSO settings of the proxy for the `sso` workload: the `http`
/// provider at the upstream's `/bot-token`, the page origin allowed, a
/// fixed seal key (as replicas would share).
pub struct SsoSettings {
    pub provider_url: String,
}

/// The proxy binary with a generated config: SSO off unless asked, quotas
/// off (one client opens thousands of conversations here), `RUST_LOG=warn`.
pub fn start_proxy(
    binary: &Path,
    dir: &Path,
    name: &'static str,
    upstream: &str,
    sso: Option<&SsoSettings>,
) -> Result<Hop, BoxError> {
    let port = free_port()?;
    let mut config = format!(
        r#"[listen]
addr = "127.0.0.1:{port}"
max_connections = 20000
idle_timeout_ms = 600000
[upstream]
url = "{upstream}"
[limits]
conversations_per_minute_per_client = 0
activities_per_minute_per_conversation = 0
max_streams_per_client = 0
[reload]
watch_interval_ms = 0
"#
    );
    if let Some(sso) = sso {
        config = config.replace(
            "[upstream]",
            &format!(
                "allowed_origins = [\"{}\"]\n[upstream]",
                crate::load::PAGE_ORIGIN
            ),
        );
        config.push_str(&format!(
            r#"[sso]
provider = "http"
seal_keys = ["YmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtMzI="]
[sso.http]
url = "{}"
forward_headers = ["cookie"]
"#,
            sso.provider_url
        ));
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config)?;
    let (log, file) = log_file(dir, name)?;
    let process = Process::spawn(
        Command::new(binary)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file),
    )?;
    listening_hop(name, port, process, log)
}

/// The floor ([`crate::floor`]): this binary as the least a hop on the
/// proxy's stack can do.
pub fn start_floor(dir: &Path, upstream: &str) -> Result<Hop, BoxError> {
    let port = free_port()?;
    let (log, file) = log_file(dir, "floor")?;
    let process = Process::spawn(
        Command::new(std::env::current_exe()?)
            .args([
                "floor",
                &port.to_string(),
                upstream.trim_start_matches("http://"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file),
    )?;
    listening_hop("floor", port, process, log)
}

/// nginx as WebSocket and HTTP/1.1 keep-alive reverse proxy: a worker per
/// core, keep-alive to the upstream, as the current user, in the foreground.
pub fn start_nginx(binary: &str, dir: &Path, upstream: &str) -> Result<Hop, BoxError> {
    let port = free_port()?;
    let upstream = upstream.trim_start_matches("http://");
    let conf = dir.join("nginx.conf");
    let connections = fd_limit().saturating_sub(100).max(1024);
    std::fs::write(
        &conf,
        format!(
            r#"worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/nginx.log warn;
worker_rlimit_nofile {limit};
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    upstream directline {{
        server {upstream};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://directline;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"#,
            dir = dir.display(),
            limit = fd_limit(),
        ),
    )?;
    let (log, file) = log_file(dir, "nginx-stderr")?;
    let process = Process::spawn(
        Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file),
    )?;
    listening_hop("nginx", port, process, log)
}

/// A finished run of one workload against one hop.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub result: serde_json::Value,
    /// The hop's CPU time over the workload, seconds (`None` direct).
    pub cpu_secs: Option<f64>,
    /// The hop's resident memory growth while idle streams were open, KiB.
    pub rss_delta_kib: Option<u64>,
}

/// Runs the load generator once against `hop`, measuring the hop around it.
pub fn run_load(
    hop: &mut Hop,
    workload: &str,
    params: &[String],
    ticks_per_sec: f64,
) -> Result<Run, BoxError> {
    let rss_before = hop.rss_kib();
    let mut process = Process::spawn(
        Command::new(std::env::current_exe()?)
            .args(["load", workload, &hop.base])
            .args(params)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    )?;
    let (mut stdin, mut stdout) = process.stdio()?;
    let mut line = String::new();
    let mut next_line = |line: &mut String| -> Result<(), BoxError> {
        line.clear();
        if stdout.read_line(line)? == 0 {
            return Err(format!("the load generator ({workload}) stopped").into());
        }
        Ok(())
    };
    let failed = |error: BoxError, hop: &mut Hop| -> BoxError {
        match hop.check_alive() {
            Err(dead) => dead,
            Ok(()) => error,
        }
    };
    if let Err(error) = next_line(&mut line) {
        return Err(failed(error, hop));
    }
    if line.trim() != "ready" {
        return Err(format!("load generator said {line:?}").into());
    }
    let mut run = Run::default();
    let cpu_before = hop.cpu_ticks();
    if workload == "idle" {
        std::thread::sleep(Duration::from_secs(2));
        run.rss_delta_kib = Some(hop.rss_kib().saturating_sub(rss_before));
        writeln!(stdin, "done")?;
    } else {
        writeln!(stdin, "go")?;
    }
    if let Err(error) = next_line(&mut line) {
        return Err(failed(error, hop));
    }
    let cpu_after = hop.cpu_ticks();
    if !hop.is_direct() {
        run.cpu_secs = Some((cpu_after - cpu_before) as f64 / ticks_per_sec);
    }
    let json = line
        .trim()
        .strip_prefix("result ")
        .ok_or_else(|| format!("load generator said {line:?}"))?;
    run.result = serde_json::from_str(json)?;
    drop(stdin);
    drop(process);
    Ok(run)
}
