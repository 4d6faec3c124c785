//! The two child processes: the emulator (killed with SIGKILL and restarted
//! on the same port during the soak) and the proxy under test.

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::web;

/// A loopback port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn log_file(path: &Path) -> Result<(File, File), String> {
    let open = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("open {}: {e}", path.display()))
    };
    Ok((open()?, open()?))
}

fn spawn(bin: &Path, args: &[&str], log: &Path) -> Result<Child, String> {
    let (out, err) = log_file(log)?;
    Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start {}: {e}", bin.display()))
}

/// Sends SIGTERM and waits up to `grace` for the exit; SIGKILL after that.
async fn terminate(child: &mut Child, grace: Duration) -> Result<ExitStatus, String> {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.map_err(|e| format!("wait: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            Err(format!("did not exit within {grace:?} of SIGTERM"))
        }
    }
}

/// Waits until `addr` accepts connections; fails if the child exits first.
async fn wait_listening(child: &mut Child, addr: SocketAddr, name: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{name} exited at start: {status}"));
        }
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{name} does not listen on {addr} after 20 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Emulator {
    bin: PathBuf,
    log: PathBuf,
    pub addr: SocketAddr,
    child: Child,
}

impl Emulator {
    pub async fn start(bin: &Path, log: &Path) -> Result<Emulator, String> {
        let port = free_port().map_err(|e| format!("free port: {e}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Self::spawn_at(bin, log, addr).await?;
        Ok(Emulator {
            bin: bin.to_path_buf(),
            log: log.to_path_buf(),
            addr,
            child,
        })
    }

    async fn spawn_at(bin: &Path, log: &Path, addr: SocketAddr) -> Result<Child, String> {
        let listen = addr.to_string();
        let mut child = spawn(bin, &["emulator", "--listen", &listen], log)?;
        wait_listening(&mut child, addr, "the emulator").await?;
        Ok(child)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL, then a new emulator on the same port. A port still held
    /// gets a few retries. Returns how long the upstream was down.
    pub async fn kill_and_restart(&mut self) -> Result<Duration, String> {
        let down = Instant::now();
        self.child
            .kill()
            .await
            .map_err(|e| format!("SIGKILL the emulator: {e}"))?;
        let mut last = String::new();
        for _ in 0..10 {
            match Self::spawn_at(&self.bin, &self.log, self.addr).await {
                Ok(child) => {
                    self.child = child;
                    return Ok(down.elapsed());
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(format!("the emulator does not restart: {last}"))
    }

    pub async fn stop(&mut self) {
        let _ = terminate(&mut self.child, Duration::from_secs(5)).await;
    }
}

/// Where the proxy listens and what it talks to.
pub struct ProxySetup<'a> {
    pub upstream: &'a str,
    pub provider_url: &'a str,
    pub config_path: &'a Path,
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub pid: u32,
    child: Child,
}

impl Proxy {
    pub async fn start(bin: &Path, setup: &ProxySetup<'_>, log: &Path) -> Result<Proxy, String> {
        let port = |what| free_port().map_err(|e| format!("free port for {what}: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port("the proxy")?));
        let admin = SocketAddr::from(([127, 0, 0, 1], port("the admin listener")?));
        let config = config(addr, admin, setup);
        std::fs::write(setup.config_path, config)
            .map_err(|e| format!("write {}: {e}", setup.config_path.display()))?;
        let path = setup.config_path.to_string_lossy().into_owned();
        let mut child = spawn(bin, &["--config", &path, "run"], log)?;
        let pid = child.id().ok_or("the proxy has no pid")?;
        wait_listening(&mut child, admin, "the proxy").await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(web::get_once(admin, "/readyz").await, Ok((200, _))) {
            if Instant::now() > deadline {
                return Err("the proxy's /readyz does not answer 200".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Proxy {
            addr,
            admin,
            pid,
            child,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("the proxy exited: {status}")),
            Err(e) => Err(format!("the proxy cannot be waited for: {e}")),
        }
    }

    /// SIGTERM; the proxy drains and must exit 0.
    pub async fn stop(&mut self) -> Result<(), String> {
        let status = terminate(&mut self.child, Duration::from_secs(20)).await?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("the proxy exited with {status} after SIGTERM"))
        }
    }
}

/// The proxy's config: SSO through the soak's own `http` provider, the
/// admin listener for scrapes, otherwise the documented defaults (a
/// generous conversation quota: every soak client shares one address).
fn config(addr: SocketAddr, admin: SocketAddr, setup: &ProxySetup<'_>) -> String {
    format!(
        r#"# written by examples/soak
[listen]
addr = "{addr}"
allowed_origins = ["http://soak.localhost"]

[upstream]
url = "{upstream}"
connect_timeout_ms = 2000
request_timeout_ms = 10000

[limits]
conversations_per_minute_per_client = 6000
max_streams_per_client = 1000

[sso]
provider = "http"
timeout_ms = 3000
flows = ["invoke", "token_post"]
seal_keys = ["c29hay10ZXN0LXNlYWwta2V5LTMyLWJ5dGVzLWxvbmc="]

[sso.http]
url = "{provider}"
forward_headers = ["cookie"]

[reload]
watch_interval_ms = 0

[admin]
addr = "{admin}"
"#,
        upstream = setup.upstream,
        provider = setup.provider_url,
    )
}
