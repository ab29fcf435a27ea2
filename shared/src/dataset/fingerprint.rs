//! Canonical fingerprint of (template id, variables): how webhooks, which echo only the
//! variables, are matched back to the rows that produced them.

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

/// Lowercase hex of the first 128 bits of SHA-256 over the canonical JSON of
/// `[template_id, variables]`: object keys sorted recursively, no whitespace.
///
/// Integral floats are written as integers (`1.0` → `1`) because the variables come back
/// through a JavaScript service, which prints them that way.
pub fn fingerprint(template_id: &str, variables: &Map<String, Value>) -> String {
    let mut canonical = Vec::with_capacity(256);
    canonical.push(b'[');
    write_string(&mut canonical, template_id);
    canonical.push(b',');
    write_object(&mut canonical, variables);
    canonical.push(b']');
    let digest = Sha256::digest(&canonical);
    hex::encode(&digest[..16])
}

/// Recursion depth is bounded by the parser that built the value (serde_json stops at 128).
fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(canonical_number(n).as_bytes()),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    // Sorted here rather than trusting Map's order: serde_json's `preserve_order` feature,
    // switched on by any crate in the build, would make it insertion order.
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, key);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

fn canonical_number(n: &Number) -> String {
    const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
    match n.as_f64() {
        Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < EXACT_INTEGER_LIMIT => {
            format!("{}", f as i64)
        }
        _ => n.to_string(),
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    out.push(b'"');
}
