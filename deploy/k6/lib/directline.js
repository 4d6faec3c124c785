// Shared helpers for the Direct Line k6 scripts: settings from the
// environment, starting a conversation, posting a message, reading stream
// messages and recognising the bot's answer, OAuth cards and sign-in
// invokes. Each script documents the variables it reads.

import http from 'k6/http';
import { check } from 'k6';

/** Integer from the environment, or `fallback` when unset or not a number. */
export function envInt(name, fallback) {
  const value = parseInt(__ENV[name], 10);
  return Number.isFinite(value) ? value : fallback;
}

/** String from the environment, or `fallback` when unset or empty. */
export function envStr(name, fallback) {
  const value = __ENV[name];
  return value === undefined || value === '' ? fallback : value;
}

export const BASE = envStr('DL_BASE', 'http://127.0.0.1:8080/v3/directline').replace(/\/+$/, '');
export const SECRET = envStr('DL_SECRET', 'emulator-secret');
// "echo": the reply is the bot message "<DL_ECHO_PREFIX><text>" (the built-in
// emulator's bot). "any": the reply is any message not from the user whose
// replyToId is the posted activity's id (botbuilder bots set it by default).
export const REPLY_MODE = envStr('DL_REPLY_MODE', 'echo');
export const ECHO_PREFIX = __ENV.DL_ECHO_PREFIX === undefined ? 'You said: ' : __ENV.DL_ECHO_PREFIX;
export const REPLY_TIMEOUT_MS = envInt('DL_REPLY_TIMEOUT_MS', 10000);
// The proxy rewrites streamUrl to its own address; check it did (set to
// "false" when DL_BASE is not the address the proxy advertises, e.g. when
// listen.public_url names another host).
export const CHECK_STREAM_URL = envStr('DL_CHECK_STREAM_URL', 'true') !== 'false';

if (REPLY_MODE !== 'echo' && REPLY_MODE !== 'any') {
  throw new Error(`DL_REPLY_MODE must be "echo" or "any", not "${REPLY_MODE}"`);
}

/** `scheme://host:port` of a URL, without the default-port distinction. */
function origin(url) {
  const match = /^([a-z]+):\/\/([^/?#]+)/i.exec(url || '');
  return match ? { scheme: match[1].toLowerCase(), host: match[2].toLowerCase() } : null;
}

/** True when `streamUrl` points at the same host as DL_BASE, with ws(s). */
export function streamUrlPointsAtProxy(streamUrl) {
  if (!CHECK_STREAM_URL) return true;
  const base = origin(BASE);
  const stream = origin(streamUrl);
  if (!base || !stream) return false;
  const expectedScheme = base.scheme === 'https' ? 'wss' : 'ws';
  return stream.scheme === expectedScheme && stream.host === base.host;
}

export function bearer(token, tags, extra) {
  return {
    headers: Object.assign({ Authorization: `Bearer ${token}` }, extra || {}),
    tags,
  };
}

function json(response) {
  try {
    return response.json();
  } catch (_) {
    return null;
  }
}

/** A user id Direct Line accepts (the `dl_` prefix is the documented one). */
export function userId() {
  return `dl_k6_${__VU}_${__ITER}_${Math.random().toString(36).slice(2, 8)}`;
}

/** A message text unique to this VU, iteration and turn. */
export function messageText(turn) {
  return `k6 ${__VU}-${__ITER}-${turn} ${Math.random().toString(36).slice(2, 10)}`;
}

/**
 * POST /conversations with the secret. Returns `{ conversationId, token,
 * streamUrl }` or null (the failed checks say why).
 */
export function startConversation() {
  const response = http.post(`${BASE}/conversations`, null, bearer(SECRET, { name: 'start' }));
  const body = json(response);
  check(response, {
    'start: 201 or 200': (r) => r.status === 201 || r.status === 200,
    'start: token and conversationId': () => !!(body && body.token && body.conversationId),
    'start: streamUrl points at the proxy': () => !!(body && streamUrlPointsAtProxy(body.streamUrl)),
  });
  if (!body || !body.token || !body.conversationId) return null;
  return body;
}

/** The activity a user sends. */
export function messageActivity(user, text) {
  return JSON.stringify({ type: 'message', from: { id: user }, text });
}

export function activitiesUrl(conversationId) {
  return `${BASE}/conversations/${encodeURIComponent(conversationId)}/activities`;
}

/** Activities of one stream message; null for keep-alives and non-JSON. */
export function activitiesOf(data) {
  if (typeof data !== 'string' || data.trim() === '') return null; // keep-alive
  try {
    const set = JSON.parse(data);
    return set && Array.isArray(set.activities) ? set.activities : null;
  } catch (_) {
    return null;
  }
}

/** Content type of a bot's OAuth (sign-in) card attachment. */
export const OAUTH_CARD = 'application/vnd.microsoft.card.oauth';

/** How many OAuth card attachments `activity` carries. */
export function oauthCardCount(activity) {
  const attachments = activity && Array.isArray(activity.attachments) ? activity.attachments : [];
  return attachments.filter((a) => a && typeof a.contentType === 'string' && a.contentType.toLowerCase() === OAUTH_CARD).length;
}

/** True for a `signin/tokenExchange` invoke (what the proxy sends the bot). */
export function isTokenExchangeInvoke(activity) {
  return !!activity && activity.type === 'invoke' && activity.name === 'signin/tokenExchange';
}

/** True when `activity` is the bot's answer to `text` (posted with id `postedId`). */
export function isReply(activity, user, text, postedId) {
  if (!activity || activity.type !== 'message') return false;
  if (activity.from && activity.from.id === user) return false;
  if (REPLY_MODE === 'any') return !!postedId && activity.replyToId === postedId;
  return activity.text === `${ECHO_PREFIX}${text}`;
}
