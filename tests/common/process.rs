//! The real `directline-proxy` binary as a child process, for what only a
//! process has: signals, exit codes and the log format it sets up itself.

use std::path::Path;
use std::process::{ExitStatus, Stdio};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::WAIT;

pub struct ProxyProcess {
    child: Child,
    /// Log lines as the child writes them, read by a task so the child
    /// never blocks on a full pipe.
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line received so far, for failure messages.
    seen: Vec<String>,
}

impl ProxyProcess {
    /// `directline-proxy --config <config>` with JSON logs at `info`, so
    /// log lines can be read field by field.
    pub fn spawn(config: &Path) -> ProxyProcess {
        ProxyProcess::spawn_with_env(config, &[])
    }

    /// Like [`ProxyProcess::spawn`], with extra environment variables.
    pub fn spawn_with_env(config: &Path, env: &[(&str, &str)]) -> ProxyProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_directline-proxy"))
            .arg("--config")
            .arg(config)
            .env("DLPROXY_LOG__FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ProxyProcess {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads log lines until one whose `message` is `message`, and returns
    /// it; fails the test if the log ends or [`WAIT`] passes first.
    pub async fn wait_for_log(&mut self, message: &str) -> Value {
        loop {
            let line = tokio::time::timeout(WAIT, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no {message:?} in time; log: {:#?}", self.seen))
                .unwrap_or_else(|| panic!("log ended before {message:?}; log: {:#?}", self.seen));
            self.seen.push(line.clone());
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && value["message"] == message
            {
                return value;
            }
        }
    }

    /// Waits for the `proxy listening` line and returns `http://addr`.
    pub async fn listening(&mut self) -> String {
        let line = self.wait_for_log("proxy listening").await;
        let addr = line["local_addr"].as_str().expect("local_addr");
        format!("http://{addr}")
    }

    /// Sends signal `name` (`HUP`, `TERM`...) to the process.
    pub async fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = Command::new("kill")
            .args(["-s", name, &pid])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "kill -s {name} {pid}");
    }

    /// Waits for the process to exit, at most [`WAIT`].
    pub async fn exit_status(&mut self) -> ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the process did not exit; log: {:#?}", self.seen))
            .expect("wait")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Every log line, once the process has exited.
    pub async fn whole_log(mut self) -> Vec<String> {
        assert!(!self.is_running(), "the log is whole only after the exit");
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        self.seen
    }
}
