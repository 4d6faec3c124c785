//! The config with environment overrides (`Config::from_toml`) on arbitrary
//! text and `DLPROXY_*` variables.
//!
//! Input: the TOML text, then optionally, after a NUL byte, NUL-separated
//! `NAME=VALUE` environment entries. A plain config file is a valid input,
//! so the shipped `config.toml` seeds the corpus.
//!
//! Checked: never a panic; an accepted config validates again, and what the
//! proxy derives from it at start (the public base, WebSocket limits, origin
//! and host lists, seal keys, the decision cache, quotas, warnings) is
//! derived without a panic or an error.
#![no_main]

use std::path::Path;

use directline_proxy::config::Config;
use directline_proxy::directline::quota::Quotas;
use directline_proxy::directline::relay::FrameLimits;
use directline_proxy::directline::stream_url::PublicBase;
use directline_proxy::origin::OriginPolicy;
use directline_proxy::sso::allow_list::AllowList;
use directline_proxy::sso::decisions::Decisions;
use directline_proxy::sso::seal::Sealer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let mut parts = bytes.splitn(2, |b| *b == 0);
    let text = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let env: Vec<(String, String)> = parts
        .next()
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (name, value) = entry.split_once('=')?;
            Some((name.to_string(), value.to_string()))
        })
        .collect();
    let Ok(config) = Config::from_toml(&text, Path::new("fuzz.toml"), env) else {
        return;
    };
    config
        .validate()
        .expect("an accepted config does not validate");
    // Addresses, URLs and durations are typed: accepted means parsed.
    let _ = config
        .listen
        .public_url
        .as_ref()
        .and_then(PublicBase::from_config);
    let _ = Quotas::new(&config.limits);
    let _ = FrameLimits::from_config(&config.websocket);
    let _ = OriginPolicy::new(&config.listen.allowed_origins);
    let _ = AllowList::new(&config.sso.token_post_allow_hosts);
    let _ = Decisions::new(config.sso.decision_ttl, config.sso.decision_capacity);
    if !config.sso.seal_keys.is_empty() {
        Sealer::new(&config.sso.seal_keys, config.sso.decision_ttl)
            .expect("accepted seal keys do not make a sealer");
    }
    let _ = config.warnings();
});
