//! The proxy's resources, read from `/proc/PID` and its `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::web;

#[derive(Clone, Debug)]
pub struct Sample {
    /// Since the load started (negative times are not needed: the
    /// baseline is sample zero).
    pub at: Duration,
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
    /// User plus system CPU time of the process so far, in seconds.
    pub cpu_secs: f64,
    /// `directline_proxy_tasks_alive`.
    pub tasks: u64,
    /// `directline_proxy_connections_active{transport="websocket"}`.
    pub websockets: u64,
    /// `directline_proxy_connections_active` of `rest` and `polling`.
    pub requests: u64,
}

impl Sample {
    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
}

pub async fn take(pid: u32, admin: SocketAddr, at: Duration) -> Result<Sample, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("the proxy's /proc/{pid}/status: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("the proxy's /proc/{pid}/fd: {e}"))?
        .count() as u64;
    let metrics = metrics(admin).await?;
    let value = |name: &str, transport: Option<&str>| -> u64 {
        metric_sum(&metrics, name, |labels| {
            transport.is_none_or(|t| labels.contains(&format!("transport=\"{t}\"")))
        }) as u64
    };
    Ok(Sample {
        at,
        rss_kib: field("VmRSS:"),
        fds,
        threads: field("Threads:"),
        cpu_secs: cpu_secs(&pid.to_string()),
        tasks: value("directline_proxy_tasks_alive", None),
        websockets: value("directline_proxy_connections_active", Some("websocket")),
        requests: value("directline_proxy_connections_active", Some("rest"))
            + value("directline_proxy_connections_active", Some("polling")),
    })
}

/// utime + stime of `/proc/{pid}/stat` (`self` for this process), at the
/// usual 100 clock ticks per second.
pub fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: count fields after its ')'.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields 14 and 15 of stat are the 12th and 13th after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// `GET /metrics` on the admin listener.
pub async fn metrics(admin: SocketAddr) -> Result<String, String> {
    match web::get_once(admin, "/metrics").await {
        Ok((200, body)) => Ok(body),
        Ok((status, _)) => Err(format!("GET /metrics answered {status}")),
        Err(e) => Err(format!("GET /metrics: {e}")),
    }
}

/// The sum of the samples of `name` whose label text passes `keep`.
pub fn metric_sum(text: &str, name: &str, keep: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
                let (labels, value) = rest.split_once('}')?;
                (labels, value)
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                return None;
            };
            keep(labels).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// The non-zero samples of the metrics named, one per line.
pub fn nonzero_lines(text: &str, names: &[&str]) -> Vec<String> {
    text.lines()
        .filter(|line| names.iter().any(|n| line.starts_with(n)))
        .filter(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v != 0.0)
        })
        .map(str::to_string)
        .collect()
}

/// Least-squares slope of RSS over time, in MiB per hour.
pub fn rss_slope_mib_per_hour(samples: &[Sample]) -> f64 {
    if samples.len() < 2 {
        return 0.0;
    }
    let n = samples.len() as f64;
    let xs: Vec<f64> = samples
        .iter()
        .map(|s| s.at.as_secs_f64() / 3600.0)
        .collect();
    let ys: Vec<f64> = samples.iter().map(Sample::rss_mib).collect();
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}
