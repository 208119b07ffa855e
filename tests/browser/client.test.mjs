// The page's body rule must match the server's (crates/chat-domain/src/body.rs): these are
// that file's cases, run against web/chat-client.js in Node (no browser needed).

import { test } from "node:test";
import assert from "node:assert/strict";
import { countChars, normalizeNewlines, validateBody, newClientMsgId, MAX_BODY_CHARS, HISTORY_WINDOW } from "../../web/chat-client.js";

const code = (text) => validateBody(text).code;

test("limits match chat-domain's limits.rs", () => {
  assert.equal(MAX_BODY_CHARS, 160);
  assert.equal(HISTORY_WINDOW, 300);
});

test("exactly 160 characters fit and 161 do not", () => {
  assert.equal(code("a".repeat(160)), null);
  assert.equal(code("a".repeat(161)), "body_too_long");
});

test("emoji count as one scalar value each", () => {
  const emoji = "😀".repeat(160);
  assert.equal(emoji.length, 320); // UTF-16 units
  assert.equal(countChars(emoji), 160);
  assert.equal(code(emoji), null);
  assert.equal(code("😀".repeat(161)), "body_too_long");
});

test("combining marks count on their own", () => {
  const eAcute = "e\u0301";
  assert.equal(code(eAcute.repeat(80)), null);
  assert.equal(code(`${eAcute.repeat(80)}x`), "body_too_long");
});

test("blank and empty bodies are refused (Rust's White_Space, not JS trim)", () => {
  for (const blank of ["", "   ", "\n\n", "\u3000", "\u00a0\u2028"]) assert.equal(code(blank), "body_empty", JSON.stringify(blank));
  // U+FEFF is whitespace to JS's trim() but not to Rust's char::is_whitespace: the server takes it.
  assert.equal(code("\ufeff"), null);
});

test("control characters other than newline are refused", () => {
  assert.equal(code("line one\nline two"), null);
  for (const bad of ["a\rb", "a\r\nb", "tab\there", "nul\0", "del\u007f", "c1\u0085x"]) assert.equal(code(bad), "body_invalid", JSON.stringify(bad));
});

test("CRLF and CR become LF before sending", () => {
  assert.equal(normalizeNewlines("a\r\nb\rc\nd"), "a\nb\nc\nd");
  assert.equal(code(normalizeNewlines("a\r\nb")), null);
});

test("client_msg_ids are 1..64 characters and unique", () => {
  const ids = new Set(Array.from({ length: 1000 }, newClientMsgId));
  assert.equal(ids.size, 1000);
  for (const id of ids) assert.ok(id.length >= 1 && id.length <= 64);
});
