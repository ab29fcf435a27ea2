//! Webhook signatures: `X-Pictify-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "{t}.{raw body}")>`.
//!
//! [`signature_header`] signs (the emulator, tests); [`verify`] checks a delivery (the webhook
//! function). Verification runs on the raw body bytes, before any JSON parsing, because
//! re-serialised JSON would not reproduce the signed bytes.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Pictify's documented replay window: 5 minutes, applied both to old and to future timestamps.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Why a delivery's signature was refused. Messages never contain a secret or a computed MAC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Pictify-Signature header")]
    Missing,
    #[error("malformed X-Pictify-Signature header: {reason}")]
    Malformed { reason: String },
    #[error("signature timestamp is {age_secs}s old, beyond the {tolerance_secs}s tolerance")]
    Stale { age_secs: u64, tolerance_secs: u64 },
    #[error(
        "signature timestamp is {ahead_secs}s in the future, beyond the {tolerance_secs}s tolerance"
    )]
    Future {
        ahead_secs: u64,
        tolerance_secs: u64,
    },
    #[error("no v1 signature matches the body under any configured secret")]
    Mismatch,
    #[error("no webhook signing secret is configured")]
    NoSecrets,
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    // Hmac accepts keys of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Lowercase hex HMAC-SHA256 of `"{timestamp}.{body}"`, keyed with the secret string as given
/// (including any `whsec_` prefix), as every official example does.
pub fn compute_v1(secret: &str, timestamp: i64, body: &[u8]) -> String {
    hex::encode(mac(secret, timestamp, body))
}

/// The full header value for a delivery signed at `timestamp`.
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", compute_v1(secret, timestamp, body))
}

/// Checks a delivery's `X-Pictify-Signature` against the raw body and returns its timestamp `t`.
///
/// Several `secrets` may be given so a secret can be rotated without dropping deliveries (old
/// and new are both accepted during the overlap); several `v1` entries are accepted, any match
/// passes; unknown schemes (e.g. a future `v2`) are ignored. Timestamps further than
/// `tolerance` from `now_unix`, in either direction, are refused to bound replays.
pub fn verify(
    header: Option<&str>,
    raw_body: &[u8],
    secrets: &[Secret],
    now_unix: i64,
    tolerance: Duration,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let parsed = parse_header(header)?;

    let tolerance_secs = tolerance.as_secs();
    let distance = now_unix.abs_diff(parsed.timestamp);
    if distance > tolerance_secs {
        return Err(if parsed.timestamp < now_unix {
            SignatureError::Stale {
                age_secs: distance,
                tolerance_secs,
            }
        } else {
            SignatureError::Future {
                ahead_secs: distance,
                tolerance_secs,
            }
        });
    }

    if secrets.is_empty() {
        return Err(SignatureError::NoSecrets);
    }
    let matched = secrets.iter().any(|secret| {
        let expected = mac(secret.expose(), parsed.timestamp, raw_body);
        parsed
            .signatures
            .iter()
            .any(|candidate| bool::from(candidate.ct_eq(&expected)))
    });
    if matched {
        Ok(parsed.timestamp)
    } else {
        Err(SignatureError::Mismatch)
    }
}

struct ParsedHeader {
    timestamp: i64,
    signatures: Vec<[u8; 32]>,
}

fn malformed(reason: impl Into<String>) -> SignatureError {
    SignatureError::Malformed {
        reason: reason.into(),
    }
}

fn parse_header(header: &str) -> Result<ParsedHeader, SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let (scheme, value) = part
            .split_once('=')
            .ok_or_else(|| malformed("an element has no `=`"))?;
        let (scheme, value) = (scheme.trim(), value.trim());
        match scheme {
            "t" => {
                if timestamp.is_some() {
                    return Err(malformed("`t` appears more than once"));
                }
                timestamp = Some(parse_timestamp(value)?);
            }
            "v1" => signatures.push(parse_v1(value)?),
            _ => {} // other schemes are for other verifiers
        }
    }
    let timestamp = timestamp.ok_or_else(|| malformed("no `t=` timestamp"))?;
    if signatures.is_empty() {
        return Err(malformed("no `v1=` signature"));
    }
    Ok(ParsedHeader {
        timestamp,
        signatures,
    })
}

fn parse_timestamp(value: &str) -> Result<i64, SignatureError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("`t` is not a number of seconds"));
    }
    value.parse().map_err(|_| malformed("`t` is out of range"))
}

fn parse_v1(value: &str) -> Result<[u8; 32], SignatureError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(value, &mut out)
        .map_err(|_| malformed("`v1` is not 64 hex characters"))?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: i64 = 1_706_515_260;
    const BODY: &[u8] = br#"{"event":"render.completed","data":{"url":"https://cdn/x.png"}}"#;

    fn secrets(values: &[&str]) -> Vec<Secret> {
        values.iter().map(|v| Secret::new(*v)).collect()
    }

    fn check(
        header: Option<&str>,
        body: &[u8],
        accepted: &[&str],
        now: i64,
    ) -> Result<i64, SignatureError> {
        verify(header, body, &secrets(accepted), now, DEFAULT_TOLERANCE)
    }

    #[test]
    fn known_answer_vector_matches_python_hmac() {
        // python3: hmac.new(b'whsec_test', b'1706515260.{"a":1}', hashlib.sha256).hexdigest()
        let expected = "cbd3ed10cc6d0a066680725c354a1155b543978fa44503edbf3c70e727882bd3";
        assert_eq!(compute_v1("whsec_test", NOW, br#"{"a":1}"#), expected);
        let header = format!("t={NOW},v1={expected}");
        assert_eq!(
            check(Some(&header), br#"{"a":1}"#, &["whsec_test"], NOW),
            Ok(NOW)
        );
    }

    #[test]
    fn accepts_and_refuses_as_expected() {
        use SignatureError::*;
        let good = signature_header("whsec_new", NOW, BODY);
        let h = Some(good.as_str());
        let new = &["whsec_new"][..];
        let cases = [
            ("valid", check(h, BODY, new, NOW), Ok(NOW)),
            ("tampered body", check(h, b"{}", new, NOW), Err(Mismatch)),
            (
                "wrong secret",
                check(h, BODY, &["whsec_x"], NOW),
                Err(Mismatch),
            ),
            (
                "prefix is part of the key",
                check(h, BODY, &["new"], NOW),
                Err(Mismatch),
            ),
            (
                "rotation",
                check(h, BODY, &["whsec_old", "whsec_new"], NOW),
                Ok(NOW),
            ),
            ("tolerance edge", check(h, BODY, new, NOW + 300), Ok(NOW)),
            ("missing header", check(None, BODY, new, NOW), Err(Missing)),
            ("no secrets", check(h, BODY, &[], NOW), Err(NoSecrets)),
            (
                "stale",
                check(h, BODY, new, NOW + 301),
                Err(Stale {
                    age_secs: 301,
                    tolerance_secs: 300,
                }),
            ),
            (
                "future",
                check(h, BODY, new, NOW - 301),
                Err(Future {
                    ahead_secs: 301,
                    tolerance_secs: 300,
                }),
            ),
        ];
        for (name, got, expected) in cases {
            assert_eq!(got, expected, "case: {name}");
        }
    }

    #[test]
    fn rotated_secrets_each_verify_their_own_deliveries() {
        let accepted = ["whsec_old", "whsec_new"];
        for secret in accepted {
            let header = signature_header(secret, NOW, BODY);
            assert_eq!(
                check(Some(&header), BODY, &accepted, NOW),
                Ok(NOW),
                "signed with {secret}"
            );
        }
    }

    #[test]
    fn any_of_several_v1_values_may_match() {
        let good = compute_v1("whsec_new", NOW, BODY);
        let other = compute_v1("whsec_unrelated", NOW, BODY);
        let header = format!("t={NOW}, v1={other} , v2=zzz, v1={good}");
        assert_eq!(check(Some(&header), BODY, &["whsec_new"], NOW), Ok(NOW));
    }

    #[test]
    fn malformed_headers_are_refused_without_checking_the_mac() {
        let v1 = compute_v1("whsec_new", NOW, BODY);
        let shapes = [
            String::new(),
            "garbage".to_string(),
            format!("v1={v1}"),
            format!("t=,v1={v1}"),
            format!("t=abc,v1={v1}"),
            format!("t=-5,v1={v1}"),
            format!("t=99999999999999999999,v1={v1}"),
            format!("t={NOW}"),
            format!("t={NOW},v1=not-hex"),
            format!("t={NOW},v1={}", &v1[..10]),
            format!("t={NOW},t={NOW},v1={v1}"),
        ];
        for shape in &shapes {
            let result = check(Some(shape), BODY, &["whsec_new"], NOW);
            assert!(
                matches!(result, Err(SignatureError::Malformed { .. })),
                "header {shape:?} gave {result:?}"
            );
        }
    }

    #[test]
    fn error_messages_never_contain_the_secret() {
        let header = signature_header("whsec_hidden", NOW, BODY);
        let err = check(Some(&header), b"x", &["whsec_hidden"], NOW).unwrap_err();
        assert!(!err.to_string().contains("whsec_hidden"));
    }
}
