// matchchat client, room state: each room's summary, its window of stored messages (merged by
// seq, at most HISTORY_WINDOW), seen and delivered watermarks both ways, the other member's
// presence and typing, and the unread count. Pure data: no socket, no storage, no events
// (chat-client.js sends and announces). No DOM.

import { HISTORY_WINDOW } from "./chat-rules.js";

/** A summary's `peer` (protocol 1.1): `{online, last_active_at}`, or null when absent. */
function presenceOf(peer) {
  if (!peer || typeof peer !== "object" || typeof peer.online !== "boolean") return null;
  return { online: peer.online, last_active_at: typeof peer.last_active_at === "string" ? peer.last_active_at : null };
}

function count(n) {
  return Number.isSafeInteger(n) && n > 0 ? n : 0;
}

/** One room's state inside the client. */
export class RoomState {
  constructor(summary) {
    this.room_id = summary.room_id;
    this.members = summary.members || [];
    this.last_seq = summary.last_seq || 0;
    this.unread = summary.unread || 0;
    this.serverUnread = this.unread;
    this.closed = Boolean(summary.closed);
    this.messages = new Map(); // seq -> stored message (window of at most HISTORY_WINDOW)
    this.requests = []; // history requests, head in flight (chat-client.js)
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
    this.hasSummaryPreview = false; // the summary carries `last_message` (protocol 1.1)
    // Protocol 1.1 (all optional: a 1.0 server sends none of it).
    this.presence = null; // the other member's {online, last_active_at}
    this.peerDeliveredUpTo = 0; // the other member's device got my messages up to here
    this.last_activity_at = null;
    this.receivedWanted = 0; // my `received` watermark: the other member's messages I got
    this.receivedSent = 0;
    this.typingUntil = 0; // the other member is typing until then (ms since the epoch)
    this.typingTimer = null;
    this.typingSentAt = 0; // when I last sent `typing` for this room
    this.peerMessageAt = 0; // when the other member's last message arrived live
    this.applySummary(summary);
  }

  /** The protocol 1.1 fields of a summary (`ready`, `room_opened`, `rooms`), when present. */
  applySummary(summary) {
    if ("peer" in summary) this.presence = presenceOf(summary.peer);
    if ("last_message" in summary) {
      this.hasSummaryPreview = true;
      const m = summary.last_message;
      if (m && Number.isSafeInteger(m.seq)) this.notePreview(m);
    }
    if ("peer_seen_up_to" in summary) this.peerSeenUpTo = Math.max(this.peerSeenUpTo, count(summary.peer_seen_up_to));
    if ("peer_delivered_up_to" in summary) this.peerDeliveredUpTo = Math.max(this.peerDeliveredUpTo, count(summary.peer_delivered_up_to));
    if (typeof summary.last_activity_at === "string") this.last_activity_at = summary.last_activity_at;
  }

  /** The other member's user id ("" while the members are not known). */
  peerId(me) {
    return this.members.find((m) => m !== me) || this.members[0] || "";
  }

  minSeq() {
    let min = 0;
    for (const seq of this.messages.keys()) if (!min || seq < min) min = seq;
    return min;
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

  /**
   * Merges stored messages into the window (by seq). `me` is the user id. Returns
   * `{ changed, own }`: whether the window changed, and the client_msg_ids of my messages in
   * `messages` (they confirm the outbox's sends).
   */
  merge(messages, me) {
    let changed = false;
    const own = [];
    for (const m of messages) {
      if (m.seq > this.last_seq) this.last_seq = m.seq;
      const mine = m.sender_id === me;
      if (mine && !m.seen_at && m.seq <= this.peerSeenUpTo) m.seen_at = this.peerSeenAt;
      if (!mine && !m.seen_at && m.seq <= this.readUpTo) m.seen_at = "local";
      const have = this.messages.get(m.seq);
      if (have) {
        // Seen only ever goes from null to a time.
        if (!have.seen_at && m.seen_at) {
          have.seen_at = m.seen_at;
          changed = true;
        }
        // So does deleted (protocol 1.1): a deleted message keeps no body.
        if (!have.deleted_at && m.deleted_at) {
          have.deleted_at = m.deleted_at;
          have.body = null;
          changed = true;
        }
      } else {
        this.messages.set(m.seq, { ...m });
        changed = true;
      }
      if (mine) own.push(m.client_msg_id);
    }
    if (this.trim()) changed = true;
    return { changed, own };
  }

  /** Unread = the other member's stored messages I have not seen. */
  recountUnread(me) {
    let n = 0;
    for (const m of this.messages.values()) {
      if (m.sender_id !== me && !m.seen_at && m.seq > this.readUpTo) n += 1;
    }
    this.unread = n;
  }

  /**
   * My own seen watermark moved to `upTo` (this tab's markSeen, `seenAt` "local", or a
   * receipt from another tab of mine, `seenAt` the server's time).
   */
  markRead(upTo, seenAt, me) {
    this.readUpTo = Math.max(this.readUpTo, upTo);
    for (const m of this.messages.values()) {
      if (m.sender_id !== me && m.seq <= upTo && !m.seen_at) m.seen_at = seenAt;
    }
    if (this.loaded) this.recountUnread(me);
    else if (upTo >= this.last_seq) this.unread = 0;
  }

  /** The other member saw my messages up to `upTo`. */
  markSeenByPeer(upTo, seenAt, me) {
    this.peerSeenUpTo = Math.max(this.peerSeenUpTo, upTo);
    this.peerSeenAt = seenAt;
    for (const m of this.messages.values()) {
      if (m.sender_id === me && m.seq <= upTo && !m.seen_at) m.seen_at = seenAt;
    }
  }

  /** The other member's device got my messages up to `upTo`. */
  markDeliveredToPeer(upTo) {
    if (!(upTo > this.peerDeliveredUpTo)) return false;
    this.peerDeliveredUpTo = upTo;
    return true;
  }

  /** Message `seq` was unsent: no body from now on. True if something shown changed. */
  markDeleted(seq, deletedAt) {
    let changed = false;
    const m = this.messages.get(seq);
    if (m && !m.deleted_at) {
      m.deleted_at = deletedAt;
      m.body = null;
      changed = true;
    }
    if (this.preview && this.preview.seq === seq && !this.preview.deleted_at) {
      this.preview = { ...this.preview, body: null, deleted_at: deletedAt };
      changed = true;
    }
    return changed;
  }

  /** The other member is typing (now and for the next `ms`). */
  get typing() {
    return this.typingUntil > Date.now();
  }

  /** A stored message arrived live for a room whose window is not loaded: the list's preview. */
  notePreview(message) {
    if (!this.preview || message.seq >= this.preview.seq) this.preview = message;
  }

  /** The snapshot getRoom()/getRooms() return. */
  view(me) {
    return {
      room_id: this.room_id,
      members: [...this.members],
      peer: this.peerId(me),
      last_seq: this.last_seq,
      unread: this.unread,
      closed: this.closed,
      loaded: this.loaded,
      last_message: this.lastMessage(),
      presence: this.presence ? { ...this.presence } : null,
      typing: this.typing,
      peer_seen_up_to: this.peerSeenUpTo,
      peer_delivered_up_to: this.peerDeliveredUpTo,
      last_activity_at: this.last_activity_at,
    };
  }

  /** The stored window as getMessages() items, oldest first. */
  storedItems(me) {
    const stored = [...this.messages.values()].sort((a, b) => a.seq - b.seq);
    return stored.map((m) => {
      const own = m.sender_id === me;
      const seenAt = m.seen_at === "local" ? null : m.seen_at;
      let state = m.seen_at ? "seen" : "sent";
      if (own && state === "sent") {
        if (m.seq <= this.peerSeenUpTo) state = "seen";
        else if (m.seq <= this.peerDeliveredUpTo) state = "delivered";
      }
      return {
        key: `s${m.seq}`,
        room_id: this.room_id,
        seq: m.seq,
        sender_id: m.sender_id,
        body: m.body ?? null,
        sent_at: m.sent_at,
        seen_at: seenAt,
        deleted_at: m.deleted_at || null,
        client_msg_id: m.client_msg_id,
        own,
        state,
        error: null,
      };
    });
  }
}

/** The rooms, in list order: the server's (newest first), rooms opened later on top. */
export class RoomStore {
  #rooms = new Map(); // room_id -> RoomState

  get(roomId) {
    return this.#rooms.get(roomId);
  }

  values() {
    return this.#rooms.values();
  }

  clear() {
    this.#rooms.clear();
  }

  /** The room, created empty (at the end of the list) if it is not known yet. */
  ensure(roomId) {
    return this.#rooms.get(roomId) || this.upsert({ room_id: roomId, members: [], last_seq: 0, unread: 0, closed: false }, false);
  }

  /** Adds a room from a summary (`ready`, `room_opened`), or updates it. */
  upsert(summary, front) {
    let room = this.#rooms.get(summary.room_id);
    if (!room) {
      room = new RoomState(summary);
      if (front) this.#rooms = new Map([[room.room_id, room], ...this.#rooms]);
      else this.#rooms.set(room.room_id, room);
    } else {
      room.members = summary.members || room.members;
      room.closed = Boolean(summary.closed);
      room.last_seq = Math.max(room.last_seq, summary.last_seq || 0);
      if (!room.loaded) room.unread = summary.unread || 0;
      else room.serverUnread = summary.unread || 0;
      room.applySummary(summary);
    }
    return room;
  }
}
