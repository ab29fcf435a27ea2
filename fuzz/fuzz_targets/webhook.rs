//! Fuzz target: webhook signature verification and event parsing on an arbitrary header and
//! body, plus the property that a body signed with `signature_header` always verifies (within
//! the tolerance, under a rotated secret list) and stops verifying once tampered with or stale.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::pictify::parse_webhook;
use shared::secret::Secret;
use shared::signing::{DEFAULT_TOLERANCE, SignatureError, signature_header, verify};

const SECRET: &str = "whsec_fuzz";
/// Fixed clock, so a seed's `t=` can be inside the tolerance and reach the MAC comparison.
const NOW: i64 = 1_700_000_000;

/// Input layout: `<header>\n<body>`; with no newline there is no header at all.
fn split(data: &[u8]) -> (Option<String>, &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(at) => (
            Some(String::from_utf8_lossy(&data[..at]).into_owned()),
            &data[at + 1..],
        ),
        None => (None, data),
    }
}

fn check_arbitrary(header: Option<&str>, body: &[u8], secrets: &[Secret]) {
    if let Ok(timestamp) = verify(header, body, secrets, NOW, DEFAULT_TOLERANCE) {
        let tolerance = i64::try_from(DEFAULT_TOLERANCE.as_secs()).unwrap_or(i64::MAX);
        assert!(
            (timestamp - NOW).abs() <= tolerance,
            "accepted t={timestamp}"
        );
    }
    if let Ok(parsed) = parse_webhook(body) {
        let _ = parsed.event.name();
    }
}

fn check_signed(body: &[u8], secrets: &[Secret], skew_byte: u8) {
    let tolerance = i64::try_from(DEFAULT_TOLERANCE.as_secs()).unwrap_or(i64::MAX);
    // Any timestamp within the window, picked by the input, in either direction.
    let skew = (i64::from(skew_byte) * 2 * tolerance / 255) - tolerance;
    let signed_at = NOW + skew;
    let header = signature_header(SECRET, signed_at, body);
    assert_eq!(
        verify(Some(&header), body, secrets, NOW, DEFAULT_TOLERANCE),
        Ok(signed_at),
        "a freshly signed body was refused"
    );

    let stale = signature_header(SECRET, NOW - tolerance - 1, body);
    assert!(matches!(
        verify(Some(&stale), body, secrets, NOW, DEFAULT_TOLERANCE),
        Err(SignatureError::Stale { .. })
    ));

    let mut tampered = body.to_vec();
    match tampered.last_mut() {
        Some(last) => *last ^= 0x01,
        None => tampered.push(b' '),
    }
    assert_eq!(
        verify(Some(&header), &tampered, secrets, NOW, DEFAULT_TOLERANCE),
        Err(SignatureError::Mismatch),
        "a tampered body was accepted"
    );
}

fuzz_target!(|data: &[u8]| {
    // The old secret first: rotation must not hide a match on the second one.
    let secrets = [Secret::new("whsec_old"), Secret::new(SECRET)];
    let (header, body) = split(data);
    check_arbitrary(header.as_deref(), body, &secrets[1..]);
    check_signed(body, &secrets, data.first().copied().unwrap_or(0));
});
