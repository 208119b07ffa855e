// matchchat's protocol vocabulary, shared by the client's modules: the limits, the body rule
// (the server's `crates/chat-domain/src/body.rs`, mirrored exactly), client_msg_ids, error
// texts and ChatError. No DOM, no dependencies. chat-client.js re-exports all of it.

// The limits and codes come from protocol.js, which is generated from the Rust types.
import { ERROR_CODES, MAX_BODY_CHARS } from "./protocol.js";

export { HISTORY_WINDOW, MAX_BODY_CHARS } from "./protocol.js";

/** Protocol 1.1's error code for a refused `delete` (protocol.js names it once regenerated). */
export const NOT_ALLOWED = ERROR_CODES.NOT_ALLOWED || "not_allowed";
/** A `typing` frame is sent at most this often per room while the user composes. */
export const TYPING_SEND_MS = 3000;
/** "typing…" is shown this long after the other member's last `typing` frame. */
export const TYPING_SHOW_MS = 5000;
/** `received` watermarks are batched over this long (one frame per room, not per message). */
export const RECEIVED_BATCH_MS = 250;

/**
 * Whether the `protocol` a server names in `ready` is at least `major.minor`. A server that
 * names none speaks 1.0.
 */
export function protocolAtLeast(protocol, major, minor) {
  const m = /^(\d+)\.(\d+)$/.exec(String(protocol || "1.0"));
  if (!m) return false;
  const [a, b] = [Number(m[1]), Number(m[2])];
  return a > major || (a === major && b >= minor);
}

// A body is empty when it has no visible character: every character is Unicode White_Space
// (Rust's `char::is_whitespace`, which `trim()` uses) or one of the invisible characters of
// body.rs's list (soft hyphen, zero-width and joiner characters, direction marks and
// controls, fillers, variation selectors, tags, ...). Inside a body that has a visible
// character they are allowed: emoji ZWJ sequences need U+200D.
const EMPTY_RE = new RegExp(
  "^[" +
    // White_Space
    "\\t\\n\\v\\f\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000" +
    // invisible
    "\\u00AD\\u034F\\u061C\\u115F\\u1160\\u17B4\\u17B5\\u180B-\\u180F\\u200B-\\u200F\\u202A-\\u202E" +
    "\\u2060-\\u206F\\u2800\\u3164\\uFE00-\\uFE0F\\uFEFF\\uFFA0\\uFFF9-\\uFFFB" +
    "\\u{1BCA0}-\\u{1BCA3}\\u{1D173}-\\u{1D17A}\\u{E0000}-\\u{E007F}\\u{E0100}-\\u{E01EF}" +
    "]*$",
  "u",
);
// Rust's `char::is_control` (general category Cc), except "\n".
const CONTROL_RE = /[\u0000-\u0009\u000B-\u001F\u007F-\u009F]/u;
// Direction controls: embeddings and overrides (LRE, RLE, LRO, RLO) are closed by PDF
// (U+202C), isolates (LRI, RLI, FSI) by PDI (U+2069).
const BIDI_RE = /[\u202A-\u202E\u2066-\u2069]/u;
const BIDI_OPENERS = new Map([
  [0x202a, "embedding"],
  [0x202b, "embedding"],
  [0x202d, "embedding"],
  [0x202e, "embedding"],
  [0x2066, "isolate"],
  [0x2067, "isolate"],
  [0x2068, "isolate"],
]);
const BIDI_CLOSERS = new Map([
  [0x202c, "embedding"],
  [0x2069, "isolate"],
]);

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
 * Whether every direction control in `text` is paired: a stack of open openers, a closer
 * must match the kind of the innermost one, no line break while one is open, none open at
 * the end.
 */
function bidiPaired(text) {
  if (!BIDI_RE.test(text)) return true;
  const open = [];
  for (const ch of text) {
    const c = ch.codePointAt(0);
    const opens = BIDI_OPENERS.get(c);
    if (opens) {
      open.push(opens);
      continue;
    }
    const closes = BIDI_CLOSERS.get(c);
    if (closes) {
      if (open.pop() !== closes) return false;
    } else if (c === 0x0a && open.length > 0) {
      return false;
    }
  }
  return open.length === 0;
}

/**
 * Checks a body against the server's rule. Returns `{ ok, code, count, reason }` where code is
 * null or one of the server's codes: body_empty, body_too_long, body_invalid. The checks run
 * in the server's order: empty, too long, control characters, unpaired direction controls.
 */
export function validateBody(text) {
  const count = countChars(text);
  if (EMPTY_RE.test(text)) return { ok: false, code: ERROR_CODES.BODY_EMPTY, count, reason: "Write something first." };
  if (count > MAX_BODY_CHARS) {
    return {
      ok: false,
      code: ERROR_CODES.BODY_TOO_LONG,
      count,
      reason: `Too long: ${count} characters, the limit is ${MAX_BODY_CHARS}.`,
    };
  }
  if (CONTROL_RE.test(text)) {
    return { ok: false, code: ERROR_CODES.BODY_INVALID, count, reason: "Tabs and control characters can't be sent." };
  }
  if (!bidiPaired(text)) {
    return { ok: false, code: ERROR_CODES.BODY_INVALID, count, reason: "Unpaired direction-control characters can't be sent." };
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
  [ERROR_CODES.UNAUTHORIZED]: "Not signed in.",
  [ERROR_CODES.NOT_A_MEMBER]: "You're not in this conversation.",
  [ERROR_CODES.UNKNOWN_ROOM]: "This conversation doesn't exist.",
  [ERROR_CODES.BODY_EMPTY]: "Empty messages can't be sent.",
  [ERROR_CODES.BODY_TOO_LONG]: `Messages are limited to ${MAX_BODY_CHARS} characters.`,
  [ERROR_CODES.BODY_INVALID]: "The message contains characters that can't be sent.",
  [ERROR_CODES.INVALID_FRAME]: "The server did not understand the request.",
  [ERROR_CODES.RATE_LIMITED]: "Sending too fast. Try again in a moment.",
  [ERROR_CODES.ROOM_CLOSED]: "This conversation has ended.",
  [ERROR_CODES.INTERNAL]: "Server error. Try again.",
  [NOT_ALLOWED]: "Not allowed: only your own messages can be unsent, and only for a while after sending.",
  offline: "Not connected. Try again when the connection is back.",
  timeout: "No answer from the server. Try again.",
  unsupported: "This server doesn't support that yet.",
};

/** An error with the server's (or the client's) `code`. */
export class ChatError extends Error {
  constructor(code, message) {
    super(message || ERROR_TEXT[code] || code);
    this.name = "ChatError";
    this.code = code;
  }
}
