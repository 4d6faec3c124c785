//! `directline-proxy demo`: the built-in emulator with the proxy in front of
//! it, offline, and a printed walkthrough of what to try.

use std::future::Future;
use std::net::SocketAddr;

use thiserror::Error;

use crate::config::Config;
use crate::emulator::{Emulator, EmulatorConfig, EmulatorError};
use crate::{StartError, start};

#[derive(Debug, Error)]
pub enum DemoError {
    #[error("emulator: {0}")]
    Emulator(#[from] EmulatorError),
    #[error("proxy: {0}")]
    Proxy(#[from] StartError),
}

/// Runs until `stop` resolves, then shuts both down.
pub async fn run(listen: SocketAddr, stop: impl Future<Output = ()>) -> Result<(), DemoError> {
    let emulator = Emulator::start(EmulatorConfig::default()).await?;
    let mut config = Config::default();
    config.listen.addr = listen.to_string();
    config.upstream.url = emulator.base_url();
    let proxy = start(config).await?;
    println!(
        "{}",
        walkthrough(&proxy.base_url(), &emulator.base_url(), emulator.secret())
    );
    stop.await;
    proxy.shutdown().await;
    emulator.shutdown().await;
    Ok(())
}

fn walkthrough(proxy: &str, emulator: &str, secret: &str) -> String {
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
Web Chat / DirectLineJS: set domain to {proxy}/v3/directline and use the secret above.
Ctrl-C stops both.
"#
    )
}
