//! Standard Webhooks signatures (<https://www.standardwebhooks.com>, "Signature scheme"): each
//! attempt carries `webhook-id`, `webhook-timestamp` (seconds since the epoch) and
//! `webhook-signature: v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, keyed with the
//! base64-decoded part of the subscription's `whsec_…` secret.
//!
//! Written on `hmac` and `sha2` (already dependencies): the `standardwebhooks` crate would bring a
//! third `base64` and `time` for these few lines. The tests check the specification's test vector,
//! and `tests/notifications.rs` verifies deliveries with that crate.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header naming the message; the same on every attempt of one delivery (receivers deduplicate by it).
pub const HEADER_ID: &str = "webhook-id";
/// Header with the attempt's time, in seconds since the Unix epoch.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header with the signature(s), `v1,<base64>`.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// The `webhook-signature` value of `body` sent as message `id` at `timestamp` (seconds).
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC-SHA256 accepts keys of every length")
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::WebhookSecret;

    #[test]
    fn the_specifications_test_vector() {
        // The Standard Webhooks specification's example (and its reference libraries' tests).
        let secret =
            WebhookSecret::parse("secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signature(
                secret.key(),
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let secret =
            WebhookSecret::parse("secret", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            signature(
                secret.key(),
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                r#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }
}
