//! Webhook signatures: `X-Pictify-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "{t}.{raw body}")>`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Lowercase hex HMAC-SHA256 of `"{timestamp}.{body}"`, keyed with the secret string as given
/// (including any `whsec_` prefix), as every official example does.
pub fn compute_v1(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // Hmac accepts keys of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The full header value for a delivery signed at `timestamp`.
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", compute_v1(secret, timestamp, body))
}
