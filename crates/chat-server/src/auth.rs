//! Who is calling: the host app (service key) or a user (HS256 JWT).
//!
//! User tokens are plain HS256 JWTs with `sub` (the user id) and `exp`, so a host app may
//! mint them itself with the shared secret instead of calling `POST /api/tokens`.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use chat_domain::{Timestamp, UserId};

/// Longest lifetime `POST /api/tokens` issues (7 days).
pub const MAX_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;
/// Lifetime when the request names none (1 hour).
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
}

/// A verified user token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: UserId,
    /// Unix seconds at which the token stops being valid.
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("token invalid")]
    Invalid,
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
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is exact: the connection is closed at that second, so accepting a token past
        // it would contradict that.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn issue(
        &self,
        user: &UserId,
        now: Timestamp,
        ttl_secs: u64,
    ) -> Result<(String, i64), AuthError> {
        let iat = now.unix_seconds();
        let exp = iat.saturating_add(i64::try_from(ttl_secs).map_err(|_| AuthError::Signing)?);
        let claims = Claims {
            sub: user.to_string(),
            exp,
            iat: Some(iat),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| AuthError::Signing)?;
        Ok((token, exp))
    }

    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let data =
            decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid,
                }
            })?;
        let user = UserId::new(data.claims.sub).map_err(|_| AuthError::BadSubject)?;
        Ok(Verified {
            user,
            expires_at: data.claims.exp,
        })
    }
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

    fn keys() -> TokenKeys {
        TokenKeys::new(b"a test secret of enough length")
    }

    fn now() -> Timestamp {
        Timestamp::from_datetime(time::OffsetDateTime::now_utc())
    }

    fn alice() -> UserId {
        UserId::new("alice").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn issued_tokens_verify() {
        let (token, exp) = keys()
            .issue(&alice(), now(), 60)
            .unwrap_or_else(|e| panic!("{e}"));
        let v = keys().verify(&token).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.user, alice());
        assert_eq!(v.expires_at, exp);
    }

    #[test]
    fn expired_forged_and_malformed_tokens_are_refused() {
        let past = Timestamp::from_unix_micros(now().unix_micros() - 7_200_000_000)
            .unwrap_or_else(|e| panic!("{e}"));
        let (expired, _) = keys()
            .issue(&alice(), past, 60)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys().verify(&expired), Err(AuthError::Expired));
        let (forged, _) = TokenKeys::new(b"another secret entirely!!")
            .issue(&alice(), now(), 60)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys().verify(&forged), Err(AuthError::Invalid));
        assert_eq!(keys().verify("not.a.jwt"), Err(AuthError::Invalid));
    }

    #[test]
    fn a_token_for_an_invalid_user_id_is_refused() {
        let claims = Claims {
            sub: "no spaces allowed".into(),
            exp: now().unix_seconds() + 60,
            iat: None,
        };
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"a test secret of enough length"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys().verify(&token), Err(AuthError::BadSubject));
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
