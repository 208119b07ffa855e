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

import {
  ChatError,
  ERROR_TEXT,
  HISTORY_WINDOW,
  NOT_ALLOWED,
  RECEIVED_BATCH_MS,
  TYPING_SEND_MS,
  TYPING_SHOW_MS,
  normalizeNewlines,
  protocolAtLeast,
  validateBody,
} from "./chat-rules.js";
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
  NOT_ALLOWED,
  TYPING_SEND_MS,
  TYPING_SHOW_MS,
  protocolAtLeast,
} from "./chat-rules.js";

/** Rooms whose newest message is fetched for the room list after connecting. */
const PREVIEW_ROOMS = 50;
/** Errors without a ref that can only answer the history request in flight (servers without `req`). */
const HISTORY_ERRORS = new Set([ERROR_CODES.NOT_A_MEMBER, ERROR_CODES.UNKNOWN_ROOM, ERROR_CODES.INVALID_FRAME, ERROR_CODES.INTERNAL]);
/** Requests remembered for attributing a late error frame (fire-and-forget ones included). */
const MAX_TRACKED_REQUESTS = 512;
/** A typing frame from someone whose message arrived this recently is a late one: ignored. */
const LATE_TYPING_MS = 1000;

/**
 * The protocol client. Fires (all as CustomEvent with `detail`):
 * - "state"   {state, previous, reason}  connection state changed
 * - "ready"   {userId, rooms}            authenticated (also after every reconnect)
 * - "rooms"   {rooms}                    the room list or a room's unread/closed changed
 * - "change"  {roomId, reason}           a room's messages changed (render getMessages(roomId))
 * - "message" {roomId, message, own}     a new stored message arrived live (not from history)
 * - "seen"    {roomId, readerId, upToSeq, seenAt}
 * - "delivered" {roomId, readerId, upToSeq, deliveredAt}   (protocol 1.1)
 * - "deleted" {roomId, seq, deletedAt, own}                a message was unsent (1.1)
 * - "typing"  {roomId, userId, typing}                    the other member typing or not (1.1)
 * - "presence" {userId, online, lastActiveAt}             (1.1)
 * - "failed"  {roomId, item, code, message}  a send was refused
 * - "error"   {code, message, ref, req, request}  any error frame; `request` is
 *             `{type, roomId, seq}` of the request it answers when known
 * - "authrequired" {reason}              no valid token and no getToken: call setToken()
 */
export class ChatClient extends EventTarget {
  #transport;
  #rooms = new RoomStore();
  #outbox;
  #requestTimeoutMs;
  #userId = null;
  #protocol = null; // what `ready` named ("1.0" when nothing)
  #reqCounter = 0;
  #tracked = new Map(); // req -> {type, roomId, seq, settle?}: requests an error may answer
  #receivedTimer = null;
  #moreRooms = false;
  #roomsCursor = null; // {last_activity_at, room_id} of the last room of the last page
  #roomsRequest = null; // the `rooms` page request in flight (a Promise)

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

  /** The protocol version the server named in `ready` ("1.0" when it named none), or null. */
  get protocol() {
    return this.#protocol;
  }

  /** Whether the server has more rooms than the client was given (see loadMoreRooms()). */
  get moreRooms() {
    return this.#moreRooms;
  }

  /** Protocol 1.1 is spoken: typing, received, delete and rooms may be sent. */
  #v11() {
    return protocolAtLeast(this.#protocol, 1, 1);
  }

  /** A new request id: short, unique per client. */
  #newReq(type) {
    this.#reqCounter += 1;
    return `${type.slice(0, 2)}${this.#reqCounter.toString(36)}`;
  }

  /** Remembers a request so that an error frame with its `req` can be tied to it. */
  #track(req, info) {
    this.#tracked.set(req, info);
    if (this.#tracked.size > MAX_TRACKED_REQUESTS) {
      // The oldest fire-and-forget requests go first; ones still waiting for an answer stay.
      for (const [k, v] of this.#tracked) {
        if (this.#tracked.size <= MAX_TRACKED_REQUESTS) break;
        if (!v.settle) this.#tracked.delete(k);
      }
    }
  }

  /** Sends a frame with a fresh `req`; returns the req, or null when not connected. */
  #sendRequest(frame, info = {}) {
    const req = this.#newReq(frame.type);
    if (!this.#transport.send({ ...frame, req })) return null;
    this.#track(req, { type: frame.type, roomId: frame.room_id ?? null, seq: frame.seq ?? frame.up_to_seq ?? null, ...info });
    return req;
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
    for (const room of this.#rooms.values()) {
      if (why !== "disconnected") {
        room.seenSent = 0;
        room.receivedSent = 0;
      }
      room.typingSentAt = 0;
      // Whoever was typing: we cannot tell any more.
      if (room.typingUntil) this.#stopTyping(room);
    }
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
        this.#onHistory(frame);
        break;
      case "seen":
        this.#onSeen(frame);
        break;
      case "delivered":
        this.#onDelivered(frame);
        break;
      case "message_deleted":
        this.#onDeleted(frame);
        break;
      case "typing":
        this.#onTyping(frame);
        break;
      case "presence":
        this.#onPresence(frame);
        break;
      case "rooms":
        this.#onRoomsPage(frame);
        break;
      case "room_opened":
        if (frame.room && frame.room.room_id) {
          this.#rooms.upsert(frame.room, true);
          this.#emitRooms();
        }
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
    this.#protocol = typeof frame.protocol === "string" ? frame.protocol : "1.0";
    const summaries = Array.isArray(frame.rooms) ? frame.rooms : [];
    for (const summary of summaries) this.#rooms.upsert(summary, false);
    this.#setRoomsCursor(summaries, frame.more_rooms);
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
      else if (room.last_seq > 0 && !room.hasSummaryPreview && previews < PREVIEW_ROOMS) {
        // The room list shows each room's newest message; a 1.0 `ready` does not carry it.
        previews += 1;
        this.#loadPreview(room);
      }
      // The summary's newest message is the other member's and not seen: this device got it.
      const last = room.preview;
      if (last && room.unread > 0 && last.sender_id !== this.#userId) this.#noteReceived(room, last.seq);
    }
    await Promise.allSettled(jobs);
    if (!this.#transport.isCurrent(connection) || this.state !== "open") return;
    for (const room of this.#rooms.values()) {
      if (room.seenWanted > room.seenSent) this.#flushSeen(room);
    }
    this.#flushReceivedSoon();
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
        if (last.sender_id !== this.#userId && !last.seen_at) this.#noteReceived(room, last.seq);
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
    if (this.#v11()) {
      // Re-read the whole window: messages unsent and receipts given while we were away
      // change messages we already hold. (The summary's watermarks carry the receipts.)
      after = Math.max(0, room.minSeq() - 1);
    } else {
      for (const m of room.messages.values()) {
        if (m.sender_id === this.#userId && !m.seen_at && m.seq <= after) after = Math.min(after, m.seq - 1);
      }
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
    let got = 0;
    for (const m of messages) if (m.sender_id !== this.#userId && m.seq > got) got = m.seq;
    if (got) this.#noteReceived(room, got);
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
    if (!own) {
      room.peerMessageAt = Date.now();
      // Their message is here: they are not typing it any more.
      if (room.typingUntil) this.#stopTyping(room);
      this.#noteReceived(room, message.seq);
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

  #onHistory(frame) {
    const room = this.#rooms.get(frame.room_id);
    const queue = room && room.requests;
    if (!queue || queue.length === 0 || !queue[0].sent) return; // unsolicited: ignore
    // The head is the one request of this room in flight; a reply naming another req is not
    // its answer (a server without `req` names none).
    if (frame.req != null && frame.req !== queue[0].req) return;
    const request = queue.shift();
    this.#tracked.delete(request.req);
    clearTimeout(request.timer);
    request.resolve(Array.isArray(frame.messages) ? frame.messages : []);
    this.#pumpRequests(room);
  }

  #onSeen(frame) {
    const room = this.#rooms.get(frame.room_id);
    if (!room) return;
    const upTo = frame.up_to_seq;
    if (frame.reader_id === this.#userId) {
      // I read the other member's messages (maybe from another tab); seen counts as received.
      room.markRead(upTo, frame.seen_at, this.#userId);
      room.receivedSent = Math.max(room.receivedSent, upTo);
      this.#emitRooms();
    } else {
      room.markSeenByPeer(upTo, frame.seen_at, this.#userId);
    }
    this.#emit("seen", { roomId: frame.room_id, readerId: frame.reader_id, upToSeq: upTo, seenAt: frame.seen_at });
    this.#change(frame.room_id, "seen");
  }

  #onDelivered(frame) {
    const room = this.#rooms.get(frame.room_id);
    if (!room || !Number.isSafeInteger(frame.up_to_seq)) return;
    if (frame.reader_id === this.#userId) {
      // My watermark (this device's or another of mine): nothing to send up to there.
      room.receivedSent = Math.max(room.receivedSent, frame.up_to_seq);
      return;
    }
    if (!room.markDeliveredToPeer(frame.up_to_seq)) return;
    this.#emit("delivered", { roomId: room.room_id, readerId: frame.reader_id, upToSeq: frame.up_to_seq, deliveredAt: frame.delivered_at ?? null });
    this.#change(room.room_id, "delivered");
  }

  #onDeleted(frame) {
    const room = this.#rooms.get(frame.room_id);
    if (!room || !Number.isSafeInteger(frame.seq)) return;
    const changed = room.markDeleted(frame.seq, frame.deleted_at || "deleted");
    for (const [req, info] of this.#tracked) {
      if (info.type === "delete" && info.settle && info.roomId === room.room_id && info.seq === frame.seq) {
        this.#tracked.delete(req);
        info.settle(null);
      }
    }
    if (!changed) return;
    const m = room.messages.get(frame.seq);
    const own = Boolean(m && m.sender_id === this.#userId);
    this.#emit("deleted", { roomId: room.room_id, seq: frame.seq, deletedAt: frame.deleted_at ?? null, own });
    this.#emitRooms();
    this.#change(room.room_id, "deleted");
  }

  #onTyping(frame) {
    const room = this.#rooms.get(frame.room_id);
    if (!room || !frame.user_id || frame.user_id === this.#userId) return;
    // A typing frame overtaken by the message it was typed for: not a new one.
    if (Date.now() - room.peerMessageAt < LATE_TYPING_MS) return;
    const was = room.typing;
    room.typingUntil = Date.now() + TYPING_SHOW_MS;
    clearTimeout(room.typingTimer);
    room.typingTimer = setTimeout(() => this.#stopTyping(room), TYPING_SHOW_MS);
    if (!was) {
      this.#emit("typing", { roomId: room.room_id, userId: frame.user_id, typing: true });
      this.#emitRooms();
    }
  }

  #stopTyping(room) {
    clearTimeout(room.typingTimer);
    room.typingTimer = null;
    room.typingUntil = 0;
    this.#emit("typing", { roomId: room.room_id, userId: room.peerId(this.#userId), typing: false });
    this.#emitRooms();
  }

  #onPresence(frame) {
    if (!frame.user_id || typeof frame.online !== "boolean" || frame.user_id === this.#userId) return;
    const presence = { online: frame.online, last_active_at: typeof frame.last_active_at === "string" ? frame.last_active_at : null };
    let any = false;
    for (const room of this.#rooms.values()) {
      if (room.peerId(this.#userId) === frame.user_id) {
        room.presence = { ...presence };
        any = true;
      }
    }
    if (!any) return;
    this.#emit("presence", { userId: frame.user_id, online: presence.online, lastActiveAt: presence.last_active_at });
    this.#emitRooms();
  }

  #onError(frame) {
    const req = typeof frame.req === "string" ? frame.req : null;
    const info = req ? this.#tracked.get(req) : undefined;
    const request = info ? { type: info.type, roomId: info.roomId, seq: info.seq } : null;
    this.#emit("error", { code: frame.code, message: frame.message, ref: frame.ref ?? null, req, request });
    if (info) {
      if (info.settle) {
        // A request waiting for its answer (history, delete, rooms): this is it.
        this.#tracked.delete(req);
        info.settle(new ChatError(frame.code, ERROR_TEXT[frame.code] || frame.message));
        return;
      }
      const room = info.roomId ? this.#rooms.get(info.roomId) : null;
      if (room && frame.code === ERROR_CODES.RATE_LIMITED) {
        // A watermark that did not go through goes again a little later.
        if (info.type === "seen") {
          room.seenSent = Math.min(room.seenSent, (info.seq || 1) - 1);
          this.#retryLater(() => this.#flushSeen(room));
        } else if (info.type === "received") {
          room.receivedSent = Math.min(room.receivedSent, (info.seq || 1) - 1);
          this.#retryLater(() => this.#flushReceivedSoon());
        }
      }
      if (info.type !== "send") return;
    }
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
    // A server without `req`: history and seen errors carry no ref. A history error can only
    // belong to a request in flight: if exactly one room has one, it is that one.
    if (!req && HISTORY_ERRORS.has(frame.code)) {
      const waiting = [...this.#rooms.values()].filter((r) => r.requests.length > 0 && r.requests[0].sent);
      if (waiting.length === 1) {
        const room = waiting[0];
        const request = room.requests.shift();
        this.#tracked.delete(request.req);
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
      room.requests.push({ frame, req: null, resolve, reject, sent: false, timer: null });
      this.#pumpRequests(room);
    });
  }

  #pumpRequests(room) {
    const head = room.requests[0];
    if (!head || head.sent) return;
    const settle = (error, messages) => {
      // An error frame with this req: the request failed (its answer never comes).
      const i = room.requests.indexOf(head);
      if (i < 0) return;
      room.requests.splice(i, 1);
      clearTimeout(head.timer);
      if (error) head.reject(error);
      else head.resolve(messages);
      this.#pumpRequests(room);
    };
    head.req = this.#sendRequest(head.frame, { settle });
    if (!head.req) {
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
    // Answers to this connection's requests can no longer come.
    const waiting = [...this.#tracked.values()].filter((info) => info.settle && info.type !== "history");
    this.#tracked.clear();
    for (const info of waiting) info.settle(new ChatError("offline", ERROR_TEXT.offline));
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
   * `{key, room_id, seq, sender_id, body, sent_at, seen_at, deleted_at, client_msg_id, own,
   * state, error}` with state "sending" | "sent" | "delivered" | "seen" | "failed" ("seen" for
   * another's message means this user has marked it seen; "delivered" is for own messages
   * only). A deleted (unsent) message has `body` null and `deleted_at` set.
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
      deleted_at: null,
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
    room.typingSentAt = 0; // typing the next one is news again
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
    this.#sendRequest({ type: "send", room_id: item.room_id, client_msg_id: item.client_msg_id, body: item.body });
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
    // The server counts a seen message as received too: no `received` needed up to there.
    room.receivedWanted = Math.max(room.receivedWanted, upToSeq);
    this.#flushSeen(room);
    this.#emitRooms();
    this.#change(roomId, "read");
    return true;
  }

  #flushSeen(room) {
    if (room.seenWanted > room.seenSent) {
      if (this.#sendRequest({ type: "seen", room_id: room.room_id, up_to_seq: room.seenWanted })) {
        room.seenSent = room.seenWanted;
        room.receivedSent = Math.max(room.receivedSent, room.seenWanted);
      }
    }
  }

  #retryLater(fn) {
    const connection = this.#transport.connection;
    setTimeout(() => {
      if (this.#transport.isCurrent(connection) && this.state === "open") fn();
    }, 1000 + Math.random() * 1000);
  }

  // ---- protocol 1.1: received, typing, unsend, room pages ---------------------------------

  /** This device got the other member's messages up to `seq`: a `received` goes out, batched. */
  #noteReceived(room, seq) {
    if (!(seq > room.receivedWanted)) return;
    room.receivedWanted = seq;
    this.#flushReceivedSoon();
  }

  #flushReceivedSoon() {
    if (this.#receivedTimer || !this.#v11()) return;
    if (![...this.#rooms.values()].some((r) => r.receivedWanted > r.receivedSent)) return;
    this.#receivedTimer = setTimeout(() => {
      this.#receivedTimer = null;
      this.#flushReceived();
    }, RECEIVED_BATCH_MS);
  }

  /** One `received` frame per room whose watermark moved since the last one. */
  #flushReceived() {
    if (this.state !== "open" || !this.#v11()) return;
    for (const room of this.#rooms.values()) {
      const upTo = Math.min(room.receivedWanted, room.last_seq || room.receivedWanted);
      if (upTo > room.receivedSent && upTo > room.seenSent) {
        if (this.#sendRequest({ type: "received", room_id: room.room_id, up_to_seq: upTo })) room.receivedSent = upTo;
      }
    }
  }

  /**
   * Tells the other member that this user is composing in `roomId` (protocol 1.1). Call it on
   * every keystroke: a frame goes out at most every TYPING_SEND_MS (3 s) per room. Returns
   * whether one went out.
   */
  typing(roomId) {
    const room = this.#rooms.get(roomId);
    if (!room || room.closed || this.state !== "open" || !this.#v11()) return false;
    const now = Date.now();
    if (now - room.typingSentAt < TYPING_SEND_MS) return false;
    if (!this.#sendRequest({ type: "typing", room_id: roomId })) return false;
    room.typingSentAt = now;
    return true;
  }

  /** Whether `unsend()` can work here: the server speaks 1.1. */
  get canUnsend() {
    return this.#v11();
  }

  /**
   * Unsends one's own stored message (protocol 1.1). Resolves when the server announced the
   * deletion (`message_deleted`); rejects with a ChatError: `not_allowed` (someone else's
   * message, or the unsend window has passed), `offline`, `timeout`, `unsupported`, or any
   * other error code of the server.
   */
  unsend(roomId, seq) {
    return new Promise((resolve, reject) => {
      const room = this.#rooms.get(roomId);
      if (!room) return reject(new ChatError(ERROR_CODES.UNKNOWN_ROOM));
      if (!this.#v11()) return reject(new ChatError("unsupported", ERROR_TEXT.unsupported));
      const m = room.messages.get(seq);
      if (m && m.deleted_at) return resolve();
      if (m && m.sender_id !== this.#userId) return reject(new ChatError(NOT_ALLOWED));
      let timer = null;
      const settle = (error) => {
        clearTimeout(timer);
        if (error) reject(error);
        else resolve();
      };
      const req = this.#sendRequest({ type: "delete", room_id: roomId, seq }, { settle });
      if (!req) return reject(new ChatError("offline", ERROR_TEXT.offline));
      timer = setTimeout(() => {
        if (this.#tracked.get(req)?.settle !== settle) return;
        this.#tracked.delete(req);
        reject(new ChatError("timeout", ERROR_TEXT.timeout));
      }, this.#requestTimeoutMs);
    });
  }

  #setRoomsCursor(summaries, more) {
    const last = summaries[summaries.length - 1];
    if (last && typeof last.last_activity_at === "string") this.#roomsCursor = { last_activity_at: last.last_activity_at, room_id: last.room_id };
    // Without a cursor there is no way to ask for the next page.
    this.#moreRooms = more === true && this.#roomsCursor !== null;
  }

  /**
   * Loads the next page of rooms when `ready` (or the last page) said there are more
   * (`moreRooms`). Resolves with the number of rooms the page held (0 when there was nothing
   * to load). One page at a time: a second call meanwhile gets the same promise.
   */
  loadMoreRooms() {
    if (this.#roomsRequest) return this.#roomsRequest;
    if (!this.#moreRooms || !this.#v11()) return Promise.resolve(0);
    const cursor = this.#roomsCursor;
    this.#roomsRequest = new Promise((resolve, reject) => {
      let timer = null;
      const settle = (error, frame) => {
        clearTimeout(timer);
        if (error) return reject(error);
        const summaries = Array.isArray(frame.rooms) ? frame.rooms : [];
        for (const summary of summaries) this.#rooms.upsert(summary, false);
        if (summaries.length) this.#setRoomsCursor(summaries, frame.more_rooms);
        else this.#moreRooms = false;
        this.#emitRooms();
        resolve(summaries.length);
      };
      const req = this.#sendRequest(
        { type: "rooms", before_activity_at: cursor.last_activity_at, before_room_id: cursor.room_id },
        { settle },
      );
      if (!req) return reject(new ChatError("offline", ERROR_TEXT.offline));
      timer = setTimeout(() => {
        if (this.#tracked.get(req)?.settle !== settle) return;
        this.#tracked.delete(req);
        reject(new ChatError("timeout", ERROR_TEXT.timeout));
      }, this.#requestTimeoutMs);
    }).finally(() => {
      this.#roomsRequest = null;
    });
    return this.#roomsRequest;
  }

  #onRoomsPage(frame) {
    let req = typeof frame.req === "string" ? frame.req : null;
    if (!req) {
      // Not named: the one rooms request in flight.
      for (const [k, v] of this.#tracked) if (v.type === "rooms" && v.settle) req = k;
    }
    const info = req && this.#tracked.get(req);
    if (!info || info.type !== "rooms" || !info.settle) return;
    this.#tracked.delete(req);
    info.settle(null, frame);
  }
}
