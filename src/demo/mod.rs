//! `directline-proxy demo`: the built-in emulator with the proxy in front of
//! it, offline, a Web Chat page that talks to the proxy, and a printed
//! walkthrough of what to try.
//!
//! The proxy holds the emulator's secret (as a deployment would hold Direct
//! Line's), so the page asks the proxy for a token and never sees a secret.
//! The page is served from its own listener because the proxy serves
//! nothing but Direct Line; the proxy's `listen.allowed_origins` names the
//! page's origins, as a site's config would name the site.

mod page;

use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use thiserror::Error;

use crate::config::{Config, ProviderKind, StaticProviderConfig};
use crate::emulator::{AGENT_TOKEN_PATH, Emulator, EmulatorConfig, EmulatorError};
use crate::{RunningProxy, StartError, start};

pub use page::WebChatSource;

#[derive(Debug, Error)]
pub enum DemoError {
    #[error("emulator: {0}")]
    Emulator(#[from] EmulatorError),
    #[error("proxy: {0}")]
    Proxy(#[from] StartError),
    #[error("web chat page: {0}")]
    Page(#[from] page::PageError),
    #[error("cannot write the Direct Line secret for the proxy to {path}: {source}")]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `directline-proxy demo` was asked for.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// Where the Web Chat page is served.
    pub page_listen: SocketAddr,
    /// Server-side SSO on (the default) or off (`--no-sso`).
    pub sso: bool,
    /// Tokens from the emulator's Copilot Studio token endpoint instead of
    /// a held secret (`--copilot`).
    pub copilot: bool,
    pub webchat: WebChatSource,
}

/// The token the demo provider hands out; the emulator's bot accepts it.
const DEMO_USER_TOKEN: &str = "demo-user-token";

/// The proxy config the demo runs: the emulator upstream, the pages at
/// `allowed_origins` and, unless `sso` is false, a static provider whose
/// token the emulator's bot accepts.
pub fn config(
    listen: SocketAddr,
    emulator: &Emulator,
    sso: bool,
    allowed_origins: Vec<String>,
) -> Config {
    let mut config = Config::default();
    config.listen.addr = listen;
    config.listen.allowed_origins = allowed_origins;
    config.upstream.url = emulator
        .base_url()
        .parse()
        .expect("http:// and a socket address is a URL");
    if sso {
        config.sso.provider = ProviderKind::Static;
        config.sso.static_token = Some(StaticProviderConfig {
            token: DEMO_USER_TOKEN.into(),
        });
        // The emulator's bot serves its token-post endpoint over plain http.
        let sas = format!("{}/sas/", emulator.base_url())
            .parse()
            .expect("the emulator listens on loopback, where plain http is allowed");
        config.sso.token_post_allow_hosts.push(sas);
    }
    config
}

/// Runs until `stop` resolves, then shuts everything down.
pub async fn run(options: DemoOptions, stop: impl Future<Output = ()>) -> Result<(), DemoError> {
    let demo = Demo::start(options).await?;
    println!("{}", demo.walkthrough());
    stop.await;
    demo.shutdown().await;
    Ok(())
}

/// The emulator, the proxy in front of it and the page, running.
pub struct Demo {
    emulator: Emulator,
    proxy: RunningProxy,
    page: page::PageServer,
    page_url: String,
    proxy_url: String,
    sso: bool,
    copilot: bool,
}

impl Demo {
    pub async fn start(options: DemoOptions) -> Result<Demo, DemoError> {
        let webchat = options.webchat.load().await?;
        let emulator = Emulator::start(EmulatorConfig {
            accepted_sso_tokens: vec![DEMO_USER_TOKEN.into()],
            ..EmulatorConfig::default()
        })
        .await?;
        let page_listener = page::bind(options.page_listen).await?;
        let page_addr = page::local_addr(&page_listener)?;
        let mut config = config(
            options.listen,
            &emulator,
            options.sso,
            page_origins(page_addr),
        );
        let proxy = if options.copilot {
            copilot_agent(&mut config, &emulator);
            start(config).await?
        } else {
            let secret = SecretFile::write(emulator.secret())?;
            config.directline.secret_file = Some(secret.path().to_path_buf());
            // The proxy reads the file once, at start; the file goes right after.
            start(config).await?
        };
        let proxy_url = format!("http://{}", reachable(proxy.local_addr()));
        let page = page::Page::new(&proxy_url, options.sso, webchat);
        Ok(Demo {
            emulator,
            proxy,
            page: page::serve(page_listener, page),
            page_url: format!("http://{}/", reachable(page_addr)),
            proxy_url,
            sso: options.sso,
            copilot: options.copilot,
        })
    }

    /// The Web Chat page (`http://host:port/`).
    pub fn page_url(&self) -> &str {
        &self.page_url
    }

    /// The proxy (`http://host:port`).
    pub fn proxy_url(&self) -> &str {
        &self.proxy_url
    }

    /// The emulator behind the proxy (for tests: what it was asked).
    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }

    pub async fn shutdown(self) {
        self.page.shutdown().await;
        self.proxy.shutdown().await;
        self.emulator.shutdown().await;
    }

    fn walkthrough(&self) -> String {
        walkthrough(
            &self.page_url,
            &self.proxy_url,
            &self.emulator.base_url(),
            self.sso,
            self.copilot,
        )
    }
}

/// The proxy as in front of a Copilot Studio agent: tokens from the
/// emulator's agent token endpoint (its loopback host listed as allowed),
/// Direct Line at the regional base that the emulator names (itself).
fn copilot_agent(config: &mut Config, emulator: &Emulator) {
    let endpoint = format!("{}{AGENT_TOKEN_PATH}", emulator.base_url());
    config.directline.token_endpoint = Some(
        endpoint
            .parse()
            .expect("the emulator's base URL and a fixed path are a URL"),
    );
    config.directline.token_endpoint_hosts = config
        .upstream
        .url
        .host()
        .map(str::to_string)
        .into_iter()
        .collect();
}

/// The `Origin` a browser sends from the page at `addr`: the address as
/// given and, for a loopback or wildcard one, `localhost` too.
fn page_origins(addr: SocketAddr) -> Vec<String> {
    let shown = reachable(addr);
    let mut origins = vec![format!("http://{shown}")];
    if shown.ip().is_loopback() {
        origins.push(format!("http://localhost:{}", addr.port()));
    }
    origins
}

/// An address a local browser can open: a wildcard bind (`0.0.0.0`, `::`)
/// is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// The emulator's secret in a file of its own, removed when dropped:
/// `directline.secret_file` is how the proxy is given a secret.
struct SecretFile(PathBuf);

impl SecretFile {
    fn write(secret: &str) -> Result<SecretFile, DemoError> {
        // Unique per start: demos in one process (tests) must not share it.
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "directline-proxy-demo-{}-{}.secret",
            std::process::id(),
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let failed = |source| DemoError::SecretFile {
            path: path.clone(),
            source,
        };
        // A stale file (or a link planted in the shared temp dir) is removed,
        // not written through.
        let _ = std::fs::remove_file(&path);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(failed)?;
        let written = SecretFile(path.clone());
        file.write_all(secret.as_bytes()).map_err(failed)?;
        Ok(written)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn walkthrough(page: &str, proxy: &str, emulator: &str, sso: bool, copilot: bool) -> String {
    let holds = if copilot {
        "it gets tokens from the emulator's Copilot Studio token endpoint"
    } else {
        "it holds the Direct Line secret"
    };
    let mints = if copilot {
        "the proxy gets a token\n  #    from the agent's token endpoint"
    } else {
        "the proxy mints a\n  #    token with the secret it holds"
    };
    let sso_part = if sso {
        format!(
            r#"
Server-side SSO is ON (provider "static", token "{DEMO_USER_TOKEN}"):
  send "signin" (on the page, or in step 2): the bot sends an OAuth card, the proxy
  exchanges the token with the bot and removes the card, so you only see
  "You are now signed in."
  Compare: poll the emulator directly ({emulator}/v3/directline/...) and the card is there,
  or restart with `directline-proxy demo --no-sso` and the card reaches you."#
        )
    } else {
        "\nServer-side SSO is OFF (--no-sso): \"signin\" shows the bot's OAuth card as it is."
            .to_string()
    };
    format!(
        r#"
directline-proxy demo
  web chat  {page}   (open it in a browser)
  proxy     {proxy}   (what clients talk to; {holds})
  emulator  {emulator}   (built-in Direct Line 3.0 emulator with a scripted bot)

Try it (another terminal):
  # 1. start a conversation through the proxy, without credentials: {mints};
  #    note that streamUrl points at the proxy
  curl -s -X POST {proxy}/v3/directline/conversations

  # 2. send a message (use the token and conversationId from step 1)
  curl -s -X POST -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \
       -d '{{"type":"message","from":{{"id":"dl_demo"}},"text":"sequence"}}' \
       {proxy}/v3/directline/conversations/$CONVERSATION_ID/activities

  # 3. read the bot's answers by polling
  curl -s -H "Authorization: Bearer $TOKEN" {proxy}/v3/directline/conversations/$CONVERSATION_ID/activities

  # 4. or open the streamUrl from step 1 with any WebSocket client, e.g. websocat "$STREAM_URL"

Bot commands: help, sequence, large, fail, signin (an OAuth card), anything else is echoed.
{sso_part}
Web Chat / DirectLineJS elsewhere: POST {proxy}/v3/directline/tokens/generate for a
token, and set domain to {proxy}/v3/directline.
Ctrl-C stops everything.
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_page_is_allowed_by_address_and_as_localhost() {
        let origins = page_origins("127.0.0.1:8081".parse().unwrap());
        assert_eq!(origins, ["http://127.0.0.1:8081", "http://localhost:8081"]);
    }

    #[test]
    fn a_wildcard_bind_is_opened_on_loopback() {
        assert_eq!(
            page_origins("0.0.0.0:9000".parse().unwrap()),
            ["http://127.0.0.1:9000", "http://localhost:9000"]
        );
        assert_eq!(
            page_origins("[::]:9000".parse().unwrap()),
            ["http://[::1]:9000", "http://localhost:9000"]
        );
    }

    #[test]
    fn a_page_on_another_address_is_allowed_by_that_address_only() {
        assert_eq!(
            page_origins("192.0.2.7:80".parse().unwrap()),
            ["http://192.0.2.7:80"]
        );
    }

    #[test]
    fn the_secret_file_holds_the_secret_until_dropped() {
        let file = SecretFile::write("emulator-secret").unwrap();
        let path = file.path().to_path_buf();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "emulator-secret");
        drop(file);
        assert!(!path.exists());
    }
}
