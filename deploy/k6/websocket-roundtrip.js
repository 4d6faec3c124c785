// websocket-roundtrip.js: many concurrent conversations, each listening on its
// streamUrl (the WebSocket the proxy relays) while messages are posted over
// REST; measures the round trip from the POST until the bot's reply arrives on
// the socket (Trend "message_roundtrip").
//
// Per iteration: start a conversation (secret) -> open its streamUrl ->
// MESSAGES times: post a message, wait for the reply on the socket, pause
// MESSAGE_GAP_MS -> close the socket.
//
// Run:  k6 run deploy/k6/websocket-roundtrip.js
//       k6 run -e DL_BASE=https://chat.example.com/v3/directline -e DL_SECRET=... deploy/k6/websocket-roundtrip.js
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
//   DL_REPLY_TIMEOUT_MS  how long to wait for one reply on the socket (default 10000)
//   DL_CHECK_STREAM_URL  "false" skips the check that the returned streamUrl
//                        points at DL_BASE's host (default true)
//   VUS                  concurrent conversations (default 50)
//   DURATION             test length, k6 duration syntax (default 30s)
//   MESSAGES             messages per conversation (default 5)
//   MESSAGE_GAP_MS       pause between a reply and the next message (default 200)
//   ROUNDTRIP_P95_MS     p95 bound of message_roundtrip (default 1000)
//   HTTP_P95_MS          p95 bound for the REST requests (default 1000)
//   CONNECT_P95_MS       p95 bound for the WebSocket handshake (default 1000)
//
// Thresholds: http_req_failed < 1%, checks > 99%, message_roundtrip p95,
// REST and handshake p95 bounds, and at least one complete conversation.
//
// Uses k6/experimental/websockets (k6 >= 0.40, still present in k6 1.x; newer
// k6 also offers the same API as k6/websockets).

import http from 'k6/http';
import { check } from 'k6';
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
  isReply,
  messageActivity,
  messageText,
  startConversation,
  userId,
} from './lib/directline.js';

const MESSAGES = envInt('MESSAGES', 5);
const MESSAGE_GAP_MS = envInt('MESSAGE_GAP_MS', 200);
const ROUNDTRIP_P95_MS = envInt('ROUNDTRIP_P95_MS', 1000);
const HTTP_P95_MS = envInt('HTTP_P95_MS', 1000);
const CONNECT_P95_MS = envInt('CONNECT_P95_MS', 1000);

const messageRoundtrip = new Trend('message_roundtrip', true);
const conversationsCompleted = new Counter('conversations_completed');

export const options = {
  scenarios: {
    websocket_roundtrip: {
      executor: 'constant-vus',
      vus: envInt('VUS', 50),
      duration: envStr('DURATION', '30s'),
      gracefulStop: `${Math.ceil((REPLY_TIMEOUT_MS + MESSAGE_GAP_MS) / 1000) + 5}s`,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    message_roundtrip: [`p(95)<${ROUNDTRIP_P95_MS}`],
    'http_req_duration{name:start}': [`p(95)<${HTTP_P95_MS}`],
    'http_req_duration{name:post}': [`p(95)<${HTTP_P95_MS}`],
    ws_connecting: [`p(95)<${CONNECT_P95_MS}`],
    conversations_completed: ['count>0'],
  },
  // URLs carry conversation ids and stream tokens; group by the "name" tag only.
  systemTags: ['status', 'method', 'name', 'group', 'check', 'error', 'error_code', 'scenario', 'expected_response'],
};

/** One conversation on an open stream; resolves when the socket has closed. */
function converse(conversation) {
  return new Promise((resolve) => {
    const user = userId();
    const url = activitiesUrl(conversation.conversationId);
    const post = bearer(conversation.token, { name: 'post' }, { 'Content-Type': 'application/json' });
    const ws = new WebSocket(conversation.streamUrl, null, { tags: { name: 'stream' } });

    let turn = 0;
    let pending = null; // { text, sentAt, postedId, timer }
    let seen = []; // bot messages that arrived while `pending` had no id yet ("any" mode)
    let finished = false;

    const finish = (completed) => {
      if (finished) return;
      finished = true;
      if (pending && pending.timer) clearTimeout(pending.timer);
      pending = null;
      if (completed) conversationsCompleted.add(1);
      ws.close();
    };

    const replied = (at) => {
      messageRoundtrip.add(at - pending.sentAt);
      check(true, { 'reply: arrived on the stream': (ok) => ok });
      clearTimeout(pending.timer);
      pending = null;
      seen = [];
      if (turn >= MESSAGES) {
        finish(true);
      } else {
        setTimeout(sendNext, MESSAGE_GAP_MS);
      }
    };

    const sendNext = () => {
      if (finished) return;
      turn += 1;
      const text = messageText(turn);
      const current = { text, sentAt: Date.now(), postedId: null, timer: null };
      pending = current;
      current.timer = setTimeout(() => {
        if (pending !== current) return;
        check(false, { 'reply: arrived on the stream': (ok) => ok });
        finish(false);
      }, REPLY_TIMEOUT_MS);
      http
        .asyncRequest('POST', url, messageActivity(user, text), post)
        .then((response) => {
          let id = null;
          try {
            id = response.json().id;
          } catch (_) {
            id = null;
          }
          const ok = check(response, { 'post: 200 with an id': (r) => r.status === 200 && !!id });
          if (pending !== current) return; // already answered (echo mode) or given up
          if (!ok) {
            finish(false);
            return;
          }
          current.postedId = id;
          const early = seen.find((s) => isReply(s.activity, user, text, id));
          if (early) replied(early.at);
        });
    };

    ws.onopen = () => {
      check(true, { 'stream: opened': (ok) => ok });
      sendNext();
    };

    ws.onmessage = (event) => {
      const at = Date.now();
      const activities = activitiesOf(event.data);
      if (activities === null || pending === null) return;
      for (const activity of activities) {
        if (isReply(activity, user, pending.text, pending.postedId)) {
          replied(at);
          return;
        }
        if (pending.postedId === null) seen.push({ activity, at });
      }
    };

    ws.onerror = (event) => {
      if (!finished) {
        check(false, { 'stream: no error': (ok) => ok });
        console.warn(`stream error: ${event.error}`);
        finish(false);
      }
      resolve(); // a failed handshake may never report a close
    };

    ws.onclose = () => {
      if (!finished) {
        // The server closed before the conversation was done.
        check(false, { 'stream: stayed open': (ok) => ok });
        finished = true;
        if (pending && pending.timer) clearTimeout(pending.timer);
      }
      resolve();
    };
  });
}

export default async function () {
  const conversation = startConversation();
  if (conversation === null || !conversation.streamUrl) return;
  await converse(conversation);
}
