// Browser end-to-end tests of the page's protocol 1.1 features (issue 13) against the real
// server binary: typing, presence, delivered, unsend, request ids and their errors, room
// pages, and the page against a server that speaks none of it. Run through
// tests/browser/run.sh.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  WAIT,
  launchBrowser,
  openAs,
  messages,
  sendViaComposer,
  waitMessage,
  statesOf,
  fetchHistory,
  serviceApi,
  serverFor,
  assertNoPageErrors,
  assertEveryFrameHasReq,
} from "./lib/harness.mjs";

const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1280, height: 800 };
const DELETED = "This message was deleted";
const NEW_CLIENT_FRAMES = ["typing", "received", "delete", "rooms"];
const NEW_SERVER_FRAMES = ["typing", "delivered", "presence", "message_deleted", "rooms"];

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

/** A browser context closed at the end of the test. */
async function contextFor(t, options = {}) {
  const ctx = await browser.newContext({ viewport: DESKTOP, colorScheme: "light", ...options });
  t.after(() => ctx.close().catch(() => {}));
  return ctx;
}

/** The message element (a locator) whose body is `body`. */
function messageEl(page, body) {
  return page.locator('[data-testid="message"]').filter({ has: page.locator(".body", { hasText: body }) });
}

/**
 * Waits until `when` (run in the page; it returns the page's clock once its condition holds,
 * else 0) and returns that time.
 */
async function whenTrue(page, when, timeout = WAIT) {
  const handle = await page.waitForFunction(when, null, { timeout, polling: 50 });
  return handle.jsonValue();
}

const typingShown = () => {
  const el = document.querySelector('[data-testid="typing"]');
  return el && el.checkVisibility() ? Date.now() : 0;
};
const typingGone = () => (document.querySelector('[data-testid="typing"]') ? 0 : Date.now());

test("typing…: shown under the match's name while they compose, gone 5 s after their last keystroke and at once when their message arrives", async (t) => {
  const server = await serverFor(t);
  const alice = await openAs(browser, server.url, "alice", { context: await contextFor(t) });
  const bob = await openAs(browser, server.url, "bob", { context: await contextFor(t) });
  const composer = bob.locator('[data-testid="composer"]');
  assert.equal(await alice.locator('[data-testid="typing"]').count(), 0, "no typing… before anyone types");

  // Bob types a few characters quickly: one typing frame (at most one every 3 s).
  await composer.pressSequentially("Hel", { delay: 30 });
  const shownAt = await whenTrue(alice, typingShown);
  const typingSent = () => bob.sentFrames.filter((f) => f.frame.type === "typing").length;
  assert.equal(typingSent(), 1, "three keystrokes, one typing frame");
  // Right under the name, in the header; and in the room list instead of the last message.
  assert.equal(await alice.locator('.conv-head [data-testid="typing"]').textContent(), "typing…");
  assert.equal(await alice.locator('[data-testid="room"] .typing-preview').textContent(), "typing…");
  const received = alice.receivedFrames.filter((f) => f.type === "typing");
  assert.equal(received.length, 1);
  assert.equal(received[0].user_id, "bob");
  assert.equal("req" in received[0], false, "a broadcast frame carries no req");

  // He stops: it goes about 5 s after his (only) typing frame.
  const goneAt = await whenTrue(alice, typingGone, 12_000);
  assert.ok(goneAt - shownAt >= 4000 && goneAt - shownAt <= 7000, `cleared ${goneAt - shownAt} ms after it showed, expected ~5000`);
  assert.equal(await alice.locator('[data-testid="room"] .typing-preview').count(), 0);

  // He types again (more than 3 s later: a new frame) and sends: typing… goes with the
  // message's arrival, never both on screen at once.
  await alice.evaluate(() => {
    window.__bothShown = false;
    new MutationObserver(() => {
      const message = [...document.querySelectorAll('[data-testid="message"] .body')].some((b) => b.textContent === "Hello!");
      if (message && document.querySelector('[data-testid="typing"]')) window.__bothShown = true;
    }).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
  });
  await composer.pressSequentially("lo!", { delay: 30 });
  await whenTrue(alice, typingShown);
  assert.equal(typingSent(), 2);
  await composer.press("Enter");
  await waitMessage(alice, "Hello!");
  assert.equal(await alice.locator('[data-testid="typing"]').count(), 0, "gone when the message arrived (long before its 5 s)");
  assert.equal(await alice.evaluate(() => window.__bothShown), false, "never typing… and the message together");
  assertEveryFrameHasReq(bob);
  assertNoPageErrors(alice);
  assertNoPageErrors(bob);
});

test("presence: the match's online dot and 'active … ago' follow their connection live, in the header and the list", async (t) => {
  const server = await serverFor(t);
  const alice = await openAs(browser, server.url, "alice", { context: await contextFor(t) });
  const presence = alice.locator('.conv-head [data-testid="presence"]');
  const listDot = alice.locator('[data-testid="room"] .presence-dot');

  // Bob is not connected yet: offline (never seen, or seen before: either way not online).
  await presence.waitFor({ state: "attached", timeout: WAIT });
  assert.equal(await presence.getAttribute("data-online"), "false");
  assert.equal(await listDot.count(), 0);

  // Bob connects: online, live (a presence frame), in the header and on the list.
  const bobCtx = await browser.newContext({ viewport: PHONE });
  t.after(() => bobCtx.close().catch(() => {}));
  const bob = await openAs(browser, server.url, "bob", { context: bobCtx });
  await alice.waitForFunction(() => document.querySelector('.conv-head [data-testid="presence"]')?.dataset.online === "true", null, { timeout: WAIT });
  assert.equal(await presence.textContent(), "online");
  await listDot.waitFor({ state: "visible", timeout: WAIT });
  assert.equal(await alice.locator(".conv-head .presence-dot").isVisible(), true);
  // Bob sees Alice online from his ready's room summary.
  await bob.waitForFunction(() => document.querySelector('.conv-head [data-testid="presence"]')?.dataset.online === "true", null, { timeout: WAIT });
  const presenceFrame = alice.receivedFrames.find((f) => f.type === "presence" && f.user_id === "bob" && f.online === true);
  assert.ok(presenceFrame, "Alice got Bob's presence live");

  // Bob's browser goes away: offline after the server's grace (~5 s), with when he was last active.
  const closedAt = Date.now();
  await bobCtx.close();
  await alice.waitForFunction(() => document.querySelector('.conv-head [data-testid="presence"]')?.dataset.online === "false", null, { timeout: 20_000 });
  const offlineAfter = Date.now() - closedAt;
  assert.ok(offlineAfter >= 3000, `offline only after the grace period (${offlineAfter} ms)`);
  assert.match(await presence.textContent(), /^active (just now|1 min ago)$/);
  assert.equal(await listDot.count(), 0);
  assert.match(await alice.locator('[data-testid="room"] .room-presence').textContent(), /^active (just now|1 min ago)$/);
  assert.match(await alice.locator('[data-testid="room"]').getAttribute("aria-label"), /bob, active/);
  assertNoPageErrors(alice);
});

test("with CHAT_PRESENCE=off no presence shows, and the rest of 1.1 still works", async (t) => {
  const server = await serverFor(t, { CHAT_PRESENCE: "off" });
  const alice = await openAs(browser, server.url, "alice", { context: await contextFor(t) });
  const bob = await openAs(browser, server.url, "bob", { context: await contextFor(t, { viewport: PHONE }) });
  await sendViaComposer(bob, "no dots here");
  await waitMessage(alice, "no dots here");
  await waitMessage(bob, "no dots here", ["seen"]);
  const ready = alice.receivedFrames.find((f) => f.type === "ready");
  assert.equal(ready.protocol, "1.1");
  assert.ok(ready.rooms.every((r) => !("peer" in r)), "no peer in the summaries");
  assert.equal(alice.receivedFrames.filter((f) => f.type === "presence").length, 0);
  // Bob is connected, yet nothing claims anything about his presence.
  assert.equal(await alice.locator('[data-testid="presence"]').count(), 0);
  assert.equal(await alice.locator(".presence-dot:visible").count(), 0);
  assert.equal(await alice.locator(".room-presence").count(), 0);
  assert.match(await alice.locator('[data-testid="room"]').getAttribute("aria-label"), /^bob(, \d+ unread)?$/);
  // Unsend is still there.
  assert.equal(await messageEl(bob, "no dots here").locator('[data-testid="message-actions"]').count(), 1);
  assertNoPageErrors(alice);
  assertNoPageErrors(bob);
});

test("delivered then seen: the match's device acknowledges receipt (batched) before they look", async (t) => {
  const server = await serverFor(t);
  const alice = await openAs(browser, server.url, "alice", { context: await contextFor(t) });
  const bob = await openAs(browser, server.url, "bob", { context: await contextFor(t, { viewport: PHONE }) });
  // Bob is on his room list (a phone shows one pane): he gets messages but does not see them.
  await bob.getByRole("button", { name: "Back to conversations" }).click();

  const bodies = ["d1", "d2", "d3", "d4", "d5", "d6"];
  await alice.evaluate((bodies) => {
    const { client } = window.matchchat;
    const room = client.getRooms()[0].room_id;
    for (const b of bodies) client.send(room, b);
  }, bodies);
  for (const body of bodies) await waitMessage(alice, body, ["delivered"]);
  await bob.waitForFunction(() => document.querySelector('[data-testid="room"]')?.dataset.unread === "6", null, { timeout: WAIT });

  // Bob's page acknowledged them in batches: fewer received frames than messages, each
  // watermark higher than the last, up to the last one; and nothing was marked seen.
  const receivedFrames = bob.sentFrames.map((f) => f.frame).filter((f) => f.type === "received");
  assert.ok(receivedFrames.length >= 1 && receivedFrames.length < bodies.length, `batched: ${JSON.stringify(receivedFrames)}`);
  const marks = receivedFrames.map((f) => f.up_to_seq);
  assert.deepEqual(marks, [...marks].sort((a, b) => a - b));
  assert.equal(new Set(marks).size, marks.length, "no watermark twice");
  assert.equal(marks.at(-1), 6);
  assert.equal(bob.sentFrames.filter((f) => f.frame.type === "seen").length, 0);
  const list = await messages(alice);
  assert.deepEqual(list.map((m) => m.state), bodies.map(() => "delivered"));
  const delivered = alice.receivedFrames.filter((f) => f.type === "delivered");
  assert.ok(delivered.length >= 1 && delivered.every((f) => f.reader_id === "bob" && typeof f.delivered_at === "string" && !("req" in f)));

  // Bob opens the conversation: seen.
  await bob.locator('[data-testid="room"]').click();
  for (const body of bodies) await waitMessage(alice, body, ["seen"]);
  // (Sent by script, the "sending" state may not get a render of its own.)
  assert.deepEqual((await statesOf(alice, "d6")).filter((s) => s !== "sending"), ["sent", "delivered", "seen"]);
  // The header/status text says it too (not only the icon).
  assert.equal(await messageEl(alice, "d6").locator(".status .visually-hidden").textContent(), "Seen");
  assertEveryFrameHasReq(alice);
  assertEveryFrameHasReq(bob);
  assertNoPageErrors(alice);
  assertNoPageErrors(bob);
});

test("unsend from the keyboard, right-click and long-press, confirmed; deleted on both sides, live and after reload", async (t) => {
  const server = await serverFor(t);
  const alice = await openAs(browser, server.url, "alice", { context: await contextFor(t) });
  const bobCtx = await contextFor(t, { viewport: PHONE, hasTouch: true, isMobile: true });
  const bob = await openAs(browser, server.url, "bob", { context: bobCtx });

  await sendViaComposer(alice, "oops one");
  await sendViaComposer(bob, "bob's own");
  await sendViaComposer(alice, "oops two");
  for (const body of ["oops one", "bob's own", "oops two"]) {
    await waitMessage(alice, body);
    await waitMessage(bob, body);
  }
  const active = (page) => page.evaluate(() => document.activeElement?.dataset.testid || document.activeElement?.tagName);

  // 1. Keyboard: the message's actions button opens the menu, focus on Unsend; Enter asks;
  //    the dialog has the focus on Cancel; Escape cancels and returns to the button.
  const actions = messageEl(alice, "oops one").locator('[data-testid="message-actions"]');
  await actions.focus();
  assert.equal(await actions.getAttribute("aria-expanded"), "false");
  await alice.keyboard.press("Enter");
  await alice.locator('[data-testid="unsend"]').waitFor({ state: "visible", timeout: WAIT });
  assert.equal(await active(alice), "unsend");
  assert.equal(await actions.getAttribute("aria-expanded"), "true");
  await alice.keyboard.press("Enter");
  const dialog = alice.locator("dialog.confirm");
  await dialog.waitFor({ state: "visible", timeout: WAIT });
  assert.equal(await alice.evaluate(() => document.activeElement.textContent), "Cancel");
  await alice.keyboard.press("Escape");
  await dialog.waitFor({ state: "hidden", timeout: WAIT });
  await alice.waitForFunction(() => document.activeElement?.dataset.testid === "message-actions", null, { timeout: WAIT });
  assert.equal(alice.sentFrames.filter((f) => f.frame.type === "delete").length, 0, "cancelled: nothing sent");
  assert.equal(await messageEl(alice, "oops one").getAttribute("data-deleted"), null);
  // Again, and this time confirm (Tab to "Unsend", Enter).
  await alice.keyboard.press("Enter");
  await alice.locator('[data-testid="unsend"]').waitFor({ state: "visible", timeout: WAIT });
  await alice.keyboard.press("Enter");
  await dialog.waitFor({ state: "visible", timeout: WAIT });
  await alice.keyboard.press("Tab");
  assert.equal(await active(alice), "confirm");
  await alice.keyboard.press("Enter");
  for (const page of [alice, bob]) {
    await page.waitForFunction((text) => [...document.querySelectorAll('[data-testid="message"][data-deleted="true"] .body')].some((b) => b.textContent === text), DELETED, { timeout: WAIT });
  }
  assert.equal(await alice.locator('[data-testid="message"]').filter({ hasText: "oops one" }).count(), 0, "its text is gone on Alice's side");
  assert.equal(await bob.locator('[data-testid="message"]').filter({ hasText: "oops one" }).count(), 0, "and on Bob's");
  assert.equal(await alice.locator('[data-testid="message"][data-deleted="true"] [data-testid="message-actions"]').count(), 0, "a deleted message has no menu");

  // 2. Right-click on Alice's other message: the same menu, by pointer.
  await messageEl(alice, "oops two").locator(".bubble").click({ button: "right" });
  await alice.locator('[data-testid="unsend"]').click();
  await alice.locator('[data-testid="confirm"]').click();
  await bob.waitForFunction((d) => document.querySelectorAll('[data-testid="message"][data-deleted="true"]').length === 2 && document.querySelector('[data-testid="room"] .deleted-preview')?.textContent === d, DELETED, { timeout: WAIT });
  // Someone else's message has no unsend: right-click leaves the browser's own menu to it.
  await messageEl(alice, "bob's own").locator(".bubble").click({ button: "right" });
  assert.equal(await alice.locator('[data-testid="unsend"]').count(), 0);
  assert.equal(await messageEl(alice, "bob's own").locator('[data-testid="message-actions"]').count(), 0);

  // 3. Long-press (touch) on Bob's phone, on his own message.
  const cdp = await bobCtx.newCDPSession(bob);
  const box = await messageEl(bob, "bob's own").locator(".bubble").boundingBox();
  const point = { x: box.x + box.width / 2, y: box.y + box.height / 2 };
  await cdp.send("Input.dispatchTouchEvent", { type: "touchStart", touchPoints: [point] });
  await bob.locator('[data-testid="unsend"]').waitFor({ state: "visible", timeout: WAIT }); // opens while held
  await cdp.send("Input.dispatchTouchEvent", { type: "touchEnd", touchPoints: [] });
  await bob.locator('[data-testid="unsend"]').tap();
  await bob.locator('[data-testid="confirm"]').tap();
  for (const page of [alice, bob]) {
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="message"][data-deleted="true"]').length === 3, null, { timeout: WAIT });
  }

  // The wire: each delete carried a req; message_deleted is a broadcast and carries none.
  const deletes = [...alice.sentFrames, ...bob.sentFrames].map((f) => f.frame).filter((f) => f.type === "delete");
  assert.equal(deletes.length, 3);
  assert.ok(deletes.every((f) => typeof f.req === "string" && Number.isInteger(f.seq)));
  const announced = alice.receivedFrames.filter((f) => f.type === "message_deleted");
  assert.deepEqual(announced.map((f) => f.seq).sort(), [1, 2, 3]);
  assert.ok(announced.every((f) => !("req" in f) && typeof f.deleted_at === "string"));

  // After a reload, on both sides: still deleted, and stored so (body null, deleted_at set).
  for (const page of [alice, bob]) {
    await page.reload();
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="message"][data-deleted="true"]').length === 3, null, { timeout: WAIT });
    const list = await messages(page);
    assert.deepEqual(list.map((m) => [m.seq, m.deleted, m.body]), [
      [1, true, DELETED],
      [2, true, DELETED],
      [3, true, DELETED],
    ]);
  }
  const { messages: stored } = await fetchHistory(browser, server.url, "alice");
  assert.deepEqual(stored.map((m) => [m.seq, m.body, typeof m.deleted_at]), [
    [1, null, "string"],
    [2, null, "string"],
    [3, null, "string"],
  ]);
  assertEveryFrameHasReq(alice);
  assertEveryFrameHasReq(bob);
  assertNoPageErrors(alice);
  assertNoPageErrors(bob);
});

test("a refused unsend (its window has passed) shows why, next to the message", async (t) => {
  const server = await serverFor(t, { CHAT_UNSEND_WINDOW_SECS: "1" });
  const alice = await openAs(browser, server.url, "alice", { context: await contextFor(t) });
  const bob = await openAs(browser, server.url, "bob", { context: await contextFor(t, { viewport: PHONE }) });
  await sendViaComposer(alice, "too late to take back");
  await waitMessage(alice, "too late to take back");
  await waitMessage(bob, "too late to take back");
  // Wait (a condition, not a sleep) until the stored message is more than 1 s old.
  const sentAt = await alice.evaluate(() => window.matchchat.client.getMessages(window.matchchat.client.getRooms()[0].room_id)[0].sent_at);
  await alice.waitForFunction((sentAt) => Date.now() - Date.parse(sentAt.replace(/(\.\d{3})\d+/, "$1")) > 1500, sentAt, { timeout: WAIT, polling: 100 });

  const message = messageEl(alice, "too late to take back");
  await message.locator('[data-testid="message-actions"]').click();
  await alice.locator('[data-testid="unsend"]').click();
  await alice.locator('[data-testid="confirm"]').click();
  const error = message.locator('[data-testid="error"]');
  await error.waitFor({ state: "visible", timeout: WAIT });
  assert.equal(await error.textContent(), "Couldn't unsend: the time to unsend this message has passed.");
  assert.equal(await error.getAttribute("role"), "alert");
  // Nothing was deleted, on either side.
  assert.equal(await message.getAttribute("data-deleted"), null);
  assert.equal(await bob.locator('[data-testid="message"][data-deleted="true"]').count(), 0);
  assert.equal(await messageEl(bob, "too late to take back").count(), 1);
  // The refusal is the error frame carrying the delete's req.
  const del = alice.sentFrames.map((f) => f.frame).find((f) => f.type === "delete");
  const refusal = alice.receivedFrames.find((f) => f.type === "error" && f.req === del.req);
  assert.equal(refusal?.code, "not_allowed");
  // Focus went back to the message's button; opening the menu again clears the old reason.
  assert.equal(await alice.evaluate(() => document.activeElement?.dataset.testid), "message-actions");
  await alice.keyboard.press("Enter");
  await alice.locator('[data-testid="unsend"]').waitFor({ state: "visible", timeout: WAIT });
  assert.equal(await error.count(), 0);
  await alice.keyboard.press("Escape");
  await alice.locator('[data-testid="unsend"]').waitFor({ state: "detached", timeout: WAIT });
  assertEveryFrameHasReq(alice);
  assertNoPageErrors(alice);
});

test("the room list loads its next page when scrolled to its end (more than 200 rooms)", async (t) => {
  const server = await serverFor(t, { CHAT_SERVICE_KEY: "e2e-service-key-0123456789abcdef0123" });
  // Alice has the demo's room with Bob (the oldest) and 205 more: 206.
  const peers = Array.from({ length: 205 }, (_, i) => `m${String(i).padStart(3, "0")}`);
  // The five oldest one by one (their order is then certain), the rest in parallel.
  for (const p of peers.slice(0, 5)) await serviceApi(server, "POST", "/api/rooms", { members: ["alice", p] });
  for (let i = 5; i < peers.length; i += 15) {
    await Promise.all(peers.slice(i, i + 15).map((p) => serviceApi(server, "POST", "/api/rooms", { members: ["alice", p] })));
  }
  const alice = await openAs(browser, server.url, "alice", { context: await contextFor(t) });
  const rooms = alice.locator('[data-testid="room"]');
  await alice.waitForFunction(() => document.querySelectorAll('[data-testid="room"]').length === 200, null, { timeout: WAIT });
  const ready = alice.receivedFrames.find((f) => f.type === "ready");
  assert.equal(ready.protocol, "1.1");
  assert.equal(ready.more_rooms, true);
  assert.equal(ready.rooms.length, 200);
  await alice.locator('[data-testid="more-rooms"]').waitFor({ state: "attached", timeout: WAIT });
  assert.equal(alice.sentFrames.filter((f) => f.frame.type === "rooms").length, 0, "nothing more is asked for before the end is in view");

  // To the end of the list: the next page comes.
  await alice.locator(".room-list").evaluate((el) => {
    el.scrollTop = el.scrollHeight;
  });
  await alice.waitForFunction(() => document.querySelectorAll('[data-testid="room"]').length === 206, null, { timeout: WAIT });
  await alice.locator('[data-testid="more-rooms"]').waitFor({ state: "detached", timeout: WAIT });
  const asked = alice.sentFrames.map((f) => f.frame).filter((f) => f.type === "rooms");
  assert.equal(asked.length, 1);
  const last = ready.rooms.at(-1);
  assert.equal(asked[0].before_room_id, last.room_id);
  assert.equal(asked[0].before_activity_at, last.last_activity_at);
  const reply = alice.receivedFrames.find((f) => f.type === "rooms");
  assert.equal(reply.req, asked[0].req);
  assert.equal(reply.more_rooms, false);
  const ids = await rooms.evaluateAll((els) => els.map((e) => e.dataset.roomId));
  assert.equal(new Set(ids).size, 206, "every room once");
  const names = await alice.locator('[data-testid="room"] .room-name').allTextContents();
  assert.deepEqual([...names].sort(), ["bob", ...peers].sort());
  // Newest activity first: the six rooms opened first are the ones the second page brought.
  assert.deepEqual(names.slice(200), [...peers.slice(0, 5)].reverse().concat("bob"));
  assertEveryFrameHasReq(alice);
  assertNoPageErrors(alice);
});

/**
 * Puts a relay between a context's pages and the server that makes the server look like
 * protocol 1.0: no 1.1 frame or field reaches the page and no `req` comes back; a 1.1
 * request from the page is recorded in `violations` and not passed on (a 1.0 server would
 * refuse it as invalid_frame).
 */
async function asProtocol10(ctx) {
  const violations = [];
  const summary10 = (room) => {
    if (!room) return room;
    const { peer, last_message, peer_seen_up_to, peer_delivered_up_to, last_activity_at, ...rest } = room;
    return rest;
  };
  const message10 = (m) => {
    if (!m) return m;
    const { deleted_at, ...rest } = m;
    return rest;
  };
  await ctx.routeWebSocket(/\/ws$/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((data) => {
      const frame = JSON.parse(String(data));
      if (NEW_CLIENT_FRAMES.includes(frame.type)) {
        violations.push(frame);
        return;
      }
      server.send(data);
    });
    server.onMessage((data) => {
      const frame = JSON.parse(String(data));
      if (NEW_SERVER_FRAMES.includes(frame.type)) return;
      delete frame.req;
      if (frame.type === "ready") {
        delete frame.protocol;
        delete frame.more_rooms;
        frame.rooms = frame.rooms.map(summary10);
      }
      if (frame.type === "room_opened") frame.room = summary10(frame.room);
      if (frame.type === "message") frame.message = message10(frame.message);
      if (frame.type === "history") frame.messages = frame.messages.map(message10);
      ws.send(JSON.stringify(frame));
    });
  });
  return violations;
}

test("against a server that speaks none of 1.1 the page works as before and sends none of its requests", async (t) => {
  const server = await serverFor(t);
  const aliceCtx = await contextFor(t);
  const bobCtx = await contextFor(t, { viewport: PHONE });
  const aliceViolations = await asProtocol10(aliceCtx);
  const bobViolations = await asProtocol10(bobCtx);
  const alice = await openAs(browser, server.url, "alice", { context: aliceCtx });
  assert.equal(await alice.evaluate(() => window.matchchat.client.protocol), "1.0");

  await sendViaComposer(alice, "hello from 1.0");
  await waitMessage(alice, "hello from 1.0", ["sent"]);
  const bob = await openAs(browser, server.url, "bob", { context: bobCtx });
  await waitMessage(bob, "hello from 1.0", ["seen"]);
  await waitMessage(alice, "hello from 1.0", ["seen"]);
  assert.deepEqual(await statesOf(alice, "hello from 1.0"), ["sending", "sent", "seen"]);
  // Bob types and answers: no typing… (none comes), the message arrives.
  await bob.locator('[data-testid="composer"]').pressSequentially("hi", { delay: 30 });
  await bob.locator('[data-testid="composer"]').press("Enter");
  await waitMessage(alice, "hi", ["seen"]);
  assert.equal(await alice.locator('[data-testid="typing"]').count(), 0);
  // No presence (unknown), no unsend offered.
  assert.equal(await alice.locator('[data-testid="presence"]').count(), 0);
  assert.equal(await alice.locator('[data-testid="message-actions"]').count(), 0);
  await messageEl(alice, "hello from 1.0").locator(".bubble").click({ button: "right" });
  assert.equal(await alice.locator('[data-testid="unsend"]').count(), 0);
  // The room list still shows the last message.
  await bob.getByRole("button", { name: "Back to conversations" }).click();
  assert.equal(await bob.locator('[data-testid="room"] .preview-body').textContent(), "hi");

  // Not one 1.1 request left either page; every frame that did still carried a req (a 1.0
  // server ignores unknown fields).
  assert.deepEqual([...aliceViolations, ...bobViolations], []);
  for (const page of [alice, bob]) {
    const types = new Set(page.sentFrames.map((f) => f.frame.type));
    for (const type of NEW_CLIENT_FRAMES) assert.equal(types.has(type), false, `${type} was sent`);
    assertEveryFrameHasReq(page);
  }
  assertNoPageErrors(alice);
  assertNoPageErrors(bob);
});
