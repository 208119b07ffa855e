//! User tokens through the server's verification (`TokenKeys::verify`, chat-server's
//! auth.rs). The first byte picks how the input becomes a token:
//!
//! - `0x00`: a *structured* token: header and claims built from typed arbitrary values
//!   (alg, typ, kid, crit; sub, exp, iat, nbf, aud, extra claims; times mostly relative to
//!   now) and signed with the target's secret (or a wrong one, or tampered), so the fuzzer
//!   gets past the signature and exercises the claims rules. The result must be exactly the
//!   one an independent model of the rules predicts.
//! - `0x01`: raw header and claims bytes (split at the first `0x00`), signed with the
//!   target's secret: whatever JSON (or not) the fuzzer makes.
//! - anything else: the input itself is the token text.
//!
//! Whatever the mode, a token that verifies must satisfy every rule when decoded
//! independently (signature, alg, no crit, exp not passed, nbf reached, lifetime, sub).

#![no_main]

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chat_domain::{Timestamp, UserId};
use chat_server::fuzzing::{AuthError, MAX_TOKEN_TTL_SECS, TokenKeys, Verified};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

const SECRET: &[u8] = b"matchchat fuzzing secret, 32 bytes or more";
const WRONG_SECRET: &[u8] = b"matchchat fuzzing secret, 32 bytes or more!";

static KEYS: LazyLock<TokenKeys> = LazyLock::new(|| TokenKeys::new(SECRET, MAX_TOKEN_TTL_SECS));

fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn timestamp(secs: i64) -> Timestamp {
    Timestamp::from_unix_micros(secs * 1_000_000).expect("now is a valid timestamp")
}

fn sign(header: &[u8], claims: &[u8], secret: &[u8]) -> String {
    let message = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .expect("HS256 signs anything");
    format!("{message}.{signature}")
}

/// A claim's value: mostly a time relative to now, so tokens can be valid.
#[derive(Debug, Arbitrary)]
enum Time {
    Rel(i32),
    Abs(i64),
    Unsigned(u64),
    Float(i32),
    Text(String),
    Null,
}

impl Time {
    fn json(&self, now: i64) -> Value {
        match self {
            Self::Rel(n) => json!(now + i64::from(*n)),
            Self::Abs(n) => json!(n),
            Self::Unsigned(n) => json!(n),
            Self::Float(n) => json!(f64::from(*n) + 0.5),
            Self::Text(s) => json!(s),
            Self::Null => Value::Null,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Sub {
    Known(u8),
    Text(String),
    Number(i64),
    Null,
}

const USERS: &[&str] = &[
    "alice",
    "bob",
    "user:42@host.example-1_x",
    "a",
    "0123456789012345678901234567890123456789012345678901234567890123",
    "",
    "no spaces",
    "é",
    "01234567890123456789012345678901234567890123456789012345678901234",
];

/// The `presence` claim (protocol 1.1: `false` hides the user's presence).
#[derive(Debug, Arbitrary)]
enum PresenceClaim {
    Shown,
    Hidden,
    Null,
    Number(i64),
    Text(String),
}

#[derive(Debug, Arbitrary)]
enum Aud {
    Text(String),
    List(Vec<String>),
    Number(i64),
    Null,
}

#[derive(Debug, Arbitrary)]
enum Alg {
    Hs256,
    Known(u8),
    Text(String),
    Missing,
}

const ALGS: &[&str] = &["HS384", "HS512", "RS256", "ES256", "EdDSA", "none", "hs256"];

#[derive(Debug, Arbitrary)]
enum Signer {
    Right,
    Wrong,
    Tampered,
}

#[derive(Debug, Arbitrary)]
enum Ttl {
    Default,
    Secs(u32),
    Any(u64),
}

#[derive(Debug, Arbitrary)]
struct Structured {
    alg: Alg,
    typ: Option<String>,
    kid: Option<String>,
    crit: Option<Vec<String>>,
    sub: Option<Sub>,
    exp: Option<Time>,
    iat: Option<Time>,
    nbf: Option<Time>,
    aud: Option<Aud>,
    presence: Option<PresenceClaim>,
    extra: Vec<(String, i64)>,
    signer: Signer,
    max_ttl: Ttl,
}

const CLAIM_NAMES: &[&str] = &["sub", "exp", "iat", "nbf", "aud", "iss", "presence"];

impl Structured {
    fn header(&self) -> Value {
        let mut h = Map::new();
        let alg = match &self.alg {
            Alg::Hs256 => Some("HS256"),
            Alg::Known(i) => Some(ALGS[*i as usize % ALGS.len()]),
            Alg::Text(s) => Some(s.as_str()),
            Alg::Missing => None,
        };
        if let Some(alg) = alg {
            h.insert("alg".into(), json!(alg));
        }
        if let Some(typ) = &self.typ {
            h.insert("typ".into(), json!(typ));
        }
        if let Some(kid) = &self.kid {
            h.insert("kid".into(), json!(kid));
        }
        if let Some(crit) = &self.crit {
            h.insert("crit".into(), json!(crit));
        }
        Value::Object(h)
    }

    fn claims(&self, now: i64) -> Map<String, Value> {
        let mut c = Map::new();
        for (k, v) in &self.extra {
            if !CLAIM_NAMES.contains(&k.as_str()) {
                c.insert(k.clone(), json!(v));
            }
        }
        if let Some(sub) = &self.sub {
            let v = match sub {
                Sub::Known(i) => json!(USERS[*i as usize % USERS.len()]),
                Sub::Text(s) => json!(s),
                Sub::Number(n) => json!(n),
                Sub::Null => Value::Null,
            };
            c.insert("sub".into(), v);
        }
        for (name, time) in [("exp", &self.exp), ("iat", &self.iat), ("nbf", &self.nbf)] {
            if let Some(t) = time {
                c.insert(name.into(), t.json(now));
            }
        }
        if let Some(aud) = &self.aud {
            let v = match aud {
                Aud::Text(s) => json!(s),
                Aud::List(l) => json!(l),
                Aud::Number(n) => json!(n),
                Aud::Null => Value::Null,
            };
            c.insert("aud".into(), v);
        }
        if let Some(presence) = &self.presence {
            let v = match presence {
                PresenceClaim::Shown => json!(true),
                PresenceClaim::Hidden => json!(false),
                PresenceClaim::Null => Value::Null,
                PresenceClaim::Number(n) => json!(n),
                PresenceClaim::Text(t) => json!(t),
            };
            c.insert("presence".into(), v);
        }
        c
    }

    fn max_ttl(&self) -> u64 {
        match self.max_ttl {
            Ttl::Default => MAX_TOKEN_TTL_SECS,
            Ttl::Secs(s) => u64::from(s),
            Ttl::Any(s) => s,
        }
    }
}

/// `[A-Za-z0-9_.:@-]{1,64}`, spelled out.
fn valid_user(s: &str) -> bool {
    (1..=64).contains(&s.chars().count())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b))
}

/// What verification must answer, from the rules as auth.rs and RFC 7519 state them, in the
/// order they are applied: format and signature, claim types, `exp` (zero leeway), `nbf`,
/// `aud` (this server names no audience, so a token that names one is not for it), `crit`,
/// lifetime, `sub`. `now_jwt` is the clock the JWT library reads; `now` is the one passed in.
fn model(
    s: &Structured,
    c: &Map<String, Value>,
    now_jwt: i64,
    now: i64,
) -> Result<Verified, AuthError> {
    let alg_ok = match &s.alg {
        Alg::Hs256 => true,
        Alg::Text(t) => t == "HS256",
        Alg::Known(_) | Alg::Missing => false,
    };
    if !alg_ok || !matches!(s.signer, Signer::Right) {
        return Err(AuthError::Invalid);
    }
    // The claims as the server's `Claims` reads them (i64 times).
    let Some(Value::String(sub)) = c.get("sub") else {
        return Err(AuthError::Invalid);
    };
    let Some(exp) = c.get("exp").and_then(Value::as_i64) else {
        return Err(AuthError::Invalid);
    };
    let iat = match c.get("iat") {
        Some(v) if !v.is_null() => Some(v.as_i64().ok_or(AuthError::Invalid)?),
        _ => None,
    };
    // `presence` is a boolean, or absent or null (shown).
    let hide_presence = match c.get("presence") {
        None | Some(Value::Null) | Some(Value::Bool(true)) => false,
        Some(Value::Bool(false)) => true,
        Some(_) => return Err(AuthError::Invalid),
    };
    // The library's checks read `exp` and `nbf` as unsigned numbers; an `nbf` that is
    // present but not one (null included) is refused, not ignored.
    if exp < 0 {
        return Err(AuthError::Invalid);
    }
    let nbf = match c.get("nbf") {
        None => None,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Some(n),
            _ => return Err(AuthError::Invalid),
        },
    };
    if exp < now_jwt {
        return Err(AuthError::Expired);
    }
    if nbf.is_some_and(|n| n > now_jwt) {
        return Err(AuthError::NotYetValid);
    }
    let aud_names_someone = match c.get("aud") {
        Some(Value::String(_)) => true,
        Some(Value::Array(a)) => a.iter().all(Value::is_string),
        _ => false,
    };
    if aud_names_someone {
        return Err(AuthError::Invalid);
    }
    if s.crit.is_some() {
        return Err(AuthError::CriticalHeader);
    }
    let max_ttl = i128::from(i64::try_from(s.max_ttl()).unwrap_or(i64::MAX));
    if i128::from(exp) - i128::from(iat.unwrap_or(now)) > max_ttl {
        return Err(AuthError::TooLong);
    }
    if !valid_user(sub) {
        return Err(AuthError::BadSubject);
    }
    Ok(Verified {
        user: UserId::new(sub.as_str()).expect("checked above"),
        expires_at: exp,
        hide_presence,
    })
}

/// The members of a header or claims object the checks below read; the others are skipped
/// unread. A member present as `null` stays `Some(Null)`, as `Value::get` would give it.
#[derive(serde::Deserialize)]
struct Read {
    #[serde(default, deserialize_with = "present")]
    alg: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    crit: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    sub: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    exp: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    iat: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    presence: Option<Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    <Value as serde::Deserialize>::deserialize(d).map(Some)
}

impl Read {
    fn into_value(self) -> Value {
        let mut map = Map::new();
        for (key, value) in [
            ("alg", self.alg),
            ("crit", self.crit),
            ("sub", self.sub),
            ("exp", self.exp),
            ("nbf", self.nbf),
            ("iat", self.iat),
            ("presence", self.presence),
        ] {
            if let Some(value) = value {
                map.insert(key.to_owned(), value);
            }
        }
        Value::Object(map)
    }
}

/// A verified token, decoded without the library, keeps every rule.
fn check_verified(token: &str, v: &Verified, max_ttl: u64, before: i64, after: i64) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let message = format!("{}.{}", parts[0], parts[1]);
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .expect("HS256 signs anything");
    assert_eq!(signature, parts[2], "signed with our secret");
    let decode = |part: &str| -> Value {
        let bytes = B64.decode(part).expect("a verified part is base64url");
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(value) => value,
            // JSON allows numbers no f64 holds, which `Value` refuses; the server skips the
            // members it does not read without converting them, and so does this oracle
            // (found by this target: an unknown claim of 300 digits, signed, verified).
            Err(e) if e.to_string().starts_with("number out of range") => {
                serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
                    .expect("a verified part is JSON");
                let read: Read =
                    serde_json::from_slice(&bytes).expect("the members read are in range");
                read.into_value()
            }
            Err(e) => panic!("a verified part is JSON: {e}"),
        }
    };
    let header = decode(parts[0]);
    assert_eq!(header.get("alg"), Some(&json!("HS256")));
    assert!(header.get("crit").is_none_or(Value::is_null), "{header}");
    let claims = decode(parts[1]);
    assert_eq!(claims.get("sub"), Some(&json!(v.user.as_str())));
    assert!(valid_user(v.user.as_str()));
    assert_eq!(
        claims.get("exp").and_then(Value::as_i64),
        Some(v.expires_at)
    );
    assert!(v.expires_at >= before, "expired token accepted: {claims}");
    assert_eq!(
        v.hide_presence,
        claims.get("presence") == Some(&json!(false)),
        "{claims}"
    );
    if let Some(nbf) = claims.get("nbf") {
        assert!(
            nbf.as_i64().is_some_and(|n| (0..=after).contains(&n)),
            "{claims}"
        );
    }
    let from = match claims.get("iat").filter(|n| !n.is_null()) {
        Some(iat) => iat.as_i64().expect("iat is a number"),
        None => before,
    };
    let max_ttl = i128::from(i64::try_from(max_ttl).unwrap_or(i64::MAX));
    assert!(
        i128::from(v.expires_at) - i128::from(from) <= max_ttl,
        "too long: {claims}"
    );
}

fuzz_target!(|data: &[u8]| {
    let before = unix_now();
    let now = timestamp(before);
    match data.split_first() {
        Some((0, rest)) => {
            let Ok(s) = Structured::arbitrary_take_rest(Unstructured::new(rest)) else {
                return;
            };
            let header = serde_json::to_vec(&s.header()).expect("JSON");
            let claims = s.claims(before);
            let claims_json = serde_json::to_vec(&claims).expect("JSON");
            let mut token = match s.signer {
                Signer::Wrong => sign(&header, &claims_json, WRONG_SECRET),
                _ => sign(&header, &claims_json, SECRET),
            };
            if matches!(s.signer, Signer::Tampered) {
                // Change the signature's first character: its first six bits.
                let at = token.rfind('.').expect("three parts") + 1;
                let c = if token[at..].starts_with('A') {
                    "B"
                } else {
                    "A"
                };
                token.replace_range(at..at + 1, c);
            }
            let keys = TokenKeys::new(SECRET, s.max_ttl());
            let got = keys.verify(&token, now);
            let after = unix_now();
            let first = model(&s, &claims, before, before);
            let second = model(&s, &claims, after, before);
            assert!(
                got == first || got == second,
                "got {got:?}, expected {first:?}\n{s:?}\n{token}"
            );
            if let Ok(v) = &got {
                check_verified(&token, v, s.max_ttl(), before, after);
            }
        }
        Some((1, rest)) => {
            let (header, claims) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            let token = sign(header, claims, SECRET);
            if let Ok(v) = KEYS.verify(&token, now) {
                check_verified(&token, &v, MAX_TOKEN_TTL_SECS, before, unix_now());
            }
        }
        _ => {
            let token = String::from_utf8_lossy(data);
            if let Ok(v) = KEYS.verify(&token, now) {
                check_verified(&token, &v, MAX_TOKEN_TTL_SECS, before, unix_now());
            }
        }
    }
});
