//! One simulated chat client: start a conversation through the proxy, read
//! it on the WebSocket stream (or by polling), post numbered messages,
//! sometimes `signin exchange`, sometimes reconnect, close; then check
//! every activity that came back against what was posted.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use directline_proxy::emulator::{BOT_ID, OAUTH_CARD, SIGNED_IN, WELCOME};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Method, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::provider::Mode;
use crate::rng::Rng;
use crate::world::World;

const SECRET: &str = "emulator-secret";
/// How long the echo of everything posted may take to come back.
const SETTLE: Duration = Duration::from_secs(10);
/// How long a sign-in may take to end in "signed in" or the card (the
/// proxy's `sso.timeout_ms` is 3 s).
const SIGN_IN_WAIT: Duration = Duration::from_secs(12);
const POLL_INTERVAL: Duration = Duration::from_millis(700);
const SIGN_IN_TEXT: &str = "signin exchange";

/// What one client will do.
pub struct Plan {
    label: String,
    user: String,
    polling: bool,
    steps: Vec<Step>,
    /// Close the stream and reconnect with the watermark after this step.
    reconnect_after: Option<usize>,
    think: Vec<Duration>,
}

enum Step {
    Say(String),
    SignIn,
}

impl Plan {
    pub fn random(rng: &mut Rng, slot: usize, n: u64) -> Plan {
        let label = format!("s{slot}.{n}");
        let polling = rng.chance(0.2);
        let count = rng.range(3, 7) as usize;
        let sign_in_at = rng
            .chance(0.4)
            .then(|| rng.range(0, count as u64 - 1) as usize);
        let nonce = rng.next_u64() & 0xffff_ffff;
        let steps = (0..count)
            .map(|k| {
                if Some(k) == sign_in_at {
                    Step::SignIn
                } else {
                    Step::Say(format!("soak {label} #{k} {nonce:08x}"))
                }
            })
            .collect();
        let reconnect_after =
            (!polling && rng.chance(0.2)).then(|| rng.range(0, count as u64 - 2) as usize);
        let think = (0..count)
            .map(|_| Duration::from_millis(rng.range(300, 2000)))
            .collect();
        Plan {
            user: format!("dl_soak_{slot}_{n}_{nonce:08x}"),
            label,
            polling,
            steps,
            reconnect_after,
            think,
        }
    }
}

/// What came back, as the client understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Welcome,
    Echo(String),
    Reply(String),
    SignedIn,
    Card,
    /// An invoke reaching the client: it would carry the user's token.
    Invoke,
    Other(String),
}

/// What must come back, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    Welcome,
    Echo(String),
    Reply(String),
    SignedIn,
    Card,
    /// The provider changed state during the sign-in: either outcome.
    CardOrSignedIn,
}

impl Want {
    fn matches(&self, seen: &Seen) -> bool {
        match (self, seen) {
            (Want::Welcome, Seen::Welcome)
            | (Want::SignedIn, Seen::SignedIn)
            | (Want::Card, Seen::Card)
            | (Want::CardOrSignedIn, Seen::Card | Seen::SignedIn) => true,
            (Want::Echo(a), Seen::Echo(b)) | (Want::Reply(a), Seen::Reply(b)) => a == b,
            _ => false,
        }
    }
}

struct Observed {
    id: String,
    seen: Seen,
}

/// The observed activities matched against the wanted ones.
struct Matching {
    matched: u64,
    lost: Vec<Want>,
    /// Activity id and what it was.
    reordered: Vec<(String, Seen)>,
    unexpected: Vec<(String, Seen)>,
}

fn match_up(wants: &[Want], observed: &[Observed]) -> Matching {
    let mut used = vec![false; wants.len()];
    let mut highest: Option<usize> = None;
    let mut matching = Matching {
        matched: 0,
        lost: Vec::new(),
        reordered: Vec::new(),
        unexpected: Vec::new(),
    };
    for o in observed {
        let found = (0..wants.len()).find(|&i| !used[i] && wants[i].matches(&o.seen));
        let Some(i) = found else {
            matching.unexpected.push((o.id.clone(), o.seen.clone()));
            continue;
        };
        used[i] = true;
        matching.matched += 1;
        if highest.is_some_and(|h| i < h) {
            matching.reordered.push((o.id.clone(), o.seen.clone()));
        } else {
            highest = Some(i);
        }
    }
    matching.lost = wants
        .iter()
        .zip(&used)
        .filter(|(_, used)| !**used)
        .map(|(w, _)| w.clone())
        .collect();
    matching
}

/// Why a conversation ended early.
enum Stop {
    /// An upstream kill overlapped it: nothing is checked.
    Interrupted,
    Request(String),
    Stream(String),
}

enum Event {
    Text(String),
    Closed(String),
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Stream {
    sink: SplitSink<Socket, Message>,
    events: mpsc::UnboundedReceiver<Event>,
}

#[derive(Deserialize)]
struct ActivitySet<'a> {
    #[serde(borrow)]
    activities: Vec<&'a RawValue>,
    #[serde(default)]
    watermark: Option<String>,
}

/// One sign-in as it happened.
struct SignIn {
    /// The provider's mode throughout the sign-in, if it did not change.
    mode: Option<Mode>,
    granted: bool,
}

struct Conversation<'w> {
    world: &'w World,
    label: String,
    user: String,
    cookie: String,
    polling: bool,
    epoch: u64,
    id: String,
    token: String,
    wants: Vec<Want>,
    observed: Vec<Observed>,
    ids: HashSet<String>,
    duplicates: Vec<String>,
    /// Cards that came through the proxy: id and exact bytes.
    cards: Vec<(String, String)>,
    cards_changed: Vec<String>,
    watermark: Option<String>,
    stream: Option<Stream>,
    sign_in: Option<SignIn>,
    posted: u64,
}

/// Runs one conversation to its end and adds what it found to the stats.
pub async fn run(world: &World, plan: Plan) {
    let stats = &world.stats;
    let c = &stats.counters;
    stats.inc(&c.conversations_started);
    stats.inc(&c.conversations_live);
    let mut conversation = Conversation {
        world,
        label: plan.label.clone(),
        cookie: format!("soak_user={}", plan.user),
        user: plan.user.clone(),
        polling: plan.polling,
        epoch: world.epoch(),
        id: String::new(),
        token: String::new(),
        wants: Vec::new(),
        observed: Vec::new(),
        ids: HashSet::new(),
        duplicates: Vec::new(),
        cards: Vec::new(),
        cards_changed: Vec::new(),
        watermark: None,
        stream: None,
        sign_in: None,
        posted: 0,
    };
    let mut result = conversation.drive(&plan).await;
    if result.is_ok() {
        result = conversation.close_stream().await;
    }
    if conversation.interrupted() {
        result = Err(Stop::Interrupted);
    }
    match result {
        Ok(()) => conversation.verify(),
        Err(Stop::Interrupted) => stats.inc(&c.conversations_interrupted),
        Err(Stop::Request(what)) => {
            stats.inc(&c.request_errors);
            stats.fail(format!("{} ({}): {what}", plan.label, conversation.id));
        }
        Err(Stop::Stream(what)) => {
            stats.inc(&c.stream_errors);
            stats.fail(format!("{} ({}): {what}", plan.label, conversation.id));
        }
    }
    stats.dec(&c.conversations_live);
}

impl Conversation<'_> {
    fn interrupted(&self) -> bool {
        self.epoch % 2 == 1 || self.world.epoch() != self.epoch
    }

    fn request_failed(&self, what: String) -> Stop {
        if self.interrupted() {
            Stop::Interrupted
        } else {
            Stop::Request(what)
        }
    }

    fn stream_failed(&self, what: String) -> Stop {
        if self.interrupted() {
            Stop::Interrupted
        } else {
            Stop::Stream(what)
        }
    }

    fn headers(&self) -> [(&str, String); 2] {
        [
            ("authorization", format!("Bearer {}", self.token)),
            ("cookie", self.cookie.clone()),
        ]
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        what: &str,
        expect: StatusCode,
    ) -> Result<crate::web::Answer, Stop> {
        let headers = self.headers();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let answer = self
            .world
            .web
            .send(method, url, &headers, body)
            .await
            .map_err(|e| self.request_failed(format!("{what}: {e}")))?;
        if answer.status != expect {
            return Err(self.request_failed(format!("{what}: {}", answer.describe())));
        }
        Ok(answer)
    }

    fn url(&self, suffix: &str) -> String {
        format!(
            "{}/v3/directline/conversations/{}{suffix}",
            self.world.proxy, self.id
        )
    }

    async fn drive(&mut self, plan: &Plan) -> Result<(), Stop> {
        let c = &self.world.stats.counters;
        self.start().await?;
        if self.polling {
            self.world.stats.inc(&c.polling_conversations);
        } else {
            self.world.stats.inc(&c.stream_conversations);
        }
        for (k, step) in plan.steps.iter().enumerate() {
            if self.world.stopping() {
                break;
            }
            tokio::time::sleep(plan.think[k]).await;
            match step {
                Step::Say(text) => {
                    self.post(text).await?;
                    self.wants.push(Want::Echo(text.clone()));
                    self.wants.push(Want::Reply(text.clone()));
                    if self.polling {
                        self.wait(SETTLE, |c| c.pending() == 0).await?;
                    }
                }
                Step::SignIn => self.sign_in().await?,
            }
            if plan.reconnect_after == Some(k) {
                self.reconnect().await?;
            }
        }
        self.wait(SETTLE, |c| c.pending() == 0).await?;
        self.compare_cards().await
    }

    async fn start(&mut self) -> Result<(), Stop> {
        let body = json!({ "user": { "id": self.user }, "locale": "en-US" });
        self.token = SECRET.into();
        let url = format!("{}/v3/directline/conversations", self.world.proxy);
        let answer = self
            .send(
                Method::POST,
                &url,
                Some(&body),
                "start",
                StatusCode::CREATED,
            )
            .await?;
        let json = answer.json().unwrap_or_default();
        let (Some(id), Some(token), Some(stream_url)) = (
            json["conversationId"].as_str(),
            json["token"].as_str(),
            json["streamUrl"].as_str(),
        ) else {
            return Err(self.request_failed(format!("start: {}", answer.describe())));
        };
        self.id = id.into();
        self.token = token.into();
        self.wants.push(Want::Welcome);
        if !self.polling {
            let stream_url = stream_url.to_string();
            self.connect(&stream_url).await?;
        }
        Ok(())
    }

    async fn connect(&mut self, url: &str) -> Result<(), Stop> {
        let mut request = url
            .into_client_request()
            .map_err(|e| Stop::Stream(format!("stream URL {url:.80}: {e}")))?;
        let cookie = HeaderValue::from_str(&self.cookie)
            .map_err(|e| Stop::Stream(format!("cookie: {e}")))?;
        request.headers_mut().insert(http::header::COOKIE, cookie);
        let connected = tokio::time::timeout(
            crate::web::REQUEST_TIMEOUT,
            tokio_tungstenite::connect_async(request),
        )
        .await;
        let socket = match connected {
            Ok(Ok((socket, _))) => socket,
            Ok(Err(e)) => return Err(self.stream_failed(format!("stream handshake: {e}"))),
            Err(_) => return Err(self.stream_failed("stream handshake timed out".into())),
        };
        let (sink, source) = socket.split();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(read_stream(source, tx));
        self.stream = Some(Stream { sink, events });
        Ok(())
    }

    async fn post(&mut self, text: &str) -> Result<(), Stop> {
        self.posted += 1;
        let activity = json!({
            "type": "message",
            "from": { "id": self.user },
            "locale": "en-US",
            "text": text,
            "channelData": { "clientActivityID": format!("{}-{}", self.label, self.posted) },
        });
        let url = self.url("/activities");
        self.send(Method::POST, &url, Some(&activity), "post", StatusCode::OK)
            .await?;
        let stats = &self.world.stats;
        stats.inc(&stats.counters.messages_posted);
        Ok(())
    }

    /// `signin exchange`: the bot answers with an OAuth card. With the
    /// provider up the proxy must exchange it (no card, "signed in"); in
    /// an outage the card must come through unchanged.
    async fn sign_in(&mut self) -> Result<(), Stop> {
        let began = Instant::now();
        self.post(SIGN_IN_TEXT).await?;
        self.wants.push(Want::Echo(SIGN_IN_TEXT.into()));
        self.wait(SIGN_IN_WAIT, |c| {
            c.observed
                .iter()
                .any(|o| matches!(o.seen, Seen::Card | Seen::SignedIn))
        })
        .await?;
        let provider = &self.world.provider;
        let mode = provider.steady_mode(began, Instant::now());
        self.wants.push(match mode {
            Some(Mode::Up) => Want::SignedIn,
            Some(_) => Want::Card,
            None => Want::CardOrSignedIn,
        });
        self.sign_in = Some(SignIn {
            mode,
            granted: provider.granted(&self.id),
        });
        Ok(())
    }

    /// Closes the stream, asks for the conversation again with the last
    /// watermark seen, and opens the new `streamUrl`.
    async fn reconnect(&mut self) -> Result<(), Stop> {
        self.close_stream().await?;
        let query = self
            .watermark
            .as_ref()
            .map(|w| format!("?watermark={w}"))
            .unwrap_or_default();
        let url = self.url(&query);
        let answer = self
            .send(Method::GET, &url, None, "reconnect", StatusCode::OK)
            .await?;
        let json = answer.json().unwrap_or_default();
        let (Some(token), Some(stream_url)) = (json["token"].as_str(), json["streamUrl"].as_str())
        else {
            return Err(self.request_failed(format!("reconnect: {}", answer.describe())));
        };
        self.token = token.into();
        let stream_url = stream_url.to_string();
        self.connect(&stream_url).await?;
        let stats = &self.world.stats;
        stats.inc(&stats.counters.reconnects);
        Ok(())
    }

    /// Our own close: the peer's close frame must come back (activities
    /// still in flight are read first).
    async fn close_stream(&mut self) -> Result<(), Stop> {
        let Some(mut stream) = self.stream.take() else {
            return Ok(());
        };
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "soak client done".into(),
        };
        if let Err(e) = stream.sink.send(Message::Close(Some(frame))).await {
            return Err(self.stream_failed(format!("sending close: {e}")));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, stream.events.recv()).await {
                Ok(Some(Event::Text(text))) => self.absorb(&text),
                Ok(Some(Event::Closed(_)) | None) => return Ok(()),
                Err(_) => {
                    return Err(self.stream_failed("no close frame within 5 s of ours".into()));
                }
            }
        }
    }

    /// Reads the stream (or polls) until `done` or `within` has passed.
    async fn wait(&mut self, within: Duration, done: fn(&Self) -> bool) -> Result<bool, Stop> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if done(self) {
                return Ok(true);
            }
            if self.polling {
                if tokio::time::Instant::now() >= deadline {
                    return Ok(false);
                }
                self.poll().await?;
                if done(self) {
                    return Ok(true);
                }
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
            let Some(stream) = self.stream.as_mut() else {
                return Ok(false);
            };
            match tokio::time::timeout_at(deadline, stream.events.recv()).await {
                Err(_) => return Ok(false),
                Ok(Some(Event::Text(text))) => self.absorb(&text),
                Ok(Some(Event::Closed(why))) => {
                    self.stream = None;
                    return Err(self.stream_failed(format!("stream closed by the proxy: {why}")));
                }
                Ok(None) => {
                    self.stream = None;
                    return Err(self.stream_failed("stream reader ended".into()));
                }
            }
        }
    }

    async fn poll(&mut self) -> Result<(), Stop> {
        let query = self
            .watermark
            .as_ref()
            .map(|w| format!("?watermark={w}"))
            .unwrap_or_default();
        let url = self.url(&format!("/activities{query}"));
        let answer = self
            .send(Method::GET, &url, None, "poll", StatusCode::OK)
            .await?;
        let stats = &self.world.stats;
        stats.inc(&stats.counters.polls);
        self.absorb(&String::from_utf8_lossy(&answer.body));
        Ok(())
    }

    /// Takes in one ActivitySet (a stream message or a poll body).
    fn absorb(&mut self, text: &str) {
        let set: ActivitySet = match serde_json::from_str(text) {
            Ok(set) => set,
            Err(_) => {
                let cut: String = text.chars().take(80).collect();
                self.observed.push(Observed {
                    id: String::new(),
                    seen: Seen::Other(format!("not an ActivitySet: {cut}")),
                });
                return;
            }
        };
        if let Some(watermark) = set.watermark {
            self.watermark = Some(watermark);
        }
        for raw in set.activities {
            let activity: Value = serde_json::from_str(raw.get()).unwrap_or_default();
            let id = activity["id"].as_str().unwrap_or_default().to_string();
            let seen = self.classify(&activity);
            if !id.is_empty() && !self.ids.insert(id.clone()) {
                self.duplicates.push(format!("{id} {seen:?}"));
                continue;
            }
            if seen == Seen::Card {
                self.cards.push((id.clone(), raw.get().to_string()));
            }
            self.observed.push(Observed { id, seen });
        }
    }

    fn classify(&self, activity: &Value) -> Seen {
        let kind = activity["type"].as_str().unwrap_or_default();
        let from = activity["from"]["id"].as_str().unwrap_or_default();
        let text = activity["text"].as_str().unwrap_or_default();
        if kind == "invoke" {
            return Seen::Invoke;
        }
        if kind != "message" {
            return Seen::Other(format!("a {kind:?} activity"));
        }
        if from == self.user {
            return Seen::Echo(text.into());
        }
        if from != BOT_ID {
            return Seen::Other(format!("a message from {from:?}"));
        }
        let card = activity["attachments"]
            .as_array()
            .is_some_and(|list| list.iter().any(|a| a["contentType"] == OAUTH_CARD));
        if card {
            return Seen::Card;
        }
        match text.strip_prefix("You said: ") {
            Some(said) => Seen::Reply(said.into()),
            None if text == WELCOME => Seen::Welcome,
            None if text == SIGNED_IN => Seen::SignedIn,
            None => Seen::Other(format!("bot text {text:.60}")),
        }
    }

    fn pending(&self) -> usize {
        match_up(&self.wants, &self.observed).lost.len()
    }

    /// Every card that came through must be byte for byte what the
    /// emulator holds (fail open means the original bytes).
    async fn compare_cards(&mut self) -> Result<(), Stop> {
        if self.cards.is_empty() {
            return Ok(());
        }
        let url = format!(
            "{}/v3/directline/conversations/{}/activities",
            self.world.emulator, self.id
        );
        let answer = self
            .send(Method::GET, &url, None, "direct poll", StatusCode::OK)
            .await?;
        let body = String::from_utf8_lossy(&answer.body).into_owned();
        let Ok(set) = serde_json::from_str::<ActivitySet>(&body) else {
            return Err(self.request_failed("direct poll: not an ActivitySet".into()));
        };
        for (id, through_proxy) in &self.cards {
            let original = set.activities.iter().find(|raw| {
                serde_json::from_str::<Value>(raw.get())
                    .is_ok_and(|a| a["id"].as_str() == Some(id.as_str()))
            });
            match original {
                Some(raw) if raw.get() == through_proxy => {}
                Some(raw) => self.cards_changed.push(format!(
                    "card {id} changed: {} bytes through the proxy, {} sent",
                    through_proxy.len(),
                    raw.get().len()
                )),
                None => self
                    .cards_changed
                    .push(format!("card {id} is not in the emulator's log")),
            }
        }
        Ok(())
    }

    /// Adds this conversation's findings to the stats.
    fn verify(&self) {
        let stats = &self.world.stats;
        let c = &stats.counters;
        let matching = match_up(&self.wants, &self.observed);
        let invokes = matching
            .unexpected
            .iter()
            .filter(|(_, s)| *s == Seen::Invoke)
            .count() as u64;
        let card_seen = self.observed.iter().any(|o| o.seen == Seen::Card);
        let signed_in = self.observed.iter().any(|o| o.seen == Seen::SignedIn);
        let card_while_up = card_seen
            && self
                .sign_in
                .as_ref()
                .is_some_and(|s| s.mode == Some(Mode::Up));
        stats.inc(&c.conversations_verified);
        stats.add(&c.messages_verified, self.posted);
        stats.add(&c.activities_verified, matching.matched);
        stats.add(&c.lost, matching.lost.len() as u64);
        stats.add(&c.duplicated, self.duplicates.len() as u64);
        stats.add(&c.reordered, matching.reordered.len() as u64);
        stats.add(&c.unexpected, matching.unexpected.len() as u64 - invokes);
        stats.add(&c.invoke_leaks, invokes);
        stats.add(&c.cards_changed, self.cards_changed.len() as u64);
        if card_while_up {
            stats.inc(&c.cards_while_up);
        }
        if let Some(sign_in) = &self.sign_in {
            if signed_in {
                stats.inc(&c.signins);
            }
            if card_seen {
                stats.inc(&c.cards_shown);
            }
            if sign_in.mode.is_none() {
                stats.inc(&c.signins_ambiguous);
            }
        }
        let clean = matching.lost.is_empty()
            && matching.reordered.is_empty()
            && matching.unexpected.is_empty()
            && self.duplicates.is_empty()
            && self.cards_changed.is_empty()
            && !card_while_up;
        if !clean {
            let mode = self.sign_in.as_ref().map(|s| {
                format!(
                    "sign-in with the provider {}, token {}",
                    s.mode.map_or("changing", Mode::name),
                    if s.granted { "given" } else { "not given" }
                )
            });
            stats.fail(format!(
                "{} ({}, {}): lost {:?}, duplicated {:?}, reordered {:?}, unexpected {:?}, \
                 cards changed {:?}{}; {} activities wanted",
                self.label,
                self.id,
                if self.polling { "polling" } else { "stream" },
                matching.lost,
                self.duplicates,
                matching.reordered,
                matching.unexpected,
                self.cards_changed,
                mode.map(|m| format!(", {m}")).unwrap_or_default(),
                self.wants.len(),
            ));
        }
    }
}

/// Forwards the stream's text messages (keep-alives dropped) until it ends.
async fn read_stream(mut source: SplitStream<Socket>, events: mpsc::UnboundedSender<Event>) {
    while let Some(message) = source.next().await {
        match message {
            Ok(Message::Text(text)) if text.is_empty() => {}
            Ok(Message::Text(text)) => {
                if events.send(Event::Text(text.as_str().to_string())).is_err() {
                    return;
                }
            }
            Ok(Message::Close(frame)) => {
                let why = frame.map_or_else(
                    || "close without a code".to_string(),
                    |f| format!("close {} {}", u16::from(f.code), f.reason),
                );
                let _ = events.send(Event::Closed(why));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = events.send(Event::Closed(format!("error: {e}")));
                return;
            }
        }
    }
    let _ = events.send(Event::Closed("the connection ended".into()));
}
