// matchchat's chat view: renders a ChatClient (chat-client.js) into the page. Plain DOM, no
// framework. Test hooks (data-testid) are documented in docs/web.md and are a stable contract.

import { ERROR_TEXT, HISTORY_WINDOW, MAX_BODY_CHARS, NOT_ALLOWED, countChars, normalizeNewlines, validateBody } from "./chat-client.js";
import { CLOSE, ERROR_CODES } from "./protocol.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const NARROW = "(max-width: 759px)";
const STATE_LABEL = { sending: "Sending", sent: "Sent", delivered: "Delivered", seen: "Seen", failed: "Not sent" };
const STATE_ICON = { sending: "clock", sent: "check", delivered: "checks", seen: "checks", failed: "alert" };
const DELETED_TEXT = "This message was deleted";
/** A touch held this long on one's own message opens its menu. */
const LONG_PRESS_MS = 500;
/** "active 5 min ago" texts are refreshed this often. */
const PRESENCE_REFRESH_MS = 30_000;

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
    more: ["M6 10.2a1.8 1.8 0 1 0 0 3.6 1.8 1.8 0 0 0 0-3.6zm6 0a1.8 1.8 0 1 0 0 3.6 1.8 1.8 0 0 0 0-3.6zm6 0a1.8 1.8 0 1 0 0 3.6 1.8 1.8 0 0 0 0-3.6z"],
    trash: ["M9 3v1H4v2h1v13a2 2 0 0 0 2 2h10a2 2 0 0 0 2-2V6h1V4h-5V3zm-2 3h10v13H7zm2 2v9h2V8zm4 0v9h2V8z"],
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

/** "online", "active 5 min ago", …: the other member's presence as words. */
function presenceText(presence, now = Date.now()) {
  if (!presence) return "";
  if (presence.online) return "online";
  const at = parseTime(presence.last_active_at);
  if (!at) return "offline";
  const mins = Math.floor((now - at.getTime()) / 60_000);
  if (mins < 1) return "active just now";
  if (mins < 60) return `active ${mins} min ago`;
  const hours = Math.floor(mins / 60);
  if (hours < 24) return `active ${hours} h ago`;
  const days = Math.floor(hours / 24);
  if (days === 1) return "active yesterday";
  if (days < 7) return `active ${days} days ago`;
  return `active ${(at.getFullYear() === new Date(now).getFullYear() ? dayFmt : yearDayFmt).format(at)}`;
}

/** Words for a failed unsend. */
function unsendErrorText(err) {
  if (err && err.code === NOT_ALLOWED) return "Couldn't unsend: the time to unsend this message has passed.";
  return `Couldn't unsend: ${(err && (ERROR_TEXT[err.code] || err.message)) || "unknown error"}`;
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
    this.msgErrors = new Map(); // message key -> why its unsend failed (shown beside it)
    this.unsending = new Set(); // keys of messages being unsent
    this.menuKey = null; // the message whose menu is open
    this.pendingUnsend = null; // {key, seq} while the confirmation is open
    this.longPress = null;
    this.convError = null; // {text, retry} shown over the history
    this.roomsLoading = false;
    this.roomsError = null;
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
    // The end of the room list: more pages load when it comes into view (or on click).
    this.moreRoomsButton = h("button", { type: "button", class: "chip subtle", "data-testid": "more-rooms", text: "Load more conversations" });
    this.roomsMore = h("li", { class: "rooms-more" }, this.moreRoomsButton);
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
    this.avatarDot = h("span", { class: "presence-dot", "aria-hidden": "true", hidden: true });
    this.peerName = h("h2", { class: "peer-name", id: "peer-name" });
    this.peerSub = h("p", { class: "peer-sub" });
    // The other member's presence (protocol 1.1): stable, updated in place.
    this.presence = h("span", { class: "presence", "data-testid": "presence" });
    this.typingEl = h("span", { class: "typing", "data-testid": "typing", text: "typing…" });
    const head = h(
      "header",
      { class: "conv-head" },
      this.back,
      h("span", { class: "avatar-wrap" }, this.avatar, this.avatarDot),
      h("div", { class: "peer" }, this.peerName, this.peerSub),
    );

    this.history = h("ol", { class: "history", "data-testid": "history", tabindex: "0", "aria-labelledby": "peer-name", "aria-describedby": "history-hint" });
    this.historyHint = h("p", { class: "visually-hidden", id: "history-hint", text: `Shows the latest ${HISTORY_WINDOW} messages, oldest first.` });
    this.placeholder = h("div", { class: "history-placeholder" });
    this.newMarker = h("button", { type: "button", class: "new-marker", "data-testid": "new-messages", hidden: true });
    // The menu of one's own message (unsend), placed beside it when open.
    this.menu = h("div", { class: "msg-menu", role: "menu", "aria-label": "Message actions", "data-testid": "message-menu", hidden: true });
    this.convErrorSlot = h("div", { class: "conv-error-slot" });
    this.historyWrap = h("div", { class: "history-wrap" }, this.history, this.placeholder, this.newMarker, this.historyHint, this.menu, this.convErrorSlot);
    const historyWrap = this.historyWrap;

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

    // The unsend confirmation: a modal dialog (focus moves in, Escape cancels).
    this.confirmCancel = h("button", { type: "button", class: "chip subtle", text: "Cancel" });
    this.confirmButton = h("button", { type: "button", class: "chip danger", "data-testid": "confirm", text: "Unsend" });
    this.dialog = h(
      "dialog",
      { class: "confirm", "aria-labelledby": "confirm-title", "aria-describedby": "confirm-text" },
      h("h2", { id: "confirm-title", text: "Unsend this message?" }),
      h("p", { id: "confirm-text", text: `It will be removed for both of you and show as “${DELETED_TEXT}”. They may have read it already.` }),
      h("div", { class: "confirm-actions" }, this.confirmCancel, this.confirmButton),
    );

    this.shell = h("div", { class: "shell", "data-pane": "rooms" }, connection, sidebar, this.conversation, this.live, this.dialog);
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
    this.on(c, "typing", (e) => {
      if (e.detail.roomId === this.roomId) this.invalidate({ header: true });
    });
    this.on(c, "presence", () => this.invalidate({ rooms: true, header: true }));
    this.on(c, "deleted", (e) => {
      const { roomId, own } = e.detail;
      if (roomId === this.roomId && !own) {
        const room = this.client.getRoom(roomId);
        this.say(`${room ? room.peer : "They"} unsent a message`);
      }
    });
    this.on(c, "error", (e) => this.onRequestError(e.detail));
    this.on(c, "ready", () => {
      if (this.convError && this.convError.kind === "seen") this.setConvError(null);
    });
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
    this.on(this.textarea, "input", () => {
      this.onInput();
      // "typing…" for the other member: the client sends at most one frame every 3 s.
      if (this.textarea.value && this.currentRoomOpen()) this.client.typing(this.roomId);
    });
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
      if (button.dataset.action === "menu") {
        if (this.menuKey && this.menuKey === li.dataset.key) this.closeMenu({ restoreFocus: true });
        else this.openMenu(li, { focus: true });
      }
    });

    // The menu of one's own message: right-click, long-press (touch), or its "…" button.
    this.on(this.history, "contextmenu", (e) => {
      const li = this.actionableMessage(e.target);
      if (!li) return; // the browser's own menu everywhere else
      e.preventDefault();
      this.cancelLongPress();
      if (this.menuKey !== li.dataset.key) this.openMenu(li, { focus: true });
    });
    this.on(this.history, "pointerdown", (e) => {
      if (e.pointerType === "mouse") return;
      const li = this.actionableMessage(e.target);
      if (!li || !e.target.closest(".bubble")) return;
      this.cancelLongPress();
      const timer = setTimeout(() => {
        this.longPress = null;
        this.openMenu(li, { focus: true });
      }, LONG_PRESS_MS);
      this.longPress = { timer, x: e.clientX, y: e.clientY, id: e.pointerId };
    });
    this.on(this.history, "pointermove", (e) => {
      const lp = this.longPress;
      if (lp && lp.id === e.pointerId && Math.hypot(e.clientX - lp.x, e.clientY - lp.y) > 10) this.cancelLongPress();
    });
    for (const type of ["pointerup", "pointercancel"]) this.on(this.history, type, () => this.cancelLongPress());
    this.on(this.history, "scroll", () => this.positionMenu(), { passive: true });
    this.on(window, "resize", () => this.positionMenu());
    this.on(document, "pointerdown", (e) => {
      if (!this.menuKey || this.menu.contains(e.target)) return;
      const opener = e.target.closest && e.target.closest('button[data-action="menu"]');
      if (opener && opener.closest("li") === this.nodes.get(this.menuKey)) return; // its button toggles
      this.closeMenu({ restoreFocus: false });
    }, true);
    this.on(this.menu, "keydown", (e) => {
      const items = [...this.menu.querySelectorAll('[role="menuitem"]')];
      const at = items.indexOf(document.activeElement);
      if (e.key === "Escape") {
        e.preventDefault();
        e.stopPropagation();
        this.closeMenu({ restoreFocus: true });
      } else if (e.key === "Tab") {
        this.closeMenu({ restoreFocus: true });
        e.preventDefault();
      } else if (e.key === "ArrowDown" || e.key === "ArrowUp" || e.key === "Home" || e.key === "End") {
        e.preventDefault();
        const next = e.key === "Home" ? 0 : e.key === "End" ? items.length - 1 : (at + (e.key === "ArrowDown" ? 1 : -1) + items.length) % items.length;
        items[next]?.focus();
      }
    });
    this.on(this.menu, "click", (e) => {
      const item = e.target.closest("[data-menu-action]");
      if (item && item.dataset.menuAction === "unsend") this.askUnsend(this.menuKey);
    });
    this.on(this.confirmCancel, "click", () => this.dialog.close("cancel"));
    this.on(this.confirmButton, "click", () => this.dialog.close("confirm"));
    this.on(this.dialog, "keydown", (e) => {
      if (e.key === "Escape") e.stopPropagation(); // closes the dialog only, not the pane
    });
    this.on(this.dialog, "close", () => this.onConfirmClosed());

    // More rooms: when the end of the list comes into view, or on click.
    this.roomsIo = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) this.loadMoreRooms();
    }, { root: this.roomList });
    this.on(this.moreRoomsButton, "click", () => this.loadMoreRooms({ force: true }));
    // "active 5 min ago" ages: refresh it now and then.
    this.presenceTimer = setInterval(() => this.invalidate({ rooms: true, header: true }), PRESENCE_REFRESH_MS);

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
    this.roomsIo.disconnect();
    clearInterval(this.presenceTimer);
    this.cancelLongPress();
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
    const existing = new Map([...this.roomList.children].filter((li) => li !== this.roomsMore).map((li) => [li.dataset.roomId, li]));
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
    this.renderRoomsMore();
  }

  /** The end of the list while the server has more rooms: loads them when seen. */
  renderRoomsMore() {
    const more = this.client.moreRooms || Boolean(this.roomsError);
    if (!more) {
      if (this.roomsMore.isConnected) {
        this.roomsIo.unobserve(this.roomsMore);
        this.roomsMore.remove();
      }
      return;
    }
    this.moreRoomsButton.textContent = this.roomsLoading ? "Loading more conversations…" : this.roomsError ? "Try again" : "Load more conversations";
    this.moreRoomsButton.disabled = this.roomsLoading;
    const error = this.roomsMore.querySelector('[data-testid="error"]');
    if (this.roomsError && !error) this.roomsMore.prepend(h("p", { class: "inline-error", "data-testid": "error", role: "alert", text: this.roomsError }));
    else if (error && !this.roomsError) error.remove();
    else if (error) error.textContent = this.roomsError;
    if (this.roomList.lastChild !== this.roomsMore) {
      this.roomList.append(this.roomsMore);
      this.roomsIo.observe(this.roomsMore);
    }
  }

  /** Whether the end of the room list is on screen. */
  roomsEndInView() {
    if (!this.roomsMore.isConnected) return false;
    const list = this.roomList.getBoundingClientRect();
    const end = this.roomsMore.getBoundingClientRect();
    return list.height > 0 && end.top < list.bottom && end.bottom > list.top;
  }

  async loadMoreRooms({ force = false } = {}) {
    if (this.roomsLoading || (this.roomsError && !force) || !this.client.moreRooms) return;
    this.roomsLoading = true;
    this.roomsError = null;
    this.renderRoomsMore();
    try {
      await this.client.loadMoreRooms();
    } catch (err) {
      this.roomsError = `Couldn't load more conversations: ${ERROR_TEXT[err.code] || err.message}`;
    } finally {
      this.roomsLoading = false;
    }
    this.renderNow({ rooms: true });
    // A short page leaves the end in view: the observer does not fire again by itself.
    if (!this.roomsError && this.client.moreRooms && this.roomsEndInView()) this.loadMoreRooms();
  }

  fillRoom(button, room) {
    button.dataset.unread = String(room.unread);
    button.dataset.closed = String(room.closed);
    if (room.room_id === this.roomId) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
    const last = room.last_message;
    const deleted = Boolean(last && (last.deleted_at || last.body == null));
    const prefix = last && !deleted && last.sender_id === this.client.userId ? "You: " : "";
    const lastText = last ? (deleted ? DELETED_TEXT : last.body.replace(/\n/g, " ")) : "";
    const preview = last ? `${prefix}${lastText}` : room.closed ? "" : "Say hi 👋";
    const when = last ? parseTime(last.sent_at) : null;
    // Presence and typing (protocol 1.1) only for an open room: the server sends none otherwise.
    const presence = room.closed ? null : room.presence;
    const typing = !room.closed && room.typing;
    const away = presence && !presence.online ? presenceText(presence) : "";
    const sig = JSON.stringify([room.peer, room.unread, room.closed, preview, deleted, last && last.sent_at, presence && presence.online, away, typing]);
    if (button._sig === sig) return;
    button._sig = sig;
    const avatar = h("span", { class: "avatar", "aria-hidden": "true", text: initial(room.peer) });
    avatar.style.setProperty("--hue", hue(room.peer));
    const avatarWrap = h("span", { class: "avatar-wrap" }, avatar);
    if (presence && presence.online) avatarWrap.append(h("span", { class: "presence-dot", "aria-hidden": "true" }));
    const top = h(
      "span",
      { class: "room-top" },
      h("span", { class: "room-name", text: room.peer }),
      away ? h("span", { class: "room-presence", "data-online": "false", text: away }) : null,
      when ? h("time", { class: "room-time", datetime: when.toISOString(), text: timeFmt.format(when) }) : null,
    );
    // The body is isolated (dir="auto"): its direction controls cannot reorder the text around it.
    let previewEl;
    if (typing) previewEl = h("span", { class: "room-preview typing-preview", text: "typing…" });
    else if (last && deleted) previewEl = h("span", { class: "room-preview deleted-preview", text: DELETED_TEXT });
    else if (last) previewEl = h("span", { class: "room-preview" }, prefix || null, h("span", { class: "preview-body", dir: "auto", text: lastText }));
    else previewEl = h("span", { class: "room-preview", text: preview });
    const bottom = h("span", { class: "room-bottom" }, previewEl);
    if (room.closed) bottom.append(h("span", { class: "tag", text: "Closed" }));
    if (room.unread > 0) {
      bottom.append(h("span", { class: "badge", "aria-label": `${room.unread} unread`, text: room.unread > 99 ? "99+" : String(room.unread) }));
    }
    button.replaceChildren(avatarWrap, h("span", { class: "room-text" }, top, bottom));
    const state = typing ? ", typing" : presence ? `, ${presenceText(presence)}` : "";
    button.setAttribute("aria-label", `${room.peer}${state}${room.unread ? `, ${room.unread} unread` : ""}${room.closed ? ", closed" : ""}`);
  }

  async selectRoom(roomId, { focus = false } = {}) {
    const changed = roomId !== this.roomId;
    this.roomId = roomId;
    if (changed) {
      this.closeMenu({ restoreFocus: false });
      this.nodes.clear();
      this.history.replaceChildren();
      this.visible.clear();
      this.io.disconnect();
      this.clearNewMarker();
      this.msgErrors.clear();
      this.setConvError(null);
      this.lastSeq = null;
      this.forceScroll = true;
    }
    this.showPane("chat");
    this.renderNow({ rooms: true, header: true, messages: true });
    if (focus && !this.textarea.disabled) this.textarea.focus({ preventScroll: true });
    try {
      await this.client.loadRoom(roomId);
      if (this.roomId === roomId && this.convError && this.convError.kind === "load") this.setConvError(null);
    } catch (err) {
      // Offline: the room loads when the connection is back (the client remembers it). A
      // refusal from the server is shown where the messages would be.
      if (this.roomId === roomId && err && err.code !== "offline") {
        this.setConvError({
          kind: "load",
          text: `Couldn't load messages: ${ERROR_TEXT[err.code] || err.message}`,
          retry: () => this.selectRoom(roomId),
        });
      }
    }
    if (this.roomId === roomId) this.renderNow({ messages: true });
  }

  /** An error above the messages (loading them, marking them seen), with an optional retry. */
  setConvError(error) {
    this.convError = error;
    if (!error) {
      this.convErrorSlot.replaceChildren();
      return;
    }
    const box = h("p", { class: "inline-error conv-error", "data-testid": "error", role: "alert" }, h("span", { text: error.text }));
    if (error.retry) {
      const retry = h("button", { type: "button", class: "chip subtle", text: "Try again" });
      retry.addEventListener("click", () => {
        this.setConvError(null);
        error.retry();
      });
      box.append(retry);
    }
    this.convErrorSlot.replaceChildren(box);
  }

  /** An `error` frame answering one of this page's requests (by its `req`). */
  onRequestError({ code, request }) {
    if (!request || code === ERROR_CODES.RATE_LIMITED) return; // rate_limited: the client retries
    if (request.type === "seen" && request.roomId === this.roomId) {
      this.setConvError({ kind: "seen", text: `Couldn't mark messages as seen: ${ERROR_TEXT[code] || code}` });
    }
    // history, rooms and delete errors reject their promises (shown where they were asked);
    // send errors show on the message; typing and received are hints: nothing to show.
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
    // Under the name: "Conversation ended", or "typing…", or the presence ("online", "active
    // 5 min ago"; protocol 1.1). "typing…" is in the DOM only while they are typing.
    const presence = room && !room.closed ? room.presence : null;
    const typing = Boolean(room && !room.closed && room.typing);
    const sub = [];
    if (room && room.closed) sub.push("Conversation ended");
    if (presence) {
      this.presence.dataset.online = String(presence.online);
      this.presence.textContent = presenceText(presence);
      this.presence.hidden = typing;
      sub.push(this.presence);
    }
    if (typing) sub.push(this.typingEl);
    const same = sub.length === this.peerSub.childNodes.length && sub.every((x, i) => (typeof x === "string" ? this.peerSub.childNodes[i].nodeType === 3 && this.peerSub.childNodes[i].data === x : this.peerSub.childNodes[i] === x));
    if (!same) this.peerSub.replaceChildren(...sub);
    this.peerSub.hidden = sub.length === 0;
    this.avatarDot.hidden = !(presence && presence.online);
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
    this.positionMenu();
    this.flushSeenSoon();
  }

  fillMessage(el, w) {
    const { item } = w;
    const deleted = Boolean(item.deleted_at) || (item.seq != null && item.body == null);
    // One's own stored message can be unsent (protocol 1.1), from its menu.
    const actionable = item.own && item.seq != null && !deleted && this.client.canUnsend;
    const unsending = this.unsending.has(w.key);
    const error = this.msgErrors.get(w.key) || null;
    const sig = JSON.stringify([item.seq, item.state, item.error && item.error.message, w.first, w.last, item.body, item.sent_at, deleted, actionable, unsending, error]);
    el.className = `msg ${item.own ? "own" : "other"}${w.first ? " first" : ""}${w.last ? " last" : ""} state-${item.state}${deleted ? " deleted" : ""}`;
    el.dataset.state = item.state;
    el.dataset.own = String(item.own);
    el.dataset.sender = item.sender_id;
    el.dataset.clientMsgId = item.client_msg_id;
    el.dataset.key = w.key;
    if (item.seq != null) el.dataset.seq = String(item.seq);
    else delete el.dataset.seq;
    if (deleted) el.dataset.deleted = "true";
    else delete el.dataset.deleted;
    if (actionable) el.dataset.actionable = "true";
    else delete el.dataset.actionable;
    if (unsending) el.dataset.unsending = "true";
    else delete el.dataset.unsending;
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
    if (item.own && !deleted) {
      const status = h("span", { class: "status", title: STATE_LABEL[item.state] });
      status.append(icon(STATE_ICON[item.state] || "check"));
      status.append(h("span", { class: "visually-hidden", text: STATE_LABEL[item.state] }));
      meta.append(status);
    }
    const who = h("span", { class: "visually-hidden", text: item.own ? "You: " : `${item.sender_id}: ` });
    // dir="auto" and `unicode-bidi: isolate`: a body takes its direction from its own first
    // strong character and can never reorder the text around it (name, time, state).
    const body = deleted
      ? h("span", { class: "body deleted-body", dir: "auto", text: DELETED_TEXT })
      : h("span", { class: "body", dir: "auto", text: item.body });
    const bubble = h("div", { class: "bubble" }, who, body, meta);
    const row = h("div", { class: "msg-row" });
    if (actionable) {
      row.append(
        h(
          "button",
          {
            type: "button",
            class: "msg-actions",
            "data-action": "menu",
            "data-testid": "message-actions",
            "aria-label": "Actions for your message",
            "aria-haspopup": "menu",
            "aria-expanded": String(this.menuKey === w.key),
            disabled: unsending,
          },
          icon("more"),
        ),
      );
    }
    row.append(bubble);
    el.replaceChildren(row);
    if (error) el.append(h("p", { class: "inline-error msg-error", "data-testid": "error", role: "alert", text: error }));
    if (item.state === "failed") {
      const reason = (item.error && item.error.message) || "Not sent.";
      el.append(
        h(
          "div",
          { class: "failed-row" },
          h("span", { class: "failed-reason", "data-testid": "error", text: reason }),
          h("button", { type: "button", class: "chip", "data-action": "retry", text: "Retry" }),
          h("button", { type: "button", class: "chip subtle", "data-action": "discard", text: "Discard" }),
        ),
      );
    }
  }

  // ---- unsend: menu and confirmation ------------------------------------------------------

  /** The message element under `target` when it is one's own and can be unsent. */
  actionableMessage(target) {
    const li = target && target.closest && target.closest('li[data-testid="message"]');
    return li && li.dataset.actionable === "true" && !li.dataset.unsending && this.history.contains(li) ? li : null;
  }

  openMenu(li, { focus = true } = {}) {
    this.closeMenu({ restoreFocus: false });
    const key = li.dataset.key;
    this.menuKey = key;
    if (this.msgErrors.delete(key)) {
      // Trying again: the old reason goes.
      this.renderNow({ messages: true });
      li = this.nodes.get(key) || li;
    }
    const item = h(
      "button",
      { type: "button", role: "menuitem", class: "menu-item danger", "data-menu-action": "unsend", "data-testid": "unsend" },
      icon("trash"),
      h("span", { text: "Unsend" }),
    );
    this.menu.replaceChildren(item);
    this.menu.hidden = false;
    li.dataset.menuOpen = "true";
    li.querySelector('button[data-action="menu"]')?.setAttribute("aria-expanded", "true");
    this.positionMenu();
    if (focus) item.focus({ preventScroll: true });
  }

  closeMenu({ restoreFocus = false } = {}) {
    if (!this.menuKey) return;
    const li = this.nodes.get(this.menuKey);
    this.menuKey = null;
    const hadFocus = this.menu.contains(document.activeElement);
    this.menu.hidden = true;
    this.menu.replaceChildren();
    if (li) {
      delete li.dataset.menuOpen;
      const opener = li.querySelector('button[data-action="menu"]');
      opener?.setAttribute("aria-expanded", "false");
      if (restoreFocus || hadFocus) (opener || this.history).focus({ preventScroll: true });
    }
  }

  /** Keeps the open menu beside its message (the list scrolls, the window resizes). */
  positionMenu() {
    if (!this.menuKey) return;
    const li = this.nodes.get(this.menuKey);
    const bubble = li && li.isConnected && li.querySelector(".bubble");
    if (!bubble || li.dataset.actionable !== "true") {
      this.closeMenu({ restoreFocus: false });
      return;
    }
    const wrap = this.historyWrap.getBoundingClientRect();
    const b = bubble.getBoundingClientRect();
    const height = this.menu.offsetHeight;
    let top = b.bottom - wrap.top + 4;
    if (top + height > wrap.height - 4) top = b.top - wrap.top - height - 4; // no room below: above
    top = Math.max(4, Math.min(top, wrap.height - height - 4));
    this.menu.style.top = `${Math.round(top)}px`;
    this.menu.style.right = `${Math.max(4, Math.round(wrap.right - b.right))}px`;
  }

  cancelLongPress() {
    if (!this.longPress) return;
    clearTimeout(this.longPress.timer);
    this.longPress = null;
  }

  /** Asks before unsending (a modal dialog; Cancel has the focus). */
  askUnsend(key) {
    const li = key && this.nodes.get(key);
    const seq = li && Number(li.dataset.seq);
    this.closeMenu({ restoreFocus: false });
    if (!seq || !this.roomId) return;
    this.pendingUnsend = { key, seq, roomId: this.roomId };
    this.dialog.returnValue = "";
    this.dialog.showModal();
    this.confirmCancel.focus();
  }

  async onConfirmClosed() {
    const pending = this.pendingUnsend;
    this.pendingUnsend = null;
    if (!pending) return;
    const opener = () => this.nodes.get(pending.key)?.querySelector('button[data-action="menu"]');
    if (this.dialog.returnValue !== "confirm" || pending.roomId !== this.roomId) {
      (opener() || this.history).focus({ preventScroll: true });
      return;
    }
    this.unsending.add(pending.key);
    this.msgErrors.delete(pending.key);
    this.renderNow({ messages: true });
    this.history.focus({ preventScroll: true });
    try {
      await this.client.unsend(pending.roomId, pending.seq);
    } catch (err) {
      if (pending.roomId === this.roomId) this.msgErrors.set(pending.key, unsendErrorText(err));
    } finally {
      this.unsending.delete(pending.key);
    }
    if (pending.roomId !== this.roomId) return;
    this.renderNow({ messages: true, rooms: true });
    // Refused: back on the message's button (its reason is announced, role=alert). Unsent:
    // the message has no menu any more; the focus stays on the list.
    const button = opener();
    if (button && this.history.contains(document.activeElement)) button.focus({ preventScroll: true });
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
    if (roomId === this.roomId) this.say(`${message.sender_id}: ${message.body ?? DELETED_TEXT}`);
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
