//! The WebSocket Origin check, against cross-site WebSocket hijacking: a page on another site
//! must not be able to open a socket with the visitor's credentials.
//!
//! Allowed: a handshake with no Origin header (not a browser: browsers always send one), an
//! origin listed exactly in `CHAT_ALLOWED_ORIGINS`, and a same-origin page (the Origin's
//! host and port equal the request's Host).
//!
//! Refused before any of that: a request with more than one Origin header (which one would
//! the browser have meant?), and an Origin that is not visible ASCII, so unparseable, which
//! once counted as "no Origin" and was let through (issue 8, D4).

use actix_web::http::header::{HOST, HeaderMap, ORIGIN};

/// Why a handshake's Origin is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginRefusal {
    /// More than one Origin header.
    Several,
    /// An Origin header that is not visible ASCII.
    Unparseable,
    /// A well-formed Origin that is neither listed nor this server's own.
    NotAllowed,
}

pub struct OriginPolicy {
    allowed: Vec<String>,
}

impl OriginPolicy {
    pub fn new(allowed: Vec<String>) -> Self {
        Self {
            allowed: allowed
                .into_iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Checks a handshake's headers.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), OriginRefusal> {
        let mut origins = headers.get_all(ORIGIN);
        let origin = match (origins.next(), origins.next()) {
            (None, _) => None,
            (Some(_), Some(_)) => return Err(OriginRefusal::Several),
            (Some(value), None) => Some(value.to_str().map_err(|_| OriginRefusal::Unparseable)?),
        };
        let host = headers.get(HOST).and_then(|v| v.to_str().ok());
        if self.allows(origin, host) {
            Ok(())
        } else {
            Err(OriginRefusal::NotAllowed)
        }
    }

    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if self.allowed.contains(&origin) {
            return true;
        }
        let authority = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        match (authority, host) {
            (Some(authority), Some(host)) => authority == host.trim().to_ascii_lowercase(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let p = OriginPolicy::new(vec!["https://app.example".into()]);
        assert!(
            p.allows(None, Some("chat.example")),
            "non-browser clients send no Origin"
        );
        assert!(p.allows(Some("https://app.example"), Some("chat.example")));
        assert!(p.allows(Some("HTTPS://APP.EXAMPLE/"), Some("chat.example")));
        assert!(
            p.allows(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")),
            "same origin"
        );
        assert!(!p.allows(Some("https://evil.example"), Some("chat.example")));
        assert!(!p.allows(Some("https://app.example.evil"), Some("chat.example")));
        assert!(!p.allows(Some("null"), Some("chat.example")));
        assert!(!p.allows(Some("http://127.0.0.1:9999"), Some("127.0.0.1:8080")));
    }

    #[test]
    fn several_or_unparseable_origins_are_refused() {
        use actix_web::http::header::HeaderValue;
        let p = OriginPolicy::new(vec!["https://app.example".into()]);
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("chat.example"));
        assert_eq!(p.check(&headers), Ok(()), "no Origin: not a browser");
        let bad = HeaderValue::from_bytes(b"https://evil.example\xe9").unwrap();
        headers.insert(ORIGIN, bad);
        assert_eq!(p.check(&headers), Err(OriginRefusal::Unparseable));
        headers.insert(ORIGIN, HeaderValue::from_static("https://app.example"));
        assert_eq!(p.check(&headers), Ok(()));
        headers.append(ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert_eq!(p.check(&headers), Err(OriginRefusal::Several));
    }
}
