//! `X-Matchchat-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`: Stripe's
//! scheme. The time is inside what is signed, so a receiver that refuses old signatures
//! (docs/host-app.md suggests 5 minutes) is safe from replays; the secret is
//! `CHAT_WEBHOOK_SECRET`. Each attempt is signed anew, with the time of that attempt.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header's name.
pub const HEADER: &str = "X-Matchchat-Signature";

/// The header's value for `body` sent at `unix_seconds`.
pub fn sign(secret: &[u8], unix_seconds: i64, body: &str) -> String {
    format!(
        "t={unix_seconds},v1={}",
        hex(&mac(secret, unix_seconds, body))
    )
}

/// HMAC-SHA256 of `"{t}.{body}"`.
fn mac(secret: &[u8], unix_seconds: i64, body: &str) -> [u8; 32] {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_signs_t_dot_body() {
        // Checked against Python's hmac module (the docs' receiver example):
        // hmac.new(secret, b'1795000000.{"type":"message.unseen"}', hashlib.sha256).hexdigest()
        assert_eq!(
            sign(
                b"whsec-test-0123456789abcdef0123456789",
                1_795_000_000,
                r#"{"type":"message.unseen"}"#
            ),
            "t=1795000000,v1=c2db4d41ef57eb7d0ac8f6316681c94cd9ddd1df8a3f141b7b74e7ae24247eb4"
        );
    }

    #[test]
    fn rfc_4231_case_2() {
        assert_eq!(
            hex(&Hmac::<Sha256>::new_from_slice(b"Jefe")
                .map(|mut mac| {
                    mac.update(b"what do ya want for nothing?");
                    mac.finalize().into_bytes()
                })
                .unwrap_or_default()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
