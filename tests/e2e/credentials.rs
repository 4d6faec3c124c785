//! The Direct Line secret stays on the server: minting and credential-less
//! starts get it upstream, nothing else does, and tokens can be bound to
//! the user the ingress authenticated.

use bytes::Bytes;
use directline_proxy::config::Config;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::process::ProxyProcess;
use crate::common::{Http, Stack, quiet_emulator};
use directline_proxy::emulator::Emulator;

/// The secret in a file, with the trailing newline mounted Secrets often have.
fn secret_in_file(config: &mut Config, name: &str, secret: &str) {
    let path = crate::common::scratch_file(name, &format!("{secret}\n"));
    config.directline.secret_file = Some(path);
}

async fn stack_holding_the_secret(var: &str, adjust: impl FnOnce(&mut Config)) -> Stack {
    let emulator = quiet_emulator();
    let secret = emulator.secret.clone();
    Stack::start_with(emulator, move |c| {
        secret_in_file(c, var, &secret);
        adjust(c);
    })
    .await
}

fn upstream_authorizations(stack: &Stack, path: &str) -> Vec<Option<String>> {
    stack
        .emulator
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query.starts_with(path))
        .map(|r| {
            r.headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn minting_without_credentials_uses_the_server_secret() {
    let stack = stack_holding_the_secret("TEST_DL_SECRET_MINT", |_| {}).await;
    let reply = stack
        .http
        .bare(
            Method::POST,
            &stack.proxy_url("/v3/directline/tokens/generate"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let token = reply.json()["token"].as_str().expect("token").to_string();
    assert!(
        !reply.text().contains(&stack.secret()),
        "the secret never reaches the client"
    );
    let expected = format!("Bearer {}", stack.secret());
    assert_eq!(
        upstream_authorizations(&stack, "/v3/directline/tokens/generate"),
        vec![Some(expected)]
    );

    // The minted token works for the rest of the conversation, through the proxy.
    let start = stack
        .post_with_token("/v3/directline/conversations", &token)
        .await;
    assert_eq!(start.status, StatusCode::CREATED);
    assert_eq!(
        upstream_authorizations(&stack, "/v3/directline/conversations")
            .last()
            .cloned()
            .flatten(),
        Some(format!("Bearer {token}")),
        "a client's own credentials are forwarded as they are"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_start_without_credentials_uses_a_minted_token_and_only_minting_carries_the_secret() {
    let stack = stack_holding_the_secret("TEST_DL_SECRET_START", |_| {}).await;
    let start = stack
        .http
        .bare(
            Method::POST,
            &stack.proxy_url("/v3/directline/conversations"),
        )
        .await;
    assert_eq!(start.status, StatusCode::CREATED, "{}", start.text());
    let id = start.json()["conversationId"]
        .as_str()
        .expect("id")
        .to_string();
    let poll_path = format!("/v3/directline/conversations/{id}/activities");
    let poll = stack
        .http
        .bare(Method::GET, &stack.proxy_url(&poll_path))
        .await;
    assert_eq!(
        poll.status,
        StatusCode::UNAUTHORIZED,
        "no secret added to a poll"
    );
    let refresh = stack
        .http
        .bare(
            Method::POST,
            &stack.proxy_url("/v3/directline/tokens/refresh"),
        )
        .await;
    assert_eq!(refresh.status, StatusCode::UNAUTHORIZED);
    let secret = stack.secret();
    for request in stack.emulator.requests() {
        let carries_secret = request
            .headers
            .get("authorization")
            .is_some_and(|v| v.to_str().is_ok_and(|v| v.contains(&secret)));
        if carries_secret {
            assert_eq!(
                request.path_and_query, "/v3/directline/tokens/generate",
                "the secret only mints the start's token"
            );
        }
    }
    let mint = stack
        .emulator
        .requests()
        .into_iter()
        .find(|r| r.path_and_query == "/v3/directline/tokens/generate")
        .expect("a token was minted for the start");
    let user: Value = serde_json::from_slice(&mint.body).expect("mint body");
    let user = user["user"]["id"].as_str().expect("a user id").to_string();
    assert!(user.starts_with("dl_") && user.len() == 35, "{user}");
    stack.shutdown().await;
}

async fn mint_as(stack: &Stack, user: Option<&str>, body: &Value) -> (StatusCode, Option<String>) {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(user) = user {
        headers.push(("x-forwarded-user", user));
    }
    let reply = stack
        .http
        .send(
            Method::POST,
            &stack.proxy_url("/v3/directline/tokens/generate"),
            &headers,
            body.to_string(),
        )
        .await;
    let sent = stack
        .emulator
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path_and_query == "/v3/directline/tokens/generate")
        .map(|r| serde_json::from_slice::<Value>(&r.body).expect("json body"))
        .and_then(|b| b["user"]["id"].as_str().map(str::to_string));
    (
        reply.status,
        sent.filter(|_| reply.status == StatusCode::OK),
    )
}

#[tokio::test]
async fn tokens_are_bound_to_the_authenticated_user() {
    let stack = stack_holding_the_secret("TEST_DL_SECRET_BIND", |c| {
        c.directline.user_id_header = Some(http::HeaderName::from_static("x-forwarded-user"));
    })
    .await;
    let chosen =
        json!({"user": {"id": "dl_i-choose-who-i-am"}, "trustedOrigins": ["https://a.example"]});
    let (status, alice) = mint_as(&stack, Some("alice@example.com"), &chosen).await;
    assert_eq!(status, StatusCode::OK);
    let alice = alice.expect("user id sent upstream");
    assert!(alice.starts_with("dl_"), "{alice}");
    assert!(!alice.contains("alice"), "not reversible: {alice}");
    assert_ne!(
        alice, "dl_i-choose-who-i-am",
        "the client's choice is ignored"
    );
    let (_, again) = mint_as(&stack, Some("alice@example.com"), &json!({})).await;
    assert_eq!(again.as_deref(), Some(alice.as_str()), "stable");
    let (_, bob) = mint_as(&stack, Some("bob@example.com"), &json!({})).await;
    assert_ne!(bob.as_deref(), Some(alice.as_str()));
    let sent = stack
        .emulator
        .requests()
        .into_iter()
        .find(|r| r.path_and_query == "/v3/directline/tokens/generate")
        .expect("first mint");
    let body: Value = serde_json::from_slice(&sent.body).expect("json");
    assert_eq!(
        body["trustedOrigins"][0], "https://a.example",
        "other fields are kept"
    );

    let (status, _) = mint_as(&stack, None, &json!({})).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "no authenticated user, no token"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn minting_is_rate_limited_per_client() {
    let stack = stack_holding_the_secret("TEST_DL_SECRET_RATE", |c| {
        c.directline.user_id_header = Some(http::HeaderName::from_static("x-forwarded-user"));
        c.directline.mint_rate_per_minute = 1;
        c.directline.mint_burst = 2;
    })
    .await;
    assert_eq!(
        mint_as(&stack, Some("carol"), &json!({})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        mint_as(&stack, Some("carol"), &json!({})).await.0,
        StatusCode::OK
    );
    let before = stack.emulator.requests().len();
    let reply = stack
        .http
        .send(
            Method::POST,
            &stack.proxy_url("/v3/directline/tokens/generate"),
            &[("x-forwarded-user", "carol")],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.json()["error"]["code"], "TooManyRequests");
    let retry_after: u64 = reply.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        stack.emulator.requests().len(),
        before,
        "refused before the upstream"
    );
    assert_eq!(
        mint_as(&stack, Some("dave"), &json!({})).await.0,
        StatusCode::OK,
        "per client"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_missing_secret_source_is_a_clear_start_error() {
    let mut config = crate::common::proxy_config("http://127.0.0.1:9");
    config.directline.secret_env = Some("TEST_DL_SECRET_THAT_IS_NOT_SET".into());
    let error = directline_proxy::start(config)
        .await
        .err()
        .expect("start fails");
    assert!(
        error.to_string().contains("TEST_DL_SECRET_THAT_IS_NOT_SET"),
        "{error}"
    );
}

/// `secret_env` through the real binary: the variable is set on the child
/// process only, so no test has to change its own environment.
#[tokio::test]
async fn the_binary_reads_the_secret_from_the_named_environment_variable() {
    let emulator = Emulator::start(quiet_emulator()).await.expect("emulator");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("config.toml");
    let config = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[directline]\nsecret_env = \"DL_SECRET_FOR_THE_CHILD\"\n[reload]\nwatch_interval_ms = 0\n",
        emulator.base_url()
    );
    std::fs::write(&path, config).expect("write");
    let secret = format!(" {}\n", emulator.secret());
    let mut process =
        ProxyProcess::spawn_with_env(&path, &[("DL_SECRET_FOR_THE_CHILD", secret.as_str())]);
    let base = process.listening().await;
    let reply = Http::plain()
        .bare(
            Method::POST,
            &format!("{base}/v3/directline/tokens/generate"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let mint = emulator
        .requests()
        .into_iter()
        .find(|r| r.path_and_query == "/v3/directline/tokens/generate")
        .expect("the mint reached the upstream");
    let expected = format!("Bearer {}", emulator.secret());
    assert_eq!(mint.headers["authorization"], expected.as_str());
    emulator.shutdown().await;
}

#[tokio::test]
async fn with_binding_a_start_without_credentials_uses_a_bound_token_not_the_secret() {
    let stack = stack_holding_the_secret("start-binding", |c| {
        c.directline.user_id_header = Some(http::HeaderName::from_static("x-forwarded-user"));
    })
    .await;
    let start = stack
        .http
        .send(
            Method::POST,
            &stack.proxy_url("/v3/directline/conversations"),
            &[
                ("x-forwarded-user", "erin@example.com"),
                ("content-type", "application/json"),
            ],
            json!({"user": {"id": "dl_pretender"}, "locale": "en-US"}).to_string(),
        )
        .await;
    assert_eq!(start.status, StatusCode::CREATED, "{}", start.text());
    let minted = stack
        .emulator
        .requests()
        .into_iter()
        .find(|r| r.path_and_query == "/v3/directline/tokens/generate")
        .expect("a bound token was minted");
    let bound: Value = serde_json::from_slice(&minted.body).expect("json");
    let bound_id = bound["user"]["id"].as_str().expect("user id").to_string();
    assert!(bound_id.starts_with("dl_") && bound_id != "dl_pretender");
    let started = stack
        .emulator
        .requests()
        .into_iter()
        .find(|r| r.path_and_query == "/v3/directline/conversations")
        .expect("start");
    let auth = started.headers["authorization"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        !auth.contains(&stack.secret()),
        "the start used the bound token"
    );
    assert!(
        !started.headers.contains_key("x-forwarded-user"),
        "the user header is consumed"
    );

    // Whatever the client claims, Direct Line now speaks for the bound user.
    let token = start.json()["token"].as_str().expect("token").to_string();
    let id = start.json()["conversationId"]
        .as_str()
        .expect("id")
        .to_string();
    let url = stack.proxy_url(&format!("/v3/directline/conversations/{id}/activities"));
    let posted = stack
        .http
        .post_json(
            &url,
            &token,
            &json!({"type": "message", "from": {"id": "dl_pretender"}, "text": "hi"}),
        )
        .await;
    assert_eq!(posted.status, StatusCode::OK);
    let activities = stack.http.get(&url, &token).await.json();
    let mine = activities["activities"]
        .as_array()
        .expect("activities")
        .iter()
        .find(|a| a["text"] == "hi")
        .cloned()
        .expect("the message");
    assert_eq!(mine["from"]["id"], bound_id.as_str());
    stack.shutdown().await;
}

#[tokio::test]
async fn behind_a_trusted_ingress_the_rate_limit_keys_on_the_address_it_added() {
    let stack = stack_holding_the_secret("rate-xff", |c| {
        c.listen.trust_forwarded_headers = true;
        c.directline.mint_rate_per_minute = 1;
        c.directline.mint_burst = 1;
    })
    .await;
    let mint = |claimed: &'static str| {
        let url = stack.proxy_url("/v3/directline/tokens/generate");
        let http = &stack.http;
        async move {
            let xff = format!("{claimed}, 203.0.113.9");
            http.send(
                Method::POST,
                &url,
                &[("x-forwarded-for", &xff)],
                Bytes::new(),
            )
            .await
            .status
        }
    };
    assert_eq!(mint("10.0.0.1").await, StatusCode::OK);
    assert_eq!(
        mint("10.0.0.2").await,
        StatusCode::TOO_MANY_REQUESTS,
        "a different claimed address does not buy a new bucket"
    );
    stack.shutdown().await;
}
