// matchchat client, outbox: the sends the server has not confirmed yet, in the order they were
// written, kept in a Storage (default sessionStorage) under `matchchat:outbox:<user_id>` so
// they survive a reload and go out after the next connect. Every change is saved at once.
// No socket, no DOM.

import { newClientMsgId } from "./chat-rules.js";

export function defaultStorage() {
  try {
    return globalThis.sessionStorage || null;
  } catch {
    return null; // blocked (e.g. third-party iframe with storage disabled)
  }
}

/**
 * An unconfirmed send: `{room_id, client_msg_id, body, created_at, state, error, order,
 * autoRetries}` with state "sending" or "failed".
 */
export class Outbox {
  #storage;
  #items = new Map(); // client_msg_id -> item, in the order added
  #userId = null; // whose outbox is loaded (and saved to)
  #counter = 0; // local creation counter, for ordering within a millisecond

  /** @param {Storage|null} storage */
  constructor(storage) {
    this.#storage = storage;
  }

  /** A new "sending" item for `body` (not added yet). */
  create(roomId, body) {
    return {
      room_id: roomId,
      client_msg_id: newClientMsgId(),
      body,
      created_at: new Date().toISOString(),
      state: "sending",
      error: null,
      order: this.#nextOrder(),
      autoRetries: 0,
    };
  }

  add(item) {
    this.#items.set(item.client_msg_id, item);
    this.save();
  }

  /** The item of this room with this client_msg_id, if unconfirmed. */
  get(roomId, clientMsgId) {
    const item = this.#items.get(clientMsgId);
    return item && item.room_id === roomId ? item : undefined;
  }

  /** The unconfirmed item with this client_msg_id, whatever its room. */
  find(clientMsgId) {
    return this.#items.get(clientMsgId);
  }

  has(roomId, clientMsgId) {
    return this.get(roomId, clientMsgId) !== undefined;
  }

  /** Removes (discards, or confirms) items of a room; true if any was there. */
  remove(roomId, clientMsgIds) {
    let removed = false;
    for (const id of clientMsgIds) {
      if (this.get(roomId, id)) {
        this.#items.delete(id);
        removed = true;
      }
    }
    if (removed) this.save();
    return removed;
  }

  /** A room's items, in the order written. */
  forRoom(roomId) {
    return [...this.#items.values()].filter((i) => i.room_id === roomId).sort((a, b) => a.order - b.order);
  }

  /** Every item still to be sent (state "sending"), oldest first. */
  pending() {
    return [...this.#items.values()].filter((i) => i.state === "sending").sort((a, b) => a.order - b.order);
  }

  /** Forgets everything in memory (another user signed in); storage is kept. */
  reset() {
    this.#items.clear();
    this.#userId = null;
  }

  /**
   * Loads `userId`'s saved items (once per user), next to those already in memory. Returns the
   * room ids of the items loaded.
   */
  load(userId) {
    if (this.#userId === userId) return [];
    this.#userId = userId;
    if (!this.#storage) return [];
    let saved = [];
    try {
      saved = JSON.parse(this.#storage.getItem(this.#key()) || "[]");
    } catch {
      saved = [];
    }
    const rooms = [];
    for (const s of Array.isArray(saved) ? saved : []) {
      if (!s || typeof s.client_msg_id !== "string" || typeof s.body !== "string") continue;
      if (this.#items.has(s.client_msg_id)) continue;
      this.#items.set(s.client_msg_id, {
        room_id: s.room_id,
        client_msg_id: s.client_msg_id,
        body: s.body,
        created_at: s.created_at,
        state: s.state === "failed" ? "failed" : "sending",
        error: s.error || null,
        order: s.order || this.#nextOrder(),
        autoRetries: 0,
      });
      rooms.push(s.room_id);
    }
    return rooms;
  }

  /** Writes the items to storage (call after changing an item's state). */
  save() {
    if (!this.#storage || !this.#userId) return;
    const all = [...this.#items.values()].map((i) => ({
      room_id: i.room_id,
      client_msg_id: i.client_msg_id,
      body: i.body,
      created_at: i.created_at,
      state: i.state,
      error: i.error,
      order: i.order,
    }));
    try {
      if (all.length) this.#storage.setItem(this.#key(), JSON.stringify(all));
      else this.#storage.removeItem(this.#key());
    } catch {
      /* quota or disabled: the outbox still lives in memory */
    }
  }

  #key() {
    return `matchchat:outbox:${this.#userId}`;
  }

  #nextOrder() {
    this.#counter += 1;
    return Date.now() * 1000 + (this.#counter % 1000);
  }
}
