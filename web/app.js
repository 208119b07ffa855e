// Entry point of the page served at `/`: finds a token, then mounts the chat.
//
// Where the token comes from (docs/web.md):
// 1. the URL fragment `#token=...` (removed from the address bar at once);
// 2. a `postMessage({type: "matchchat:token", token})` from the parent frame. Embedded, the
//    page first asks the server which origins may embed it (`GET /embed-config`, the
//    server's CHAT_FRAME_ANCESTORS); before that answer it neither posts to nor accepts
//    from the parent. `?parent_origin=` names the parent's origin (default: this page's
//    own) and is honoured only when it is this page's origin or in that list; otherwise it
//    is ignored with a console warning and the page talks to no parent at all. A token is
//    accepted only from `window.parent` and only from exactly that honoured origin, and the
//    page posts only to it;
// 3. a call to `window.matchchat.setToken(token)`;
// 4. in demo mode (`GET /demo/config` answers), the "Chat as alice / bob" buttons.

import { ChatClient } from "./chat-client.js";
import { mountChat } from "./chat-ui.js";

const gate = document.getElementById("gate");
const gateText = document.getElementById("gate-text");
const gateActions = document.getElementById("gate-actions");
const chatRoot = document.getElementById("chat");

const params = new URLSearchParams(location.search);
const embedded = window.parent !== window;
const DEMO_USER_KEY = "matchchat:demo-user";

let client = null;
let view = null;

/** A serialized origin such as `https://app.example.com` (lowercase, no path, no slash). */
function isOrigin(text) {
  if (typeof text !== "string") return false;
  try {
    return new URL(text).origin === text;
  } catch {
    return false;
  }
}

/** The origins the server lets embed this page besides its own (`GET /embed-config`). */
async function frameAncestors() {
  try {
    const res = await fetch("/embed-config", { headers: { accept: "application/json" } });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const config = await res.json();
    const list = config && Array.isArray(config.frame_ancestors) ? config.frame_ancestors : [];
    return list.filter(isOrigin);
  } catch (e) {
    console.warn(`matchchat: GET /embed-config failed (${e.message}): only this page's own origin may hand it a token`);
    return [];
  }
}

/**
 * The parent frame's origin, once the server's list allows it: `?parent_origin=` (default:
 * this page's origin) if it is this page's origin or in /embed-config's list; else null, and
 * the page neither posts to nor accepts from its parent.
 */
async function trustedParentOrigin() {
  if (!embedded) return null;
  const wanted = params.get("parent_origin") || location.origin;
  const allowed = await frameAncestors();
  if (wanted === location.origin || allowed.includes(wanted)) return wanted;
  console.warn(
    `matchchat: parent_origin ${JSON.stringify(wanted)} ignored: it is neither this page's origin nor one of the server's frame ancestors (CHAT_FRAME_ANCESTORS). No token is accepted from the parent frame and nothing is posted to it.`,
  );
  return null;
}

// Settles once: every postMessage to or from the parent waits for it.
const parentOrigin = trustedParentOrigin();

function tellParent(message) {
  parentOrigin.then((origin) => {
    if (!origin) return;
    try {
      window.parent.postMessage(message, origin);
    } catch {
      /* the parent went away */
    }
  });
}

function showGate(text, actions = []) {
  gateText.textContent = text;
  gateActions.replaceChildren(...actions);
  gate.hidden = false;
  chatRoot.hidden = true;
}

function button(label, onClick, cls = "primary") {
  const b = document.createElement("button");
  b.type = "button";
  b.className = `gate-button ${cls}`;
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

/** Starts the chat (or hands a fresh token to the running one). */
function start({ token = null, getToken = null, onSignOut = null, signOutLabel } = {}) {
  if (client) {
    if (token) client.setToken(token);
    return client;
  }
  client = new ChatClient({ token, getToken });
  client.addEventListener("authrequired", (e) => {
    tellParent({ type: "matchchat:token_needed", reason: e.detail.reason });
  });
  client.addEventListener("ready", (e) => tellParent({ type: "matchchat:connected", user_id: e.detail.userId }));
  gate.hidden = true;
  chatRoot.hidden = false;
  view = mountChat(chatRoot, client, { onSignOut, signOutLabel });
  client.connect();
  window.matchchat.client = client;
  window.matchchat.view = view;
  return client;
}

// 3. A JS call: for a host page that scripts this window (same origin) or for tests.
window.matchchat = {
  setToken(token) {
    if (typeof token !== "string" || !token) throw new TypeError("setToken needs a token string");
    return start({ token });
  },
  client: null,
  view: null,
};

// 2. postMessage from the parent frame, from the one origin we trust (once we know it).
window.addEventListener("message", async (event) => {
  if (!embedded || event.source !== window.parent) return;
  const { origin, data } = event;
  if (!data || data.type !== "matchchat:token" || typeof data.token !== "string" || !data.token) return;
  const trusted = await parentOrigin;
  if (!trusted || origin !== trusted) return;
  start({ token: data.token });
});

async function demoToken(userId) {
  const res = await fetch("/demo/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user_id: userId }),
  });
  if (!res.ok) throw new Error(`demo token: HTTP ${res.status}`);
  const body = await res.json();
  return body.token;
}

function startDemo(userId) {
  try {
    sessionStorage.setItem(DEMO_USER_KEY, userId);
  } catch {
    /* storage disabled: no auto-login after reload */
  }
  start({
    getToken: () => demoToken(userId),
    signOutLabel: "Switch user",
    onSignOut: () => {
      try {
        sessionStorage.removeItem(DEMO_USER_KEY);
      } catch {
        /* ignore */
      }
      if (client) client.disconnect();
      location.reload();
    },
  });
}

async function boot() {
  // 1. The URL fragment.
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  const fragmentToken = fragment.get("token");
  if (fragmentToken) {
    fragment.delete("token");
    const rest = fragment.toString();
    history.replaceState(history.state, "", `${location.pathname}${location.search}${rest ? `#${rest}` : ""}`);
    start({ token: fragmentToken });
    return;
  }

  // 4. Demo mode.
  let demo = null;
  try {
    const res = await fetch("/demo/config", { headers: { accept: "application/json" } });
    if (res.ok) demo = await res.json();
  } catch {
    demo = null;
  }
  if (client) return; // a token arrived meanwhile
  if (demo && demo.demo && Array.isArray(demo.users)) {
    let remembered = null;
    try {
      remembered = sessionStorage.getItem(DEMO_USER_KEY);
    } catch {
      remembered = null;
    }
    if (remembered && demo.users.includes(remembered)) {
      startDemo(remembered);
      return;
    }
    showGate(
      "Demo mode: pick who you are. Open a second window as the other user to chat with yourself.",
      demo.users.map((u) => {
        const b = button(`Chat as ${u}`, () => startDemo(u));
        b.dataset.testid = `demo-${u}`;
        return b;
      }),
    );
    gateActions.querySelector("button")?.focus();
    return;
  }

  showGate(
    embedded
      ? "Waiting for sign-in from the app…"
      : "No sign-in token. Open this page from the app, or with #token=… in the address.",
  );
  tellParent({ type: "matchchat:token_needed", reason: "no_token" });
}

tellParent({ type: "matchchat:loaded" });
boot();
