// sso.js: server-side SSO under load. Each conversation sends the bot a
// message that makes it ask for sign-in (an OAuth card); the proxy, with an
// SSO provider configured, gets the user's token, gives it to the bot and
// removes the card. The client must see neither the card nor the proxy's own
// signin/tokenExchange invoke, only the bot's "signed in" message. Measures
// the wait sign-in adds: Trend "sso_signin_wait", from posting the message
// until the signed-in message arrives on the socket.
//
// Per iteration: start a conversation (secret) -> open its streamUrl -> post
// SSO_SIGNIN_TEXT -> read the socket until the signed-in message arrives, and
// SSO_LINGER_MS longer, counting every OAuth card attachment (Counter
// "oauth_cards_seen") and signin/tokenExchange invoke (Counter
// "token_exchange_invokes_seen") that reaches the client -> close the socket
// -> pause THINK_MS. A card on the socket ends the conversation at once: the
// proxy let it through (SSO off, the provider had no token, the bot refused
// the exchange, or the decision took longer than sso.timeout_ms), so no
// sign-in will follow.
//
// Run:  directline-proxy demo --listen 127.0.0.1:8080     (SSO is on in the demo)
//       k6 run deploy/k6/sso.js
//       k6 run -e DL_BASE=https://chat.example.com/v3/directline -e DL_SECRET=... \
//              -e SSO_SIGNIN_TEXT=login -e SSO_SIGNED_IN_TEXT="You are signed in" deploy/k6/sso.js
// Against `directline-proxy demo --no-sso` it fails: the card reaches the client.
//
// Environment variables (all optional):
//   DL_BASE               Direct Line base URL of the proxy
//                         (default http://127.0.0.1:8080/v3/directline)
//   DL_SECRET             Direct Line secret the conversations start with
//                         (default emulator-secret, the built-in emulator's)
//   DL_CHECK_STREAM_URL   "false" skips the check that the returned streamUrl
//                         points at DL_BASE's host (default true)
//   DL_STREAM_HEADERS     JSON object of extra headers for the WebSocket
//                         upgrade, which is the request the SSO provider
//                         reads the user from, e.g.
//                         '{"Cookie":"_oauth2_proxy=..."}' (sso.http
//                         forward_headers) or
//                         '{"X-Forwarded-Access-Token":"..."}' (sso.header,
//                         sso.oauth2) (default none)
//   SSO_SIGNIN_TEXT       message that makes the bot send an OAuth card
//                         (default "signin", the emulator's bot command)
//   SSO_SIGNED_IN_TEXT    text of the bot's message once signed in
//                         (default "You are now signed in.")
//   SSO_SIGNED_IN_MATCH   exact (default): the text equals SSO_SIGNED_IN_TEXT;
//                         contains: the text contains it
//   SSO_SIGNIN_TIMEOUT_MS how long to wait for the signed-in message
//                         (default DL_REPLY_TIMEOUT_MS, else 10000)
//   SSO_LINGER_MS         how long to keep reading the socket after the
//                         signed-in message, for late cards (default 500)
//   VUS                   concurrent conversations (default 10)
//   DURATION              test length, k6 duration syntax (default 30s)
//   THINK_MS              pause at the end of each conversation (default 500)
//   SIGNIN_P95_MS         p95 bound of sso_signin_wait (default 2000)
//   HTTP_P95_MS           p95 bound for the REST requests (default 1000)
//   CONNECT_P95_MS        p95 bound for the WebSocket handshake (default 1000)
//
// Thresholds: oauth_cards_seen count == 0, token_exchange_invokes_seen
// count == 0, sso_signin_wait p95, http_req_failed < 1%, checks > 99%, REST
// and handshake p95 bounds, and at least one completed sign-in.
//
// Uses k6/experimental/websockets (k6 >= 0.40, still present in k6 1.x; newer
// k6 also offers the same API as k6/websockets).

import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import { setTimeout, clearTimeout } from 'k6/timers';
import { WebSocket } from 'k6/experimental/websockets';
import {
  REPLY_TIMEOUT_MS,
  activitiesOf,
  activitiesUrl,
  bearer,
  envInt,
  envStr,
  isTokenExchangeInvoke,
  messageActivity,
  oauthCardCount,
  startConversation,
  userId,
} from './lib/directline.js';

const SIGNIN_TEXT = envStr('SSO_SIGNIN_TEXT', 'signin');
const SIGNED_IN_TEXT = envStr('SSO_SIGNED_IN_TEXT', 'You are now signed in.');
const SIGNED_IN_MATCH = envStr('SSO_SIGNED_IN_MATCH', 'exact');
const SIGNIN_TIMEOUT_MS = envInt('SSO_SIGNIN_TIMEOUT_MS', REPLY_TIMEOUT_MS);
const LINGER_MS = envInt('SSO_LINGER_MS', 500);
const THINK_MS = envInt('THINK_MS', 500);
const SIGNIN_P95_MS = envInt('SIGNIN_P95_MS', 2000);
const HTTP_P95_MS = envInt('HTTP_P95_MS', 1000);
const CONNECT_P95_MS = envInt('CONNECT_P95_MS', 1000);
const STREAM_HEADERS = streamHeaders(envStr('DL_STREAM_HEADERS', '{}'));

if (SIGNED_IN_MATCH !== 'exact' && SIGNED_IN_MATCH !== 'contains') {
  throw new Error(`SSO_SIGNED_IN_MATCH must be "exact" or "contains", not "${SIGNED_IN_MATCH}"`);
}

function streamHeaders(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (_) {
    value = null;
  }
  const valid =
    value !== null &&
    typeof value === 'object' &&
    !Array.isArray(value) &&
    Object.keys(value).every((k) => typeof value[k] === 'string');
  if (!valid) {
    // Not echoed: the value may hold a cookie or a token.
    throw new Error('DL_STREAM_HEADERS must be a JSON object of header names to string values');
  }
  return value;
}

const signinWait = new Trend('sso_signin_wait', true);
const oauthCardsSeen = new Counter('oauth_cards_seen');
const invokesSeen = new Counter('token_exchange_invokes_seen');
const conversationsCompleted = new Counter('conversations_completed');

export const options = {
  scenarios: {
    sso: {
      executor: 'constant-vus',
      vus: envInt('VUS', 10),
      duration: envStr('DURATION', '30s'),
      gracefulStop: `${Math.ceil((SIGNIN_TIMEOUT_MS + LINGER_MS + THINK_MS) / 1000) + 5}s`,
    },
  },
  thresholds: {
    // The point of the script: the user never sees a sign-in card, nor the
    // invoke that carries their token.
    oauth_cards_seen: ['count==0'],
    token_exchange_invokes_seen: ['count==0'],
    sso_signin_wait: [`p(95)<${SIGNIN_P95_MS}`],
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    'http_req_duration{name:start}': [`p(95)<${HTTP_P95_MS}`],
    'http_req_duration{name:post}': [`p(95)<${HTTP_P95_MS}`],
    ws_connecting: [`p(95)<${CONNECT_P95_MS}`],
    conversations_completed: ['count>0'],
  },
  // URLs carry conversation ids and stream tokens; group by the "name" tag only.
  systemTags: ['status', 'method', 'name', 'group', 'check', 'error', 'error_code', 'scenario', 'expected_response'],
};

/** True when `activity` is the bot's message saying the user is signed in. */
function isSignedIn(activity, user) {
  if (!activity || activity.type !== 'message' || typeof activity.text !== 'string') return false;
  if (activity.from && activity.from.id === user) return false;
  return SIGNED_IN_MATCH === 'exact' ? activity.text === SIGNED_IN_TEXT : activity.text.includes(SIGNED_IN_TEXT);
}

// A few lines per VU say which conversation leaked; the counters say how often.
let warnings = 0;
function warn(message) {
  if (warnings < 3) console.warn(message);
  warnings += 1;
}

/** One sign-in on an open stream; resolves when the socket has closed. */
function signIn(conversation) {
  return new Promise((resolve) => {
    const user = userId();
    const id = conversation.conversationId;
    const post = bearer(conversation.token, { name: 'post' }, { 'Content-Type': 'application/json' });
    const ws = new WebSocket(conversation.streamUrl, null, { headers: STREAM_HEADERS, tags: { name: 'stream' } });

    let sentAt = null; // when the sign-in message was posted
    let signedIn = false;
    let cards = 0;
    let invokes = 0;
    let timer = null;
    let settled = false;

    // Records the conversation's outcome once.
    const settle = () => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      timer = null;
      check(null, {
        'sso: signed-in message arrived': () => signedIn,
        'sso: no OAuth card reached the client': () => cards === 0,
        'sso: no signin/tokenExchange invoke reached the client': () => invokes === 0,
      });
      if (signedIn && cards === 0 && invokes === 0) conversationsCompleted.add(1);
    };

    const finish = () => {
      settle();
      ws.close();
    };

    const inspect = (activity, at) => {
      const found = oauthCardCount(activity);
      if (found > 0) {
        cards += found;
        oauthCardsSeen.add(found);
        warn(`conversation ${id}: an OAuth card reached the client (is SSO on at the proxy, and does its provider have a token for this user?)`);
      }
      if (isTokenExchangeInvoke(activity)) {
        invokes += 1;
        invokesSeen.add(1);
        warn(`conversation ${id}: a signin/tokenExchange invoke reached the client`);
      }
      if (!signedIn && sentAt !== null && isSignedIn(activity, user)) {
        signedIn = true;
        signinWait.add(at - sentAt);
        clearTimeout(timer);
        timer = setTimeout(finish, LINGER_MS);
      }
    };

    ws.onopen = () => {
      check(true, { 'stream: opened': (ok) => ok });
      sentAt = Date.now();
      timer = setTimeout(finish, SIGNIN_TIMEOUT_MS);
      http
        .asyncRequest('POST', activitiesUrl(id), messageActivity(user, SIGNIN_TEXT), post)
        .then((response) => {
          let postedId = null;
          try {
            postedId = response.json().id;
          } catch (_) {
            postedId = null;
          }
          const ok = check(response, { 'post: 200 with an id': (r) => r.status === 200 && !!postedId });
          if (!ok) finish();
        });
    };

    ws.onmessage = (event) => {
      if (settled) return;
      const at = Date.now();
      const activities = activitiesOf(event.data);
      if (activities === null) return;
      // Every activity of the set: a card beside the signed-in message counts too.
      for (const activity of activities) inspect(activity, at);
      if (cards > 0) finish(); // the user was asked to sign in: no sign-in follows
    };

    ws.onerror = (event) => {
      if (!settled) {
        check(false, { 'stream: no error': (ok) => ok });
        console.warn(`stream error: ${event.error}`);
        finish();
      }
      resolve(); // a failed handshake may never report a close
    };

    ws.onclose = () => {
      if (!settled) {
        // The server closed before the sign-in was done.
        check(false, { 'stream: stayed open': (ok) => ok });
        settle();
      }
      resolve();
    };
  });
}

export default async function () {
  // Samples of 0, so that both counters appear in the summary of a clean run.
  oauthCardsSeen.add(0);
  invokesSeen.add(0);
  const conversation = startConversation();
  if (conversation !== null && conversation.streamUrl) {
    await signIn(conversation);
  }
  if (THINK_MS > 0) sleep(THINK_MS / 1000);
}
