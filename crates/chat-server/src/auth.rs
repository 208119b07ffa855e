//! Who is calling: the host app (service key) or a user (HS256 JWT).
//!
//! User tokens are plain HS256 JWTs with `sub` (the user id) and `exp`, so a host app may
//! mint them itself with the shared secret instead of calling `POST /api/tokens`.
//!
//! Checked as strictly as RFC 7519 allows (issue 8, D5): `exp` and `nbf` with zero leeway; a
//! header with `crit` is refused (we understand no extension, and RFC 7515 §4.1.11 says a
//! recipient that does not must refuse the token); and a token may not live longer than
//! `CHAT_MAX_TOKEN_TTL_SECS` (`exp - iat`, or `exp - now` without `iat`), so a self-minted
//! token with `exp = 2^63-1` does not last for ever.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use chat_domain::{Timestamp, UserId};

/// Longest lifetime a token may have, by default (7 days): `CHAT_MAX_TOKEN_TTL_SECS`.
pub const MAX_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;
/// Lifetime when the request names none (1 hour).
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// `false`: this token's connections hide the user's presence (protocol 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<bool>,
}

/// A verified user token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: UserId,
    /// Unix seconds at which the token stops being valid.
    pub expires_at: i64,
    /// The token's `presence` claim was `false`: the user appears offline.
    pub hide_presence: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("token invalid")]
    Invalid,
    #[error("token not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("token has a crit header, which this server does not support")]
    CriticalHeader,
    #[error("token lives longer than this server allows")]
    TooLong,
    #[error("token subject is not a valid user id")]
    BadSubject,
    #[error("could not sign token")]
    Signing,
}

/// Signs and checks user tokens with the shared HS256 secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    max_ttl_secs: i64,
}

impl TokenKeys {
    pub fn new(secret: &[u8], max_ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is exact: the connection is closed at that second, so accepting a token past
        // it would contradict that. `nbf` gets the same zero leeway.
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            max_ttl_secs: i64::try_from(max_ttl_secs).unwrap_or(i64::MAX),
        }
    }

    pub fn issue(
        &self,
        user: &UserId,
        now: Timestamp,
        ttl_secs: u64,
    ) -> Result<(String, i64), AuthError> {
        self.issue_with(user, now, ttl_secs, None)
    }

    /// [`TokenKeys::issue`] with the `presence` claim (`Some(false)` hides presence).
    pub fn issue_with(
        &self,
        user: &UserId,
        now: Timestamp,
        ttl_secs: u64,
        presence: Option<bool>,
    ) -> Result<(String, i64), AuthError> {
        let iat = now.unix_seconds();
        let exp = iat.saturating_add(i64::try_from(ttl_secs).map_err(|_| AuthError::Signing)?);
        let claims = Claims {
            sub: user.to_string(),
            exp,
            iat: Some(iat),
            nbf: None,
            presence,
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| AuthError::Signing)?;
        Ok((token, exp))
    }

    pub fn verify(&self, token: &str, now: Timestamp) -> Result<Verified, AuthError> {
        let data =
            decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    _ => AuthError::Invalid,
                }
            })?;
        if data.header.crit.is_some() {
            return Err(AuthError::CriticalHeader);
        }
        // JSON text is UTF-8 (RFC 8259), but serde skips the claims it does not read without
        // checking that, and jsonwebtoken treats an `aud` it cannot read as absent: a signed
        // token with `"aud":["a","\xEC"]` passed where any audience is refused (found by the
        // `token` fuzz target, fuzz/findings/token-aud-not-utf8). Checked after the signature.
        if !parts_are_utf8(token) {
            return Err(AuthError::Invalid);
        }
        let from = data.claims.iat.unwrap_or_else(|| now.unix_seconds());
        if i128::from(data.claims.exp) - i128::from(from) > i128::from(self.max_ttl_secs) {
            return Err(AuthError::TooLong);
        }
        let user = UserId::new(data.claims.sub).map_err(|_| AuthError::BadSubject)?;
        Ok(Verified {
            user,
            expires_at: data.claims.exp,
            hide_presence: data.claims.presence == Some(false),
        })
    }
}

/// Whether a token's header and claims decode to UTF-8 text.
fn parts_are_utf8(token: &str) -> bool {
    use base64::Engine;
    token.split('.').take(2).all(|part| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .is_ok_and(|bytes| std::str::from_utf8(&bytes).is_ok())
    })
}

/// The host app's key, compared in constant time.
#[derive(Clone)]
pub struct ServiceKey(Vec<u8>);

impl ServiceKey {
    pub fn new(key: &str) -> Self {
        Self(key.as_bytes().to_vec())
    }

    /// Checks an `Authorization` header value of the form `Bearer KEY`.
    pub fn check_header(&self, header: Option<&str>) -> bool {
        let Some(presented) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        !self.0.is_empty() && bool::from(presented.trim().as_bytes().ct_eq(&self.0))
    }
}

/// A random secret for demo mode (256 bits from the OS through UUID v4's generator).
pub fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a test secret of enough length, 32+";

    fn keys() -> TokenKeys {
        TokenKeys::new(SECRET, MAX_TOKEN_TTL_SECS)
    }

    fn mint(header: Header, claims: &Claims) -> String {
        encode(&header, claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn claims(exp: i64, iat: Option<i64>, nbf: Option<i64>) -> Claims {
        Claims {
            sub: "alice".into(),
            exp,
            iat,
            nbf,
            presence: None,
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_datetime(time::OffsetDateTime::now_utc())
    }

    fn alice() -> UserId {
        UserId::new("alice").unwrap()
    }

    #[test]
    fn issued_tokens_verify() {
        let (token, exp) = keys().issue(&alice(), now(), 60).unwrap();
        let v = keys().verify(&token, now()).unwrap();
        assert_eq!(v.user, alice());
        assert_eq!(v.expires_at, exp);
    }

    #[test]
    fn expired_forged_and_malformed_tokens_are_refused() {
        let past = Timestamp::from_unix_micros(now().unix_micros() - 7_200_000_000).unwrap();
        let (expired, _) = keys().issue(&alice(), past, 60).unwrap();
        assert_eq!(keys().verify(&expired, now()), Err(AuthError::Expired));
        let (forged, _) = TokenKeys::new(
            b"another secret entirely, also 32 bytes",
            MAX_TOKEN_TTL_SECS,
        )
        .issue(&alice(), now(), 60)
        .unwrap();
        assert_eq!(keys().verify(&forged, now()), Err(AuthError::Invalid));
        assert_eq!(keys().verify("not.a.jwt", now()), Err(AuthError::Invalid));
    }

    #[test]
    fn a_token_for_an_invalid_user_id_is_refused() {
        let claims = Claims {
            sub: "no spaces allowed".into(),
            ..claims(now().unix_seconds() + 60, None, None)
        };
        let token = mint(Header::new(Algorithm::HS256), &claims);
        assert_eq!(keys().verify(&token, now()), Err(AuthError::BadSubject));
    }

    #[test]
    fn nbf_in_the_future_is_refused_with_no_leeway() {
        let t = now().unix_seconds();
        let later = mint(
            Header::new(Algorithm::HS256),
            &claims(t + 60, None, Some(t + 5)),
        );
        assert_eq!(keys().verify(&later, now()), Err(AuthError::NotYetValid));
        let started = mint(
            Header::new(Algorithm::HS256),
            &claims(t + 60, None, Some(t - 1)),
        );
        assert!(keys().verify(&started, now()).is_ok());
    }

    /// A token signed with our secret over raw claims bytes.
    fn mint_raw(claims: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let message = format!(
            "{}.{}",
            b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64.encode(claims)
        );
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{message}.{signature}")
    }

    #[test]
    fn claims_that_are_not_utf8_are_refused() {
        let t = now().unix_seconds() + 60;
        let plain = format!(r#"{{"sub":"alice","exp":{t}}}"#);
        assert!(keys().verify(&mint_raw(plain.as_bytes()), now()).is_ok());
        let named = format!(r#"{{"sub":"alice","exp":{t},"aud":["a","b"]}}"#);
        assert_eq!(
            keys().verify(&mint_raw(named.as_bytes()), now()),
            Err(AuthError::Invalid)
        );
        // The fuzz target's finding: an audience jsonwebtoken cannot read was taken as none.
        let mut not_utf8 = format!(r#"{{"sub":"alice","exp":{t},"aud":["a",""#).into_bytes();
        not_utf8.push(0xEC);
        not_utf8.extend_from_slice(br#""]}"#);
        assert_eq!(
            keys().verify(&mint_raw(&not_utf8), now()),
            Err(AuthError::Invalid)
        );
        // Anywhere in the claims, not only in `aud`.
        let mut other = format!(r#"{{"sub":"alice","exp":{t},"iss":""#).into_bytes();
        other.push(0xEC);
        other.extend_from_slice(br#""}"#);
        assert_eq!(
            keys().verify(&mint_raw(&other), now()),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn a_crit_header_is_refused() {
        let t = now().unix_seconds();
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp".into()]);
        let token = mint(header, &claims(t + 60, None, None));
        assert_eq!(keys().verify(&token, now()), Err(AuthError::CriticalHeader));
    }

    #[test]
    fn tokens_may_not_outlive_the_maximum_ttl() {
        let t = now().unix_seconds();
        let forever = mint(Header::new(Algorithm::HS256), &claims(i64::MAX, None, None));
        assert_eq!(keys().verify(&forever, now()), Err(AuthError::TooLong));
        let long = mint(
            Header::new(Algorithm::HS256),
            &claims(t + 3600, Some(t), None),
        );
        let strict = TokenKeys::new(SECRET, 600);
        assert_eq!(strict.verify(&long, now()), Err(AuthError::TooLong));
        assert!(keys().verify(&long, now()).is_ok());
        // Without iat the lifetime left counts.
        let left = mint(Header::new(Algorithm::HS256), &claims(t + 300, None, None));
        assert!(strict.verify(&left, now()).is_ok());
    }

    #[test]
    fn service_key_needs_the_exact_bearer_value() {
        let key = ServiceKey::new("s3cret");
        assert!(key.check_header(Some("Bearer s3cret")));
        assert!(!key.check_header(Some("Bearer s3cre")));
        assert!(!key.check_header(Some("s3cret")));
        assert!(!key.check_header(None));
        assert!(!ServiceKey::new("").check_header(Some("Bearer ")));
    }
}
