// The real botframework-directlinejs client (Node) against the proxy.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { CARD_TEXT, SIGNED_IN, WELCOME } from './lib/bot.mjs';
import { Client, hasOAuthCard } from './lib/directline.mjs';
import { startDemo, startSplitStack, stopAll } from './lib/processes.mjs';

const SECONDS = 1000;

after(stopAll);

/** Says `signin` and waits for "You are now signed in."; returns what arrived meanwhile. */
async function signIn(client) {
  const from = client.received.length;
  await client.say('signin');
  await client.botSaid(SIGNED_IN, { from });
  return client.received.slice(from);
}

describe('DirectLineJS through directline-proxy demo', { timeout: 120 * SECONDS }, () => {
  let demo;
  before(async () => {
    demo = await startDemo();
  });
  after(() => demo?.stop());

  for (const webSocket of [true, false]) {
    describe(webSocket ? 'over the WebSocket' : 'polling', () => {
      let client;
      before(async () => {
        client = await Client.connect(demo.domain, { webSocket });
      });
      after(() => client?.end());

      test('the welcome arrives', async () => {
        await client.botSaid(WELCOME);
        if (webSocket) {
          assert.ok(
            client.directLine.streamUrl.startsWith(demo.domain.replace('http://', 'ws://')),
            `the stream bypasses the proxy: ${client.directLine.streamUrl}`
          );
        }
      });

      test('a message is echoed', async () => {
        const from = client.received.length;
        await client.say('hello from DirectLineJS');
        await client.botSaid('You said: hello from DirectLineJS', { from });
      });

      test('signin signs in and no OAuth card reaches the client', async () => {
        const arrived = await signIn(client);
        assert.equal(arrived.filter(hasOAuthCard).length, 0, `a card arrived: ${client.summary()}`);
      });
    });
  }
});

describe('DirectLineJS through directline-proxy demo --no-sso', { timeout: 60 * SECONDS }, () => {
  let demo, client;
  before(async () => {
    demo = await startDemo({ sso: false });
    client = await Client.connect(demo.domain);
  });
  after(async () => {
    client?.end();
    await demo?.stop();
  });

  test('signin shows the OAuth card', async () => {
    await client.botSaid(WELCOME);
    const from = client.received.length;
    await client.say('signin');
    const card = await client.oauthCard({ from });
    assert.equal(card.attachments[0].content.text, CARD_TEXT);
    assert.ok(!client.received.some((a) => a.text === SIGNED_IN), 'signed in without SSO');
  });
});

describe('DirectLineJS when the proxy restarts', { timeout: 180 * SECONDS }, () => {
  let stack, client;
  before(async () => {
    stack = await startSplitStack();
    client = await Client.connect(stack.domain);
    await client.botSaid(WELCOME);
  });
  after(async () => {
    client?.end();
    await stack?.stop();
  });

  for (const [how, signal] of [
    ['stopped gracefully (SIGTERM)', 'SIGTERM'],
    ['killed (SIGKILL)', 'SIGKILL'],
  ]) {
    test(`the client resumes after the proxy is ${how} and started again on its port`, async () => {
      const before = client.received.length;
      await stack.restartProxy(signal);
      await client.online();
      // Answers arrive only on the stream, so the echo shows that the
      // client opened a new one through the new proxy.
      const from = client.received.length;
      await client.say(`after the ${signal} restart`);
      await client.botSaid(`You said: after the ${signal} restart`, { from, seconds: 60 });
      const ids = client.received.map((a) => a.id);
      assert.equal(new Set(ids).size, ids.length, `an activity arrived twice: ${client.summary()}`);
      assert.ok(client.received.length > before);
    });
  }

  test('after the restarts, signin still signs in without a card', async () => {
    const arrived = await signIn(client);
    assert.equal(arrived.filter(hasOAuthCard).length, 0, `a card arrived: ${client.summary()}`);
  });
});
