//! `directline-proxy demo`: the page, what it loads, and the path its script
//! takes (a token from the proxy, with the page's origin) up to a sign-in.
//! A real browser and the real clients run in `scripts/clients.sh`.

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;

use crate::common::{
    Conversation, Http, Reply, Ws, activities_until, next_activity_set, scratch_file, ws_connect,
};
use directline_proxy::demo::{Demo, DemoError, DemoOptions, WebChatSource};
use directline_proxy::emulator::{OAUTH_CARD, SIGNED_IN};

const BUNDLE: &str = "window.WebChat = { fromTheTest: true };";

fn options(sso: bool, webchat: WebChatSource) -> DemoOptions {
    let any_port = "127.0.0.1:0".parse().expect("address");
    DemoOptions {
        listen: any_port,
        page_listen: any_port,
        sso,
        copilot: false,
        webchat,
    }
}

async fn demo_with_bundle(name: &str, sso: bool) -> Demo {
    let bundle = scratch_file(name, BUNDLE);
    Demo::start(options(sso, WebChatSource::Bundle(bundle)))
        .await
        .expect("demo starts")
}

/// The page's origin, as a browser showing it sends it.
fn page_origin(demo: &Demo) -> String {
    demo.page_url().trim_end_matches('/').to_string()
}

/// What the page's script does: a token from the proxy, with no secret.
async fn token_for_page(http: &Http, demo: &Demo, origin: &str) -> (StatusCode, Value) {
    let reply = http
        .send(
            Method::POST,
            &format!("{}/v3/directline/tokens/generate", demo.proxy_url()),
            &[("origin", origin)],
            Bytes::new(),
        )
        .await;
    let body = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status, body)
}

/// Starts a conversation as the page does, says `signin`, and returns the
/// stream the answers arrive on.
async fn sign_in(http: &Http, demo: &Demo) -> Ws {
    let (status, minted) = token_for_page(http, demo, &page_origin(demo)).await;
    assert_eq!(status, StatusCode::OK, "{minted}");
    let token = minted["token"].as_str().expect("token");
    let start = http
        .post_json(
            &format!("{}/v3/directline/conversations", demo.proxy_url()),
            token,
            &Value::Null,
        )
        .await;
    assert_eq!(start.status, StatusCode::CREATED, "{}", start.text());
    let conversation = Conversation::from_reply(demo.proxy_url(), &start.json());
    let ws = ws_connect(&conversation.stream_url).await;
    assert_eq!(
        conversation.say(http, "signin").await.status,
        StatusCode::OK
    );
    ws
}

/// A file of the demo's page listener.
async fn page_file(http: &Http, demo: &Demo, name: &str) -> Reply {
    http.bare(Method::GET, &format!("{}{name}", demo.page_url()))
        .await
}

fn has_oauth_card(activities: &[Value]) -> bool {
    activities.iter().any(|a| {
        a["attachments"]
            .as_array()
            .is_some_and(|list| list.iter().any(|c| c["contentType"] == OAUTH_CARD))
    })
}

#[tokio::test]
async fn the_demo_page_loads_web_chat_from_the_bundle_and_points_it_at_the_proxy() {
    let demo = demo_with_bundle("demo-page-bundle.js", true).await;
    let http = Http::plain();
    let page = page_file(&http, &demo, "").await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    assert!(html.contains(r#"<script src="/webchat.js">"#), "{html}");
    let directline = format!(r#"data-directline="{}/v3/directline""#, demo.proxy_url());
    assert!(html.contains(&directline), "{html}");
    let csp = page.headers["content-security-policy"]
        .to_str()
        .expect("csp");
    assert!(csp.contains("script-src 'self';"), "{csp}");

    let bundle = page_file(&http, &demo, "webchat.js").await;
    assert_eq!(bundle.status, StatusCode::OK);
    assert_eq!(bundle.text(), BUNDLE);
    let script = page_file(&http, &demo, "demo.js").await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(script.text().contains("/tokens/generate"));
    demo.shutdown().await;
}

#[tokio::test]
async fn without_a_bundle_the_page_loads_web_chat_from_its_cdn() {
    let demo = Demo::start(options(true, WebChatSource::Cdn))
        .await
        .expect("demo starts");
    let http = Http::plain();
    let html = page_file(&http, &demo, "").await.text();
    assert!(
        html.contains(
            r#"src="https://cdn.botframework.com/botframework-webchat/latest/webchat.js""#
        ),
        "{html}"
    );
    let bundle = page_file(&http, &demo, "webchat.js").await;
    assert_eq!(bundle.status, StatusCode::NOT_FOUND);
    demo.shutdown().await;
}

#[tokio::test]
async fn the_page_gets_a_token_from_the_proxy_and_other_pages_do_not() {
    let demo = demo_with_bundle("demo-origins-bundle.js", true).await;
    let http = Http::plain();
    for origin in [
        page_origin(&demo),
        page_origin(&demo).replace("127.0.0.1", "localhost"),
    ] {
        let (status, minted) = token_for_page(&http, &demo, &origin).await;
        assert_eq!(status, StatusCode::OK, "{origin}: {minted}");
        assert!(minted["token"].is_string(), "{minted}");
        assert!(!minted.to_string().contains("emulator-secret"));
    }
    let (status, _) = token_for_page(&http, &demo, "http://evil.example").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    demo.shutdown().await;
}

#[tokio::test]
async fn signin_on_the_demo_signs_in_without_a_card() {
    let demo = demo_with_bundle("demo-sso-bundle.js", true).await;
    let mut ws = sign_in(&Http::plain(), &demo).await;
    let seen = activities_until(&mut ws, SIGNED_IN).await;
    assert!(!has_oauth_card(&seen), "a card reached the page: {seen:?}");
    demo.shutdown().await;
}

#[tokio::test]
async fn the_copilot_demo_gets_the_pages_token_from_the_agent_endpoint_and_signs_in_without_a_card()
{
    let bundle = scratch_file("demo-copilot-bundle.js", BUNDLE);
    let demo = Demo::start(DemoOptions {
        copilot: true,
        ..options(true, WebChatSource::Bundle(bundle))
    })
    .await
    .expect("demo starts");
    let http = Http::plain();
    let mut ws = sign_in(&http, &demo).await;
    let seen = activities_until(&mut ws, SIGNED_IN).await;
    assert!(!has_oauth_card(&seen), "a card reached the page: {seen:?}");
    let asked = |path: &str| {
        demo.emulator()
            .requests()
            .iter()
            .filter(|r| r.path_and_query.starts_with(path))
            .count()
    };
    assert_eq!(asked("/powervirtualagents/botsbyschema/"), 1);
    assert_eq!(asked("/v3/directline/tokens/generate"), 0, "no secret used");
    let (status, _) = token_for_page(&http, &demo, "https://evil.example").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another page gets no token");
    assert_eq!(asked("/powervirtualagents/botsbyschema/"), 1);
    demo.shutdown().await;
}

#[tokio::test]
async fn signin_on_the_demo_without_sso_shows_the_card() {
    let demo = demo_with_bundle("demo-no-sso-bundle.js", false).await;
    let mut ws = sign_in(&Http::plain(), &demo).await;
    loop {
        let set = next_activity_set(&mut ws).await;
        let activities = set["activities"].as_array().cloned().unwrap_or_default();
        assert!(
            !activities.iter().any(|a| a["text"] == SIGNED_IN),
            "signed in without SSO: {set}"
        );
        if has_oauth_card(&activities) {
            break;
        }
    }
    demo.shutdown().await;
}

#[tokio::test]
async fn a_missing_bundle_fails_the_start_naming_the_file() {
    let missing = std::env::temp_dir().join("dlproxy-test-no-such-webchat.js");
    let error = Demo::start(options(true, WebChatSource::Bundle(missing)))
        .await
        .err()
        .expect("the start fails");
    assert!(matches!(error, DemoError::Page(_)), "{error}");
    assert!(error.to_string().contains("no-such-webchat.js"), "{error}");
}
