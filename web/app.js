// Entry point of the page served at `/`: finds a token, then mounts the chat.
//
// Where the token comes from (docs/web.md):
// 1. the URL fragment `#token=...` (removed from the address bar at once);
// 2. a `postMessage({type: "matchchat:token", token})` from the parent frame, accepted only
//    from the origin named by `?parent_origin=` (default: this page's own origin);
// 3. a call to `window.matchchat.setToken(token)`;
// 4. in demo mode (`GET /demo/config` answers), the "Chat as alice / bob" buttons.

import { ChatClient } from "./chat-client.js";
import { mountChat } from "./chat-ui.js";

const gate = document.getElementById("gate");
const gateText = document.getElementById("gate-text");
const gateActions = document.getElementById("gate-actions");
const chatRoot = document.getElementById("chat");

const params = new URLSearchParams(location.search);
const parentOrigin = params.get("parent_origin") || location.origin;
const embedded = window.parent !== window;
const DEMO_USER_KEY = "matchchat:demo-user";

let client = null;
let view = null;

function tellParent(message) {
  if (!embedded) return;
  try {
    window.parent.postMessage(message, parentOrigin);
  } catch {
    /* parent_origin is not a valid origin: nothing to tell */
  }
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

// 2. postMessage from the parent frame, from the one origin we trust.
window.addEventListener("message", (event) => {
  if (!embedded || event.source !== window.parent) return;
  if (event.origin !== parentOrigin) return;
  const data = event.data;
  if (!data || data.type !== "matchchat:token" || typeof data.token !== "string" || !data.token) return;
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
