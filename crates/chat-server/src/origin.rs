//! The WebSocket Origin check, against cross-site WebSocket hijacking: a page on another site
//! must not be able to open a socket with the visitor's credentials.
//!
//! Allowed: a handshake with no Origin header (not a browser: browsers always send one), an
//! origin listed exactly in `CHAT_ALLOWED_ORIGINS`, and a same-origin page (the Origin's
//! host and port equal the request's Host).

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
}
