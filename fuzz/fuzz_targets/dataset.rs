//! Fuzz target: `DatasetReader` over arbitrary bytes, in each format, with rules picked by the
//! input's first three bytes, drained to the end. Besides "no panic, overflow or hang" it checks
//! the reader's documented promises: consecutive row numbers, nothing after the first error,
//! limits and `required` honoured by every valid row, and the same output on a second read.
#![no_main]

use std::collections::BTreeMap;
use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use shared::dataset::{DatasetFormat, DatasetReader, Item, RowRules};

/// Byte 0 picks the format and which rules are on, bytes 1–2 the size limits, the rest is the file.
fn split(data: &[u8]) -> Option<(DatasetFormat, RowRules, &[u8])> {
    let (&[flags, field, row], body) = data.split_first_chunk::<3>()?;
    let format = match flags % 3 {
        0 => DatasetFormat::Csv,
        1 => DatasetFormat::Json,
        _ => DatasetFormat::JsonLines,
    };
    let mut rules = RowRules::default();
    // `title` is the column the seed files carry; `id` is usually absent.
    if flags & 0x04 != 0 {
        rules.required.push("title".to_owned());
    }
    if flags & 0x08 != 0 {
        rules.required.push("id".to_owned());
    }
    if flags & 0x10 != 0 {
        rules.mapping = BTreeMap::from([("author".to_owned(), "by".to_owned())]);
    }
    if flags & 0x20 != 0 {
        rules.max_rows = Some(u64::from(flags >> 6));
    }
    // 255 keeps the default, so both tiny limits (including 0) and the defaults get exercised.
    if field != u8::MAX {
        rules.max_field_bytes = usize::from(field);
    }
    if row != u8::MAX {
        rules.max_row_bytes = usize::from(row) * 4;
    }
    Some((format, rules, body))
}

/// Everything one read yields, errors rendered as text (they are not `PartialEq`).
fn drain(format: DatasetFormat, rules: &RowRules, body: &[u8]) -> Vec<Result<Item, String>> {
    let mut reader = match DatasetReader::new(Cursor::new(body), format, rules.clone()) {
        Ok(reader) => reader,
        Err(error) => return vec![Err(error.to_string())],
    };
    let mut out = Vec::new();
    for item in reader.by_ref() {
        let failed = item.is_err();
        out.push(item.map_err(|error| error.to_string()));
        if failed {
            break;
        }
    }
    assert!(
        reader.next().is_none(),
        "the reader yielded after finishing"
    );
    out
}

fn check_row(rules: &RowRules, item: &Item) {
    let Item::Valid(row) = item else { return };
    for (column, value) in &row.fields {
        let bytes = match value {
            Value::String(text) => text.len(),
            Value::Array(_) | Value::Object(_) => value.to_string().len(),
            _ => 0,
        };
        assert!(
            bytes <= rules.max_field_bytes,
            "valid row {} has a {bytes}-byte field {column:?} over the {}-byte limit",
            row.number,
            rules.max_field_bytes
        );
    }
    for column in &rules.required {
        let present = match row.fields.get(column) {
            Some(Value::String(text)) => !text.trim().is_empty(),
            Some(Value::Null) | None => false,
            Some(_) => true,
        };
        assert!(
            present,
            "valid row {} lacks required {column:?}",
            row.number
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((format, rules, body)) = split(data) else {
        return;
    };
    let first = drain(format, &rules, body);
    let mut expected_number = 0;
    for item in first.iter().flatten() {
        assert_eq!(
            item.number(),
            expected_number,
            "row numbers must be consecutive"
        );
        expected_number += 1;
        check_row(&rules, item);
    }
    if let Some(limit) = rules.max_rows {
        assert!(
            expected_number <= limit,
            "{expected_number} rows over max_rows {limit}"
        );
    }
    assert_eq!(first, drain(format, &rules, body), "a second read differed");
});
