// The real `botframework-directlinejs` client in Node, talking to the proxy.
// DirectLineJS is written for browsers: it needs XMLHttpRequest and a global
// WebSocket, which `xhr2` and `ws` provide here.

import XMLHttpRequest from 'xhr2';
import { WebSocket } from 'ws';

import { OAUTH_CARD } from './bot.mjs';

globalThis.XMLHttpRequest = XMLHttpRequest;
globalThis.WebSocket = WebSocket;
const { DirectLine, ConnectionStatus } = (await import('botframework-directlinejs')).default;

export { ConnectionStatus };

/** A token from the proxy, which mints it with the secret it holds. */
export async function tokenFromProxy(domain) {
  const answer = await fetch(`${domain}/tokens/generate`, { method: 'POST' });
  if (!answer.ok) throw new Error(`POST ${domain}/tokens/generate answered ${answer.status}`);
  const { token } = await answer.json();
  return token;
}

export function hasOAuthCard(activity) {
  return (activity.attachments ?? []).some((a) => a.contentType === OAUTH_CARD);
}

/** One DirectLineJS conversation and everything it received. */
export class Client {
  /** `webSocket: false` polls instead of streaming. */
  static async connect(domain, { webSocket = true } = {}) {
    return new Client(domain, await tokenFromProxy(domain), webSocket);
  }

  constructor(domain, token, webSocket) {
    this.directLine = new DirectLine({
      domain,
      token,
      webSocket,
      // Short waits, so a reconnect takes seconds: the WebSocket retry waits
      // 3 s + random() * 12 s, a failed reconnect `timeout` ms.
      timeout: 2000,
      random: () => 0,
      pollingInterval: 300,
    });
    this.received = [];
    this.statuses = [];
    this.waiters = new Set();
    this.directLine.connectionStatus$.subscribe((status) => {
      this.statuses.push(status);
      this.notify();
    });
    this.directLine.activity$.subscribe({
      next: (activity) => {
        this.received.push(activity);
        this.notify();
      },
      error: (error) => {
        this.failure = error;
        this.notify();
      },
    });
  }

  get status() {
    return this.statuses.at(-1);
  }

  /** Sends a message as the user; resolves with its id. */
  say(text) {
    return new Promise((resolve, reject) => {
      this.directLine
        .postActivity({ type: 'message', from: { id: 'dl_node_client', role: 'user' }, text })
        .subscribe({ next: resolve, error: (e) => reject(new Error(`posting "${text}" failed: ${e.message ?? e}`)) });
    });
  }

  /** The first activity whose text includes `text`, at or after `from`. */
  botSaid(text, { from = 0, seconds = 20 } = {}) {
    return this.until(`the bot to say "${text}"`, seconds, () =>
      this.received.slice(from).find((a) => a.text?.includes(text))
    );
  }

  /** The first OAuth card from the bot, at or after `from`. */
  oauthCard({ from = 0, seconds = 20 } = {}) {
    return this.until('an OAuth card', seconds, () => this.received.slice(from).find(hasOAuthCard));
  }

  online(seconds = 60) {
    return this.until('the connection to be online', seconds, () => this.status === ConnectionStatus.Online || undefined);
  }

  /** Resolves with `found()`'s first truthy value; rejects after `seconds`, saying what did arrive. */
  until(what, seconds, found) {
    return new Promise((resolve, reject) => {
      const waiter = () => {
        const value = found();
        if (value) {
          finish();
          resolve(value);
        } else if (this.failure) {
          finish();
          reject(new Error(`waiting for ${what}: the client failed: ${this.failure.message ?? this.failure}`));
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`waiting for ${what}: nothing after ${seconds} s; ${this.summary()}`));
      }, seconds * 1000);
      const finish = () => {
        clearTimeout(timer);
        this.waiters.delete(waiter);
      };
      this.waiters.add(waiter);
      waiter();
    });
  }

  notify() {
    for (const waiter of [...this.waiters]) waiter();
  }

  summary() {
    const seen = this.received.map((a) => (hasOAuthCard(a) ? '[OAuth card]' : JSON.stringify(a.text ?? a.type)));
    const statuses = this.statuses.map((s) => ConnectionStatus[s]);
    return `connection ${statuses.join(' > ')}; received ${seen.join(', ') || 'nothing'}`;
  }

  end() {
    this.directLine.end();
  }
}
