// Browser end-to-end tests of the matchchat page against the real server binary.
// Run through tests/browser/run.sh (installs Chromium and npm packages, builds the server).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import {
  WAIT,
  RECONNECT_WAIT,
  launchBrowser,
  launchTabbedBrowser,
  openAs,
  waitConnection,
  messages,
  sendViaComposer,
  waitMessage,
  statesOf,
  fetchHistory,
  serviceApi,
  sendRaw,
  serverFor,
  assertNoPageErrors,
  assertUniqueContiguous,
} from "./lib/harness.mjs";
import { validateBody } from "../../web/chat-client.js";

const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1280, height: 800 };

let browser;
const cleanups = [];

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  // Last registered first: pages, then servers (by PID, SIGTERM), then folders.
  for (const fn of cleanups.reverse()) await fn().catch((e) => console.error("cleanup:", e.message));
  await browser?.close();
});

/** A browser context closed at the end of the test. */
async function contextFor(t, options = {}) {
  const ctx = await browser.newContext({ viewport: DESKTOP, colorScheme: "light", ...options });
  t.after(() => ctx.close().catch(() => {}));
  return ctx;
}

/**
 * A message's recorded states: `expected`, except that "delivered" may show between "sent"
 * and "seen" (protocol 1.1: a seen receipt is broadcast as delivered then seen, and the page
 * may render both in one frame).
 */
function assertStates(actual, expected, what) {
  const withDelivered = [...expected];
  withDelivered.splice(expected.indexOf("seen"), 0, "delivered");
  assert.ok(
    JSON.stringify(actual) === JSON.stringify(expected) || JSON.stringify(actual) === JSON.stringify(withDelivered),
    `${what}: ${JSON.stringify(actual)} is ${JSON.stringify(expected)} (with or without "delivered" before "seen")`,
  );
}

test("alice and bob exchange messages both ways; states go sending -> sent -> seen", async (t) => {
  const server = await serverFor(t);
  const alice = await openAs(browser, server.url, "alice", { context: await contextFor(t) });

  // Bob is not here yet, so Alice's message stops at "sent".
  const first = "Hi Bob! It's Alice 👋";
  await sendViaComposer(alice, first);
  await waitMessage(alice, first, ["sent"]);

  const bob = await openAs(browser, server.url, "bob", { context: await contextFor(t, { viewport: PHONE }) });
  await waitMessage(bob, first, ["seen"]); // on Bob's side "seen" means Bob has seen it
  await waitMessage(alice, first, ["seen"]);
  assertStates(await statesOf(alice, first), ["sending", "sent", "seen"], "Alice's first");

  const reply = "Hello Alice!\nNice to meet you.";
  await sendViaComposer(bob, reply);
  await waitMessage(alice, reply, ["seen"]);
  await waitMessage(bob, reply, ["seen"]);
  assertStates(await statesOf(bob, reply), ["sending", "sent", "seen"], "Bob's reply");

  for (const [page, me] of [
    [alice, "alice"],
    [bob, "bob"],
  ]) {
    const list = await messages(page);
    assert.deepEqual(
      list.map((m) => [m.seq, m.sender, m.body, m.own]),
      [
        [1, "alice", first, me === "alice"],
        [2, "bob", reply, me === "bob"],
      ],
    );
  }
  // Own and other messages look different.
  const [ownBg, otherBg] = await alice.$$eval('[data-testid="message"] .bubble', (els) => els.map((e) => getComputedStyle(e).backgroundImage + getComputedStyle(e).backgroundColor));
  assert.notEqual(ownBg, otherBg);
  // An aria-live region announced Bob's message to Alice.
  await alice.waitForFunction((text) => document.querySelector('[data-testid="live"]').textContent.includes(text), reply.split("\n")[0], { timeout: WAIT });
  assertNoPageErrors(alice);
  assertNoPageErrors(bob);
});

test("the composer counts Unicode scalar values: 160 emoji fit, more is refused visibly", async (t) => {
  const server = await serverFor(t);
  const ctx = await contextFor(t);
  await ctx.grantPermissions(["clipboard-read", "clipboard-write"], { origin: server.url });
  const alice = await openAs(browser, server.url, "alice", { context: ctx });
  const composer = alice.locator('[data-testid="composer"]');
  const counter = alice.locator('[data-testid="counter"]');
  const send = alice.locator('[data-testid="send"]');
  const notice = alice.locator('[data-testid="composer-notice"]');

  // Blank text cannot be sent.
  assert.equal(await send.isDisabled(), true);
  await composer.fill("   \n  ");
  assert.equal(await send.isDisabled(), true);
  await composer.press("Enter");

  // 160 emoji = 320 UTF-16 units, and they fit.
  const emoji = "😀".repeat(160);
  await composer.fill(emoji);
  assert.equal(await counter.textContent(), "160/160");
  assert.equal((await composer.inputValue()).length, 320);
  assert.equal(await send.isEnabled(), true);

  // Typing one more is refused, with a reason.
  await composer.press("End");
  await composer.press("x");
  assert.equal(await counter.textContent(), "160/160");
  assert.match(await notice.textContent(), /limit is 160/);

  // A paste that would exceed is refused whole (not cut), with a visible reason.
  await composer.fill("Hello ");
  await alice.evaluate((text) => navigator.clipboard.writeText(text), "🙂".repeat(155));
  await composer.press("End");
  await composer.press("Control+V");
  assert.equal(await composer.inputValue(), "Hello ");
  assert.equal(await counter.textContent(), "6/160");
  assert.equal(await notice.isVisible(), true);
  assert.match(await notice.textContent(), /Paste refused.*155 characters.*161.*limit is 160/);

  // One that fits goes in; CRLF becomes LF.
  await alice.evaluate((text) => navigator.clipboard.writeText(text), "a\r\nb");
  await composer.press("Control+V");
  assert.equal(await composer.inputValue(), "Hello a\nb");
  assert.equal(await counter.textContent(), "9/160");
  assert.equal(await notice.textContent(), "");

  // Text that got in some other way (e.g. an IME) is counted, flagged and cannot be sent.
  await alice.evaluate(() => {
    const t = document.querySelector('[data-testid="composer"]');
    t.value = "x".repeat(161);
    t.dispatchEvent(new Event("input", { bubbles: true }));
  });
  assert.equal(await counter.textContent(), "161/160");
  assert.equal(await send.isDisabled(), true);
  assert.match(await notice.textContent(), /Too long/);
  await composer.press("Enter");

  // Shift+Enter is a newline, Enter sends.
  await composer.fill("line one");
  await composer.press("End");
  await composer.press("Shift+Enter");
  await composer.pressSequentially("line two");
  await composer.press("Enter");
  await waitMessage(alice, "line one\nline two");
  assert.equal(await composer.inputValue(), "");
  assert.equal(await counter.textContent(), "0/160");

  // The 160 emoji go through the server (which counts the same way).
  await composer.fill(emoji);
  await send.click();
  await waitMessage(alice, emoji);
  const list = await messages(alice);
  assert.deepEqual(
    list.map((m) => [m.seq, m.body]),
    [
      [1, "line one\nline two"],
      [2, emoji],
    ],
    "nothing blank or over-long was sent",
  );
  assertNoPageErrors(alice);
});

test("bodies that show nothing are empty, unpaired direction controls are refused, bodies are shown isolated", async (t) => {
  const server = await serverFor(t);
  const ctx = await contextFor(t);
  const page = await ctx.newPage();
  const sent = [];
  page.on("websocket", (ws) => ws.on("framesent", (f) => sent.push(JSON.parse(String(f.payload)))));
  const alice = await openAs(browser, server.url, "alice", { context: ctx, page });
  const composer = alice.locator('[data-testid="composer"]');
  const send = alice.locator('[data-testid="send"]');
  const notice = alice.locator('[data-testid="composer-notice"]');

  // Only invisible characters: nothing to see, nothing to send; the reason says so.
  for (const invisible of ["\u200b", "\u200d\ufeff"]) {
    await composer.fill(invisible);
    assert.equal(await send.isDisabled(), true, JSON.stringify(invisible));
    assert.equal(await notice.textContent(), "Write something first.", JSON.stringify(invisible));
    await composer.press("Enter");
    assert.equal(await composer.inputValue(), invisible, "Enter sent nothing and kept the text");
  }

  // A right-to-left override that is never closed ("safe" + RLO + "gnp.exe" shows as
  // "safeexe.png"): refused before sending, with the reason.
  const spoof = "safe\u202egnp.exe";
  await composer.fill(spoof);
  assert.equal(await send.isDisabled(), true);
  assert.equal(await notice.textContent(), "Unpaired direction-control characters can't be sent.");
  await composer.press("Enter");
  assert.equal(await composer.inputValue(), spoof);
  const thrown = await alice.evaluate((body) => {
    const { client } = window.matchchat;
    try {
      client.send(client.getRooms()[0].room_id, body);
      return null;
    } catch (e) {
      return { code: e.code, message: e.message };
    }
  }, spoof);
  assert.deepEqual(thrown, { code: "body_invalid", message: "Unpaired direction-control characters can't be sent." });

  // A paired isolate is fine: sent, stored and shown, on both sides.
  const paired = "a\u2067b\u2069";
  await composer.fill(paired);
  assert.equal(await send.isEnabled(), true);
  assert.equal(await notice.textContent(), "");
  await composer.press("Enter");
  await waitMessage(alice, paired, ["sent"]);
  const bob = await openAs(browser, server.url, "bob", { context: await contextFor(t, { viewport: PHONE }) });
  await waitMessage(bob, paired, ["seen"]);

  // Nothing but the paired body left the page, and only it is stored.
  assert.deepEqual(
    sent.filter((f) => f.type === "send").map((f) => f.body),
    [paired],
  );
  const { messages: stored } = await fetchHistory(browser, server.url, "alice");
  assert.deepEqual(
    stored.map((m) => m.body),
    [paired],
  );

  // Every body is displayed isolated: dir="auto" and unicode-bidi: isolate, in the
  // conversation and in the room list's preview.
  for (const p of [alice, bob]) {
    const body = await p.locator('[data-testid="message"] .body').evaluate((el) => ({ dir: el.getAttribute("dir"), bidi: getComputedStyle(el).unicodeBidi, text: el.textContent }));
    assert.deepEqual(body, { dir: "auto", bidi: "isolate", text: paired });
  }
  const preview = await alice.locator('[data-testid="room"] .preview-body').evaluate((el) => ({ dir: el.getAttribute("dir"), bidi: getComputedStyle(el).unicodeBidi, text: el.textContent }));
  assert.deepEqual(preview, { dir: "auto", bidi: "isolate", text: paired });
  assertNoPageErrors(alice);
  assertNoPageErrors(bob);
});

test("the page's body rule and the server's agree, case by case", async (t) => {
  const server = await serverFor(t, { CHAT_RATE_PER_SEC: "1000", CHAT_RATE_BURST: "1000" });
  // crates/chat-domain/src/body.rs's cases and more; each goes to the server over a raw
  // WebSocket (no page code) and through validateBody (web/chat-client.js).
  const bodies = [
    "hello",
    " ",
    "\u3000",
    "\ufeff",
    "\u200b",
    "\u200d\ufeff",
    " \u2060 ",
    "\u3164",
    "\ufe0f\n",
    "\u00ad",
    "\u{E0041}",
    "\u{1D173}",
    "\u2800",
    "a\u200b",
    "\u{1F468}\u200d\u{1F469}\u200d\u{1F467}",
    "safe\u202egnp.exe",
    "a\u2067b",
    "a\u202c",
    "a\u2069",
    "\u2066a\u202c",
    "\u202ba\u2067b\u202c\u2069",
    "\u202ea\nb\u202c",
    "\u202e",
    "a\u2067b\u2069",
    "\u202ba\u2066b\u2069\u202c",
    "x\u202ey\u202c\nz",
    "tab\there",
    "a\u202e\tb",
    "x".repeat(160),
    `${"x".repeat(161)}\u202e`,
  ];
  const server_ = await sendRaw(browser, server.url, "alice", bodies);
  const page = bodies.map((b) => validateBody(b).code);
  assert.deepEqual(
    bodies.map((b, i) => [JSON.stringify(b), server_[i]]),
    bodies.map((b, i) => [JSON.stringify(b), page[i]]),
  );
  // The cases really span the rule (a server that refused everything would not pass).
  for (const code of [null, "body_empty", "body_too_long", "body_invalid"]) assert.ok(page.includes(code), String(code));
});

test("a hidden tab does not mark messages seen; showing it again does", async (t) => {
  const server = await serverFor(t);
  // Bob's page is a real tab of a Chromium window: opening another tab in front of it makes
  // it hidden (document.visibilityState "hidden", rendering stopped), as in a real browser.
  const tabbed = await launchTabbedBrowser();
  t.after(() => tabbed.close());
  const alice = await openAs(browser, server.url, "alice", { context: await contextFor(t) });
  const bobPage = tabbed.context.pages()[0];
  const sent = [];
  bobPage.on("websocket", (ws) => ws.on("framesent", (f) => sent.push(String(f.payload))));
  const bob = await openAs(null, server.url, "bob", { context: tabbed.context, page: bobPage, viewport: DESKTOP });
  const seenFrames = () => sent.filter((f) => f.includes('"type":"seen"'));

  await sendViaComposer(alice, "Are you there?");
  await waitMessage(bob, "Are you there?", ["seen"]);
  await waitMessage(alice, "Are you there?", ["seen"]);
  assert.equal(seenFrames().length, 1, "one watermark frame");

  // Another tab in front: Bob's chat tab is hidden.
  const other = await tabbed.context.newPage();
  await bob.waitForFunction(() => document.visibilityState === "hidden", null, { timeout: WAIT });

  const hiddenBodies = ["Hello?", "Still there?", "Ping 🏓"];
  for (const body of hiddenBodies) await sendViaComposer(alice, body);
  for (const body of hiddenBodies) await waitMessage(bob, body, ["sent"]); // in Bob's DOM, not seen
  // Bob's device got them, though: delivered (protocol 1.1), a hidden tab included.
  for (const body of hiddenBodies) await waitMessage(alice, body, ["delivered"]);
  // Ask the page to flush seen right now, as if its observer had fired: it must refuse while
  // hidden. Then give it an observation window (a negative check needs one): no frame goes out.
  await bob.evaluate(() => window.matchchat.view.view.flushSeen());
  const until = Date.now() + 1500;
  await bob.waitForFunction((until) => Date.now() >= until, until, { timeout: WAIT, polling: 100 });
  assert.equal(seenFrames().length, 1, "no seen frame while hidden");
  for (const m of (await messages(alice)).filter((x) => hiddenBodies.includes(x.body))) assert.equal(m.state, "delivered");
  const unread = await bob.locator('[data-testid="room"]').getAttribute("data-unread");
  assert.equal(unread, "3");

  // Bob comes back to the tab: one watermark covering all three.
  await other.close();
  await bob.bringToFront();
  await bob.waitForFunction(() => document.visibilityState === "visible", null, { timeout: WAIT });
  for (const body of hiddenBodies) await waitMessage(alice, body, ["seen"]);
  const frames = seenFrames().map((f) => JSON.parse(f));
  assert.equal(frames.length, 2, `one more watermark frame, not one per message: ${JSON.stringify(frames)}`);
  assert.equal(frames[1].up_to_seq, 4);
  await bob.waitForFunction(() => document.querySelector('[data-testid="room"]').dataset.unread === "0", null, { timeout: WAIT });
  assertNoPageErrors(alice);
  assertNoPageErrors(bob);
});

test("killing and restarting the server mid-conversation loses and duplicates nothing", async (t) => {
  // A fixed secret, as in production: tokens stay valid across the restart.
  const server = await serverFor(t, { CHAT_JWT_SECRET: "e2e-secret-0123456789abcdef0123456789", CHAT_RATE_PER_SEC: "100", CHAT_RATE_BURST: "100" });
  const aliceCtx = await contextFor(t);
  // Alice's socket goes through a relay that can drop the server's copy of one message: that
  // message is stored but Alice never hears so, the case a crash right after a commit makes.
  let dropEchoOf = null;
  await aliceCtx.routeWebSocket(/\/ws$/, (ws) => {
    const upstream = ws.connectToServer();
    upstream.onMessage((data) => {
      if (dropEchoOf && String(data).includes(dropEchoOf)) return;
      ws.send(data);
    });
  });
  const alice = await openAs(browser, server.url, "alice", { context: aliceCtx });
  const bob = await openAs(browser, server.url, "bob", { context: await contextFor(t, { viewport: PHONE }) });

  const before = ["a1: hi", "b1: hey", "a2: how are you?", "b2: great, you?"];
  for (const body of before) await sendViaComposer(body.startsWith("a") ? alice : bob, body);
  for (const body of before) {
    await waitMessage(alice, body);
    await waitMessage(bob, body);
  }

  // Stored, but its copy to Alice is lost.
  dropEchoOf = "a3: stored, echo lost";
  await sendViaComposer(alice, dropEchoOf);
  await waitMessage(bob, dropEchoOf); // the server has it
  await waitMessage(alice, dropEchoOf, ["sending"]);

  // Crash.
  await server.kill();
  await waitConnection(alice, "reconnecting");
  await waitConnection(bob, "reconnecting");
  dropEchoOf = null;

  const whileDown = { alice: ["a4: sent while down", "a5: also while down"], bob: ["b3: bob while down", "b4: 😀 emoji too"] };
  for (const body of whileDown.alice) await sendViaComposer(alice, body);
  for (const body of whileDown.bob) await sendViaComposer(bob, body);
  for (const body of whileDown.alice) await waitMessage(alice, body, ["sending"]);
  for (const body of whileDown.bob) await waitMessage(bob, body, ["sending"]);

  await server.restart();
  await waitConnection(alice, "open", RECONNECT_WAIT);
  await waitConnection(bob, "open", RECONNECT_WAIT);

  const all = [...before, dropEchoOf || "a3: stored, echo lost", ...whileDown.alice, ...whileDown.bob];
  for (const body of all) {
    await waitMessage(alice, body, ["sent", "seen"], RECONNECT_WAIT);
    await waitMessage(bob, body, ["sent", "seen"], RECONNECT_WAIT);
  }

  for (const [name, page] of [
    ["alice", alice],
    ["bob", bob],
  ]) {
    const list = await messages(page);
    assertUniqueContiguous(list, `${name}'s DOM`);
    assert.equal(list.length, all.length, `${name}'s DOM holds every message once: ${JSON.stringify(list.map((m) => m.body))}`);
    assert.deepEqual(new Set(list.map((m) => m.body)), new Set(all));
  }

  // The database agrees: a fresh history fetch, no page code involved.
  const { messages: stored } = await fetchHistory(browser, server.url, "alice");
  assertUniqueContiguous(stored, "stored history");
  assert.equal(stored.length, all.length, `stored exactly once each: ${JSON.stringify(stored.map((m) => m.body))}`);
  assert.deepEqual(new Set(stored.map((m) => m.body)), new Set(all));
  const aliceDom = await messages(alice);
  assert.deepEqual(
    aliceDom.map((m) => [m.seq, m.body]),
    stored.map((m) => [m.seq, m.body]),
    "the page shows what is stored, in order",
  );
  const transient = [/WebSocket connection to .* failed/, /ERR_CONNECTION_REFUSED/];
  assertNoPageErrors(alice, transient);
  assertNoPageErrors(bob, transient);
});

test("310 messages leave exactly the latest 300 in the DOM; scrolled up shows a new-messages marker", async (t) => {
  const server = await serverFor(t, { CHAT_RATE_PER_SEC: "1000", CHAT_RATE_BURST: "1000" });
  const alice = await openAs(browser, server.url, "alice", { context: await contextFor(t) });
  const bob = await openAs(browser, server.url, "bob", { context: await contextFor(t, { viewport: PHONE }) });

  // 310 sends through the page's client (typing 310 messages would only be slower).
  await alice.evaluate(() => {
    const { client } = window.matchchat;
    const room = client.getRooms()[0].room_id;
    for (let i = 1; i <= 310; i += 1) client.send(room, `message ${i}`);
  });
  for (const page of [alice, bob]) {
    await page.waitForFunction(
      () => {
        const els = document.querySelectorAll('[data-testid="message"]');
        const last = els[els.length - 1];
        return last && last.dataset.seq === "310" && !document.querySelector('[data-testid="message"][data-state="sending"]');
      },
      null,
      { timeout: 60_000, polling: 100 },
    );
    const list = await messages(page);
    assert.equal(list.length, 300, "exactly 300 message elements");
    assertUniqueContiguous(list, "window");
    assert.equal(list[0].seq, 11, "oldest at the top");
    assert.equal(list[299].seq, 310, "newest at the bottom");
    assert.ok(list.every((m) => /^message \d+$/.test(m.body)));
  }
  // Each page shows exactly what is stored, seq for seq.
  const { messages: stored } = await fetchHistory(browser, server.url, "bob");
  assert.equal(stored.length, 300);
  for (const page of [alice, bob]) {
    assert.deepEqual(
      (await messages(page)).map((m) => [m.seq, m.body]),
      stored.map((m) => [m.seq, m.body]),
    );
  }

  // A fresh page loads the same window.
  const bob2 = await openAs(browser, server.url, "bob", { context: await contextFor(t) });
  await bob2.waitForFunction(() => document.querySelectorAll('[data-testid="message"]').length === 300, null, { timeout: WAIT });
  const fresh = await messages(bob2);
  assert.equal(fresh[0].seq, 11);
  assert.equal(fresh[299].seq, 310);

  // Bob scrolls up: a new message does not move his view; a marker offers to jump.
  await bob.locator('[data-testid="history"]').evaluate((el) => {
    el.scrollTop = 0;
  });
  const top = await bob.locator('[data-testid="history"]').evaluate((el) => el.scrollTop);
  await alice.evaluate(() => {
    const { client } = window.matchchat;
    client.send(client.getRooms()[0].room_id, "message 311");
  });
  await waitMessage(bob, "message 311");
  const marker = bob.locator('[data-testid="new-messages"]');
  await marker.waitFor({ state: "visible", timeout: WAIT });
  assert.match(await marker.textContent(), /1 new message/);
  const list = await messages(bob);
  assert.equal(list.length, 300, "still 300 after one more");
  assert.equal(list[0].seq, 12);
  const stillTop = await bob.locator('[data-testid="history"]').evaluate((el) => el.scrollTop);
  assert.ok(Math.abs(stillTop - top) < 200, `the view stayed near the top (${top} -> ${stillTop})`);
  await marker.click();
  await bob.waitForFunction(
    () => {
      const el = document.querySelector('[data-testid="history"]');
      return el.scrollHeight - el.scrollTop - el.clientHeight < 48;
    },
    null,
    { timeout: WAIT },
  );
  await marker.waitFor({ state: "hidden", timeout: WAIT });
  await waitMessage(alice, "message 311", ["seen"]);
  assertNoPageErrors(alice);
  assertNoPageErrors(bob);
});

test("a refused message shows the reason and can be retried or discarded", async (t) => {
  // One send a second, burst of one: a quick run of sends gets rate_limited. The page retries
  // a few times by itself, then shows the message as failed.
  const server = await serverFor(t, { CHAT_RATE_PER_SEC: "1", CHAT_RATE_BURST: "1" });
  const alice = await openAs(browser, server.url, "alice", { context: await contextFor(t) });
  await alice.evaluate(() => {
    const { client } = window.matchchat;
    const room = client.getRooms()[0].room_id;
    for (let i = 1; i <= 14; i += 1) client.send(room, `burst ${i}`);
  });
  const failed = alice.locator('[data-testid="message"][data-state="failed"]');
  await failed.first().waitFor({ state: "visible", timeout: 30_000 });
  await alice.waitForFunction(
    () => ![...document.querySelectorAll('[data-testid="message"]')].some((e) => e.dataset.state === "sending"),
    null,
    { timeout: 30_000 },
  );
  const failedCount = await failed.count();
  assert.ok(failedCount >= 2, `some sends failed (${failedCount})`);
  const firstFailed = failed.first();
  assert.match(await firstFailed.textContent(), /Sending too fast/);
  const retryBody = await firstFailed.locator(".body").textContent();
  const discardBody = await failed.nth(1).locator(".body").textContent();

  // Discard one: it is gone.
  await failed.nth(1).getByRole("button", { name: "Discard" }).click();
  await alice.waitForFunction((b) => ![...document.querySelectorAll('[data-testid="message"] .body')].some((e) => e.textContent === b), discardBody, {
    timeout: WAIT,
  });
  // Retry another (keyboard: focus the button, press Enter): it goes through once.
  const retry = alice.locator('[data-testid="message"][data-state="failed"]', { hasText: retryBody }).getByRole("button", { name: "Retry" });
  await retry.focus();
  await alice.keyboard.press("Enter");
  await waitMessage(alice, retryBody, ["sent", "seen"], 30_000);
  const list = await messages(alice);
  assert.equal(list.filter((m) => m.body === retryBody).length, 1);
  assert.equal(list.filter((m) => m.body === discardBody).length, 0);
  assertUniqueContiguous(
    list.filter((m) => m.seq != null),
    "stored messages",
  );
  assertNoPageErrors(alice);
});

test("rooms: unread counts, a closed room disables the composer, room_opened adds a room live", async (t) => {
  const server = await serverFor(t, { CHAT_SERVICE_KEY: "e2e-service-key-0123456789abcdef0123" });
  const alice = await openAs(browser, server.url, "alice", { context: await contextFor(t) });
  const bob = await openAs(browser, server.url, "bob", { context: await contextFor(t, { viewport: PHONE }) });
  const bobRoom = bob.locator('[data-testid="room"]');

  // Bob on his list (phone: one pane at a time): messages arrive as an unread count.
  await bob.getByRole("button", { name: "Back to conversations" }).click();
  await sendViaComposer(alice, "one");
  await sendViaComposer(alice, "two");
  await bob.waitForFunction(() => document.querySelector('[data-testid="room"]')?.dataset.unread === "2", null, { timeout: WAIT });
  await waitMessage(alice, "two", ["sent", "delivered"]);
  assert.equal((await messages(alice)).filter((m) => m.state === "seen").length, 0, "not seen while Bob is on the list");
  await bobRoom.first().click();
  await waitMessage(alice, "two", ["seen"]);
  await bob.waitForFunction(() => document.querySelector('[data-testid="room"]').dataset.unread === "0", null, { timeout: WAIT });

  // The host app closes the room (unmatch).
  const roomId = await alice.evaluate(() => window.matchchat.client.getRooms()[0].room_id);
  await serviceApi(server, "DELETE", `/api/rooms/${roomId}`);
  for (const page of [alice, bob]) {
    await page.waitForFunction(() => document.querySelector('[data-testid="room"]').dataset.closed === "true", null, { timeout: WAIT });
    assert.equal(await page.locator('[data-testid="composer"]').isDisabled(), true);
    assert.equal(await page.locator('[data-testid="send"]').isDisabled(), true);
    assert.equal(await page.getByText("This conversation has ended. You can still read it.").isVisible(), true);
  }

  // They match again: a new room appears live, on top.
  const opened = await serviceApi(server, "POST", "/api/rooms", { members: ["alice", "bob"] });
  for (const page of [alice, bob]) {
    await page.waitForFunction((id) => document.querySelector('[data-testid="room"]')?.dataset.roomId === id, opened.room_id, { timeout: WAIT });
    assert.equal(await page.locator('[data-testid="room"]').count(), 2);
  }
  await alice.locator(`[data-testid="room"][data-room-id="${opened.room_id}"]`).click();
  assert.equal(await alice.locator('[data-testid="composer"]').isEnabled(), true);
  await sendViaComposer(alice, "hello again");
  await waitMessage(alice, "hello again", ["sent", "delivered"]);
  await bob.getByRole("button", { name: "Back to conversations" }).click();
  await bob.waitForFunction((id) => document.querySelector(`[data-testid="room"][data-room-id="${id}"]`)?.dataset.unread === "1", opened.room_id, { timeout: WAIT });
  assertNoPageErrors(alice);
  assertNoPageErrors(bob);
});

test("unconfirmed messages survive a reload and are sent exactly once", async (t) => {
  const server = await serverFor(t);
  const ctx = await contextFor(t);
  // While `offline`, every WebSocket of this page is refused, as if the network were down.
  let offline = false;
  let socket = null; // the page's current WebSocket (its route)
  await ctx.routeWebSocket(/\/ws$/, (ws) => {
    if (offline) {
      ws.close({ code: 4001, reason: "offline" });
      return;
    }
    socket = ws;
    ws.connectToServer();
  });
  const alice = await openAs(browser, server.url, "alice", { context: ctx });
  await sendViaComposer(alice, "before");
  await waitMessage(alice, "before");

  offline = true;
  await socket.close({ code: 4001, reason: "offline" }); // the network drops
  await waitConnection(alice, "reconnecting");
  await sendViaComposer(alice, "written offline");
  await waitMessage(alice, "written offline", ["sending"]);

  await alice.reload();
  await alice.locator('[data-testid="connection"]').waitFor({ state: "attached", timeout: WAIT }); // remembered demo user
  offline = false;
  await waitConnection(alice, "open", RECONNECT_WAIT);
  await waitMessage(alice, "written offline", ["sent"], RECONNECT_WAIT);
  const { messages: stored } = await fetchHistory(browser, server.url, "alice");
  assert.deepEqual(
    stored.map((m) => m.body),
    ["before", "written offline"],
  );
  const list = await messages(alice);
  assert.deepEqual(
    list.map((m) => [m.seq, m.body]),
    [
      [1, "before"],
      [2, "written offline"],
    ],
  );
  assertNoPageErrors(alice, [/WebSocket/]);
});

// docs/protocol.md: sends to one room commit in the order they were sent. The page relies on
// it when it re-sends a queue of messages after a reconnect.
test(
  "one connection's sends are stored in the order they were sent",
  async (t) => {
    const server = await serverFor(t, { CHAT_RATE_PER_SEC: "1000", CHAT_RATE_BURST: "1000" });
    const alice = await openAs(browser, server.url, "alice", { context: await contextFor(t) });
    await alice.evaluate(() => {
      const { client } = window.matchchat;
      const room = client.getRooms()[0].room_id;
      for (let i = 1; i <= 60; i += 1) client.send(room, `in order ${i}`);
    });
    await alice.waitForFunction(
      () => document.querySelectorAll('[data-testid="message"][data-seq]').length === 60,
      null,
      { timeout: 30_000 },
    );
    const list = await messages(alice);
    assert.deepEqual(
      list.map((m) => m.body),
      list.map((m) => `in order ${m.seq}`),
    );
  },
);

test("token handoff: URL fragment (then scrubbed) and postMessage from the embedding page", async (t) => {
  // The host app of part 2 is a little HTTP server of this test on another port: another
  // origin, on loopback like the chat server (Chromium lets no public page frame a loopback
  // one). The chat server lets it embed the page (CHAT_FRAME_ANCESTORS), so it starts first.
  let server = null;
  const hostServer = createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(`<!doctype html><title>host</title><iframe id="chat" title="Chat" width="390" height="700" src="${server.url}/?parent_origin=${encodeURIComponent(host)}"></iframe>`);
  });
  await new Promise((res) => hostServer.listen(0, "127.0.0.1", res));
  t.after(() => new Promise((res) => hostServer.close(res)));
  const host = `http://127.0.0.1:${hostServer.address().port}`;
  server = await serverFor(t, { CHAT_FRAME_ANCESTORS: host });
  const token = async (user) => {
    const res = await fetch(`${server.url}/demo/token`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ user_id: user }) });
    return (await res.json()).token;
  };

  // 1. #token=... : used, and removed from the address bar and history at once.
  const ctx = await contextFor(t);
  const page = await ctx.newPage();
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(e.message));
  await page.goto(`${server.url}/#token=${encodeURIComponent(await token("alice"))}`);
  await waitConnection(page, "open");
  assert.equal(await page.evaluate(() => location.hash), "");
  assert.equal(await page.evaluate(() => location.href), `${server.url}/`);
  assert.equal(await page.locator(".me").textContent(), "alice");

  // 2. An iframe in a host app on another origin; the host hands the token over with
  //    postMessage, and the page accepts it only from the origin named in ?parent_origin=.
  const hostCtx = await contextFor(t);
  const hostPage = await hostCtx.newPage();
  await hostPage.goto(`${host}/`);
  await hostPage.evaluate(() => {
    window.fromChat = [];
    window.addEventListener("message", (e) => window.fromChat.push({ origin: e.origin, data: e.data }));
  });
  // The page asks for a token (no demo login inside an iframe handoff unless chosen).
  const frame = hostPage.frameLocator("#chat");
  await frame.locator('[data-testid="demo-bob"]').waitFor({ timeout: WAIT });
  const bobToken = await token("bob");
  await hostPage.evaluate(
    ({ bobToken, origin }) => document.getElementById("chat").contentWindow.postMessage({ type: "matchchat:token", token: bobToken }, origin),
    { bobToken, origin: server.url },
  );
  await frame.locator('[data-testid="connection"][data-state="open"]').waitFor({ state: "attached", timeout: WAIT });
  assert.equal(await frame.locator(".me").textContent(), "bob");
  await hostPage.waitForFunction(() => window.fromChat.some((m) => m.data && m.data.type === "matchchat:connected" && m.data.user_id === "bob"), null, { timeout: WAIT });
  assertNoPageErrors(page);
});

test("a parent frame hands over a token only from an origin in CHAT_FRAME_ANCESTORS", async (t) => {
  // The host app: an HTTP server of this test on another port of loopback, i.e. another
  // origin. Its page frames the chat page given in ?chat=, names itself as parent_origin, and
  // records every message it gets from the frame from the start.
  const hostServer = createServer((req, res) => {
    const chat = new URL(req.url, "http://host").searchParams.get("chat");
    res.writeHead(200, { "content-type": "text/html" });
    res.end(
      `<!doctype html><title>host</title><script>window.fromChat = []; addEventListener("message", (e) => fromChat.push({ origin: e.origin, data: e.data }));</script>` +
        `<iframe id="chat" title="Chat" width="390" height="700" src="${chat}/?parent_origin=${encodeURIComponent(host)}"></iframe>`,
    );
  });
  await new Promise((res) => hostServer.listen(0, "127.0.0.1", res));
  t.after(() => new Promise((res) => hostServer.close(res)));
  const host = `http://127.0.0.1:${hostServer.address().port}`;
  const tokenFor = async (server, user) => {
    const res = await fetch(`${server.url}/demo/token`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ user_id: user }) });
    return (await res.json()).token;
  };
  const postToken = (hostPage, token, chatOrigin) =>
    hostPage.evaluate(
      ({ token, chatOrigin }) => document.getElementById("chat").contentWindow.postMessage({ type: "matchchat:token", token }, chatOrigin),
      { token, chatOrigin },
    );

  // 1. The host is not listed (another origin is).
  const unlisted = await serverFor(t, { CHAT_FRAME_ANCESTORS: "https://app.example.com" });
  assert.deepEqual(await (await fetch(`${unlisted.url}/embed-config`)).json(), { frame_ancestors: ["https://app.example.com"] });
  const csp = (await fetch(`${unlisted.url}/`)).headers.get("content-security-policy");
  assert.match(csp, /frame-ancestors 'self' https:\/\/app\.example\.com(;|$)/);
  // The browser would not even render the frame (CSP frame-ancestors). Take that header out
  // of the way, so that what is tested is the page's own check, which must hold without it.
  const ctx = await contextFor(t);
  await ctx.route(
    (url) => url.origin === unlisted.url && url.pathname === "/",
    async (route) => {
      const response = await route.fetch();
      const headers = { ...response.headers(), "content-security-policy": csp.replace(/frame-ancestors [^;]*/, "frame-ancestors *") };
      await route.fulfill({ response, headers });
    },
  );
  const hostPage = await ctx.newPage();
  const warned = hostPage.waitForEvent("console", { predicate: (m) => m.type() === "warning" && m.text().includes("parent_origin"), timeout: WAIT });
  await hostPage.goto(`${host}/?chat=${encodeURIComponent(unlisted.url)}`);
  const frame = hostPage.frameLocator("#chat");
  await frame.locator('[data-testid="demo-bob"]').waitFor({ timeout: WAIT }); // the page runs in the frame
  assert.match((await warned).text(), new RegExp(`parent_origin "${host.replace(/[.]/g, "\\.")}" ignored`));
  await postToken(hostPage, await tokenFor(unlisted, "bob"), unlisted.url);
  // A negative check needs an observation window: had the token been taken, the chat would
  // mount and connect within it.
  const until = Date.now() + 1500;
  await hostPage.waitForFunction((until) => Date.now() >= until, until, { timeout: WAIT, polling: 100 });
  const chatFrame = hostPage.frames().find((f) => f.url().startsWith(unlisted.url));
  assert.equal(await chatFrame.evaluate(() => window.matchchat.client), null, "no chat was started with the token");
  assert.equal(await frame.locator('[data-testid="connection"]').count(), 0);
  assert.equal(await frame.locator('[data-testid="demo-bob"]').isVisible(), true, "still at the sign-in gate");
  assert.deepEqual(await hostPage.evaluate(() => window.fromChat), [], "nothing was posted to the unlisted parent");

  // 2. The same host page, listed: the browser frames the page, and the token starts the chat.
  const listed = await serverFor(t, { CHAT_FRAME_ANCESTORS: host });
  assert.deepEqual(await (await fetch(`${listed.url}/embed-config`)).json(), { frame_ancestors: [host] });
  assert.match((await fetch(`${listed.url}/`)).headers.get("content-security-policy"), new RegExp(`frame-ancestors 'self' ${host.replace(/[.]/g, "\\.")}(;|$)`));
  const hostPage2 = await (await contextFor(t)).newPage();
  await hostPage2.goto(`${host}/?chat=${encodeURIComponent(listed.url)}`);
  const frame2 = hostPage2.frameLocator("#chat");
  await frame2.locator('[data-testid="demo-bob"]').waitFor({ timeout: WAIT });
  await hostPage2.waitForFunction((origin) => window.fromChat.some((m) => m.origin === origin && m.data.type === "matchchat:loaded"), listed.url, { timeout: WAIT });
  await postToken(hostPage2, await tokenFor(listed, "bob"), listed.url);
  await frame2.locator('[data-testid="connection"][data-state="open"]').waitFor({ state: "attached", timeout: WAIT });
  assert.equal(await frame2.locator(".me").textContent(), "bob");
  await hostPage2.waitForFunction(
    (origin) => window.fromChat.some((m) => m.origin === origin && m.data.type === "matchchat:connected" && m.data.user_id === "bob"),
    listed.url,
    { timeout: WAIT },
  );
});
