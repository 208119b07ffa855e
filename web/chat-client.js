// matchchat protocol client: no DOM, no framework. Speaks the WebSocket protocol of
// `GET /ws` (see docs/protocol.md and docs/web.md): auth, live events, history, sends with
// client_msg_id, seen watermarks, reconnect with catch-up and re-send.
//
// Usage (the whole API is documented in docs/web.md):
//
//   import { ChatClient } from "./chat-client.js";
//   const client = new ChatClient({ token });
//   client.addEventListener("change", (e) => render(e.detail));
//   client.connect();

/** A body holds at most this many Unicode scalar values (JS `[...s].length`). */
export const MAX_BODY_CHARS = 160;
/** The history window: a room keeps at most this many stored messages. */
export const HISTORY_WINDOW = 300;

/** Rooms whose newest message is fetched for the room list after connecting. */
const PREVIEW_ROOMS = 50;
const AUTH_FAILURE_REASONS = new Set(["unauthorized", "token_expired"]);
// Rust's `char::is_whitespace` (Unicode White_Space), which the server's blank check uses.
const BLANK_RE = /^[\t\n\v\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*$/u;
// Rust's `char::is_control` (general category Cc), except "\n".
const CONTROL_RE = /[\u0000-\u0009\u000B-\u001F\u007F-\u009F]/u;

/** Unicode scalar values in `text`, as the server counts them. */
export function countChars(text) {
  let n = 0;
  for (const _ of text) n += 1;
  return n;
}

/** CRLF and lone CR become LF: the server refuses "\r". */
export function normalizeNewlines(text) {
  return text.replace(/\r\n?/g, "\n");
}

/**
 * Checks a body against the server's rule. Returns `{ ok, code, count, reason }` where code is
 * null or one of the server's codes: body_empty, body_too_long, body_invalid.
 */
export function validateBody(text) {
  const count = countChars(text);
  if (BLANK_RE.test(text)) return { ok: false, code: "body_empty", count, reason: "Write something first." };
  if (count > MAX_BODY_CHARS) {
    return {
      ok: false,
      code: "body_too_long",
      count,
      reason: `Too long: ${count} characters, the limit is ${MAX_BODY_CHARS}.`,
    };
  }
  if (CONTROL_RE.test(text)) {
    return { ok: false, code: "body_invalid", count, reason: "Tabs and control characters can't be sent." };
  }
  return { ok: true, code: null, count, reason: "" };
}

/** A client_msg_id: a UUID (crypto.randomUUID needs a secure context; fall back otherwise). */
export function newClientMsgId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") {
    try {
      return c.randomUUID();
    } catch {
      /* not a secure context */
    }
  }
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(b);
  else for (let i = 0; i < 16; i += 1) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Human text for the server's error codes. */
export const ERROR_TEXT = {
  unauthorized: "Not signed in.",
  not_a_member: "You're not in this conversation.",
  unknown_room: "This conversation doesn't exist.",
  body_empty: "Empty messages can't be sent.",
  body_too_long: `Messages are limited to ${MAX_BODY_CHARS} characters.`,
  body_invalid: "The message contains characters that can't be sent.",
  invalid_frame: "The server did not understand the request.",
  rate_limited: "Sending too fast. Try again in a moment.",
  room_closed: "This conversation has ended.",
  internal: "Server error. Try again.",
};

class ChatError extends Error {
  constructor(code, message) {
    super(message || ERROR_TEXT[code] || code);
    this.name = "ChatError";
    this.code = code;
  }
}
export { ChatError };

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) throw new Error("ChatClient: no `url` given and no location to derive it from");
  const u = new URL("/ws", loc.href);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.href;
}

function defaultStorage() {
  try {
    return globalThis.sessionStorage || null;
  } catch {
    return null; // blocked (e.g. third-party iframe with storage disabled)
  }
}

/**
 * The protocol client. Fires (all as CustomEvent with `detail`):
 * - "state"   {state, previous, reason}  connection state changed
 * - "ready"   {userId, rooms}            authenticated (also after every reconnect)
 * - "rooms"   {rooms}                    the room list or a room's unread/closed changed
 * - "change"  {roomId, reason}           a room's messages changed (render getMessages(roomId))
 * - "message" {roomId, message, own}     a new stored message arrived live (not from history)
 * - "seen"    {roomId, readerId, upToSeq, seenAt}
 * - "failed"  {roomId, item, code, message}  a send was refused
 * - "error"   {code, message, ref}       any error frame
 * - "authrequired" {reason}              no valid token and no getToken: call setToken()
 */
export class ChatClient extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.url] WebSocket URL; default `/ws` on this page's origin.
   * @param {string} [options.token] A user token.
   * @param {() => Promise<string>} [options.getToken] Called for a fresh token when there is
   *   none or the server refused/expired it.
   * @param {Storage|null} [options.storage] Where unconfirmed sends are kept across reloads;
   *   default sessionStorage, null for none.
   * @param {number} [options.minDelayMs] First reconnect delay (default 500).
   * @param {number} [options.maxDelayMs] Longest reconnect delay (default 15000).
   * @param {number} [options.requestTimeoutMs] A history request without reply after this long
   *   counts the connection as dead (default 20000).
   * @param {typeof WebSocket} [options.WebSocket] WebSocket implementation (tests, Node).
   */
  constructor(options = {}) {
    super();
    this.url = options.url || defaultUrl();
    this.token = options.token || null;
    this.getToken = options.getToken || null;
    this.storage = options.storage === undefined ? defaultStorage() : options.storage;
    this.minDelayMs = options.minDelayMs ?? 500;
    this.maxDelayMs = options.maxDelayMs ?? 15000;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 20000;
    this.WebSocketImpl = options.WebSocket || globalThis.WebSocket;

    this.state = "idle"; // idle | connecting | open | reconnecting | closed
    this.userId = null;
    this.rooms = new Map(); // room_id -> room record (see _room)
    this.lastClose = null; // {code, reason}
    this._ws = null;
    this._wanted = false; // connect() called and not disconnect()ed
    this._everReady = false;
    this._attempt = 0;
    this._timer = null;
    this._seq = 0; // local creation counter for outbox ordering
    this._outboxLoadedFor = null;
    this._opening = false;
    this._onOnline = () => this._reconnectSoon();
  }

  // ---- connection ---------------------------------------------------------------------

  /** Opens the connection (and keeps it open, reconnecting, until disconnect()). */
  connect() {
    this._wanted = true;
    if (globalThis.addEventListener) globalThis.addEventListener("online", this._onOnline);
    if (!this._ws && !this._timer && !this._opening) this._open();
  }

  /** Closes the connection for good (no reconnect). Unconfirmed sends stay in storage. */
  disconnect() {
    this._wanted = false;
    if (globalThis.removeEventListener) globalThis.removeEventListener("online", this._onOnline);
    clearTimeout(this._timer);
    this._timer = null;
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      this._detach(ws);
      try {
        ws.close(1000, "bye");
      } catch {
        /* already closed */
      }
    }
    this._failRequests("disconnected");
    this._setState("closed", "disconnected");
  }

  /** Gives the client a (new) token. Reconnects if it was waiting for one. */
  setToken(token) {
    this.token = token || null;
    if (!this.token) return;
    this._wanted = true;
    if (this.state === "closed" || this.state === "idle") {
      this._attempt = 0;
      clearTimeout(this._timer);
      this._timer = null;
      if (!this._ws && !this._opening) this._open();
    }
  }

  /** Tries to reconnect now if a reconnect is scheduled (e.g. the page became visible). */
  reconnectNow() {
    this._reconnectSoon();
  }

  _reconnectSoon() {
    if (this._wanted && this.state === "reconnecting" && this._timer) {
      clearTimeout(this._timer);
      this._timer = null;
      this._open();
    }
  }

  _setState(state, reason) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this._emit("state", { state, previous, reason: reason || null });
  }

  async _open() {
    this._timer = null;
    if (!this._wanted || this._opening || this._ws) return;
    this._opening = true;
    try {
      await this._openSocket();
    } finally {
      this._opening = false;
    }
  }

  async _openSocket() {
    this._setState(this._everReady ? "reconnecting" : "connecting");
    if (!this.token) {
      if (!this.getToken) {
        this._setState("closed", "auth");
        this._emit("authrequired", { reason: "no_token" });
        return;
      }
      try {
        this.token = await this.getToken();
      } catch (e) {
        this._emit("error", { code: "token", message: `could not get a token: ${e && e.message}`, ref: null });
      }
      if (!this._wanted) return;
      if (!this.token) {
        this._schedule();
        return;
      }
    }
    let ws;
    try {
      ws = new this.WebSocketImpl(this.url);
    } catch (e) {
      this._emit("error", { code: "connect", message: String(e && e.message), ref: null });
      this._schedule();
      return;
    }
    this._ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token: this.token }));
    ws.onmessage = (ev) => this._onFrame(ev.data);
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
    ws.onerror = () => {}; // a close follows
  }

  _detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._detach(ws);
    this._ws = null;
    this.lastClose = { code, reason };
    this._failRequests("connection closed");
    for (const room of this.rooms.values()) room.seenSent = 0; // re-send watermarks after reconnect
    if (!this._wanted) {
      this._setState("closed", reason);
      return;
    }
    if (code === 1008 && AUTH_FAILURE_REASONS.has(reason)) {
      // The token is bad or expired: get a new one, or wait for setToken().
      this.token = null;
      if (!this.getToken) {
        this._setState("closed", "auth");
        this._emit("authrequired", { reason });
        return;
      }
    }
    this._setState(this._everReady ? "reconnecting" : "connecting", reason || `closed ${code}`);
    this._schedule(code === 1013 ? 2000 : 0);
  }

  _schedule(minMs = 0) {
    clearTimeout(this._timer);
    const ceiling = Math.min(this.maxDelayMs, this.minDelayMs * 2 ** Math.min(this._attempt, 16));
    this._attempt += 1;
    // "Equal jitter": half fixed, half random, so a server restart is not hit by every
    // client at the same instant, and no client waits near zero over and over.
    const delay = Math.max(minMs, ceiling / 2 + Math.random() * (ceiling / 2));
    this._timer = setTimeout(() => this._open(), delay);
  }

  _sendFrame(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1 || this.state !== "open") return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // ---- incoming frames ----------------------------------------------------------------

  _onFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    switch (frame.type) {
      case "ready":
        this._onReady(frame);
        break;
      case "message":
        this._onMessage(frame.room_id, frame.message);
        break;
      case "history":
        this._onHistory(frame.room_id, frame.messages || []);
        break;
      case "seen":
        this._onSeen(frame);
        break;
      case "room_opened":
        this._upsertRoom(frame.room, true);
        this._emitRooms();
        break;
      case "room_closed": {
        const room = this.rooms.get(frame.room_id);
        if (room) {
          room.closed = true;
          this._emitRooms();
          this._change(room.room_id, "closed");
        }
        break;
      }
      case "error":
        this._onError(frame);
        break;
      default:
        break;
    }
  }

  _onReady(frame) {
    if (this.userId && this.userId !== frame.user_id) {
      // A token for someone else: nothing of the previous user's state applies.
      this.rooms.clear();
      this._outboxLoadedFor = null;
    }
    this.userId = frame.user_id;
    this._attempt = 0;
    this._everReady = true;
    const known = new Set();
    for (const summary of frame.rooms || []) {
      known.add(summary.room_id);
      this._upsertRoom(summary, false);
    }
    this._loadOutbox();
    this._setState("open");
    this._emit("ready", { userId: this.userId, rooms: this.getRooms() });
    this._emitRooms();
    this._catchUpAndResend();
  }

  async _catchUpAndResend() {
    const ws = this._ws;
    const jobs = [];
    let previews = 0;
    for (const room of this.rooms.values()) {
      if (room.loaded || room.wanted) jobs.push(this._catchUpGuarded(room));
      else if (room.last_seq > 0 && previews < PREVIEW_ROOMS) {
        // The room list shows each room's newest message; `ready` does not carry it.
        previews += 1;
        this._loadPreview(room);
      }
    }
    await Promise.allSettled(jobs);
    if (ws !== this._ws || this.state !== "open") return;
    for (const room of this.rooms.values()) {
      if (room.seenWanted > room.seenSent) this._flushSeen(room);
    }
    const pending = [];
    for (const room of this.rooms.values()) {
      for (const item of room.outbox.values()) if (item.state === "sending") pending.push(item);
    }
    pending.sort((a, b) => a.order - b.order);
    for (const item of pending) this._transmit(item);
  }

  async _catchUpGuarded(room) {
    room.catchingUp = true;
    try {
      await this._catchUp(room);
    } catch {
      /* offline again: the next ready repeats it */
    } finally {
      room.catchingUp = false;
    }
  }

  async _loadPreview(room) {
    try {
      const [last] = await this.history(room.room_id, { limit: 1 });
      if (last && (!room.preview || last.seq >= room.preview.seq)) {
        room.preview = last;
        this._emitRooms();
      }
    } catch {
      /* offline: the next ready asks again */
    }
  }

  /**
   * Brings a loaded room up to date after a (re)connect: pages of `after_seq`, repeated while
   * a page comes back full. It starts before our oldest own message still waiting for a seen
   * receipt, so receipts given while we were away are picked up too.
   */
  async _catchUp(room) {
    if (!room.loaded) {
      await this.loadRoom(room.room_id).catch(() => {});
      return;
    }
    let after = room.maxSeq();
    for (const m of room.messages.values()) {
      if (m.sender_id === this.userId && !m.seen_at && m.seq <= after) after = Math.min(after, m.seq - 1);
    }
    if (after <= 0 || room.last_seq - after > HISTORY_WINDOW) {
      // Nothing to continue from, or more missed than the window holds: the latest page is
      // exactly what the window must show.
      const page = await this.history(room.room_id, {});
      this._merge(room, page, "catchup");
      return;
    }
    for (;;) {
      const page = await this.history(room.room_id, { afterSeq: after, limit: HISTORY_WINDOW });
      this._merge(room, page, "catchup");
      if (page.length < HISTORY_WINDOW) break;
      after = page[page.length - 1].seq;
    }
  }

  _onMessage(roomId, message) {
    const room = this._roomOrNew(roomId);
    const isNew = !room.messages.has(message.seq);
    if (message.seq > room.last_seq) room.last_seq = message.seq;
    const own = message.sender_id === this.userId;
    const confirmed = own && room.outbox.has(message.client_msg_id);
    if (room.loaded || room.loading) {
      this._merge(room, [message], "message");
      // A gap means a frame was lost somewhere: fill it from the database.
      if (room.loaded && !room.catchingUp && room.hasGapBelow(message.seq)) this._catchUpGuarded(room);
    } else {
      if (!room.preview || message.seq >= room.preview.seq) room.preview = message;
      if (confirmed) {
        room.outbox.delete(message.client_msg_id);
        this._saveOutbox();
      }
    }
    if (isNew && !own && !message.seen_at && message.seq > room.readUpTo) {
      if (!room.loaded) room.unread += 1;
      else this._recountUnread(room);
      this._emitRooms();
    }
    if (isNew || confirmed) {
      this._emit("message", { roomId, message, own });
      this._change(roomId, "message");
    }
  }

  _onHistory(roomId, messages) {
    const room = this.rooms.get(roomId);
    const queue = room && room.requests;
    if (!queue || queue.length === 0) return; // unsolicited: ignore
    const request = queue.shift();
    clearTimeout(request.timer);
    request.resolve(messages);
    this._pumpRequests(room);
  }

  _onSeen(frame) {
    const room = this.rooms.get(frame.room_id);
    if (!room) return;
    const upTo = frame.up_to_seq;
    if (frame.reader_id === this.userId) {
      // I read the other member's messages (maybe from another tab).
      room.readUpTo = Math.max(room.readUpTo, upTo);
      for (const m of room.messages.values()) {
        if (m.sender_id !== this.userId && m.seq <= upTo && !m.seen_at) m.seen_at = frame.seen_at;
      }
      if (room.loaded) this._recountUnread(room);
      else if (upTo >= room.last_seq) room.unread = 0;
      this._emitRooms();
    } else {
      room.peerSeenUpTo = Math.max(room.peerSeenUpTo, upTo);
      room.peerSeenAt = frame.seen_at;
      for (const m of room.messages.values()) {
        if (m.sender_id === this.userId && m.seq <= upTo && !m.seen_at) m.seen_at = frame.seen_at;
      }
    }
    this._emit("seen", { roomId: frame.room_id, readerId: frame.reader_id, upToSeq: upTo, seenAt: frame.seen_at });
    this._change(frame.room_id, "seen");
  }

  _onError(frame) {
    this._emit("error", { code: frame.code, message: frame.message, ref: frame.ref ?? null });
    if (frame.ref) {
      for (const room of this.rooms.values()) {
        const item = room.outbox.get(frame.ref);
        if (!item) continue;
        if (frame.code === "rate_limited" && item.autoRetries < 3) {
          // The server's bucket refills within a second or two: try again by ourselves.
          item.autoRetries += 1;
          const ws = this._ws;
          setTimeout(() => {
            if (ws === this._ws && room.outbox.get(item.client_msg_id) === item && item.state === "sending") {
              this._transmit(item);
            }
          }, 1000 * item.autoRetries + Math.random() * 500);
          return;
        }
        item.state = "failed";
        item.error = { code: frame.code, message: ERROR_TEXT[frame.code] || frame.message };
        if (frame.code === "room_closed") room.closed = true;
        this._saveOutbox();
        this._emit("failed", { roomId: room.room_id, item: this._itemView(room, item), code: frame.code, message: item.error.message });
        this._change(room.room_id, "failed");
        return;
      }
      return;
    }
    // History and seen errors carry no ref. A history error can only belong to a request in
    // flight: if exactly one room has one, it is that one.
    if (["not_a_member", "unknown_room", "invalid_frame", "internal"].includes(frame.code)) {
      const waiting = [...this.rooms.values()].filter((r) => r.requests.length > 0 && r.requests[0].sent);
      if (waiting.length === 1) {
        const room = waiting[0];
        const request = room.requests.shift();
        clearTimeout(request.timer);
        request.reject(new ChatError(frame.code, frame.message));
        this._pumpRequests(room);
      }
    }
  }

  // ---- rooms --------------------------------------------------------------------------

  _roomOrNew(roomId) {
    let room = this.rooms.get(roomId);
    if (!room) {
      room = this._upsertRoom({ room_id: roomId, members: [], last_seq: 0, unread: 0, closed: false }, false);
    }
    return room;
  }

  _upsertRoom(summary, front) {
    let room = this.rooms.get(summary.room_id);
    if (!room) {
      room = new RoomState(summary);
      if (front) {
        const rest = [...this.rooms];
        this.rooms = new Map([[room.room_id, room], ...rest]);
      } else {
        this.rooms.set(room.room_id, room);
      }
    } else {
      room.members = summary.members || room.members;
      room.closed = Boolean(summary.closed);
      room.last_seq = Math.max(room.last_seq, summary.last_seq || 0);
      if (!room.loaded) room.unread = summary.unread || 0;
      else room.serverUnread = summary.unread || 0;
    }
    return room;
  }

  _recountUnread(room) {
    let n = 0;
    for (const m of room.messages.values()) {
      if (m.sender_id !== this.userId && !m.seen_at && m.seq > room.readUpTo) n += 1;
    }
    room.unread = n;
  }

  _emitRooms() {
    this._emit("rooms", { rooms: this.getRooms() });
  }

  _change(roomId, reason) {
    this._emit("change", { roomId, reason });
  }

  /** Room snapshots, in list order (newest first as the server gives them; new rooms on top). */
  getRooms() {
    return [...this.rooms.values()].map((r) => this._roomView(r));
  }

  getRoom(roomId) {
    const r = this.rooms.get(roomId);
    return r ? this._roomView(r) : null;
  }

  _roomView(r) {
    const peer = r.members.find((m) => m !== this.userId) || r.members[0] || "";
    return {
      room_id: r.room_id,
      members: [...r.members],
      peer,
      last_seq: r.last_seq,
      unread: r.unread,
      closed: r.closed,
      loaded: r.loaded,
      last_message: r.lastMessage(),
    };
  }

  /**
   * Loads a room's latest window (once), and keeps it current from then on. Resolves with
   * getMessages(roomId).
   */
  async loadRoom(roomId) {
    const room = this._roomOrNew(roomId);
    room.wanted = true;
    if (room.loaded) return this.getMessages(roomId);
    if (!room.loadPromise) {
      room.loading = true;
      room.loadPromise = this.history(roomId, {})
        .then((page) => {
          room.loaded = true;
          room.loading = false;
          this._merge(room, page, "history");
          this._recountUnread(room);
          this._emitRooms();
        })
        .finally(() => {
          room.loading = false;
          room.loadPromise = null;
        });
    }
    await room.loadPromise;
    return this.getMessages(roomId);
  }

  /**
   * Raw history request. `{}` is the latest page; `{beforeSeq}` or `{afterSeq}` page through,
   * `limit` caps the page (1..300). Requests for one room are sent one at a time, because a
   * reply names its room but not its request. Resolves with the messages, oldest first. It
   * does not change the room's window; loadRoom() and the catch-up do that.
   */
  history(roomId, { beforeSeq, afterSeq, limit } = {}) {
    const room = this._roomOrNew(roomId);
    const frame = { type: "history", room_id: roomId };
    if (beforeSeq != null) frame.before_seq = beforeSeq;
    if (afterSeq != null) frame.after_seq = afterSeq;
    if (limit != null) frame.limit = limit;
    return new Promise((resolve, reject) => {
      if (this.state !== "open") {
        reject(new ChatError("offline", "not connected"));
        return;
      }
      room.requests.push({ frame, resolve, reject, sent: false, timer: null });
      this._pumpRequests(room);
    });
  }

  _pumpRequests(room) {
    const head = room.requests[0];
    if (!head || head.sent) return;
    if (!this._sendFrame(head.frame)) {
      room.requests.shift();
      head.reject(new ChatError("offline", "not connected"));
      this._pumpRequests(room);
      return;
    }
    head.sent = true;
    const ws = this._ws;
    head.timer = setTimeout(() => {
      // No answer: the connection is dead or stuck. Start over; the catch-up repeats it.
      if (ws === this._ws && ws) {
        try {
          ws.close(4000, "request_timeout");
        } catch {
          /* ignore */
        }
        this._onClose(ws, 4000, "request_timeout");
      }
    }, this.requestTimeoutMs);
  }

  _failRequests(why) {
    for (const room of this.rooms.values()) {
      const requests = room.requests;
      room.requests = [];
      for (const r of requests) {
        clearTimeout(r.timer);
        r.reject(new ChatError("offline", why));
      }
    }
  }

  /** Merges stored messages into a room's window (by seq), confirming own sends. */
  _merge(room, messages, reason) {
    let changed = false;
    let outboxChanged = false;
    for (const m of messages) {
      if (m.seq > room.last_seq) room.last_seq = m.seq;
      const own = m.sender_id === this.userId;
      if (own && !m.seen_at && m.seq <= room.peerSeenUpTo) m.seen_at = room.peerSeenAt;
      if (!own && !m.seen_at && m.seq <= room.readUpTo) m.seen_at = "local";
      const have = room.messages.get(m.seq);
      if (have) {
        // Seen only ever goes from null to a time.
        if (!have.seen_at && m.seen_at) {
          have.seen_at = m.seen_at;
          changed = true;
        }
      } else {
        room.messages.set(m.seq, { ...m });
        changed = true;
      }
      if (own && room.outbox.delete(m.client_msg_id)) {
        outboxChanged = true;
        changed = true;
      }
    }
    if (room.trim()) changed = true;
    if (outboxChanged) this._saveOutbox();
    if (changed && reason !== "message") this._change(room.room_id, reason);
    return changed;
  }

  // ---- messages -----------------------------------------------------------------------

  /**
   * A room's messages, oldest first: the stored window (by seq) then unconfirmed sends (in
   * the order they were written). Each item:
   * `{key, room_id, seq, sender_id, body, sent_at, seen_at, client_msg_id, own, state, error}`
   * with state "sending" | "sent" | "seen" | "failed" ("seen" for another's message means
   * this user has marked it seen).
   */
  getMessages(roomId) {
    const room = this.rooms.get(roomId);
    if (!room) return [];
    const stored = [...room.messages.values()].sort((a, b) => a.seq - b.seq);
    const items = stored.map((m) => {
      const own = m.sender_id === this.userId;
      const seenAt = m.seen_at === "local" ? null : m.seen_at;
      return {
        key: `s${m.seq}`,
        room_id: roomId,
        seq: m.seq,
        sender_id: m.sender_id,
        body: m.body,
        sent_at: m.sent_at,
        seen_at: seenAt,
        client_msg_id: m.client_msg_id,
        own,
        state: m.seen_at ? "seen" : "sent",
        error: null,
      };
    });
    const pending = [...room.outbox.values()].sort((a, b) => a.order - b.order);
    for (const item of pending) items.push(this._itemView(room, item));
    return items;
  }

  _itemView(room, item) {
    return {
      key: `c${item.client_msg_id}`,
      room_id: room.room_id,
      seq: null,
      sender_id: this.userId,
      body: item.body,
      sent_at: item.created_at,
      seen_at: null,
      client_msg_id: item.client_msg_id,
      own: true,
      state: item.state,
      error: item.error,
    };
  }

  /**
   * Sends a message. It is shown at once as "sending" and sent now, or as soon as the
   * connection is back. CRLF/CR become LF. Throws ChatError (body_empty, body_too_long,
   * body_invalid, room_closed, unknown_room) when it cannot be sent at all.
   * Returns the item (see getMessages).
   */
  send(roomId, text) {
    const room = this.rooms.get(roomId);
    if (!room) throw new ChatError("unknown_room");
    if (room.closed) throw new ChatError("room_closed");
    const body = normalizeNewlines(String(text));
    const check = validateBody(body);
    if (!check.ok) throw new ChatError(check.code, check.reason);
    const item = {
      room_id: roomId,
      client_msg_id: newClientMsgId(),
      body,
      created_at: new Date().toISOString(),
      state: "sending",
      error: null,
      order: this._nextOrder(),
      autoRetries: 0,
    };
    room.outbox.set(item.client_msg_id, item);
    this._saveOutbox();
    this._change(roomId, "sending");
    this._transmit(item);
    return this._itemView(room, item);
  }

  /** Sends a failed message again, with its original client_msg_id. */
  retry(roomId, clientMsgId) {
    const room = this.rooms.get(roomId);
    const item = room && room.outbox.get(clientMsgId);
    if (!item) return false;
    item.state = "sending";
    item.error = null;
    item.autoRetries = 0;
    this._saveOutbox();
    this._change(roomId, "sending");
    this._transmit(item);
    return true;
  }

  /** Drops an unconfirmed message (failed or still sending). */
  discard(roomId, clientMsgId) {
    const room = this.rooms.get(roomId);
    if (!room || !room.outbox.delete(clientMsgId)) return false;
    this._saveOutbox();
    this._change(roomId, "discarded");
    return true;
  }

  _transmit(item) {
    // Not connected: it stays "sending" and goes out after the next ready.
    this._sendFrame({ type: "send", room_id: item.room_id, client_msg_id: item.client_msg_id, body: item.body });
  }

  _nextOrder() {
    this._seq += 1;
    return Date.now() * 1000 + (this._seq % 1000);
  }

  /**
   * Marks everything the other member sent up to `upToSeq` as seen (a watermark). Only a
   * higher watermark than the last one is sent; offline it is sent after reconnecting.
   */
  markSeen(roomId, upToSeq) {
    const room = this.rooms.get(roomId);
    if (!room || !(upToSeq >= 1)) return false;
    if (upToSeq <= room.seenWanted && upToSeq <= room.readUpTo) return false;
    room.seenWanted = Math.max(room.seenWanted, upToSeq);
    room.readUpTo = Math.max(room.readUpTo, upToSeq);
    for (const m of room.messages.values()) {
      if (m.sender_id !== this.userId && m.seq <= upToSeq && !m.seen_at) m.seen_at = "local";
    }
    if (room.loaded) this._recountUnread(room);
    else if (upToSeq >= room.last_seq) room.unread = 0;
    this._flushSeen(room);
    this._emitRooms();
    this._change(roomId, "read");
    return true;
  }

  _flushSeen(room) {
    if (room.seenWanted > room.seenSent) {
      if (this._sendFrame({ type: "seen", room_id: room.room_id, up_to_seq: room.seenWanted })) {
        room.seenSent = room.seenWanted;
      }
    }
  }

  // ---- outbox persistence -------------------------------------------------------------

  _storageKey() {
    return `matchchat:outbox:${this.userId}`;
  }

  _loadOutbox() {
    if (this._outboxLoadedFor === this.userId) return;
    this._outboxLoadedFor = this.userId;
    if (!this.storage) return;
    let saved = [];
    try {
      saved = JSON.parse(this.storage.getItem(this._storageKey()) || "[]");
    } catch {
      saved = [];
    }
    for (const s of saved) {
      if (!s || typeof s.client_msg_id !== "string" || typeof s.body !== "string") continue;
      const room = this._roomOrNew(s.room_id);
      if (room.outbox.has(s.client_msg_id)) continue;
      room.outbox.set(s.client_msg_id, {
        room_id: s.room_id,
        client_msg_id: s.client_msg_id,
        body: s.body,
        created_at: s.created_at,
        state: s.state === "failed" ? "failed" : "sending",
        error: s.error || null,
        order: s.order || this._nextOrder(),
        autoRetries: 0,
      });
    }
  }

  _saveOutbox() {
    if (!this.storage || !this.userId) return;
    const all = [];
    for (const room of this.rooms.values()) {
      for (const i of room.outbox.values()) {
        all.push({
          room_id: i.room_id,
          client_msg_id: i.client_msg_id,
          body: i.body,
          created_at: i.created_at,
          state: i.state,
          error: i.error,
          order: i.order,
        });
      }
    }
    try {
      if (all.length) this.storage.setItem(this._storageKey(), JSON.stringify(all));
      else this.storage.removeItem(this._storageKey());
    } catch {
      /* quota or disabled: the outbox still lives in memory */
    }
  }
}

/** One room's state inside the client. */
class RoomState {
  constructor(summary) {
    this.room_id = summary.room_id;
    this.members = summary.members || [];
    this.last_seq = summary.last_seq || 0;
    this.unread = summary.unread || 0;
    this.serverUnread = this.unread;
    this.closed = Boolean(summary.closed);
    this.messages = new Map(); // seq -> stored message (window of at most HISTORY_WINDOW)
    this.outbox = new Map(); // client_msg_id -> unconfirmed send
    this.requests = []; // history requests, head in flight
    this.loaded = false;
    this.loading = false;
    this.catchingUp = false;
    this.loadPromise = null;
    this.wanted = false;
    this.readUpTo = 0; // my watermark (what I marked seen)
    this.seenWanted = 0;
    this.seenSent = 0;
    this.peerSeenUpTo = 0;
    this.peerSeenAt = null;
    this.preview = null; // newest message, for the room list, when the window is not loaded
  }

  maxSeq() {
    let max = 0;
    for (const seq of this.messages.keys()) if (seq > max) max = seq;
    return max;
  }

  hasGapBelow(seq) {
    let below = 0;
    for (const s of this.messages.keys()) if (s < seq && s > below) below = s;
    return below > 0 && below < seq - 1;
  }

  /** Keeps the newest HISTORY_WINDOW messages. */
  trim() {
    if (this.messages.size <= HISTORY_WINDOW) return false;
    const seqs = [...this.messages.keys()].sort((a, b) => a - b);
    for (const s of seqs.slice(0, seqs.length - HISTORY_WINDOW)) this.messages.delete(s);
    return true;
  }

  lastMessage() {
    const seq = this.maxSeq();
    if (seq && (!this.preview || seq >= this.preview.seq)) return this.messages.get(seq);
    return this.preview;
  }
}
