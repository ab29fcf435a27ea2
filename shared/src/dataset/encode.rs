//! Ingest's CSV fast path: a valid record's variables written as JSON straight from the record's
//! bytes, with no map or `String` per cell. The work per byte is the CSV parse plus an escaping
//! copy; the column names are escaped once, when the header is read.
//!
//! The output is the bytes serde_json writes for the `Row.variables` map the same record reads to
//! (keys in `serde_json::Map` order, that is sorted; empty cells `null`), so a chunk is the same
//! whichever path cut it. Anything unusual (a ragged record, an oversized or non-UTF-8 cell, an
//! empty required cell) is left to the exact path, which names the rejection: those rules live
//! in one place.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use super::RowRules;
use super::csv::CsvSource;

/// How a record of one header becomes its variables' JSON.
pub(super) struct CsvEncoder {
    /// Every column, in the order its variable is written. `prefix` is the escaped `"name":`
    /// (with the comma before it past the first); `None` for a column a mapped name shadows,
    /// which is checked like any cell but not written.
    cells: Vec<(usize, Option<String>)>,
    /// Columns that must not be blank.
    required: Vec<usize>,
    max_field_bytes: usize,
}

impl CsvEncoder {
    /// `columns` are unique (the header was checked) and `targets` are the mapping's variables.
    pub(super) fn new(columns: &[String], rules: &RowRules, targets: &BTreeSet<String>) -> Self {
        // Variable name → column, as the exact path inserts them into the map.
        let mut written: BTreeMap<&str, usize> = BTreeMap::new();
        let mut shadowed = Vec::new();
        for (i, column) in columns.iter().enumerate() {
            match rules.mapping.get(column) {
                Some(variable) => {
                    written.insert(variable, i);
                }
                None if targets.contains(column) => shadowed.push((i, None)),
                None => {
                    written.insert(column, i);
                }
            }
        }
        let mut cells: Vec<(usize, Option<String>)> = written
            .into_iter()
            .enumerate()
            .map(|(n, (variable, i))| {
                let mut prefix = if n == 0 { String::new() } else { ",".into() };
                write_json_str(&mut prefix, variable);
                prefix.push(':');
                (i, Some(prefix))
            })
            .collect();
        cells.extend(shadowed);
        let required = rules
            .required
            .iter()
            .filter_map(|name| columns.iter().position(|c| c == name))
            .collect();
        Self {
            cells,
            required,
            max_field_bytes: rules.max_field_bytes,
        }
    }

    /// Appends the record's variables to `out` as one JSON object. False (with `out` as it was)
    /// when the record needs the exact path: it is not a plain valid row.
    pub(super) fn encode<R: Read>(&self, record: &CsvSource<R>, out: &mut String) -> bool {
        let mark = out.len();
        let written = self.write(record, out);
        if !written {
            out.truncate(mark);
        }
        written
    }

    fn write<R: Read>(&self, record: &CsvSource<R>, out: &mut String) -> bool {
        // `cells` holds every column once, so this is the header's width.
        if record.field_count() != self.cells.len() {
            return false;
        }
        // One UTF-8 check for the whole record; a field's text is `None` when its bytes are
        // not UTF-8 on their own.
        let Some(text) = record.record_text() else {
            return false;
        };
        let cell = |i: usize| text.get(record.field_range(i));
        // Most records hold nothing to escape: one scan of the whole record, then plain copies.
        let plain = !needs_escape(text);
        if self
            .required
            .iter()
            .any(|&i| cell(i).is_none_or(|s| s.trim().is_empty()))
        {
            return false;
        }
        out.push('{');
        for (i, prefix) in &self.cells {
            let Some(text) = cell(*i) else {
                return false;
            };
            if text.len() > self.max_field_bytes {
                return false;
            }
            if let Some(prefix) = prefix {
                out.push_str(prefix);
                if text.is_empty() {
                    out.push_str("null");
                } else if plain {
                    write_plain_str(out, text);
                } else {
                    write_json_str(out, text); // some cell of the record needs escapes
                }
            }
        }
        out.push('}');
        true
    }
}

/// Appends `text` as a JSON string, escaped exactly as serde_json escapes it.
fn write_json_str(out: &mut String, text: &str) {
    if !needs_escape(text) {
        write_plain_str(out, text);
    } else if let Ok(escaped) = serde_json::to_string(text) {
        out.push_str(&escaped);
    }
    // (A str always serializes: the `else` is never taken.)
}

/// Appends `text`, which holds nothing to escape, as a JSON string.
fn write_plain_str(out: &mut String, text: &str) {
    out.reserve(text.len() + 2);
    out.push('"');
    out.push_str(text);
    out.push('"');
}

/// Whether any byte of `text` is one a JSON string escapes (a control character, `"` or `\\`).
/// No early exit, so the compiler checks 16 or 32 bytes at a time.
fn needs_escape(text: &str) -> bool {
    let escapes = text.bytes().fold(0u8, |any, b| {
        any | u8::from(b < 0x20) | u8::from(b == b'"') | u8::from(b == b'\\')
    });
    escapes != 0
}
