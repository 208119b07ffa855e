// Shared helpers of the browser tests: the real chat-server binary, Debian's Chromium through
// playwright-core, and page-level helpers. No sleeps for synchronisation: every wait is a
// condition with a bounded timeout.

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, createWriteStream, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const SERVER_BIN = process.env.CHAT_SERVER_BIN || join(REPO, "target/debug/chat-server");
export const WAIT = 15_000; // default bound of a wait
export const RECONNECT_WAIT = 45_000; // bound of a wait that spans a server restart

const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Processes this test file started, killed by PID on exit whatever happened. */
const children = new Set();
process.on("exit", () => {
  for (const child of children) {
    try {
      process.kill(child.pid, "SIGKILL");
    } catch {
      /* already gone */
    }
  }
});

export function chromiumPath() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  try {
    return execFileSync("sh", ["-c", "command -v chromium"], { encoding: "utf8" }).trim();
  } catch {
    throw new Error("chromium not found: run tests/browser/run.sh (it installs Debian's chromium)");
  }
}

export function tempDir(prefix = "matchchat-e2e-") {
  return mkdtempSync(join(tmpdir(), prefix));
}

/**
 * Starts `chat-server --demo` on 127.0.0.1 (port 0 = any free port unless `port` is given),
 * with its SQLite file in `dir`. Resolves once it printed its address.
 */
export async function startServer({ dir = tempDir(), port = 0, env = {} } = {}) {
  if (!existsSync(SERVER_BIN)) throw new Error(`${SERVER_BIN} missing: cargo build -p chat-server`);
  const log = createWriteStream(join(dir, "server.log"), { flags: "a" });
  // The server reads CHAT_* and DATABASE_URL (scripts/test.sh sets a PostgreSQL one): only
  // what the test asks for may reach it.
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("CHAT_") && k !== "DATABASE_URL"));
  const child = spawn(SERVER_BIN, ["--demo"], {
    env: {
      ...inherited,
      CHAT_BIND: `127.0.0.1:${port}`,
      DATABASE_URL: `sqlite://${join(dir, "chat.db")}`,
      RUST_LOG: process.env.RUST_LOG || "info",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  child.stderr.pipe(log);
  const exited = new Promise((res) => child.once("exit", (code, signal) => res({ code, signal })));
  exited.then(() => children.delete(child));
  const url = await new Promise((res, rej) => {
    let out = "";
    const timer = setTimeout(() => rej(new Error(`server did not start in time; see ${dir}/server.log`)), 30_000);
    child.stdout.on("data", (d) => {
      out += d;
      const m = /chat-server listening on (http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        res(m[1]);
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      rej(new Error(`server exited (${code ?? signal}) before listening; see ${dir}/server.log`));
    });
  });
  const boundPort = Number(new URL(url).port);
  const server = {
    url,
    port: boundPort,
    pid: child.pid,
    dir,
    env,
    exited,
    /** Graceful stop: SIGTERM, then SIGKILL after 15 s. */
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(timer);
    },
    /** Crash: SIGKILL, no chance to close sockets or finish anything. */
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGKILL");
      await exited;
    },
    /** A new process on the same port and database file. */
    restart() {
      return startServer({ dir, port: boundPort, env });
    },
  };
  return server;
}

/**
 * A server for one test (node:test's `t`), stopped (SIGTERM by PID) and its folder removed at
 * the end whatever happens. The handle follows restarts.
 */
export async function serverFor(t, env = {}) {
  const server = await startServer({ env });
  let current = server;
  const handle = {
    get url() {
      return current.url;
    },
    get pid() {
      return current.pid;
    },
    get env() {
      return current.env;
    },
    kill: () => current.kill(),
    stop: () => current.stop(),
    async restart() {
      current = await current.restart();
      return current;
    },
  };
  const dir = server.dir;
  t.after(async () => {
    await current.stop();
    if (!process.env.KEEP_TEST_DIRS) removeDir(dir);
  });
  return handle;
}

export function assertNoPageErrors(page, allow = []) {
  const errors = page.errors.filter((e) => !allow.some((re) => re.test(e)));
  assert.deepEqual(errors, [], "page errors or console errors (CSP violations show up here too)");
}

export function assertUniqueContiguous(list, what) {
  const seqs = list.map((m) => m.seq);
  assert.ok(seqs.every((s) => Number.isInteger(s)), `${what}: every message has a seq: ${JSON.stringify(seqs)}`);
  assert.equal(new Set(seqs).size, seqs.length, `${what}: seqs are unique: ${JSON.stringify(seqs)}`);
  for (let i = 1; i < seqs.length; i += 1) assert.equal(seqs[i], seqs[i - 1] + 1, `${what}: seqs ascend without gaps: ${JSON.stringify(seqs)}`);
}

/**
 * Every frame a page sent (openAs records them) carries a `req` of 1..64 characters, unique
 * per connection: the page names each of its requests. Returns the frames.
 */
export function assertEveryFrameHasReq(page) {
  const frames = page.sentFrames;
  assert.ok(frames.length > 0, "the page sent frames");
  const seen = new Set();
  for (const f of frames) {
    assert.equal(typeof f.frame.req, "string", `a req on ${JSON.stringify(f.frame)}`);
    assert.ok(f.frame.req.length >= 1 && f.frame.req.length <= 64, `req of 1..64 characters: ${JSON.stringify(f.frame)}`);
    const key = `${f.socket}:${f.frame.req}`;
    assert.ok(!seen.has(key), `req used twice on one connection: ${JSON.stringify(f.frame)}`);
    seen.add(key);
  }
  return frames.map((f) => f.frame);
}

export function removeDir(dir) {
  try {
    // Retries: a browser's helper processes may still be writing for a moment after it exits.
    rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  } catch {
    /* leave it */
  }
}

/** Launches Debian's Chromium (fresh profile: playwright makes a new temporary one). */
export function launchBrowser() {
  return chromium.launch({ executablePath: chromiumPath(), args: CHROMIUM_ARGS });
}

/**
 * Launches Chromium ourselves and attaches over CDP without Playwright's default overrides.
 * Pages in its default context behave like real tabs of one window: opening or fronting
 * another tab makes them `document.visibilityState === "hidden"`. (Playwright's own pages get
 * focus emulation, which keeps every page "visible" whatever happens.)
 */
export async function launchTabbedBrowser() {
  const profile = tempDir("matchchat-chromium-");
  const child = spawn(chromiumPath(), [...CHROMIUM_ARGS, "--remote-debugging-port=0", `--user-data-dir=${profile}`, "about:blank"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  children.add(child);
  const exited = new Promise((res) => child.once("exit", res));
  exited.then(() => children.delete(child));
  const endpoint = await new Promise((res, rej) => {
    let err = "";
    const timer = setTimeout(() => rej(new Error(`chromium gave no DevTools endpoint:\n${err}`)), 30_000);
    child.stderr.on("data", (d) => {
      err += d;
      const m = /DevTools listening on (ws:\/\/\S+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        res(m[1]);
      }
    });
  });
  // `noDefaults` leaves the default context as the browser made it (no focus emulation).
  const browser = await chromium.connectOverCDP(endpoint, { noDefaults: true });
  return {
    browser,
    context: browser.contexts()[0],
    async close() {
      await browser.close().catch(() => {});
      child.kill("SIGKILL");
      await exited;
      removeDir(profile);
    },
  };
}

/** Records every data-state a message element goes through, by client_msg_id. */
function recordStates() {
  window.__states = {};
  const note = (el) => {
    if (!(el instanceof HTMLElement) || el.dataset.testid !== "message") return;
    const id = el.dataset.clientMsgId;
    const list = (window.__states[id] ||= []);
    if (list[list.length - 1] !== el.dataset.state) list.push(el.dataset.state);
  };
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "attributes") note(r.target);
      for (const n of r.addedNodes || []) {
        note(n);
        if (n.querySelectorAll) n.querySelectorAll('[data-testid="message"]').forEach(note);
      }
    }
  }).observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ["data-state"] });
}

/**
 * Opens the page as a demo user. `context` may be given (e.g. a tabbed browser's default
 * context); otherwise a new context of `browser` with `viewport`.
 */
export async function openAs(browser, baseUrl, user, { viewport, context, colorScheme = "light", page } = {}) {
  const ctx = context || (await browser.newContext({ viewport: viewport || { width: 1280, height: 800 }, colorScheme }));
  const p = page || (await ctx.newPage());
  if (context && viewport) await p.setViewportSize(viewport);
  p.errors = [];
  // Every WebSocket frame of the page, parsed: `sentFrames` ({socket, frame}, socket = the
  // connection's number) and `receivedFrames` (frames).
  p.sentFrames = [];
  p.receivedFrames = [];
  let sockets = 0;
  p.on("websocket", (ws) => {
    sockets += 1;
    const socket = sockets;
    const parse = (payload) => {
      try {
        return JSON.parse(String(payload));
      } catch {
        return null;
      }
    };
    ws.on("framesent", (f) => {
      const frame = parse(f.payload);
      if (frame) p.sentFrames.push({ socket, frame });
    });
    ws.on("framereceived", (f) => {
      const frame = parse(f.payload);
      if (frame) p.receivedFrames.push(frame);
    });
  });
  p.on("pageerror", (e) => p.errors.push(e.message));
  p.on("console", (m) => {
    if (m.type() === "error") p.errors.push(m.text());
  });
  await p.addInitScript(recordStates);
  await p.goto(baseUrl);
  await p.locator(`[data-testid="demo-${user}"]`).click({ timeout: WAIT });
  await waitConnection(p, "open");
  return p;
}

export async function waitConnection(page, state, timeout = WAIT) {
  await page.waitForFunction(
    (s) => document.querySelector('[data-testid="connection"]')?.dataset.state === s,
    state,
    { timeout, polling: 50 },
  );
}

/** The message elements as plain data. */
export function messages(page) {
  return page.$$eval('[data-testid="message"]', (els) =>
    els.map((e) => ({
      seq: e.dataset.seq ? Number(e.dataset.seq) : null,
      state: e.dataset.state,
      own: e.dataset.own === "true",
      sender: e.dataset.sender,
      body: e.querySelector(".body")?.textContent ?? "",
      clientMsgId: e.dataset.clientMsgId,
      deleted: e.dataset.deleted === "true",
    })),
  );
}

/** Types a message in the composer and presses Enter. */
export async function sendViaComposer(page, text) {
  const composer = page.locator('[data-testid="composer"]');
  await composer.fill(text);
  await composer.press("Enter");
}

/** Waits until a message with this body is in the DOM in one of `states`. */
export async function waitMessage(page, body, states = ["sent", "delivered", "seen"], timeout = WAIT) {
  await page.waitForFunction(
    ({ body, states }) =>
      [...document.querySelectorAll('[data-testid="message"]')].some(
        (e) => e.querySelector(".body")?.textContent === body && states.includes(e.dataset.state),
      ),
    { body, states },
    { timeout, polling: 50 },
  );
}

/** The state history recorded for the message with this body. */
export function statesOf(page, body) {
  return page.evaluate((body) => {
    const el = [...document.querySelectorAll('[data-testid="message"]')].find((e) => e.querySelector(".body")?.textContent === body);
    return el ? window.__states[el.dataset.clientMsgId] || [] : null;
  }, body);
}

/**
 * Reads a room's history straight from the server over a new WebSocket (no page code), from
 * a blank page of the server's origin. Returns {roomId, messages}.
 */
export async function fetchHistory(browser, baseUrl, user) {
  const ctx = await browser.newContext();
  try {
    const page = await ctx.newPage();
    await page.goto(`${baseUrl}/healthz`);
    return await page.evaluate(async (user) => {
      const res = await fetch("/demo/token", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ user_id: user }),
      });
      const { token } = await res.json();
      return await new Promise((resolve, reject) => {
        const ws = new WebSocket(`ws://${location.host}/ws`);
        const timer = setTimeout(() => reject(new Error("history fetch timed out")), 10_000);
        let roomId = null;
        ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
        ws.onmessage = (ev) => {
          const f = JSON.parse(ev.data);
          if (f.type === "ready") {
            const room = f.rooms.find((r) => !r.closed) || f.rooms[0];
            roomId = room.room_id;
            ws.send(JSON.stringify({ type: "history", room_id: roomId }));
          } else if (f.type === "history") {
            clearTimeout(timer);
            ws.close();
            resolve({ roomId, messages: f.messages });
          } else if (f.type === "error") {
            reject(new Error(`${f.code}: ${f.message}`));
          }
        };
        ws.onclose = (ev) => {
          if (!roomId) reject(new Error(`closed ${ev.code} ${ev.reason}`));
        };
      });
    }, user);
  } finally {
    await ctx.close();
  }
}

/** Calls the service API (needs CHAT_SERVICE_KEY set on the server). */
export async function serviceApi(server, method, path, body) {
  const res = await fetch(`${server.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${server.env.CHAT_SERVICE_KEY}`, "content-type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/**
 * Sends each body over a new WebSocket as `user` (no page code), from a blank page of the
 * server's origin, into the user's first open room. Resolves with one outcome per body, in
 * order: `null` when the server stored it, else the code of its `error` frame.
 */
export async function sendRaw(browser, baseUrl, user, bodies) {
  const ctx = await browser.newContext();
  try {
    const page = await ctx.newPage();
    await page.goto(`${baseUrl}/healthz`);
    return await page.evaluate(
      async ({ user, bodies }) => {
        const res = await fetch("/demo/token", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ user_id: user }),
        });
        const { token } = await res.json();
        return await new Promise((resolve, reject) => {
          const ws = new WebSocket(`ws://${location.host}/ws`);
          const timer = setTimeout(() => reject(new Error("raw sends timed out")), 20_000);
          const outcomes = new Map();
          const settle = (ref, outcome) => {
            if (!ref || !ref.startsWith("raw-") || outcomes.has(ref)) return;
            outcomes.set(ref, outcome);
            if (outcomes.size === bodies.length) {
              clearTimeout(timer);
              ws.close();
              resolve(bodies.map((_, i) => outcomes.get(`raw-${i}`)));
            }
          };
          ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
          ws.onmessage = (ev) => {
            const f = JSON.parse(ev.data);
            if (f.type === "ready") {
              const room = f.rooms.find((r) => !r.closed);
              bodies.forEach((body, i) => ws.send(JSON.stringify({ type: "send", room_id: room.room_id, client_msg_id: `raw-${i}`, body })));
            } else if (f.type === "message") {
              settle(f.message.client_msg_id, null);
            } else if (f.type === "error") {
              settle(f.ref, f.code);
            }
          };
          ws.onclose = (ev) => {
            if (outcomes.size < bodies.length) reject(new Error(`closed ${ev.code} ${ev.reason}`));
          };
        });
      },
      { user, bodies },
    );
  } finally {
    await ctx.close();
  }
}
