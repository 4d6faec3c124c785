// rest-lifecycle.js: one Direct Line conversation per iteration over the REST
// API only (what a client does when WebSockets are blocked):
//   start conversation (secret) -> read the welcome -> post a message ->
//   poll until the bot's reply -> refresh the token -> reconnect ->
//   post again with the refreshed token -> poll until the reply.
//
// Run:  k6 run deploy/k6/rest-lifecycle.js
//       k6 run -e DL_BASE=https://chat.example.com/v3/directline -e DL_SECRET=... deploy/k6/rest-lifecycle.js
//
// Environment variables (all optional):
//   DL_BASE              Direct Line base URL of the proxy
//                        (default http://127.0.0.1:8080/v3/directline)
//   DL_SECRET            Direct Line secret the conversations start with
//                        (default emulator-secret, the built-in emulator's)
//   DL_REPLY_MODE        echo (default): the reply is "<DL_ECHO_PREFIX><text>",
//                        as the emulator's bot answers; any: any message not
//                        from the user whose replyToId is the posted activity
//   DL_ECHO_PREFIX       prefix of the echo (default "You said: ")
//   DL_REPLY_TIMEOUT_MS  how long to poll for a reply (default 10000)
//   DL_POLL_INTERVAL_MS  pause between polls (default 250)
//   DL_CHECK_STREAM_URL  "false" skips the check that the returned streamUrl
//                        points at DL_BASE's host (default true)
//   VUS                  concurrent conversations (default 10)
//   DURATION             test length, k6 duration syntax (default 30s)
//   THINK_MS             pause at the end of each conversation (default 500)
//   HTTP_P95_MS          p95 bound for every request kind (default 1000)
//   REPLY_P95_MS         p95 bound for post -> reply seen by polling (default 3000)
//
// Thresholds: http_req_failed < 1%, checks > 99%, p95 bounds per request kind
// (tag "name": start, poll, post, refresh, reconnect) and for the reply time,
// and at least one complete conversation.

import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import {
  BASE,
  REPLY_TIMEOUT_MS,
  activitiesUrl,
  bearer,
  envInt,
  envStr,
  isReply,
  messageActivity,
  messageText,
  startConversation,
  streamUrlPointsAtProxy,
  userId,
} from './lib/directline.js';

const POLL_INTERVAL_MS = envInt('DL_POLL_INTERVAL_MS', 250);
const THINK_MS = envInt('THINK_MS', 500);
const HTTP_P95_MS = envInt('HTTP_P95_MS', 1000);
const REPLY_P95_MS = envInt('REPLY_P95_MS', 3000);

const replyByPolling = new Trend('reply_by_polling', true);
const conversationsCompleted = new Counter('conversations_completed');

export const options = {
  scenarios: {
    rest_lifecycle: {
      executor: 'constant-vus',
      vus: envInt('VUS', 10),
      duration: envStr('DURATION', '30s'),
      gracefulStop: `${Math.ceil((2 * REPLY_TIMEOUT_MS) / 1000) + 5}s`,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    'http_req_duration{name:start}': [`p(95)<${HTTP_P95_MS}`],
    'http_req_duration{name:poll}': [`p(95)<${HTTP_P95_MS}`],
    'http_req_duration{name:post}': [`p(95)<${HTTP_P95_MS}`],
    'http_req_duration{name:refresh}': [`p(95)<${HTTP_P95_MS}`],
    'http_req_duration{name:reconnect}': [`p(95)<${HTTP_P95_MS}`],
    reply_by_polling: [`p(95)<${REPLY_P95_MS}`],
    conversations_completed: ['count>0'],
  },
  // URLs carry conversation ids; group them by the "name" tag only.
  systemTags: ['status', 'method', 'name', 'group', 'check', 'error', 'error_code', 'scenario', 'expected_response'],
};

/** GET activities after `watermark`; returns `{ activities, watermark }` or null. */
function poll(conversationId, token, watermark) {
  const query = watermark === undefined || watermark === null ? '' : `?watermark=${encodeURIComponent(watermark)}`;
  const response = http.get(`${activitiesUrl(conversationId)}${query}`, bearer(token, { name: 'poll' }));
  if (response.status !== 200) {
    check(response, { 'poll: 200': (r) => r.status === 200 });
    return null;
  }
  try {
    const set = response.json();
    return { activities: set.activities || [], watermark: set.watermark };
  } catch (_) {
    check(null, { 'poll: ActivitySet JSON': () => false });
    return null;
  }
}

/**
 * Posts a message and polls until the bot's reply. Returns the new watermark,
 * or undefined when the reply did not come (a failed check).
 */
function turn(conversationId, token, user, watermark, turnNumber) {
  const text = messageText(turnNumber);
  const sentAt = Date.now();
  const posted = http.post(
    activitiesUrl(conversationId),
    messageActivity(user, text),
    bearer(token, { name: 'post' }, { 'Content-Type': 'application/json' }),
  );
  let postedId = null;
  try {
    postedId = posted.json().id;
  } catch (_) {
    postedId = null;
  }
  const accepted = check(posted, {
    'post: 200 with an id': (r) => r.status === 200 && !!postedId,
  });
  if (!accepted) return undefined;

  let mark = watermark;
  while (Date.now() - sentAt < REPLY_TIMEOUT_MS) {
    const set = poll(conversationId, token, mark);
    if (set === null) return undefined;
    if (set.watermark !== undefined && set.watermark !== null) mark = set.watermark;
    if (set.activities.some((a) => isReply(a, user, text, postedId))) {
      replyByPolling.add(Date.now() - sentAt);
      check(true, { 'reply: arrived by polling': (ok) => ok });
      return mark;
    }
    sleep(POLL_INTERVAL_MS / 1000);
  }
  check(false, { 'reply: arrived by polling': (ok) => ok });
  return undefined;
}

export default function () {
  const user = userId();
  const conversation = startConversation();
  if (conversation === null) return;
  const id = conversation.conversationId;

  // The first poll returns what is already there (an emulator conversation
  // starts with the bot's welcome) and the watermark to continue from.
  const first = poll(id, conversation.token, null);
  if (first === null) return;

  let mark = turn(id, conversation.token, user, first.watermark, 1);
  if (mark === undefined) return;

  const refreshed = http.post(`${BASE}/tokens/refresh`, null, bearer(conversation.token, { name: 'refresh' }));
  let fresh = null;
  try {
    fresh = refreshed.json();
  } catch (_) {
    fresh = null;
  }
  const refreshOk = check(refreshed, {
    'refresh: 200': (r) => r.status === 200,
    'refresh: a token for the same conversation': () => !!(fresh && fresh.token && fresh.conversationId === id),
  });
  if (!refreshOk) return;

  const reconnectUrl = `${BASE}/conversations/${encodeURIComponent(id)}?watermark=${encodeURIComponent(mark || '')}`;
  const reconnected = http.get(reconnectUrl, bearer(fresh.token, { name: 'reconnect' }));
  let again = null;
  try {
    again = reconnected.json();
  } catch (_) {
    again = null;
  }
  const reconnectOk = check(reconnected, {
    'reconnect: 200': (r) => r.status === 200,
    'reconnect: same conversation with a token': () => !!(again && again.token && again.conversationId === id),
    'reconnect: streamUrl points at the proxy': () => !!(again && streamUrlPointsAtProxy(again.streamUrl)),
  });
  if (!reconnectOk) return;

  // The refreshed token must carry the rest of the conversation.
  mark = turn(id, fresh.token, user, mark, 2);
  if (mark === undefined) return;

  conversationsCompleted.add(1);
  sleep(THINK_MS / 1000);
}
