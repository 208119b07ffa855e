// matchchat client, transport: one WebSocket at a time to `GET /ws`, the `auth` frame, the
// token (and getToken() when there is none or the server refused it), reconnect with
// back-off and jitter, and the connection state. It knows no frame but `auth`: every frame
// received goes to the owner (chat-client.js), which also says when the connection is
// `ready` (authenticated). No DOM.

import { CLOSE } from "./protocol.js";

const AUTH_FAILURE_REASONS = new Set([CLOSE.UNAUTHORIZED.reason, CLOSE.TOKEN_EXPIRED.reason]);

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) throw new Error("ChatClient: no `url` given and no location to derive it from");
  const u = new URL("/ws", loc.href);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.href;
}

/**
 * The connection. `hooks`:
 * - `frame(frame)`: a parsed frame arrived;
 * - `down(why)`: the socket is gone (closed, dropped or disconnect()ed), before the state
 *   changes; `why` is "disconnected" for disconnect(), "connection closed" otherwise;
 * - `emit(type, detail)`: an event for the client's listeners ("state", "error",
 *   "authrequired").
 *
 * `connection` is an opaque handle of the current socket (null when there is none); work
 * that belongs to one connection checks `isCurrent(handle)` before it goes on.
 */
export class ChatTransport {
  #url;
  #token;
  #getToken;
  #minDelayMs;
  #maxDelayMs;
  #WebSocket;
  #hooks;

  #state = "idle"; // idle | connecting | open | reconnecting | closed
  #lastClose = null; // {code, reason}
  #ws = null;
  #handle = null; // a fresh object per socket
  #wanted = false; // connect() called and not disconnect()ed
  #everReady = false;
  #attempt = 0;
  #timer = null;
  #opening = false;
  #onOnline = () => this.reconnectNow();

  constructor(options, hooks) {
    this.#url = options.url || defaultUrl();
    this.#token = options.token || null;
    this.#getToken = options.getToken || null;
    this.#minDelayMs = options.minDelayMs ?? 500;
    this.#maxDelayMs = options.maxDelayMs ?? 15000;
    this.#WebSocket = options.WebSocket || globalThis.WebSocket;
    this.#hooks = hooks;
  }

  get state() {
    return this.#state;
  }

  get lastClose() {
    return this.#lastClose;
  }

  get connection() {
    return this.#handle;
  }

  isCurrent(handle) {
    return handle !== null && handle === this.#handle;
  }

  /** Opens the connection (and keeps it open, reconnecting, until disconnect()). */
  connect() {
    this.#wanted = true;
    if (globalThis.addEventListener) globalThis.addEventListener("online", this.#onOnline);
    if (!this.#ws && !this.#timer && !this.#opening) this.#open();
  }

  /** Closes the connection for good (no reconnect). */
  disconnect() {
    this.#wanted = false;
    if (globalThis.removeEventListener) globalThis.removeEventListener("online", this.#onOnline);
    clearTimeout(this.#timer);
    this.#timer = null;
    const ws = this.#ws;
    this.#forget();
    if (ws) {
      try {
        ws.close(CLOSE.BYE.code, CLOSE.BYE.reason);
      } catch {
        /* already closed */
      }
    }
    this.#hooks.down("disconnected");
    this.#setState("closed", "disconnected");
  }

  /** A (new) token. Reconnects if the transport was waiting for one. */
  setToken(token) {
    this.#token = token || null;
    if (!this.#token) return;
    this.#wanted = true;
    if (this.#state === "closed" || this.#state === "idle") {
      this.#attempt = 0;
      clearTimeout(this.#timer);
      this.#timer = null;
      if (!this.#ws && !this.#opening) this.#open();
    }
  }

  /** Skips the back-off wait of a scheduled reconnect. */
  reconnectNow() {
    if (this.#wanted && this.#state === "reconnecting" && this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = null;
      this.#open();
    }
  }

  /** The server accepted `auth`: the connection is open, the back-off starts over. */
  ready() {
    this.#attempt = 0;
    this.#everReady = true;
    this.#setState("open");
  }

  /** Sends a frame if the connection is open (authenticated); false if it is not. */
  send(frame) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1 || this.#state !== "open") return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  /** Gives up on a connection that stopped answering: close it and reconnect. */
  drop(handle, code, reason) {
    if (!this.isCurrent(handle)) return;
    const ws = this.#ws;
    try {
      ws.close(code, reason);
    } catch {
      /* ignore */
    }
    this.#onClose(ws, code, reason);
  }

  #setState(state, reason) {
    if (state === this.#state) return;
    const previous = this.#state;
    this.#state = state;
    this.#hooks.emit("state", { state, previous, reason: reason || null });
  }

  async #open() {
    this.#timer = null;
    if (!this.#wanted || this.#opening || this.#ws) return;
    this.#opening = true;
    try {
      await this.#openSocket();
    } finally {
      this.#opening = false;
    }
  }

  async #openSocket() {
    this.#setState(this.#everReady ? "reconnecting" : "connecting");
    if (!this.#token) {
      if (!this.#getToken) {
        this.#setState("closed", "auth");
        this.#hooks.emit("authrequired", { reason: "no_token" });
        return;
      }
      try {
        this.#token = await this.#getToken();
      } catch (e) {
        this.#hooks.emit("error", { code: "token", message: `could not get a token: ${e && e.message}`, ref: null });
      }
      if (!this.#wanted) return;
      if (!this.#token) {
        this.#schedule();
        return;
      }
    }
    let ws;
    try {
      ws = new this.#WebSocket(this.#url);
    } catch (e) {
      this.#hooks.emit("error", { code: "connect", message: String(e && e.message), ref: null });
      this.#schedule();
      return;
    }
    this.#ws = ws;
    this.#handle = {};
    // Every request carries a `req` (protocol 1.1); an auth error answers with it.
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token: this.#token, req: "auth" }));
    ws.onmessage = (ev) => this.#onMessage(ev.data);
    ws.onclose = (ev) => this.#onClose(ws, ev.code, ev.reason);
    ws.onerror = () => {}; // a close follows
  }

  #onMessage(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    this.#hooks.frame(frame);
  }

  /** Detaches the current socket (its events are ignored from now on). */
  #forget() {
    const ws = this.#ws;
    if (ws) ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    this.#ws = null;
    this.#handle = null;
  }

  #onClose(ws, code, reason) {
    if (ws !== this.#ws) return;
    this.#forget();
    this.#lastClose = { code, reason };
    this.#hooks.down("connection closed");
    if (!this.#wanted) {
      this.#setState("closed", reason);
      return;
    }
    if (code === CLOSE.ACCOUNT_DELETED.code && reason === CLOSE.ACCOUNT_DELETED.reason) {
      // The host app erased this user: there is nothing to reconnect to.
      this.#token = null;
      this.#setState("closed", reason);
      return;
    }
    if (code === CLOSE.UNAUTHORIZED.code && AUTH_FAILURE_REASONS.has(reason)) {
      // The token is bad or expired: get a new one, or wait for setToken().
      this.#token = null;
      if (!this.#getToken) {
        this.#setState("closed", "auth");
        this.#hooks.emit("authrequired", { reason });
        return;
      }
    }
    this.#setState(this.#everReady ? "reconnecting" : "connecting", reason || `closed ${code}`);
    this.#schedule(code === CLOSE.TOO_MANY_CONNECTIONS.code ? 2000 : 0);
  }

  #schedule(minMs = 0) {
    clearTimeout(this.#timer);
    const ceiling = Math.min(this.#maxDelayMs, this.#minDelayMs * 2 ** Math.min(this.#attempt, 16));
    this.#attempt += 1;
    // "Equal jitter": half fixed, half random, so a server restart is not hit by every
    // client at the same instant, and no client waits near zero over and over.
    const delay = Math.max(minMs, ceiling / 2 + Math.random() * (ceiling / 2));
    this.#timer = setTimeout(() => this.#open(), delay);
  }
}
