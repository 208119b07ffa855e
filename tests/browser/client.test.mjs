// web/chat-client.js in Node (no browser needed):
// - the page's body rule must match the server's (crates/chat-domain/src/body.rs): these are
//   that file's cases;
// - ChatClient over a scripted fake WebSocket: auth, reconnect, re-send, the outbox in
//   storage, a history request that times out, an expired token (paths the browser tests
//   reach only partly).

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  ChatClient,
  ChatError,
  countChars,
  normalizeNewlines,
  validateBody,
  newClientMsgId,
  MAX_BODY_CHARS,
  HISTORY_WINDOW,
} from "../../web/chat-client.js";

const code = (text) => validateBody(text).code;

test("limits match chat-domain's limits.rs", () => {
  assert.equal(MAX_BODY_CHARS, 160);
  assert.equal(HISTORY_WINDOW, 300);
});

test("exactly 160 characters fit and 161 do not", () => {
  assert.equal(code("a".repeat(160)), null);
  assert.equal(code("a".repeat(161)), "body_too_long");
});

test("emoji count as one scalar value each", () => {
  const emoji = "😀".repeat(160);
  assert.equal(emoji.length, 320); // UTF-16 units
  assert.equal(countChars(emoji), 160);
  assert.equal(code(emoji), null);
  assert.equal(code("😀".repeat(161)), "body_too_long");
});

test("combining marks count on their own", () => {
  const eAcute = "e\u0301";
  assert.equal(code(eAcute.repeat(80)), null);
  assert.equal(code(`${eAcute.repeat(80)}x`), "body_too_long");
});

test("blank and empty bodies are refused (Rust's White_Space, not JS trim)", () => {
  for (const blank of ["", "   ", "\n\n", "\u3000", "\u00a0\u2028"]) assert.equal(code(blank), "body_empty", JSON.stringify(blank));
  // U+FEFF is whitespace to JS's trim() but not to Rust's char::is_whitespace; it is one of
  // body.rs's invisible characters, though, so alone it is empty too.
  assert.equal(code("\ufeff"), "body_empty");
});

test("bodies with no visible character are empty; beside a visible one those characters stay", () => {
  for (const invisible of ["\u200b", "\u200d\ufeff", " \u2060 ", "\u3164", "\ufe0f\n"]) {
    assert.equal(code(invisible), "body_empty", JSON.stringify(invisible));
  }
  assert.equal(code("\u{1F468}\u200d\u{1F469}\u200d\u{1F467}"), null); // a family emoji, joined with U+200D
  assert.equal(code("a\u200b"), null);
  assert.equal(validateBody("\u200b").reason, "Write something first.");
});

test("every character of body.rs's INVISIBLE list is invisible, and only those (with White_Space)", () => {
  const ranges = [
    [0x00ad, 0x00ad], [0x034f, 0x034f], [0x061c, 0x061c], [0x115f, 0x1160], [0x17b4, 0x17b5],
    [0x180b, 0x180f], [0x200b, 0x200f], [0x202a, 0x202e], [0x2060, 0x206f], [0x2800, 0x2800],
    [0x3164, 0x3164], [0xfe00, 0xfe0f], [0xfeff, 0xfeff], [0xffa0, 0xffa0], [0xfff9, 0xfffb],
    [0x1bca0, 0x1bca3], [0x1d173, 0x1d17a], [0xe0000, 0xe007f], [0xe0100, 0xe01ef],
  ];
  const whiteSpace = [0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0x85, 0xa0, 0x1680, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000];
  for (let c = 0x2000; c <= 0x200a; c += 1) whiteSpace.push(c);
  const invisible = (c) => whiteSpace.includes(c) || ranges.some(([lo, hi]) => c >= lo && c <= hi);
  for (let c = 0; c <= 0x10ffff; c += 1) {
    if (c >= 0xd800 && c <= 0xdfff) continue; // not scalar values
    const ch = String.fromCodePoint(c);
    assert.equal(code(ch) === "body_empty", invisible(c), `U+${c.toString(16).toUpperCase().padStart(4, "0")}`);
  }
});

test("unpaired direction controls are refused, paired ones are not", () => {
  for (const spoof of [
    "safe\u202egnp.exe",
    "a\u2067b",
    "a\u202c",
    "a\u2069",
    "\u2066a\u202c",
    "\u202ba\u2067b\u202c\u2069",
    "\u202ea\nb\u202c",
  ]) {
    assert.equal(code(spoof), "body_invalid", JSON.stringify(spoof));
    assert.equal(validateBody(spoof).reason, "Unpaired direction-control characters can't be sent.");
  }
  for (const paired of ["a\u2067b\u2069", "\u202ba\u2066b\u2069\u202c", "x\u202ey\u202c\nz"]) {
    assert.equal(code(paired), null, JSON.stringify(paired));
  }
});

test("the checks run in the server's order: empty, too long, control characters, bidi", () => {
  assert.equal(code("\u202e"), "body_empty"); // an opener alone shows nothing
  assert.equal(code(`${"a".repeat(161)}\u202e\t`), "body_too_long");
  const both = validateBody("a\u202e\tb");
  assert.equal(both.code, "body_invalid");
  assert.equal(both.reason, "Tabs and control characters can't be sent.");
});

test("control characters other than newline are refused", () => {
  assert.equal(code("line one\nline two"), null);
  for (const bad of ["a\rb", "a\r\nb", "tab\there", "nul\0", "del\u007f", "c1\u0085x"]) assert.equal(code(bad), "body_invalid", JSON.stringify(bad));
});

test("CRLF and CR become LF before sending", () => {
  assert.equal(normalizeNewlines("a\r\nb\rc\nd"), "a\nb\nc\nd");
  assert.equal(code(normalizeNewlines("a\r\nb")), null);
});

test("client_msg_ids are 1..64 characters and unique", () => {
  const ids = new Set(Array.from({ length: 1000 }, newClientMsgId));
  assert.equal(ids.size, 1000);
  for (const id of ids) assert.ok(id.length >= 1 && id.length <= 64);
});

// ---- ChatClient over a fake WebSocket ------------------------------------------------------

/** A WebSocket the test plays the server for. */
class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.reqs = [];
    this.closedWith = null;
    FakeSocket.all.push(this);
    setTimeout(() => {
      this.readyState = 1;
      this.onopen?.();
    }, 0);
  }
  /**
   * A frame from the client. Every one must carry a `req` (1..64 characters, unique on this
   * socket); `sent` keeps the frames without it, `reqs` the reqs in order.
   */
  send(data) {
    const frame = JSON.parse(data);
    const { req, ...rest } = frame;
    assert.equal(typeof req, "string", `a req on ${data}`);
    assert.ok(req.length >= 1 && req.length <= 64, `req of 1..64 characters: ${data}`);
    assert.ok(!this.reqs.includes(req), `req ${req} used twice on one socket`);
    this.reqs.push(req);
    this.sent.push(rest);
  }
  close(code = 1000, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.closedWith = { code, reason };
    setTimeout(() => this.onclose?.({ code, reason }), 0);
  }
  /** The server sends a frame. */
  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  /** The server (or the network) closes the connection. */
  drop(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

function memoryStorage() {
  const m = new Map();
  return {
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => m.set(k, String(v)),
    removeItem: (k) => m.delete(k),
  };
}

/** Waits for a condition, polling, with a bound. */
async function until(cond, what, timeoutMs = 5000) {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const ROOM = { room_id: "r1", members: ["alice", "bob"], last_seq: 0, unread: 0, closed: false };

function newClient(options = {}) {
  FakeSocket.all = [];
  const client = new ChatClient({ url: "ws://chat.test/ws", token: "t1", minDelayMs: 1, maxDelayMs: 5, WebSocket: FakeSocket, storage: null, ...options });
  const events = [];
  for (const type of ["state", "ready", "authrequired", "failed"]) client.addEventListener(type, (e) => events.push([type, e.detail]));
  return { client, events, states: () => events.filter(([t]) => t === "state").map(([, d]) => d.state) };
}

async function openSocket(n, token = "t1") {
  await until(() => FakeSocket.all.length >= n && FakeSocket.all[n - 1].sent.length >= 1, `socket ${n} to send auth`);
  const ws = FakeSocket.all[n - 1];
  assert.deepEqual(ws.sent[0], { type: "auth", token });
  return ws;
}

test("ChatClient: auth, send, a dropped connection, reconnect and re-send with the same client_msg_id; the outbox is stored", async () => {
  const storage = memoryStorage();
  const { client, states } = newClient({ storage });
  client.connect();
  const ws1 = await openSocket(1);
  assert.equal(ws1.url, "ws://chat.test/ws");
  assert.equal(client.state, "connecting");
  ws1.receive({ type: "ready", user_id: "alice", rooms: [ROOM] });
  assert.equal(client.state, "open");
  assert.equal(client.userId, "alice");
  assert.equal(client.getRooms()[0].peer, "bob");

  const item = client.send("r1", "hi\r\nthere");
  assert.equal(item.body, "hi\nthere");
  assert.equal(item.state, "sending");
  assert.deepEqual(ws1.sent[1], { type: "send", room_id: "r1", client_msg_id: item.client_msg_id, body: "hi\nthere" });
  const saved = JSON.parse(storage.getItem("matchchat:outbox:alice"));
  assert.deepEqual(
    saved.map((s) => [s.client_msg_id, s.body, s.state]),
    [[item.client_msg_id, "hi\nthere", "sending"]],
  );
  assert.throws(() => client.send("r1", "\u200b"), (e) => e instanceof ChatError && e.code === "body_empty");
  assert.throws(() => client.send("nope", "hi"), (e) => e instanceof ChatError && e.code === "unknown_room");

  // The connection drops: reconnecting, a new socket, auth again, the send goes out again.
  ws1.drop(1006);
  assert.equal(client.state, "reconnecting");
  assert.deepEqual(client.lastClose, { code: 1006, reason: "" });
  assert.deepEqual(client.getMessages("r1").map((m) => [m.body, m.state]), [["hi\nthere", "sending"]]);
  const ws2 = await openSocket(2);
  ws2.receive({ type: "ready", user_id: "alice", rooms: [ROOM] });
  await until(() => ws2.sent.some((f) => f.type === "send"), "the re-send");
  assert.deepEqual(ws2.sent.filter((f) => f.type === "send"), [{ type: "send", room_id: "r1", client_msg_id: item.client_msg_id, body: "hi\nthere" }]);

  // The server's copy confirms it: out of the outbox and out of storage.
  ws2.receive({ type: "message", room_id: "r1", message: { seq: 1, sender_id: "alice", body: "hi\nthere", client_msg_id: item.client_msg_id, sent_at: "2026-11-30T12:00:00.000000Z", seen_at: null } });
  assert.deepEqual(client.getMessages("r1"), []); // the room's window is not loaded
  assert.equal(client.getRoom("r1").last_message.body, "hi\nthere");
  assert.equal(client.getRoom("r1").last_seq, 1);
  assert.equal(storage.getItem("matchchat:outbox:alice"), null);

  // Nothing of the client's inner state is public any more.
  assert.deepEqual(Object.keys(client), []);
  assert.equal(client._ws, undefined);

  client.disconnect();
  assert.equal(client.state, "closed");
  assert.deepEqual(ws2.closedWith, { code: 1000, reason: "bye" });
  assert.deepEqual(states(), ["connecting", "open", "reconnecting", "open", "closed"]);
});

test("ChatClient: unconfirmed sends in storage survive a new client (a reload) and go out after ready", async () => {
  const storage = memoryStorage();
  const first = newClient({ storage });
  first.client.connect();
  const ws1 = await openSocket(1);
  ws1.receive({ type: "ready", user_id: "alice", rooms: [ROOM] });
  ws1.drop(1006);
  const a = first.client.send("r1", "one");
  const b = first.client.send("r1", "two");
  first.client.disconnect();

  const second = newClient({ storage });
  second.client.connect();
  const ws2 = await openSocket(1);
  ws2.receive({ type: "ready", user_id: "alice", rooms: [ROOM] });
  assert.deepEqual(second.client.getMessages("r1").map((m) => [m.client_msg_id, m.state]), [
    [a.client_msg_id, "sending"],
    [b.client_msg_id, "sending"],
  ]);
  await until(() => ws2.sent.filter((f) => f.type === "send").length === 2, "both re-sends");
  assert.deepEqual(ws2.sent.filter((f) => f.type === "send").map((f) => [f.client_msg_id, f.body]), [
    [a.client_msg_id, "one"],
    [b.client_msg_id, "two"],
  ]);
  second.client.disconnect();
});

test("ChatClient: a history request without an answer drops the connection; the catch-up loads the room after reconnecting", async () => {
  const { client } = newClient({ requestTimeoutMs: 50 });
  client.connect();
  const ws1 = await openSocket(1);
  ws1.receive({ type: "ready", user_id: "alice", rooms: [{ ...ROOM, last_seq: 2, unread: 2 }] });
  await until(() => ws1.sent.some((f) => f.type === "history"), "the preview request");
  ws1.receive({ type: "history", room_id: "r1", messages: [] }); // the room list's preview: answered
  const load = client.loadRoom("r1");
  await until(() => ws1.sent.filter((f) => f.type === "history").length === 2, "the load request");
  await assert.rejects(load, (e) => e instanceof ChatError && e.code === "offline");
  assert.deepEqual(ws1.closedWith, { code: 4000, reason: "request_timeout" });
  assert.deepEqual(client.lastClose, { code: 4000, reason: "request_timeout" });

  const ws2 = await openSocket(2);
  ws2.receive({ type: "ready", user_id: "alice", rooms: [{ ...ROOM, last_seq: 2, unread: 2 }] });
  await until(() => ws2.sent.some((f) => f.type === "history"), "the catch-up request");
  assert.deepEqual(ws2.sent.find((f) => f.type === "history"), { type: "history", room_id: "r1" });
  const at = "2026-11-30T12:00:00.000000Z";
  ws2.receive({
    type: "history",
    room_id: "r1",
    messages: [
      { seq: 1, sender_id: "bob", body: "hey", client_msg_id: "b1", sent_at: at, seen_at: null },
      { seq: 2, sender_id: "bob", body: "you there?", client_msg_id: "b2", sent_at: at, seen_at: null },
    ],
  });
  await until(() => client.getRoom("r1").loaded, "the room to be loaded");
  assert.deepEqual(client.getMessages("r1").map((m) => [m.seq, m.body, m.state, m.own]), [
    [1, "hey", "sent", false],
    [2, "you there?", "sent", false],
  ]);
  assert.equal(client.getRoom("r1").unread, 2);
  assert.equal(client.markSeen("r1", 2), true);
  assert.deepEqual(ws2.sent.at(-1), { type: "seen", room_id: "r1", up_to_seq: 2 });
  assert.equal(client.getRoom("r1").unread, 0);
  assert.equal(client.markSeen("r1", 2), false, "only a higher watermark is sent");
  client.disconnect();
});

test("ChatClient: an expired token without getToken waits for setToken(), then connects with the new one", async () => {
  const { client, events } = newClient();
  client.connect();
  const ws1 = await openSocket(1);
  ws1.receive({ type: "ready", user_id: "alice", rooms: [ROOM] });
  ws1.drop(1008, "token_expired");
  assert.equal(client.state, "closed");
  assert.deepEqual(events.filter(([t]) => t === "authrequired"), [["authrequired", { reason: "token_expired" }]]);
  client.setToken("t2");
  const ws2 = await openSocket(2, "t2");
  ws2.receive({ type: "ready", user_id: "alice", rooms: [ROOM] });
  assert.equal(client.state, "open");
  client.disconnect();
});

test("ChatClient: a refused send fails with the reason; rate_limited is retried by the client first", async () => {
  const { client, events } = newClient();
  client.connect();
  const ws = await openSocket(1);
  ws.receive({ type: "ready", user_id: "alice", rooms: [ROOM] });
  const item = client.send("r1", "hello");
  ws.receive({ type: "error", code: "rate_limited", message: "slow down", ref: item.client_msg_id });
  assert.equal(client.getMessages("r1")[0].state, "sending", "retried by itself, not failed");
  await until(() => ws.sent.filter((f) => f.type === "send").length === 2, "the automatic retry", 5000);
  ws.receive({ type: "error", code: "room_closed", message: "closed", ref: item.client_msg_id });
  const [failed] = client.getMessages("r1");
  assert.equal(failed.state, "failed");
  assert.deepEqual(failed.error, { code: "room_closed", message: "This conversation has ended." });
  assert.equal(client.getRoom("r1").closed, true);
  assert.deepEqual(events.filter(([t]) => t === "failed").map(([, d]) => d.code), ["room_closed"]);
  assert.equal(client.discard("r1", item.client_msg_id), true);
  assert.deepEqual(client.getMessages("r1"), []);
  client.disconnect();
});

// ---- protocol 1.1 ---------------------------------------------------------------------------

const AT = "2026-11-30T12:00:00.000000Z";
const msg = (seq, sender, body = `m${seq}`, extra = {}) => ({ room_id: "r1", seq, sender_id: sender, body, sent_at: AT, seen_at: null, deleted_at: null, client_msg_id: `c${seq}`, ...extra });
const ROOM11 = {
  ...ROOM,
  peer: { online: true, last_active_at: null },
  last_message: null,
  peer_seen_up_to: 0,
  peer_delivered_up_to: 0,
  last_activity_at: AT,
};

async function ready11(client, rooms = [ROOM11], extra = {}) {
  client.connect();
  const ws = await openSocket(1);
  ws.receive({ type: "ready", user_id: "alice", protocol: "1.1", more_rooms: false, rooms, ...extra });
  return ws;
}

/** Loads r1's window through the fake server, answering its history request by req. */
async function loadWindow(client, ws, messages) {
  const load = client.loadRoom("r1");
  await until(() => ws.sent.some((f) => f.type === "history"), "the history request");
  const i = ws.sent.findIndex((f) => f.type === "history");
  ws.receive({ type: "history", room_id: "r1", messages, req: ws.reqs[i] });
  await load;
}

test("ChatClient 1.1: a history reply and an error are tied to their request by req", async () => {
  const { client } = newClient();
  const errors = [];
  client.addEventListener("error", (e) => errors.push(e.detail));
  const ws = await ready11(client);
  const load = client.loadRoom("r1");
  await until(() => ws.sent.some((f) => f.type === "history"), "the history request");
  const req = ws.reqs[ws.sent.findIndex((f) => f.type === "history")];
  // A reply naming another request is not this one's answer.
  ws.receive({ type: "history", room_id: "r1", messages: [msg(1, "bob")], req: "someone-else" });
  assert.equal(client.getRoom("r1").loaded, false);
  ws.receive({ type: "error", code: "internal", message: "db down", ref: null, req });
  await assert.rejects(load, (e) => e instanceof ChatError && e.code === "internal");
  assert.deepEqual(errors.map((e) => [e.code, e.req, e.request && e.request.type, e.request && e.request.roomId]), [["internal", req, "history", "r1"]]);
  client.disconnect();
});

test("ChatClient 1.1: typing goes out at most every 3 s; the other's shows for 5 s and clears when their message arrives", async (t) => {
  const { client } = newClient();
  const typing = [];
  client.addEventListener("typing", (e) => typing.push(e.detail.typing));
  const ws = await ready11(client);
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: Date.now() });
  const typingFrames = () => ws.sent.filter((f) => f.type === "typing");

  assert.equal(client.typing("r1"), true);
  assert.equal(client.typing("r1"), false, "not again within 3 s");
  t.mock.timers.tick(2999);
  assert.equal(client.typing("r1"), false);
  t.mock.timers.tick(1);
  assert.equal(client.typing("r1"), true);
  assert.deepEqual(typingFrames(), [{ type: "typing", room_id: "r1" }, { type: "typing", room_id: "r1" }]);
  // Sending a message makes the next keystroke news again.
  client.send("r1", "hi");
  assert.equal(client.typing("r1"), true);

  // Bob types: shown for 5 s after his last frame.
  ws.receive({ type: "typing", room_id: "r1", user_id: "bob" });
  assert.equal(client.getRoom("r1").typing, true);
  t.mock.timers.tick(4000);
  ws.receive({ type: "typing", room_id: "r1", user_id: "bob" });
  t.mock.timers.tick(4999);
  assert.equal(client.getRoom("r1").typing, true, "5 s from the last frame, not the first");
  t.mock.timers.tick(1);
  assert.equal(client.getRoom("r1").typing, false);
  assert.deepEqual(typing, [true, false]);

  // Bob types and sends: cleared at once by his message.
  t.mock.timers.tick(2000);
  ws.receive({ type: "typing", room_id: "r1", user_id: "bob" });
  assert.equal(client.getRoom("r1").typing, true);
  ws.receive({ type: "message", room_id: "r1", message: msg(2, "bob") });
  assert.equal(client.getRoom("r1").typing, false);
  // A typing frame overtaken by his message (it arrives just after) is not shown.
  ws.receive({ type: "typing", room_id: "r1", user_id: "bob" });
  assert.equal(client.getRoom("r1").typing, false);
  assert.deepEqual(typing, [true, false, true, false]);
  t.mock.timers.reset();
  client.disconnect();
});

test("ChatClient 1.1: received goes out batched, one frame per room; delivered then seen move own messages on", async (t) => {
  const { client } = newClient();
  const ws = await ready11(client);
  await loadWindow(client, ws, [msg(1, "alice"), msg(2, "alice")]);
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: Date.now() });
  const received = () => ws.sent.filter((f) => f.type === "received");
  // Bob's messages arrive in a burst: one received frame, for the highest, after the batch.
  for (const seq of [3, 4, 5]) ws.receive({ type: "message", room_id: "r1", message: msg(seq, "bob") });
  assert.equal(received().length, 0, "batched, not at once");
  t.mock.timers.tick(250);
  assert.deepEqual(received(), [{ type: "received", room_id: "r1", up_to_seq: 5 }]);
  // Marked seen: no received is needed up to there.
  ws.receive({ type: "message", room_id: "r1", message: msg(6, "bob") });
  client.markSeen("r1", 6);
  t.mock.timers.tick(1000);
  assert.equal(received().length, 1, "seen covers received");
  t.mock.timers.reset();

  const states = () => client.getMessages("r1").filter((m) => m.own).map((m) => [m.seq, m.state]);
  assert.deepEqual(states(), [[1, "sent"], [2, "sent"]]);
  ws.receive({ type: "delivered", room_id: "r1", reader_id: "bob", up_to_seq: 2, delivered_at: AT });
  assert.deepEqual(states(), [[1, "delivered"], [2, "delivered"]]);
  ws.receive({ type: "seen", room_id: "r1", reader_id: "bob", up_to_seq: 1, seen_at: AT });
  assert.deepEqual(states(), [[1, "seen"], [2, "delivered"]]);
  // The other member's messages are never "delivered" (that is about one's own).
  assert.ok(client.getMessages("r1").filter((m) => !m.own).every((m) => m.state !== "delivered"));
  client.disconnect();
});

test("ChatClient 1.1: unsend resolves on message_deleted; a refusal rejects with the code of the error carrying its req", async () => {
  const { client } = newClient();
  const deleted = [];
  client.addEventListener("deleted", (e) => deleted.push(e.detail));
  const ws = await ready11(client);
  await loadWindow(client, ws, [msg(1, "alice"), msg(2, "bob"), msg(3, "alice")]);
  assert.equal(client.canUnsend, true);

  const done = client.unsend("r1", 1);
  const del = ws.sent.findIndex((f) => f.type === "delete");
  assert.deepEqual(ws.sent[del], { type: "delete", room_id: "r1", seq: 1 });
  ws.receive({ type: "message_deleted", room_id: "r1", seq: 1, deleted_at: AT });
  await done;
  const [first] = client.getMessages("r1");
  assert.equal(first.body, null);
  assert.equal(first.deleted_at, AT);
  assert.deepEqual(deleted, [{ roomId: "r1", seq: 1, deletedAt: AT, own: true }]);

  // The window passed: not_allowed, tied by req; nothing changes.
  const refused = client.unsend("r1", 3);
  const req = ws.reqs[ws.sent.findLastIndex((f) => f.type === "delete")];
  ws.receive({ type: "error", code: "not_allowed", message: "too late", ref: null, req });
  await assert.rejects(refused, (e) => e instanceof ChatError && e.code === "not_allowed");
  assert.equal(client.getMessages("r1")[2].body, "m3");
  // Someone else's message is refused before anything is sent.
  const before = ws.sent.length;
  await assert.rejects(client.unsend("r1", 2), (e) => e.code === "not_allowed");
  assert.equal(ws.sent.length, before);

  // A deleted message in a history page (e.g. after a reload) has no body either; the room
  // list's preview follows a deletion too.
  ws.receive({ type: "message", room_id: "r1", message: msg(4, "bob") });
  ws.receive({ type: "message_deleted", room_id: "r1", seq: 4, deleted_at: AT });
  assert.equal(client.getRoom("r1").last_message.body, null);
  client.disconnect();
});

test("ChatClient 1.1: presence and watermarks from the summary, presence frames, and room pages with a cursor", async () => {
  const { client } = newClient();
  const summary = (id, peer, at) => ({ ...ROOM11, room_id: id, members: ["alice", peer], last_activity_at: at, last_message: msg(7, peer, "hey", { room_id: id }), last_seq: 7, unread: 1, peer_seen_up_to: 3, peer_delivered_up_to: 5, peer: { online: false, last_active_at: at } });
  const ws = await ready11(client, [summary("r1", "bob", "2026-11-30T12:00:03.000000Z"), summary("r2", "carol", "2026-11-30T12:00:02.000000Z")], { more_rooms: true });
  const r1 = client.getRoom("r1");
  assert.deepEqual(r1.presence, { online: false, last_active_at: "2026-11-30T12:00:03.000000Z" });
  assert.equal(r1.peer, "bob", "peer stays the other member's id");
  assert.equal(r1.last_message.body, "hey");
  assert.equal(r1.peer_delivered_up_to, 5);
  assert.equal(r1.peer_seen_up_to, 3);
  // The summary's last message is Bob's and unread: this device got it.
  await until(() => ws.sent.some((f) => f.type === "received"), "received for the summaries");
  assert.deepEqual(ws.sent.filter((f) => f.type === "received"), [
    { type: "received", room_id: "r1", up_to_seq: 7 },
    { type: "received", room_id: "r2", up_to_seq: 7 },
  ]);
  // No history request for previews: the summaries carry the last message.
  assert.equal(ws.sent.filter((f) => f.type === "history").length, 0);

  ws.receive({ type: "presence", user_id: "bob", online: true, last_active_at: null });
  assert.deepEqual(client.getRoom("r1").presence, { online: true, last_active_at: null });
  assert.deepEqual(client.getRoom("r2").presence.online, false, "only bob's rooms");

  assert.equal(client.moreRooms, true);
  const page = client.loadMoreRooms();
  assert.equal(client.loadMoreRooms(), page, "one page at a time");
  const i = ws.sent.findIndex((f) => f.type === "rooms");
  assert.deepEqual(ws.sent[i], { type: "rooms", before_activity_at: "2026-11-30T12:00:02.000000Z", before_room_id: "r2" });
  ws.receive({ type: "rooms", rooms: [summary("r3", "dan", "2026-11-30T12:00:01.000000Z")], more_rooms: false, req: ws.reqs[i] });
  assert.equal(await page, 1);
  assert.deepEqual(client.getRooms().map((r) => r.room_id), ["r1", "r2", "r3"]);
  assert.equal(client.moreRooms, false);
  assert.equal(await client.loadMoreRooms(), 0);
  client.disconnect();
});

test("ChatClient against a 1.0 server: none of typing, received, delete or rooms is sent", async (t) => {
  const { client } = newClient();
  client.connect();
  const ws = await openSocket(1);
  ws.receive({ type: "ready", user_id: "alice", rooms: [{ ...ROOM, last_seq: 1, unread: 1 }] });
  assert.equal(client.protocol, "1.0");
  // The 1.0 way to the room list's preview: a history request.
  await until(() => ws.sent.some((f) => f.type === "history"), "the preview request");
  ws.receive({ type: "history", room_id: "r1", messages: [msg(1, "bob")] }); // no req in 1.0
  await until(() => client.getRoom("r1").last_message !== null, "the preview");
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: Date.now() });
  ws.receive({ type: "message", room_id: "r1", message: msg(2, "bob") });
  assert.equal(client.typing("r1"), false);
  assert.equal(client.canUnsend, false);
  await assert.rejects(client.unsend("r1", 1), (e) => e.code === "unsupported");
  assert.equal(await client.loadMoreRooms(), 0);
  t.mock.timers.tick(5000); // well past the received batch window
  t.mock.timers.reset();
  assert.deepEqual([...new Set(ws.sent.map((f) => f.type))], ["auth", "history"]);
  client.disconnect();
});
