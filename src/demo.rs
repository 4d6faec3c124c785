//! `directline-proxy demo`: the built-in emulator with the proxy in front of
//! it, offline, and a printed walkthrough of what to try.

use std::future::Future;
use std::net::SocketAddr;

use thiserror::Error;

use crate::config::{Config, ProviderKind, StaticProviderConfig};
use crate::emulator::{Emulator, EmulatorConfig, EmulatorError};
use crate::{StartError, start};

#[derive(Debug, Error)]
pub enum DemoError {
    #[error("emulator: {0}")]
    Emulator(#[from] EmulatorError),
    #[error("proxy: {0}")]
    Proxy(#[from] StartError),
}

/// The token the demo provider hands out; the emulator's bot accepts it.
const DEMO_USER_TOKEN: &str = "demo-user-token";

/// The proxy config the demo runs: the emulator upstream and, unless
/// `sso` is false, a static provider whose token the emulator's bot accepts.
pub fn config(listen: SocketAddr, emulator: &Emulator, sso: bool) -> Config {
    let mut config = Config::default();
    config.listen.addr = listen;
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
        let sas = format!("{}/sas/", emulator.base_url());
        config.sso.token_post_allow_hosts.push(sas);
    }
    config
}

/// Runs until `stop` resolves, then shuts both down.
pub async fn run(
    listen: SocketAddr,
    sso: bool,
    stop: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    let emulator = Emulator::start(EmulatorConfig {
        accepted_sso_tokens: vec![DEMO_USER_TOKEN.into()],
        ..EmulatorConfig::default()
    })
    .await?;
    let proxy = start(config(listen, &emulator, sso)).await?;
    let (proxy_url, emulator_url) = (proxy.base_url(), emulator.base_url());
    println!(
        "{}",
        walkthrough(&proxy_url, &emulator_url, emulator.secret(), sso)
    );
    stop.await;
    proxy.shutdown().await;
    emulator.shutdown().await;
    Ok(())
}

fn walkthrough(proxy: &str, emulator: &str, secret: &str, sso: bool) -> String {
    let sso_part = if sso {
        format!(
            r#"
Server-side SSO is ON (provider "static", token "{DEMO_USER_TOKEN}"):
  send "signin" in step 2: the bot sends an OAuth card, the proxy exchanges the
  token with the bot and removes the card, so you only see "You are now signed in."
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
  proxy     {proxy}   (what clients talk to)
  emulator  {emulator}   (built-in Direct Line 3.0 emulator with a scripted bot)
  secret    {secret}

Try it (another terminal):
  # 1. start a conversation through the proxy; note that streamUrl points at the proxy
  curl -s -X POST -H "Authorization: Bearer {secret}" {proxy}/v3/directline/conversations

  # 2. send a message (use the token and conversationId from step 1)
  curl -s -X POST -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \
       -d '{{"type":"message","from":{{"id":"dl_demo"}},"text":"sequence"}}' \
       {proxy}/v3/directline/conversations/$CONVERSATION_ID/activities

  # 3. read the bot's answers by polling
  curl -s -H "Authorization: Bearer $TOKEN" {proxy}/v3/directline/conversations/$CONVERSATION_ID/activities

  # 4. or open the streamUrl from step 1 with any WebSocket client, e.g. websocat "$STREAM_URL"

Bot commands: help, sequence, large, fail, signin (an OAuth card), anything else is echoed.
{sso_part}
Web Chat / DirectLineJS: set domain to {proxy}/v3/directline and use the secret above.
Ctrl-C stops both.
"#
    )
}
