// The processes the client checks run against: `directline-proxy demo`, or
// the emulator and the proxy as separate processes (so the proxy can restart
// while Direct Line keeps the conversation). Every process started here is
// killed when this one exits, however it exits.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const BIN = required('CLIENTS_PROXY_BIN');
export const OUT = required('CLIENTS_OUT');
/** The Direct Line secret `directline-proxy emulator` accepts. */
const EMULATOR_SECRET = 'emulator-secret';
/** The user token the emulator's bot accepts (as in the demo). */
const USER_TOKEN = 'demo-user-token';

const running = new Set();
process.on('exit', () => {
  for (const child of running) child.process.kill('SIGKILL');
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(130));
}

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run scripts/clients.sh)`);
  return value;
}

/** This environment without DLPROXY_* variables: the proxy reads each as a config override. */
function childEnvironment() {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('DLPROXY_')));
}

/** Stops every process still running (a test file's last `after`). */
export async function stopAll() {
  await Promise.all([...running].map((child) => child.stop()));
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A child process whose output goes to `OUT/<name>.log`. */
class Child {
  constructor(name, args, env = {}) {
    mkdirSync(OUT, { recursive: true });
    this.name = name;
    this.log = join(OUT, `${name}.log`);
    const log = createWriteStream(this.log, { flags: 'a' });
    this.process = spawn(BIN, args, {
      env: { ...childEnvironment(), NO_COLOR: '1', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.process.stdout.pipe(log);
    this.process.stderr.pipe(log);
    this.exited = new Promise((resolve) => this.process.on('exit', (code, signal) => resolve({ code, signal })));
    running.add(this);
    this.exited.then(() => running.delete(this));
  }

  /** Until GET `url` answers `status` (any status: `null`); fails if the process exits first. */
  async ready(url, status = 200, seconds = 30) {
    let dead = false;
    this.exited.then(() => (dead = true));
    const deadline = Date.now() + seconds * 1000;
    while (Date.now() < deadline) {
      if (dead) throw new Error(`${this.name} exited before it was ready; see ${this.log}`);
      try {
        const answer = await fetch(url);
        if (status === null || answer.status === status) return;
      } catch {
        // not listening yet
      }
      await sleep(100);
    }
    throw new Error(`${this.name} was not ready at ${url} within ${seconds} s; see ${this.log}`);
  }

  async stop(signal = 'SIGTERM') {
    if (this.process.exitCode === null && this.process.signalCode === null) {
      this.process.kill(signal);
    }
    return this.exited;
  }
}

/**
 * `directline-proxy demo` on free ports. Returns the proxy's Direct Line
 * base (`domain` for DirectLineJS), the page's URL, and `stop()`.
 */
export async function startDemo({ sso = true, bundle } = {}) {
  const [proxyPort, pagePort] = [await freePort(), await freePort()];
  const args = ['demo', '--listen', `127.0.0.1:${proxyPort}`, '--page-listen', `127.0.0.1:${pagePort}`];
  if (!sso) args.push('--no-sso');
  if (bundle) args.push('--webchat-bundle', bundle);
  const demo = new Child(sso ? 'demo' : 'demo-no-sso', args);
  await demo.ready(`http://127.0.0.1:${proxyPort}/healthz`);
  await demo.ready(`http://127.0.0.1:${pagePort}/`);
  return {
    domain: `http://127.0.0.1:${proxyPort}/v3/directline`,
    page: `http://127.0.0.1:${pagePort}/`,
    stop: () => demo.stop(),
  };
}

/**
 * The emulator, and the proxy in front of it as its own process with the
 * demo's settings, so that the proxy can be restarted on the same port:
 * `restartProxy(signal)` stops it with `signal` and starts it again.
 */
export async function startSplitStack() {
  const [emulatorPort, proxyPort] = [await freePort(), await freePort()];
  const emulator = new Child('emulator', ['emulator', '--listen', `127.0.0.1:${emulatorPort}`]);
  // The emulator has no health endpoint: any answer means it listens.
  await emulator.ready(`http://127.0.0.1:${emulatorPort}/`, null);
  const config = join(OUT, 'restart-proxy.toml');
  const upstream = `http://127.0.0.1:${emulatorPort}`;
  writeFileSync(
    config,
    [
      '[listen]',
      `addr = "127.0.0.1:${proxyPort}"`,
      '[upstream]',
      `url = "${upstream}"`,
      '[directline]',
      'secret_env = "CLIENTS_DIRECTLINE_SECRET"',
      '[sso]',
      'provider = "static"',
      `token_post_allow_hosts = ["${upstream}/sas/"]`,
      // The same key before and after the restart, as replicas share one.
      `seal_keys = ["${randomBytes(32).toString('base64')}"]`,
      '[sso.static]',
      `token = "${USER_TOKEN}"`,
      '[reload]',
      'watch_interval_ms = 0',
      '',
    ].join('\n')
  );
  let starts = 0;
  const startProxy = async () => {
    starts += 1;
    const proxy = new Child(`proxy-${starts}`, ['--config', config, 'run'], {
      CLIENTS_DIRECTLINE_SECRET: EMULATOR_SECRET,
    });
    await proxy.ready(`http://127.0.0.1:${proxyPort}/healthz`);
    return proxy;
  };
  let proxy = await startProxy();
  return {
    domain: `http://127.0.0.1:${proxyPort}/v3/directline`,
    async restartProxy(signal) {
      await proxy.stop(signal);
      proxy = await startProxy();
    },
    async stop() {
      await proxy.stop();
      await emulator.stop('SIGINT');
    },
  };
}
