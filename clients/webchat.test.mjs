// Web Chat (botframework-webchat's dist/webchat.js, served by the demo with
// --webchat-bundle) in Debian's headless Chromium, driven by playwright-core.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { CARD_TEXT, SIGNED_IN, WELCOME } from './lib/bot.mjs';
import { startDemo, stopAll } from './lib/processes.mjs';

const SECONDS = 1000;
const CHROMIUM = process.env.CLIENTS_CHROMIUM || '/usr/bin/chromium';
// Not among the package's exports: found by path.
const BUNDLE = fileURLToPath(new URL('node_modules/botframework-webchat/dist/webchat.js', import.meta.url));
const SCREENSHOT = process.env.CLIENTS_SCREENSHOT;

after(stopAll);

let browser;
before(async () => {
  // --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
});
after(() => browser?.close());

/** The demo's page in a fresh tab; collects page errors and CSP violations. */
async function openPage(demo) {
  const page = await browser.newPage({ viewport: { width: 720, height: 540 } });
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && message.text().includes('Content Security Policy')) {
      problems.push(`CSP: ${message.text()}`);
    }
  });
  await page.goto(demo.page);
  return { page, problems };
}

/** Types `text` into Web Chat's send box and sends it. */
async function say(page, text) {
  const box = page.getByRole('textbox').first();
  await box.fill(text);
  await box.press('Enter');
}

function shown(page, text) {
  return page.getByText(text).first().waitFor({ timeout: 20 * SECONDS });
}

describe('Web Chat in Chromium through directline-proxy demo', { timeout: 120 * SECONDS }, () => {
  let demo, page, problems;
  before(async () => {
    demo = await startDemo({ bundle: BUNDLE });
    ({ page, problems } = await openPage(demo));
  });
  after(() => demo?.stop());

  test('the page renders Web Chat with its send box', async () => {
    await page.getByRole('textbox').first().waitFor({ timeout: 20 * SECONDS });
    assert.equal(await page.locator('#status').textContent(), '', 'the page reported a problem');
  });

  test('the welcome is shown', async () => {
    await shown(page, WELCOME);
  });

  test('a message is echoed', async () => {
    await say(page, 'hello from Web Chat');
    await shown(page, 'You said: hello from Web Chat');
  });

  test('signin signs in and no card is shown', async () => {
    await say(page, 'signin');
    await shown(page, SIGNED_IN);
    assert.equal(await page.getByText(CARD_TEXT).count(), 0, 'the OAuth card is shown');
    assert.equal(await page.getByRole('button', { name: 'Sign in' }).count(), 0, 'a sign-in button is shown');
    if (SCREENSHOT) {
      mkdirSync(dirname(SCREENSHOT), { recursive: true });
      await page.screenshot({ path: SCREENSHOT });
    }
  });

  test('the page ran without errors or Content-Security-Policy violations', () => {
    assert.deepEqual(problems, []);
  });
});

describe('Web Chat in Chromium through directline-proxy demo --no-sso', { timeout: 60 * SECONDS }, () => {
  let demo, page;
  before(async () => {
    demo = await startDemo({ sso: false, bundle: BUNDLE });
    ({ page } = await openPage(demo));
  });
  after(() => demo?.stop());

  test('signin shows the sign-in card', async () => {
    await shown(page, WELCOME);
    await say(page, 'signin');
    await shown(page, CARD_TEXT);
    await page.getByRole('button', { name: 'Sign in' }).first().waitFor({ timeout: 5 * SECONDS });
    assert.equal(await page.getByText(SIGNED_IN).count(), 0, 'signed in without SSO');
  });
});
