// matchchat's chat view: renders a ChatClient (chat-client.js) into the page. Plain DOM, no
// framework. Test hooks (data-testid) are documented in docs/web.md and are a stable contract.

import { ERROR_TEXT, HISTORY_WINDOW, MAX_BODY_CHARS, countChars, normalizeNewlines, validateBody } from "./chat-client.js";
import { CLOSE, ERROR_CODES } from "./protocol.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const NARROW = "(max-width: 759px)";
const STATE_LABEL = { sending: "Sending", sent: "Sent", seen: "Seen", failed: "Not sent" };

/** Creates an element: h("div", {class: "x", "data-a": 1}, child, "text"). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v == null) continue;
    if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c != null) el.append(c);
  return el;
}

/** A small inline icon (paths drawn on a 24x24 grid). */
function icon(name) {
  const paths = {
    send: ["M3.4 20.4 21 12 3.4 3.6l.1 6.5L15 12 3.5 13.9z"],
    back: ["M15.4 4.6 14 3.2 5.2 12l8.8 8.8 1.4-1.4L8 12z"],
    check: ["M9 16.2 4.8 12l-1.4 1.4L9 19 21 7l-1.4-1.4z"],
    checks: ["M.4 13.4 6 19l1.4-1.4L1.8 12zM22.2 5.6 11.6 16.2 7.4 12 6 13.4l5.6 5.6 12-12zM18 7l-1.4-1.4-6.4 6.4 1.4 1.4z"],
    clock: ["M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm0 18a8 8 0 1 1 0-16 8 8 0 0 1 0 16zm.5-13H11v6l5.2 3.2.8-1.3-4.5-2.7z"],
    alert: ["M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm1 15h-2v-2h2zm0-4h-2V7h2z"],
    down: ["M12 16.6 4.7 9.3l1.4-1.4 5.9 5.9 5.9-5.9 1.4 1.4z"],
  };
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  svg.setAttribute("class", `icon icon-${name}`);
  for (const d of paths[name]) {
    const p = document.createElementNS(SVG_NS, "path");
    p.setAttribute("d", d);
    svg.append(p);
  }
  return svg;
}

/** RFC 3339 with microseconds -> Date (trims to milliseconds for every engine's parser). */
function parseTime(s) {
  if (!s) return null;
  const d = new Date(String(s).replace(/(\.\d{3})\d+/, "$1"));
  return Number.isNaN(d.getTime()) ? null : d;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });
const yearDayFmt = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "long", day: "numeric" });

function dayKey(d) {
  return `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}`;
}

function dayLabel(d) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (dayKey(d) === dayKey(today)) return "Today";
  if (dayKey(d) === dayKey(yesterday)) return "Yesterday";
  return d.getFullYear() === today.getFullYear() ? dayFmt.format(d) : yearDayFmt.format(d);
}

function initial(name) {
  const first = [...String(name || "?")][0] || "?";
  return first.toUpperCase();
}

/** A stable hue per user name, for the avatar. */
function hue(name) {
  let x = 0;
  for (const ch of String(name)) x = (x * 31 + ch.codePointAt(0)) % 360;
  return x;
}

/**
 * Mounts the chat into `root` and returns a controller `{ selectRoom, destroy }`.
 * @param {HTMLElement} root
 * @param {import("./chat-client.js").ChatClient} client
 * @param {{ onSignOut?: () => void, signOutLabel?: string }} [options]
 */
export function mountChat(root, client, options = {}) {
  const ui = new ChatView(root, client, options);
  return { selectRoom: (id) => ui.selectRoom(id), destroy: () => ui.destroy(), view: ui };
}

class ChatView {
  constructor(root, client, options) {
    this.root = root;
    this.client = client;
    this.options = options;
    this.roomId = null;
    this.nodes = new Map(); // key -> message/day element in the history list
    this.visible = new Set(); // seqs of the other member's unseen messages now in view
    this.unseenBelow = 0; // new messages that arrived while scrolled up
    this.forceScroll = false;
    this.following = true; // the reader is at the bottom: new messages scroll into view
    this.seenTimer = null;
    this.dirty = {};
    this.renderPending = false;
    this.lastSeq = null;
    this.narrow = window.matchMedia(NARROW);
    this.listeners = [];
    this.build();
    this.wire();
    this.renderConnection();
    this.renderRooms();
  }

  // ---- structure ----------------------------------------------------------------------

  build() {
    const connection = h("div", { class: "connection", "data-testid": "connection", "data-state": "connecting", role: "status" });
    this.connection = connection;

    this.me = h("span", { class: "me" });
    const signOut = this.options.onSignOut
      ? h("button", { type: "button", class: "link-button", text: this.options.signOutLabel || "Sign out" })
      : null;
    if (signOut) signOut.addEventListener("click", () => this.options.onSignOut());
    this.roomList = h("ul", { class: "room-list" });
    this.roomsEmpty = h("p", { class: "rooms-empty", text: "No conversations yet." });
    const sidebar = h(
      "nav",
      { class: "sidebar", "aria-label": "Conversations" },
      h("header", { class: "sidebar-head" }, h("div", { class: "sidebar-title" }, h("h1", { class: "brand", text: "Chats" }), signOut), h("p", { class: "whoami" }, this.me)),
      this.roomList,
      this.roomsEmpty,
    );

    this.back = h("button", { type: "button", class: "icon-button back", "aria-label": "Back to conversations" }, icon("back"));
    this.avatar = h("span", { class: "avatar", "aria-hidden": "true" });
    this.peerName = h("h2", { class: "peer-name", id: "peer-name" });
    this.peerSub = h("p", { class: "peer-sub" });
    const head = h(
      "header",
      { class: "conv-head" },
      this.back,
      this.avatar,
      h("div", { class: "peer" }, this.peerName, this.peerSub),
    );

    this.history = h("ol", { class: "history", "data-testid": "history", tabindex: "0", "aria-labelledby": "peer-name", "aria-describedby": "history-hint" });
    this.historyHint = h("p", { class: "visually-hidden", id: "history-hint", text: `Shows the latest ${HISTORY_WINDOW} messages, oldest first.` });
    this.placeholder = h("div", { class: "history-placeholder" });
    this.newMarker = h("button", { type: "button", class: "new-marker", "data-testid": "new-messages", hidden: true });
    const historyWrap = h("div", { class: "history-wrap" }, this.history, this.placeholder, this.newMarker, this.historyHint);

    this.closedBanner = h("p", { class: "closed-banner", hidden: true, text: "This conversation has ended. You can still read it." });

    this.textarea = h("textarea", {
      id: "composer",
      class: "composer-input",
      "data-testid": "composer",
      rows: "1",
      placeholder: "Message",
      enterkeyhint: "send",
      autocomplete: "off",
      spellcheck: "true",
      "aria-describedby": "counter composer-notice composer-help",
    });
    this.counter = h("span", { class: "counter", id: "counter", "data-testid": "counter", "aria-label": "" });
    this.notice = h("p", { class: "composer-notice", id: "composer-notice", "data-testid": "composer-notice", role: "alert" });
    this.sendButton = h("button", { type: "submit", class: "send", "data-testid": "send", "aria-label": "Send", disabled: true }, icon("send"));
    this.form = h(
      "form",
      { class: "composer", "aria-label": "Write a message" },
      h("label", { for: "composer", class: "visually-hidden", text: "Message" }),
      h("p", { class: "visually-hidden", id: "composer-help", text: `Enter sends, Shift+Enter starts a new line. Up to ${MAX_BODY_CHARS} characters.` }),
      h("div", { class: "composer-field" }, this.textarea, this.counter),
      this.sendButton,
      this.notice,
    );

    this.conversation = h("main", { class: "conversation", "aria-labelledby": "peer-name" }, head, historyWrap, this.closedBanner, this.form);
    this.live = h("div", { class: "visually-hidden", "aria-live": "polite", "aria-atomic": "true", "data-testid": "live" });

    this.shell = h("div", { class: "shell", "data-pane": "rooms" }, connection, sidebar, this.conversation, this.live);
    this.root.replaceChildren(this.shell);
    this.updateCounter();
    this.renderConversationHeader();
  }

  on(target, type, fn, opts) {
    target.addEventListener(type, fn, opts);
    this.listeners.push(() => target.removeEventListener(type, fn, opts));
  }

  wire() {
    const c = this.client;
    this.on(c, "state", () => this.renderConnection());
    this.on(c, "ready", (e) => {
      this.me.textContent = e.detail.userId;
      this.renderRooms();
      this.autoSelect();
    });
    this.on(c, "rooms", () => {
      this.invalidate({ rooms: true, header: true });
      if (!this.roomId) this.autoSelect();
    });
    this.on(c, "change", (e) => {
      this.invalidate({ rooms: true, messages: e.detail.roomId === this.roomId });
    });
    this.on(c, "message", (e) => this.announce(e.detail));
    this.on(c, "failed", (e) => {
      if (e.detail.roomId === this.roomId) this.say(`Message not sent: ${e.detail.message}`);
    });

    this.on(this.back, "click", () => this.showPane("rooms"));
    this.on(this.shell, "keydown", (e) => {
      if (e.key === "Escape" && this.narrow.matches && this.shell.dataset.pane === "chat") {
        this.showPane("rooms");
      }
    });
    this.on(this.narrow, "change", () => this.flushSeenSoon());

    // Composer.
    this.on(this.textarea, "input", () => this.onInput());
    this.on(this.textarea, "beforeinput", (e) => this.onBeforeInput(e));
    this.on(this.textarea, "paste", (e) => this.onPaste(e));
    this.on(this.textarea, "drop", (e) => this.onDrop(e));
    this.on(this.textarea, "keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        this.submit();
      }
    });
    this.on(this.form, "submit", (e) => {
      e.preventDefault();
      this.submit();
    });

    // History: scrolling, new-messages marker, message actions.
    this.on(this.history, "scroll", () => {
      if (this.history.clientHeight === 0) return; // pane not shown
      this.following = this.atBottom();
      if (this.following) this.clearNewMarker();
    }, { passive: true });
    this.on(this.newMarker, "click", () => {
      this.scrollToBottom(true);
      this.clearNewMarker();
      this.textarea.focus({ preventScroll: true });
    });
    this.on(this.history, "click", (e) => {
      const button = e.target.closest("button[data-action]");
      if (!button || !this.roomId) return;
      const li = button.closest("li");
      const id = li && li.dataset.clientMsgId;
      if (!id) return;
      if (button.dataset.action === "retry") {
        this.client.retry(this.roomId, id);
        this.renderNow();
        // The buttons are gone with the failure: keyboard focus goes back to the composer.
        if (!this.textarea.disabled) this.textarea.focus({ preventScroll: true });
      }
      if (button.dataset.action === "discard") {
        this.client.discard(this.roomId, id);
        this.renderNow();
        this.textarea.focus();
      }
    });

    // Seen: only what is on screen, only while the page is visible.
    this.io = new IntersectionObserver((entries) => this.onIntersect(entries), { root: this.history, threshold: [0, 0.5, 1] });
    this.on(document, "visibilitychange", () => {
      if (document.visibilityState === "visible") {
        this.client.reconnectNow();
        this.flushSeenSoon();
      }
    });
    this.on(window, "focus", () => this.flushSeenSoon());
  }

  destroy() {
    for (const off of this.listeners) off();
    this.io.disconnect();
    clearTimeout(this.seenTimer);
    this.cancelRender();
    this.root.replaceChildren();
  }

  // ---- render scheduling ----------------------------------------------------------------
  //
  // Network events are rendered once per frame, however many arrive (a catch-up or a burst
  // of 300 is one render). A hidden tab gets no animation frames, so a timer stands in and
  // the DOM stays current there too. What the user just did (send, retry, discard, opening a
  // room) is rendered at once.

  invalidate(parts) {
    for (const [k, v] of Object.entries(parts)) if (v) this.dirty[k] = true;
    if (this.renderPending) return;
    this.renderPending = true;
    this.raf = requestAnimationFrame(() => this.renderNow());
    this.renderTimer = setTimeout(() => this.renderNow(), 100);
  }

  cancelRender() {
    cancelAnimationFrame(this.raf);
    clearTimeout(this.renderTimer);
    this.renderPending = false;
  }

  renderNow(parts = {}) {
    for (const [k, v] of Object.entries(parts)) if (v) this.dirty[k] = true;
    this.cancelRender();
    const dirty = this.dirty;
    this.dirty = {};
    if (dirty.rooms) this.renderRooms();
    if (dirty.header) this.renderConversationHeader();
    if (dirty.messages) this.renderMessages();
  }

  // ---- connection -----------------------------------------------------------------------

  renderConnection() {
    const state = this.client.state === "idle" ? "connecting" : this.client.state;
    const el = this.connection;
    el.dataset.state = state;
    const text = {
      connecting: "Connecting…",
      open: "Connected",
      reconnecting: "Reconnecting… Messages you send will go out when the connection is back.",
      closed: this.client.lastClose && this.client.lastClose.reason === CLOSE.TOKEN_EXPIRED.reason ? "Session expired. Sign in again to keep chatting." : "Disconnected.",
    }[state];
    el.textContent = text;
    this.shell.dataset.connection = state;
  }

  // ---- rooms ----------------------------------------------------------------------------

  autoSelect() {
    if (this.roomId && this.client.getRoom(this.roomId)) return;
    // Only the one conversation there is opens by itself: opening one of several would mark
    // its messages seen without the user having chosen to look.
    const rooms = this.client.getRooms();
    if (rooms.length !== 1) return;
    this.selectRoom(rooms[0].room_id, { focus: false });
  }

  renderRooms() {
    const rooms = this.client.getRooms();
    this.roomsEmpty.hidden = rooms.length > 0;
    const existing = new Map([...this.roomList.children].map((li) => [li.dataset.roomId, li]));
    let cursor = this.roomList.firstChild;
    let totalUnread = 0;
    for (const room of rooms) {
      totalUnread += room.unread;
      let li = existing.get(room.room_id);
      if (!li) {
        li = h("li", { "data-room-id": room.room_id });
        const button = h("button", { type: "button", class: "room", "data-testid": "room", "data-room-id": room.room_id });
        button.addEventListener("click", () => this.selectRoom(room.room_id, { focus: true }));
        li.append(button);
      }
      existing.delete(room.room_id);
      this.fillRoom(li.firstChild, room);
      if (li !== cursor) this.roomList.insertBefore(li, cursor);
      else cursor = cursor.nextSibling;
    }
    for (const li of existing.values()) li.remove();
    document.title = totalUnread > 0 ? `(${totalUnread}) matchchat` : "matchchat";
  }

  fillRoom(button, room) {
    button.dataset.unread = String(room.unread);
    button.dataset.closed = String(room.closed);
    if (room.room_id === this.roomId) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
    const last = room.last_message;
    const prefix = last && last.sender_id === this.client.userId ? "You: " : "";
    const preview = last ? `${prefix}${last.body.replace(/\n/g, " ")}` : room.closed ? "" : "Say hi 👋";
    const when = last ? parseTime(last.sent_at) : null;
    const sig = JSON.stringify([room.peer, room.unread, room.closed, preview, last && last.sent_at]);
    if (button._sig === sig) return;
    button._sig = sig;
    const avatar = h("span", { class: "avatar", "aria-hidden": "true", text: initial(room.peer) });
    avatar.style.setProperty("--hue", hue(room.peer));
    const top = h(
      "span",
      { class: "room-top" },
      h("span", { class: "room-name", text: room.peer }),
      when ? h("time", { class: "room-time", datetime: when.toISOString(), text: timeFmt.format(when) }) : null,
    );
    // The body is isolated (dir="auto"): its direction controls cannot reorder the text around it.
    const previewEl = last
      ? h("span", { class: "room-preview" }, prefix || null, h("span", { class: "preview-body", dir: "auto", text: last.body.replace(/\n/g, " ") }))
      : h("span", { class: "room-preview", text: preview });
    const bottom = h("span", { class: "room-bottom" }, previewEl);
    if (room.closed) bottom.append(h("span", { class: "tag", text: "Closed" }));
    if (room.unread > 0) {
      bottom.append(h("span", { class: "badge", "aria-label": `${room.unread} unread`, text: room.unread > 99 ? "99+" : String(room.unread) }));
    }
    button.replaceChildren(avatar, h("span", { class: "room-text" }, top, bottom));
    button.setAttribute("aria-label", `${room.peer}${room.unread ? `, ${room.unread} unread` : ""}${room.closed ? ", closed" : ""}`);
  }

  async selectRoom(roomId, { focus = false } = {}) {
    const changed = roomId !== this.roomId;
    this.roomId = roomId;
    if (changed) {
      this.nodes.clear();
      this.history.replaceChildren();
      this.visible.clear();
      this.io.disconnect();
      this.clearNewMarker();
      this.lastSeq = null;
      this.forceScroll = true;
    }
    this.showPane("chat");
    this.renderNow({ rooms: true, header: true, messages: true });
    if (focus && !this.textarea.disabled) this.textarea.focus({ preventScroll: true });
    try {
      await this.client.loadRoom(roomId);
    } catch {
      // Offline: the room loads when the connection is back (the client remembers it).
    }
    if (this.roomId === roomId) this.renderNow({ messages: true });
  }

  showPane(pane) {
    this.shell.dataset.pane = pane;
    if (pane === "rooms") {
      const current = this.roomList.querySelector('[aria-current="true"]');
      if (current && this.narrow.matches) current.focus();
    } else {
      if (this.following || this.forceScroll) this.scrollToBottom();
      this.flushSeenSoon();
    }
  }

  renderConversationHeader() {
    const room = this.roomId ? this.client.getRoom(this.roomId) : null;
    this.conversation.dataset.empty = String(!room);
    this.peerName.textContent = room ? room.peer : "No conversation selected";
    this.avatar.textContent = room ? initial(room.peer) : "";
    this.avatar.style.setProperty("--hue", room ? hue(room.peer) : 210);
    this.peerSub.textContent = room && room.closed ? "Conversation ended" : "";
    this.peerSub.hidden = !this.peerSub.textContent;
    if (!room) {
      this.placeholder.hidden = false;
      this.placeholder.textContent = this.client.getRooms().length ? "Pick a conversation to start chatting." : "No conversations yet.";
    }
    const closed = Boolean(room && room.closed);
    this.closedBanner.hidden = !closed;
    this.textarea.disabled = !room || closed;
    this.textarea.placeholder = closed ? "This conversation has ended" : "Message";
    this.form.dataset.disabled = String(!room || closed);
    this.updateCounter();
  }

  // ---- messages -------------------------------------------------------------------------

  atBottom() {
    const el = this.history;
    return el.scrollHeight - el.scrollTop - el.clientHeight < 48;
  }

  scrollToBottom(smooth = false) {
    const el = this.history;
    this.following = true;
    el.scrollTo({ top: el.scrollHeight, behavior: smooth ? "smooth" : "auto" });
  }

  renderMessages() {
    const room = this.roomId && this.client.getRoom(this.roomId);
    if (!room) return;
    const all = this.client.getMessages(this.roomId);
    const items = all.slice(-HISTORY_WINDOW); // the DOM holds at most the window
    // Measured when the list is on screen; remembered from the last scroll when it is not
    // (a phone showing the room list).
    const wasAtBottom = this.history.clientHeight > 0 ? this.atBottom() : this.following;
    const lastBefore = this.lastSeq; // newest stored seq the previous render showed

    // Desired children: day separators and messages, with grouping of runs by one sender.
    const want = [];
    let prevDay = null;
    for (let i = 0; i < items.length; i += 1) {
      const item = items[i];
      const at = parseTime(item.sent_at) || new Date();
      const day = dayKey(at);
      if (day !== prevDay) {
        want.push({ key: `d${day}`, day: dayLabel(at), at });
        prevDay = day;
      }
      const prev = items[i - 1];
      const next = items[i + 1];
      const nextAt = next && parseTime(next.sent_at);
      const first = !prev || prev.sender_id !== item.sender_id || dayKey(parseTime(prev.sent_at) || at) !== day;
      const last = !next || next.sender_id !== item.sender_id || (nextAt && dayKey(nextAt) !== day);
      want.push({ key: item.key, item, at, first, last });
    }

    let cursor = this.history.firstChild;
    const keep = new Set();
    for (const w of want) {
      let el = this.nodes.get(w.key);
      if (!el && w.item && w.item.own && w.item.seq != null) {
        // A send just confirmed: reuse its "sending" element.
        const pendingKey = `c${w.item.client_msg_id}`;
        el = this.nodes.get(pendingKey);
        if (el) {
          this.nodes.delete(pendingKey);
          this.nodes.set(w.key, el);
        }
      }
      if (!el) {
        el = w.item ? h("li", { "data-testid": "message" }) : h("li", { class: "day", role: "presentation" });
        this.nodes.set(w.key, el);
      }
      keep.add(w.key);
      if (w.item) this.fillMessage(el, w);
      else if (el._sig !== w.day) {
        el._sig = w.day;
        el.replaceChildren(h("span", { text: w.day }));
      }
      if (el !== cursor) this.history.insertBefore(el, cursor);
      else cursor = cursor.nextSibling;
    }
    while (cursor) {
      const next = cursor.nextSibling;
      if (cursor.dataset.seq) this.io.unobserve(cursor);
      cursor.remove();
      cursor = next;
    }
    for (const key of [...this.nodes.keys()]) if (!keep.has(key)) this.nodes.delete(key);

    this.placeholder.hidden = items.length > 0;
    this.placeholder.textContent = room.loaded ? `This is the start of your conversation with ${room.peer}.` : "Loading messages…";

    // Scrolling: follow the newest when the reader is at the bottom (or just sent, or just
    // opened the room); otherwise leave the view alone and count what arrived below.
    const stored = items.filter((x) => x.seq != null);
    this.lastSeq = stored.length ? stored[stored.length - 1].seq : room.loaded ? 0 : null;
    if (this.forceScroll || wasAtBottom) {
      this.scrollToBottom();
      this.clearNewMarker();
      // A room being opened keeps following until its history is in; a send, once shown.
      if (room.loaded) this.forceScroll = false;
    } else if (lastBefore != null) {
      const added = items.filter((x) => !x.own && x.seq != null && x.seq > lastBefore).length;
      if (added > 0) this.showNewMarker(added);
    }
    this.flushSeenSoon();
  }

  fillMessage(el, w) {
    const { item } = w;
    const sig = JSON.stringify([item.seq, item.state, item.error && item.error.message, w.first, w.last, item.body, item.sent_at]);
    el.className = `msg ${item.own ? "own" : "other"}${w.first ? " first" : ""}${w.last ? " last" : ""} state-${item.state}`;
    el.dataset.state = item.state;
    el.dataset.own = String(item.own);
    el.dataset.sender = item.sender_id;
    el.dataset.clientMsgId = item.client_msg_id;
    if (item.seq != null) el.dataset.seq = String(item.seq);
    else delete el.dataset.seq;
    // Observe the other member's messages I have not seen; stop once seen.
    if (!item.own && item.seq != null && item.state !== "seen") this.io.observe(el);
    else if (!item.own) {
      this.io.unobserve(el);
      this.visible.delete(item.seq);
    }
    if (el._sig === sig) return;
    el._sig = sig;

    const time = h("time", { datetime: w.at.toISOString(), title: fullFmt.format(w.at), text: timeFmt.format(w.at) });
    const meta = h("span", { class: "meta" }, time);
    if (item.own) {
      const status = h("span", { class: "status", title: STATE_LABEL[item.state] });
      status.append(icon({ sending: "clock", sent: "check", seen: "checks", failed: "alert" }[item.state]));
      status.append(h("span", { class: "visually-hidden", text: STATE_LABEL[item.state] }));
      meta.append(status);
    }
    const who = h("span", { class: "visually-hidden", text: item.own ? "You: " : `${item.sender_id}: ` });
    // dir="auto" and `unicode-bidi: isolate`: a body takes its direction from its own first
    // strong character and can never reorder the text around it (name, time, state).
    const body = h("span", { class: "body", dir: "auto", text: item.body });
    const bubble = h("div", { class: "bubble" }, who, body, meta);
    el.replaceChildren(bubble);
    if (item.state === "failed") {
      const reason = (item.error && item.error.message) || "Not sent.";
      el.append(
        h(
          "div",
          { class: "failed-row" },
          h("span", { class: "failed-reason", text: reason }),
          h("button", { type: "button", class: "chip", "data-action": "retry", text: "Retry" }),
          h("button", { type: "button", class: "chip subtle", "data-action": "discard", text: "Discard" }),
        ),
      );
    }
  }

  showNewMarker(added) {
    this.unseenBelow += added;
    this.newMarker.replaceChildren(
      icon("down"),
      h("span", { text: this.unseenBelow === 1 ? "1 new message" : `${this.unseenBelow} new messages` }),
    );
    this.newMarker.hidden = false;
  }

  clearNewMarker() {
    this.unseenBelow = 0;
    this.newMarker.hidden = true;
  }

  announce({ roomId, message, own }) {
    if (own) return;
    const room = this.client.getRoom(roomId);
    if (roomId === this.roomId) this.say(`${message.sender_id}: ${message.body}`);
    else this.say(`New message from ${room ? room.peer : message.sender_id}`);
  }

  say(text) {
    // Replace the text so each announcement is read once.
    this.live.textContent = "";
    requestAnimationFrame(() => {
      this.live.textContent = text;
    });
  }

  // ---- seen -----------------------------------------------------------------------------

  onIntersect(entries) {
    for (const e of entries) {
      const seq = Number(e.target.dataset.seq);
      if (!seq) continue;
      const rootH = e.rootBounds ? e.rootBounds.height : 0;
      const shown = e.isIntersecting && (e.intersectionRatio >= 0.5 || (rootH && e.intersectionRect.height >= rootH * 0.5));
      if (shown) this.visible.add(seq);
      else this.visible.delete(seq);
    }
    this.flushSeenSoon();
  }

  flushSeenSoon() {
    if (this.seenTimer) return;
    // Batch: everything that came into view together becomes one watermark frame.
    this.seenTimer = setTimeout(() => {
      this.seenTimer = null;
      this.flushSeen();
    }, 120);
  }

  flushSeen() {
    if (!this.roomId || this.visible.size === 0) return;
    if (document.visibilityState !== "visible") return; // never from a hidden tab
    if (this.narrow.matches && this.shell.dataset.pane !== "chat") return;
    const max = Math.max(...this.visible);
    this.client.markSeen(this.roomId, max);
  }

  // ---- composer -------------------------------------------------------------------------

  currentRoomOpen() {
    const room = this.roomId && this.client.getRoom(this.roomId);
    return Boolean(room && !room.closed);
  }

  /** The text the textarea would hold if `insert` replaced the selection. */
  textWith(insert) {
    const t = this.textarea;
    return t.value.slice(0, t.selectionStart) + insert + t.value.slice(t.selectionEnd);
  }

  onBeforeInput(e) {
    if (!["insertText", "insertLineBreak", "insertReplacementText"].includes(e.inputType)) return;
    const data = e.inputType === "insertLineBreak" ? "\n" : e.data || (e.dataTransfer && e.dataTransfer.getData("text/plain")) || "";
    const after = countChars(this.textWith(data));
    if (after > MAX_BODY_CHARS && after > countChars(this.textarea.value)) {
      e.preventDefault();
      this.setNotice(`The limit is ${MAX_BODY_CHARS} characters.`);
    }
  }

  onPaste(e) {
    const data = e.clipboardData && e.clipboardData.getData("text/plain");
    if (data == null) return;
    e.preventDefault();
    const text = normalizeNewlines(data);
    const before = countChars(this.textarea.value.slice(0, this.textarea.selectionStart) + this.textarea.value.slice(this.textarea.selectionEnd));
    const pasted = countChars(text);
    if (before + pasted > MAX_BODY_CHARS) {
      // Refused whole, never cut: the reader decides what to shorten.
      this.setNotice(
        `Paste refused: it is ${pasted} characters and would make the message ${before + pasted}. The limit is ${MAX_BODY_CHARS}.`,
        "refused",
      );
      return;
    }
    this.insertText(text);
  }

  onDrop(e) {
    const data = e.dataTransfer && e.dataTransfer.getData("text/plain");
    if (!data) return;
    const total = countChars(this.textarea.value) + countChars(normalizeNewlines(data));
    if (total > MAX_BODY_CHARS) {
      e.preventDefault();
      this.setNotice(`Drop refused: the message would be ${total} characters. The limit is ${MAX_BODY_CHARS}.`, "refused");
    }
  }

  insertText(text) {
    const t = this.textarea;
    t.focus();
    // execCommand keeps the browser's undo history; setRangeText is the fallback.
    let done = false;
    try {
      done = document.execCommand("insertText", false, text);
    } catch {
      done = false;
    }
    if (!done) {
      t.setRangeText(text, t.selectionStart, t.selectionEnd, "end");
      t.dispatchEvent(new Event("input", { bubbles: true }));
    }
  }

  onInput() {
    const t = this.textarea;
    if (t.value.includes("\r")) {
      const pos = t.selectionStart;
      t.value = normalizeNewlines(t.value);
      t.selectionStart = t.selectionEnd = Math.min(pos, t.value.length);
    }
    this.setNotice("");
    this.updateCounter();
  }

  setNotice(text, kind = "info") {
    this.notice.textContent = text;
    this.notice.dataset.kind = text ? kind : "";
    this.notice.hidden = !text;
  }

  updateCounter() {
    const t = this.textarea;
    // Auto-grow up to the CSS max-height.
    t.style.height = "auto";
    t.style.height = `${t.scrollHeight}px`;
    const check = validateBody(t.value);
    const n = check.count;
    this.counter.textContent = `${n}/${MAX_BODY_CHARS}`;
    this.counter.dataset.count = String(n);
    this.counter.dataset.level = n > MAX_BODY_CHARS ? "over" : n >= MAX_BODY_CHARS - 20 ? "near" : "ok";
    this.counter.setAttribute("aria-label", `${n} of ${MAX_BODY_CHARS} characters`);
    this.sendButton.disabled = !check.ok || !this.currentRoomOpen();
    // Blank text gets its reason only when sending is tried (submit); text that is not blank
    // but shows nothing (U+200B, U+2060, ...) gets it at once, or it would look sendable.
    if (!check.ok && (check.code !== ERROR_CODES.BODY_EMPTY || t.value.trim() !== "")) this.setNotice(check.reason, "error");
    else if (this.notice.dataset.kind === "error") this.setNotice("");
  }

  submit() {
    if (!this.roomId || !this.currentRoomOpen()) return;
    const text = this.textarea.value;
    const check = validateBody(normalizeNewlines(text));
    if (!check.ok) {
      if (check.code !== ERROR_CODES.BODY_EMPTY || text !== "") this.setNotice(check.reason, "error");
      return;
    }
    try {
      this.client.send(this.roomId, text);
    } catch (err) {
      this.setNotice(ERROR_TEXT[err.code] || err.message, "error");
      return;
    }
    // Shown at once as "sending", and the view follows it.
    this.forceScroll = true;
    this.renderNow({ messages: true });
    this.textarea.value = "";
    this.setNotice("");
    this.updateCounter();
    this.textarea.focus({ preventScroll: true });
  }
}
