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
//
// This file is the facade; its parts live next to it and are imported relatively (copy them
// together): chat-rules.js (limits, body rule, error texts), chat-transport.js (socket,
// back-off, auth), chat-rooms.js (room state: merge, unread), chat-outbox.js (unconfirmed
// sends and their persistence).

import { ChatError, ERROR_TEXT, HISTORY_WINDOW, normalizeNewlines, validateBody } from "./chat-rules.js";
import { ChatTransport } from "./chat-transport.js";
import { RoomStore } from "./chat-rooms.js";
import { Outbox, defaultStorage } from "./chat-outbox.js";
import { ERROR_CODES } from "./protocol.js";

export {
  MAX_BODY_CHARS,
  HISTORY_WINDOW,
  countChars,
  normalizeNewlines,
  validateBody,
  newClientMsgId,
  ERROR_TEXT,
  ChatError,
} from "./chat-rules.js";

/** Rooms whose newest message is fetched for the room list after connecting. */
const PREVIEW_ROOMS = 50;
/** Errors without a ref that can only answer the history request in flight. */
const HISTORY_ERRORS = new Set([ERROR_CODES.NOT_A_MEMBER, ERROR_CODES.UNKNOWN_ROOM, ERROR_CODES.INVALID_FRAME, ERROR_CODES.INTERNAL]);

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
  #transport;
  #rooms = new RoomStore();
  #outbox;
  #requestTimeoutMs;
  #userId = null;

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
    this.#requestTimeoutMs = options.requestTimeoutMs ?? 20000;
    this.#outbox = new Outbox(options.storage === undefined ? defaultStorage() : options.storage);
    this.#transport = new ChatTransport(options, {
      frame: (frame) => this.#onFrame(frame),
      down: (why) => this.#onDown(why),
      emit: (type, detail) => this.#emit(type, detail),
    });
  }

  /** idle | connecting | open | reconnecting | closed */
  get state() {
    return this.#transport.state;
  }

  /** The signed-in user (from `ready`), or null. */
  get userId() {
    return this.#userId;
  }

  /** The last close of the WebSocket: `{code, reason}`, or null. */
  get lastClose() {
    return this.#transport.lastClose;
  }

  // ---- connection ---------------------------------------------------------------------

  /** Opens the connection (and keeps it open, reconnecting, until disconnect()). */
  connect() {
    this.#transport.connect();
  }

  /** Closes the connection for good (no reconnect). Unconfirmed sends stay in storage. */
  disconnect() {
    this.#transport.disconnect();
  }

  /** Gives the client a (new) token. Reconnects if it was waiting for one. */
  setToken(token) {
    this.#transport.setToken(token);
  }

  /** Tries to reconnect now if a reconnect is scheduled (e.g. the page became visible). */
  reconnectNow() {
    this.#transport.reconnectNow();
  }

  /** The socket is gone: requests in flight fail; watermarks are re-sent after reconnecting. */
  #onDown(why) {
    this.#failRequests(why);
    if (why !== "disconnected") for (const room of this.#rooms.values()) room.seenSent = 0;
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #emitRooms() {
    this.#emit("rooms", { rooms: this.getRooms() });
  }

  #change(roomId, reason) {
    this.#emit("change", { roomId, reason });
  }

  // ---- incoming frames ----------------------------------------------------------------

  #onFrame(frame) {
    switch (frame.type) {
      case "ready":
        this.#onReady(frame);
        break;
      case "message":
        this.#onMessage(frame.room_id, frame.message);
        break;
      case "history":
        this.#onHistory(frame.room_id, frame.messages || []);
        break;
      case "seen":
        this.#onSeen(frame);
        break;
      case "room_opened":
        this.#rooms.upsert(frame.room, true);
        this.#emitRooms();
        break;
      case "room_closed": {
        const room = this.#rooms.get(frame.room_id);
        if (room) {
          room.closed = true;
          this.#emitRooms();
          this.#change(room.room_id, "closed");
        }
        break;
      }
      case "error":
        this.#onError(frame);
        break;
      default:
        break;
    }
  }

  #onReady(frame) {
    if (this.#userId && this.#userId !== frame.user_id) {
      // A token for someone else: nothing of the previous user's state applies.
      this.#rooms.clear();
      this.#outbox.reset();
    }
    this.#userId = frame.user_id;
    for (const summary of frame.rooms || []) this.#rooms.upsert(summary, false);
    for (const roomId of this.#outbox.load(this.#userId)) this.#rooms.ensure(roomId);
    this.#transport.ready();
    this.#emit("ready", { userId: this.#userId, rooms: this.getRooms() });
    this.#emitRooms();
    this.#catchUpAndResend();
  }

  async #catchUpAndResend() {
    const connection = this.#transport.connection;
    const jobs = [];
    let previews = 0;
    for (const room of this.#rooms.values()) {
      if (room.loaded || room.wanted) jobs.push(this.#catchUpGuarded(room));
      else if (room.last_seq > 0 && previews < PREVIEW_ROOMS) {
        // The room list shows each room's newest message; `ready` does not carry it.
        previews += 1;
        this.#loadPreview(room);
      }
    }
    await Promise.allSettled(jobs);
    if (!this.#transport.isCurrent(connection) || this.state !== "open") return;
    for (const room of this.#rooms.values()) {
      if (room.seenWanted > room.seenSent) this.#flushSeen(room);
    }
    for (const item of this.#outbox.pending()) this.#transmit(item);
  }

  async #catchUpGuarded(room) {
    room.catchingUp = true;
    try {
      await this.#catchUp(room);
    } catch {
      /* offline again: the next ready repeats it */
    } finally {
      room.catchingUp = false;
    }
  }

  async #loadPreview(room) {
    try {
      const [last] = await this.history(room.room_id, { limit: 1 });
      if (last && (!room.preview || last.seq >= room.preview.seq)) {
        room.preview = last;
        this.#emitRooms();
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
  async #catchUp(room) {
    if (!room.loaded) {
      await this.loadRoom(room.room_id).catch(() => {});
      return;
    }
    let after = room.maxSeq();
    for (const m of room.messages.values()) {
      if (m.sender_id === this.#userId && !m.seen_at && m.seq <= after) after = Math.min(after, m.seq - 1);
    }
    if (after <= 0 || room.last_seq - after > HISTORY_WINDOW) {
      // Nothing to continue from, or more missed than the window holds: the latest page is
      // exactly what the window must show.
      const page = await this.history(room.room_id, {});
      this.#merge(room, page, "catchup");
      return;
    }
    for (;;) {
      const page = await this.history(room.room_id, { afterSeq: after, limit: HISTORY_WINDOW });
      this.#merge(room, page, "catchup");
      if (page.length < HISTORY_WINDOW) break;
      after = page[page.length - 1].seq;
    }
  }

  /** Merges stored messages into a room's window, confirming own sends. */
  #merge(room, messages, reason) {
    const { changed, own } = room.merge(messages, this.#userId);
    const confirmed = this.#outbox.remove(room.room_id, own);
    if ((changed || confirmed) && reason !== "message") this.#change(room.room_id, reason);
  }

  #onMessage(roomId, message) {
    const room = this.#rooms.ensure(roomId);
    const isNew = !room.messages.has(message.seq);
    if (message.seq > room.last_seq) room.last_seq = message.seq;
    const own = message.sender_id === this.#userId;
    const confirmed = own && this.#outbox.has(roomId, message.client_msg_id);
    if (room.loaded || room.loading) {
      this.#merge(room, [message], "message");
      // A gap means a frame was lost somewhere: fill it from the database.
      if (room.loaded && !room.catchingUp && room.hasGapBelow(message.seq)) this.#catchUpGuarded(room);
    } else {
      room.notePreview(message);
      if (confirmed) this.#outbox.remove(roomId, [message.client_msg_id]);
    }
    if (isNew && !own && !message.seen_at && message.seq > room.readUpTo) {
      if (!room.loaded) room.unread += 1;
      else room.recountUnread(this.#userId);
      this.#emitRooms();
    }
    if (isNew || confirmed) {
      this.#emit("message", { roomId, message, own });
      this.#change(roomId, "message");
    }
  }

  #onHistory(roomId, messages) {
    const room = this.#rooms.get(roomId);
    const queue = room && room.requests;
    if (!queue || queue.length === 0) return; // unsolicited: ignore
    const request = queue.shift();
    clearTimeout(request.timer);
    request.resolve(messages);
    this.#pumpRequests(room);
  }

  #onSeen(frame) {
    const room = this.#rooms.get(frame.room_id);
    if (!room) return;
    const upTo = frame.up_to_seq;
    if (frame.reader_id === this.#userId) {
      // I read the other member's messages (maybe from another tab).
      room.markRead(upTo, frame.seen_at, this.#userId);
      this.#emitRooms();
    } else {
      room.markSeenByPeer(upTo, frame.seen_at, this.#userId);
    }
    this.#emit("seen", { roomId: frame.room_id, readerId: frame.reader_id, upToSeq: upTo, seenAt: frame.seen_at });
    this.#change(frame.room_id, "seen");
  }

  #onError(frame) {
    this.#emit("error", { code: frame.code, message: frame.message, ref: frame.ref ?? null });
    if (frame.ref) {
      const item = this.#outbox.find(frame.ref);
      const room = item && this.#rooms.get(item.room_id);
      if (!room) return;
      if (frame.code === ERROR_CODES.RATE_LIMITED && item.autoRetries < 3) {
        // The server's bucket refills within a second or two: try again by ourselves.
        item.autoRetries += 1;
        const connection = this.#transport.connection;
        setTimeout(() => {
          if (this.#transport.isCurrent(connection) && this.#outbox.get(room.room_id, item.client_msg_id) === item && item.state === "sending") {
            this.#transmit(item);
          }
        }, 1000 * item.autoRetries + Math.random() * 500);
        return;
      }
      item.state = "failed";
      item.error = { code: frame.code, message: ERROR_TEXT[frame.code] || frame.message };
      if (frame.code === ERROR_CODES.ROOM_CLOSED) room.closed = true;
      this.#outbox.save();
      this.#emit("failed", { roomId: room.room_id, item: this.#itemView(item), code: frame.code, message: item.error.message });
      this.#change(room.room_id, "failed");
      return;
    }
    // History and seen errors carry no ref. A history error can only belong to a request in
    // flight: if exactly one room has one, it is that one.
    if (HISTORY_ERRORS.has(frame.code)) {
      const waiting = [...this.#rooms.values()].filter((r) => r.requests.length > 0 && r.requests[0].sent);
      if (waiting.length === 1) {
        const room = waiting[0];
        const request = room.requests.shift();
        clearTimeout(request.timer);
        request.reject(new ChatError(frame.code, frame.message));
        this.#pumpRequests(room);
      }
    }
  }

  // ---- rooms --------------------------------------------------------------------------

  /** Room snapshots, in list order (newest first as the server gives them; new rooms on top). */
  getRooms() {
    return [...this.#rooms.values()].map((r) => r.view(this.#userId));
  }

  getRoom(roomId) {
    const r = this.#rooms.get(roomId);
    return r ? r.view(this.#userId) : null;
  }

  /**
   * Loads a room's latest window (once), and keeps it current from then on. Resolves with
   * getMessages(roomId).
   */
  async loadRoom(roomId) {
    const room = this.#rooms.ensure(roomId);
    room.wanted = true;
    if (room.loaded) return this.getMessages(roomId);
    if (!room.loadPromise) {
      room.loading = true;
      room.loadPromise = this.history(roomId, {})
        .then((page) => {
          room.loaded = true;
          room.loading = false;
          this.#merge(room, page, "history");
          room.recountUnread(this.#userId);
          this.#emitRooms();
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
    const room = this.#rooms.ensure(roomId);
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
      this.#pumpRequests(room);
    });
  }

  #pumpRequests(room) {
    const head = room.requests[0];
    if (!head || head.sent) return;
    if (!this.#transport.send(head.frame)) {
      room.requests.shift();
      head.reject(new ChatError("offline", "not connected"));
      this.#pumpRequests(room);
      return;
    }
    head.sent = true;
    const connection = this.#transport.connection;
    // No answer: the connection is dead or stuck. Start over; the catch-up repeats it.
    head.timer = setTimeout(() => this.#transport.drop(connection, 4000, "request_timeout"), this.#requestTimeoutMs);
  }

  #failRequests(why) {
    for (const room of this.#rooms.values()) {
      const requests = room.requests;
      room.requests = [];
      for (const r of requests) {
        clearTimeout(r.timer);
        r.reject(new ChatError("offline", why));
      }
    }
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
    const room = this.#rooms.get(roomId);
    if (!room) return [];
    const items = room.storedItems(this.#userId);
    for (const item of this.#outbox.forRoom(roomId)) items.push(this.#itemView(item));
    return items;
  }

  #itemView(item) {
    return {
      key: `c${item.client_msg_id}`,
      room_id: item.room_id,
      seq: null,
      sender_id: this.#userId,
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
    const room = this.#rooms.get(roomId);
    if (!room) throw new ChatError(ERROR_CODES.UNKNOWN_ROOM);
    if (room.closed) throw new ChatError(ERROR_CODES.ROOM_CLOSED);
    const body = normalizeNewlines(String(text));
    const check = validateBody(body);
    if (!check.ok) throw new ChatError(check.code, check.reason);
    const item = this.#outbox.create(roomId, body);
    this.#outbox.add(item);
    this.#change(roomId, "sending");
    this.#transmit(item);
    return this.#itemView(item);
  }

  /** Sends a failed message again, with its original client_msg_id. */
  retry(roomId, clientMsgId) {
    const item = this.#rooms.get(roomId) && this.#outbox.get(roomId, clientMsgId);
    if (!item) return false;
    item.state = "sending";
    item.error = null;
    item.autoRetries = 0;
    this.#outbox.save();
    this.#change(roomId, "sending");
    this.#transmit(item);
    return true;
  }

  /** Drops an unconfirmed message (failed or still sending). */
  discard(roomId, clientMsgId) {
    if (!this.#rooms.get(roomId) || !this.#outbox.remove(roomId, [clientMsgId])) return false;
    this.#change(roomId, "discarded");
    return true;
  }

  #transmit(item) {
    // Not connected: it stays "sending" and goes out after the next ready.
    this.#transport.send({ type: "send", room_id: item.room_id, client_msg_id: item.client_msg_id, body: item.body });
  }

  /**
   * Marks everything the other member sent up to `upToSeq` as seen (a watermark). Only a
   * higher watermark than the last one is sent; offline it is sent after reconnecting.
   */
  markSeen(roomId, upToSeq) {
    const room = this.#rooms.get(roomId);
    if (!room || !(upToSeq >= 1)) return false;
    if (upToSeq <= room.seenWanted && upToSeq <= room.readUpTo) return false;
    room.seenWanted = Math.max(room.seenWanted, upToSeq);
    room.markRead(upToSeq, "local", this.#userId);
    this.#flushSeen(room);
    this.#emitRooms();
    this.#change(roomId, "read");
    return true;
  }

  #flushSeen(room) {
    if (room.seenWanted > room.seenSent) {
      if (this.#transport.send({ type: "seen", room_id: room.room_id, up_to_seq: room.seenWanted })) {
        room.seenSent = room.seenWanted;
      }
    }
  }
}
