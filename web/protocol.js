// matchchat protocol constants. GENERATED from crates/chat-domain (src/js.rs): do not edit.
// Regenerate: UPDATE_PROTOCOL_JS=1 cargo test -p chat-domain js::

/** A body holds at most this many Unicode scalar values (JS `[...s].length`). */
export const MAX_BODY_CHARS = 160;
/** The history window: a room keeps at most this many stored messages. */
export const HISTORY_WINDOW = 300;
/** Ids (user, room, client_msg_id) are at most this many characters. */
export const MAX_ID_CHARS = 64;
/** Largest frame the server accepts, in bytes (close 1009 beyond). */
export const MAX_FRAME_BYTES = 8192;

/** Codes of `error` frames. */
export const ERROR_CODES = Object.freeze({
  UNAUTHORIZED: "unauthorized",
  NOT_A_MEMBER: "not_a_member",
  UNKNOWN_ROOM: "unknown_room",
  BODY_EMPTY: "body_empty",
  BODY_TOO_LONG: "body_too_long",
  BODY_INVALID: "body_invalid",
  INVALID_FRAME: "invalid_frame",
  RATE_LIMITED: "rate_limited",
  ROOM_CLOSED: "room_closed",
  NOT_ALLOWED: "not_allowed",
  INTERNAL: "internal",
});

/** Codes of service API errors. */
export const API_ERROR_CODES = Object.freeze({
  UNAUTHORIZED: "unauthorized",
  RATE_LIMITED: "rate_limited",
  INVALID_JSON: "invalid_json",
  INVALID_MEMBERS: "invalid_members",
  INVALID_USER_ID: "invalid_user_id",
  INVALID_TTL: "invalid_ttl",
  UNKNOWN_ROOM: "unknown_room",
  NOT_FOUND: "not_found",
  METHOD_NOT_ALLOWED: "method_not_allowed",
  PAYLOAD_TOO_LARGE: "payload_too_large",
  ORIGIN_NOT_ALLOWED: "origin_not_allowed",
  INVALID_QUERY: "invalid_query",
  NOT_A_DEMO_USER: "not_a_demo_user",
  UNAVAILABLE: "unavailable",
  INTERNAL: "internal",
});

/** Why the server closes a WebSocket: close code and reason. */
export const CLOSE = Object.freeze({
  BYE: Object.freeze({ code: 1000, reason: "bye" }),
  SERVER_SHUTDOWN: Object.freeze({ code: 1001, reason: "server_shutdown" }),
  IDLE_TIMEOUT: Object.freeze({ code: 1001, reason: "idle_timeout" }),
  PROTOCOL_ERROR: Object.freeze({ code: 1002, reason: "protocol_error" }),
  UNAUTHORIZED: Object.freeze({ code: 1008, reason: "unauthorized" }),
  AUTH_TIMEOUT: Object.freeze({ code: 1008, reason: "auth_timeout" }),
  TOKEN_EXPIRED: Object.freeze({ code: 1008, reason: "token_expired" }),
  SLOW_CONSUMER: Object.freeze({ code: 1008, reason: "slow_consumer" }),
  FRAME_TOO_BIG: Object.freeze({ code: 1009, reason: "frame_too_big" }),
  INTERNAL: Object.freeze({ code: 1011, reason: "internal" }),
  ACCOUNT_DELETED: Object.freeze({ code: 1008, reason: "account_deleted" }),
  TOO_MANY_CONNECTIONS: Object.freeze({ code: 1013, reason: "too_many_connections" }),
  RESYNC: Object.freeze({ code: 1013, reason: "resync" }),
});
