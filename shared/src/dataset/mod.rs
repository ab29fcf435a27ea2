//! Streaming dataset reader: an uploaded CSV, JSON array or JSON Lines file becomes numbered rows
//! of template variables (or numbered rejections), pulled one at a time with bounded memory.
//!
//! Decisions the rest of the pipeline relies on:
//! - **Row numbers** are 0-based among data rows: the CSV header is not a row; a JSON array
//!   element's number is its index; in JSON Lines, blank (whitespace-only) lines are skipped and
//!   take no number. Blank CSV lines are skipped by the CSV grammar and take no number either
//!   (so a one-column CSV cannot express an empty value except as `""`).
//! - **Determinism**: the reader keeps no hidden state beyond the input, uses no hash maps, and
//!   checks rows in a fixed order (size, shape, encoding, per-field limits, then `required` in
//!   the given order), so re-reading a file yields identical numbers, rows and reasons.
//! - **Empty CSV cells** become `null` in `variables` (they stay `""` in `fields`): templates
//!   treat optional variables such as `badge` as absent when null. A required column whose value
//!   is `""`, whitespace only or `null` is rejected as `EmptyValue`; values are never trimmed.
//! - **Mapping**: a mapped column is renamed; unmapped columns pass through under their own
//!   name, except that a mapped column's target wins over a same-named unmapped column. Two
//!   columns mapped to one variable fail the job (`ConflictingMapping`). In CSV a mapped or
//!   required column missing from the header fails the job; in JSON a missing mapped key is
//!   simply absent and a missing required key rejects the row.
//! - **Sizes**: `max_row_bytes` counts a row's raw bytes in the file (a CSV record, a JSON array
//!   element, a JSON line); no more than that is ever buffered. `max_field_bytes` counts a CSV
//!   cell's bytes, a JSON string's UTF-8 bytes, or a nested JSON value's compact serialization.
//! - **JSON arrays** are split at top-level commas, so a malformed element is one rejected row
//!   and the rest still read; an empty slot (`[{…},,{…}]`, a trailing comma) is a `BadJson` row.
//!   A truncated array or data after the closing `]` fails the dataset after the rows before it.

mod csv;
mod encode;
mod error;
mod fingerprint;
mod input;
mod json;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::Arc;

use serde_json::{Map, Value};

pub use error::{DatasetError, RejectReason};
pub use fingerprint::fingerprint;

use self::csv::{CsvRecord, CsvSource};
use self::encode::CsvEncoder;
use self::input::Input;
use self::json::{Element, JsonArraySource, JsonLinesSource};
use crate::pictify::variables::{VariableDef, invalid_variables};

/// The three accepted upload formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatasetFormat {
    Csv,
    /// A JSON array of objects.
    Json,
    /// One JSON object per line (`.jsonl` / `.ndjson`).
    JsonLines,
}

impl DatasetFormat {
    /// The format named by the object key's extension (case-insensitive): `.csv`, `.json`,
    /// `.jsonl` or `.ndjson`. Pass the decoded key.
    pub fn from_key(key: &str) -> Option<Self> {
        let name = key.rsplit('/').next().unwrap_or(key);
        let (_, extension) = name.rsplit_once('.')?;
        match extension.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "json" => Some(Self::Json),
            "jsonl" | "ndjson" => Some(Self::JsonLines),
            _ => None,
        }
    }
}

/// How columns become variables and what each row must carry (from the job spec).
#[derive(Debug, Clone, PartialEq)]
pub struct RowRules {
    /// Column → variable renames; unmapped columns pass through under their own name.
    pub mapping: BTreeMap<String, String>,
    /// Column names (before mapping) that must be present and non-empty.
    pub required: Vec<String>,
    /// A longer field rejects the row. Default 64 KiB.
    pub max_field_bytes: usize,
    /// A longer row rejects the row without being buffered. Default 256 KiB.
    pub max_row_bytes: usize,
    /// More data rows than this fail the dataset. Default: no limit.
    pub max_rows: Option<u64>,
    /// A CSV header with more columns fails the dataset; a JSON row with more keys is rejected.
    /// Default 500.
    pub max_columns: usize,
    /// A longer CSV header row fails the dataset. Default 64 KiB.
    pub max_header_bytes: usize,
    /// The template's variable definitions, when known: a row whose variables they refuse is
    /// rejected (`InvalidVariable`), after the mapping.
    pub variables: Option<Arc<[VariableDef]>>,
}

impl Default for RowRules {
    fn default() -> Self {
        Self {
            mapping: BTreeMap::new(),
            required: Vec::new(),
            max_field_bytes: 64 * 1024,
            max_row_bytes: 256 * 1024,
            max_rows: None,
            max_columns: 500,
            max_header_bytes: 64 * 1024,
            variables: None,
        }
    }
}

/// A row that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 0-based index among data rows (see the module docs).
    pub number: u64,
    /// The original columns and values, for the results manifest.
    pub fields: Map<String, Value>,
    /// Template variables: `fields` renamed by the mapping, empty CSV cells as `null`.
    pub variables: Map<String, Value>,
}

/// A row that was read but failed validation; the job goes on without it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub number: u64,
    pub reason: RejectReason,
}

/// One data row of the file, in file order.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Valid(Row),
    Rejected(Rejected),
}

/// What [`DatasetReader::next_into`] read: ingest's view of a row, which needs only the variables.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoded {
    /// A valid row: its variables were appended to the buffer as one JSON object.
    Valid {
        number: u64,
    },
    Rejected(Rejected),
}

impl Item {
    /// The row number, valid or not.
    pub fn number(&self) -> u64 {
        match self {
            Self::Valid(row) => row.number,
            Self::Rejected(rejected) => rejected.number,
        }
    }
}

/// Where a read stopped between two rows, so another process can carry on from there with
/// [`DatasetReader::resume`] and see exactly the rows (numbers, contents, rejections) the
/// uninterrupted read would have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadPosition {
    /// Byte offset in the file (a BOM included) where the next row starts: a CSV record or a
    /// JSON line boundary, or just after the `,` that ended a JSON array element.
    pub offset: u64,
    /// The number the next row will take (= data rows read so far).
    pub rows: u64,
    /// JSON arrays: the closing `]` was read already.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closed: bool,
}

/// Pull-based reader: each `next()` reads just enough input for one row. After the first
/// `Err` the iterator is finished.
pub struct DatasetReader<R: Read> {
    source: Source<R>,
    rules: RowRules,
    /// Variables claimed by the mapping, so an unmapped column cannot shadow them.
    targets: BTreeSet<String>,
    next_number: u64,
    finished: bool,
}

enum Source<R: Read> {
    Csv {
        // Boxed: csv-core's parser tables make this variant several times larger than the others.
        source: Box<CsvSource<R>>,
        columns: Vec<String>,
        encoder: CsvEncoder,
    },
    Json(JsonArraySource<R>),
    Lines(JsonLinesSource<R>),
}

impl<R: Read> DatasetReader<R> {
    /// Validates the rules and the start of the file: reads the CSV header, or checks that a
    /// JSON document is an array, so a dataset-level problem fails before any row.
    pub fn new(reader: R, format: DatasetFormat, rules: RowRules) -> Result<Self, DatasetError> {
        let targets = mapping_targets(&rules.mapping)?;
        let input = Input::new(reader)?;
        let source = match format {
            DatasetFormat::Csv => {
                let mut source = CsvSource::new(input, rules.max_header_bytes);
                let columns = read_header(&mut source, &rules)?;
                source.set_limit(rules.max_row_bytes);
                let encoder = CsvEncoder::new(&columns, &rules, &targets);
                Source::Csv {
                    source: Box::new(source),
                    columns,
                    encoder,
                }
            }
            DatasetFormat::Json => Source::Json(JsonArraySource::new(input, rules.max_row_bytes)?),
            DatasetFormat::JsonLines => {
                Source::Lines(JsonLinesSource::new(input, rules.max_row_bytes)?)
            }
        };
        Ok(Self {
            source,
            rules,
            targets,
            next_number: 0,
            finished: false,
        })
    }

    /// Carries on a read stopped at `at` (from [`DatasetReader::position`]). `head` reads the
    /// file from its start: only a CSV header is read from it. `rest` reads the file from
    /// `at.offset`. The rules must be the ones the first read used.
    pub fn resume(
        head: R,
        rest: R,
        format: DatasetFormat,
        rules: RowRules,
        at: ReadPosition,
    ) -> Result<Self, DatasetError> {
        let mut reader = Self::new(head, format, rules)?;
        let rest = Input::at(rest, at.offset);
        let limit = reader.rules.max_row_bytes;
        reader.source = match reader.source {
            Source::Csv {
                columns, encoder, ..
            } => Source::Csv {
                source: Box::new(CsvSource::new(rest, limit)),
                columns,
                encoder,
            },
            Source::Json(_) => Source::Json(JsonArraySource::resume(rest, limit, at.closed)),
            Source::Lines(_) => Source::Lines(JsonLinesSource::resume(rest, limit)),
        };
        reader.next_number = at.rows;
        Ok(reader)
    }

    /// Where the read stands between two rows (call it after an item, or before the first).
    pub fn position(&self) -> ReadPosition {
        let (offset, closed) = match &self.source {
            Source::Csv { source, .. } => (source.offset(), false),
            Source::Json(source) => (source.offset(), source.closed()),
            Source::Lines(source) => (source.offset(), false),
        };
        ReadPosition {
            offset,
            rows: self.next_number,
            closed,
        }
    }

    /// The CSV header (BOM stripped, names trimmed); `None` for JSON formats.
    pub fn columns(&self) -> Option<&[String]> {
        match &self.source {
            Source::Csv { columns, .. } => Some(columns),
            Source::Json(_) | Source::Lines(_) => None,
        }
    }

    /// Ingest's read: like `next`, but a valid row's variables are appended to `out` as one JSON
    /// object (the bytes serde_json writes for `Row.variables`) and its input columns are not
    /// kept. A CSV row goes from its record's bytes to `out` with no map in between.
    pub fn next_into(&mut self, out: &mut String) -> Option<Result<Encoded, DatasetError>> {
        let mark = out.len();
        let read = self.advance(|reader, number| reader.read_encoded(number, out));
        if !matches!(read, Some(Ok(Encoded::Valid { .. }))) {
            out.truncate(mark); // a row past `max_rows` is an error, not a row
        }
        read
    }

    fn read_encoded(
        &mut self,
        number: u64,
        out: &mut String,
    ) -> Result<Option<Encoded>, DatasetError> {
        let Self {
            source,
            rules,
            targets,
            ..
        } = self;
        if let Source::Csv {
            source,
            columns,
            encoder,
        } = source
        {
            let Some(record) = source.next_record()? else {
                return Ok(None);
            };
            // The direct path skips the row map the template's definitions are checked on.
            if matches!(record, CsvRecord::Fields)
                && rules.variables.is_none()
                && encoder.encode(source, out)
            {
                return Ok(Some(Encoded::Valid { number }));
            }
            // Not a plain valid row: the exact path says why.
            let item = csv_row(number, record, source, columns, rules, targets, false);
            return Ok(Some(encode_item(item, out)));
        }
        let item = self.read_item(number, false)?;
        Ok(item.map(|item| encode_item(item, out)))
    }

    /// Reads one row; `None` at the end. `keep_fields: false` leaves `Row.fields` empty (each
    /// cell is moved into the variables instead of copied).
    fn read_item(&mut self, number: u64, keep_fields: bool) -> Result<Option<Item>, DatasetError> {
        let Self {
            source,
            rules,
            targets,
            ..
        } = self;
        let json = |element, buf: &[u8]| match element {
            Element::TooLarge { bytes } => row_too_large(number, bytes, rules),
            Element::Bytes => json_item(number, buf, rules, targets, keep_fields),
        };
        Ok(match source {
            Source::Csv {
                source, columns, ..
            } => source.next_record()?.map(|record| {
                csv_row(number, record, source, columns, rules, targets, keep_fields)
            }),
            Source::Json(source) => source
                .next_element()?
                .map(|element| json(element, &source.buf)),
            Source::Lines(source) => source
                .next_line()?
                .map(|element| json(element, &source.buf)),
        })
    }

    /// Reads the next item with `read`, numbering it and applying `max_rows`.
    fn advance<T>(
        &mut self,
        read: impl FnOnce(&mut Self, u64) -> Result<Option<T>, DatasetError>,
    ) -> Option<Result<T, DatasetError>> {
        if self.finished {
            return None;
        }
        let number = self.next_number;
        let item = match read(self, number) {
            Ok(Some(item)) => item,
            Ok(None) => {
                self.finished = true;
                return None;
            }
            Err(error) => {
                self.finished = true;
                return Some(Err(error));
            }
        };
        if let Some(limit) = self.rules.max_rows
            && number >= limit
        {
            self.finished = true;
            return Some(Err(DatasetError::TooManyRows { limit }));
        }
        self.next_number += 1;
        Some(Ok(item))
    }
}

impl<R: Read> Iterator for DatasetReader<R> {
    type Item = Result<Item, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.advance(|reader, number| reader.read_item(number, true))
    }
}

fn mapping_targets(mapping: &BTreeMap<String, String>) -> Result<BTreeSet<String>, DatasetError> {
    let mut first_column: BTreeMap<&str, &str> = BTreeMap::new();
    for (column, variable) in mapping {
        if let Some(first) = first_column.insert(variable, column) {
            return Err(DatasetError::ConflictingMapping {
                variable: variable.clone(),
                first: first.to_owned(),
                second: column.clone(),
            });
        }
    }
    Ok(mapping.values().cloned().collect())
}

fn read_header<R: Read>(
    source: &mut CsvSource<R>,
    rules: &RowRules,
) -> Result<Vec<String>, DatasetError> {
    match source.next_record()? {
        None => return Err(DatasetError::Empty),
        Some(CsvRecord::TooLarge { bytes }) => {
            return Err(DatasetError::HeaderTooLarge {
                bytes,
                limit: rules.max_header_bytes as u64,
            });
        }
        Some(CsvRecord::Fields) => {}
    }
    let found = source.fields().len();
    if found > rules.max_columns {
        return Err(DatasetError::TooManyColumns {
            found,
            limit: rules.max_columns,
        });
    }
    let mut columns = Vec::new();
    let mut seen = BTreeSet::new();
    for (index, raw) in source.fields().enumerate() {
        let position = index + 1;
        let name = std::str::from_utf8(raw)
            .map_err(|_| DatasetError::Malformed {
                message: format!("header column {position} is not valid UTF-8"),
                offset: 0,
            })?
            .trim();
        if name.is_empty() {
            return Err(DatasetError::EmptyHeaderName { position });
        }
        if !seen.insert(name) {
            return Err(DatasetError::DuplicateHeader {
                column: name.to_owned(),
            });
        }
        columns.push(name.to_owned());
    }
    let missing = rules
        .required
        .iter()
        .chain(rules.mapping.keys())
        .find(|column| !seen.contains(column.as_str()));
    if let Some(column) = missing {
        return Err(DatasetError::MissingRequiredColumn {
            column: column.clone(),
        });
    }
    Ok(columns)
}

fn reject(number: u64, reason: RejectReason) -> Item {
    Item::Rejected(Rejected { number, reason })
}

fn row_too_large(number: u64, bytes: u64, rules: &RowRules) -> Item {
    let limit = rules.max_row_bytes as u64;
    reject(number, RejectReason::RowTooLarge { bytes, limit })
}

/// A valid row's variables appended to `out` as JSON; a rejection as it is.
fn encode_item(item: Item, out: &mut String) -> Encoded {
    match item {
        Item::Valid(row) => match serde_json::to_string(&row.variables) {
            Ok(json) => {
                out.push_str(&json);
                Encoded::Valid { number: row.number }
            }
            // A map of JSON values always encodes; were it ever not to, the row says so.
            Err(e) => Encoded::Rejected(Rejected {
                number: row.number,
                reason: RejectReason::BadJson {
                    message: e.to_string(),
                },
            }),
        },
        Item::Rejected(rejected) => Encoded::Rejected(rejected),
    }
}

fn csv_row<R: Read>(
    number: u64,
    record: CsvRecord,
    source: &CsvSource<R>,
    columns: &[String],
    rules: &RowRules,
    targets: &BTreeSet<String>,
    keep_fields: bool,
) -> Item {
    match record {
        CsvRecord::TooLarge { bytes } => row_too_large(number, bytes, rules),
        CsvRecord::Fields => csv_item(
            number,
            columns,
            source.fields(),
            rules,
            targets,
            keep_fields,
        ),
    }
}

fn csv_item<'a>(
    number: u64,
    columns: &[String],
    values: impl ExactSizeIterator<Item = &'a [u8]>,
    rules: &RowRules,
    targets: &BTreeSet<String>,
    keep_fields: bool,
) -> Item {
    if values.len() != columns.len() {
        let reason = RejectReason::Ragged {
            expected: columns.len(),
            found: values.len(),
        };
        return reject(number, reason);
    }
    let mut fields = Map::new();
    for (column, raw) in columns.iter().zip(values) {
        if raw.len() > rules.max_field_bytes {
            let reason = RejectReason::FieldTooLarge {
                column: column.clone(),
                bytes: raw.len() as u64,
                limit: rules.max_field_bytes as u64,
            };
            return reject(number, reason);
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            let column = Some(column.clone());
            return reject(number, RejectReason::InvalidUtf8 { column });
        };
        fields.insert(column.clone(), Value::String(text.to_owned()));
    }
    finish_row(number, fields, rules, targets, true, keep_fields)
}

fn json_item(
    number: u64,
    raw: &[u8],
    rules: &RowRules,
    targets: &BTreeSet<String>,
    keep_fields: bool,
) -> Item {
    let Ok(text) = std::str::from_utf8(raw) else {
        return reject(number, RejectReason::InvalidUtf8 { column: None });
    };
    // serde_json stops at 128 levels of nesting, so hostile depth is an error, not a crash.
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => {
            let message = e.to_string();
            return reject(number, RejectReason::BadJson { message });
        }
    };
    let fields = match value {
        Value::Object(fields) => fields,
        other => {
            let found = json_kind(&other).to_owned();
            return reject(number, RejectReason::NotAnObject { found });
        }
    };
    if fields.len() > rules.max_columns {
        let reason = RejectReason::TooManyFields {
            found: fields.len(),
            limit: rules.max_columns,
        };
        return reject(number, reason);
    }
    // The smallest offending key is reported, whatever order the Map iterates in.
    let oversized = fields
        .iter()
        .map(|(column, value)| (column, encoded_len(value)))
        .filter(|(_, bytes)| *bytes > rules.max_field_bytes as u64)
        .min_by(|a, b| a.0.cmp(b.0));
    if let Some((column, bytes)) = oversized {
        let reason = RejectReason::FieldTooLarge {
            column: column.clone(),
            bytes,
            limit: rules.max_field_bytes as u64,
        };
        return reject(number, reason);
    }
    finish_row(number, fields, rules, targets, false, keep_fields)
}

/// Applies the `required` checks and the mapping. Without `keep_fields` the values are moved
/// into the variables and `Row.fields` is left empty.
fn finish_row(
    number: u64,
    mut fields: Map<String, Value>,
    rules: &RowRules,
    targets: &BTreeSet<String>,
    empty_as_null: bool,
    keep_fields: bool,
) -> Item {
    for column in &rules.required {
        let reason = match fields.get(column) {
            None => RejectReason::MissingColumn {
                column: column.clone(),
            },
            Some(Value::Null) => RejectReason::EmptyValue {
                column: column.clone(),
            },
            Some(Value::String(s)) if s.trim().is_empty() => RejectReason::EmptyValue {
                column: column.clone(),
            },
            Some(_) => continue,
        };
        return reject(number, reason);
    }
    // With no mapping, a JSON row's variables are its fields as they are: moved whole.
    if !keep_fields && !empty_as_null && rules.mapping.is_empty() {
        return checked_row(number, Map::new(), fields, rules);
    }
    let mut variables = Map::new();
    let mut place = |column: String, value: Value| {
        let value = match value {
            Value::String(s) if empty_as_null && s.is_empty() => Value::Null,
            other => other,
        };
        match rules.mapping.get(&column) {
            Some(variable) => {
                variables.insert(variable.clone(), value);
            }
            None if targets.contains(&column) => {}
            None => {
                variables.insert(column, value);
            }
        }
    };
    if keep_fields {
        for (column, value) in &fields {
            place(column.clone(), value.clone());
        }
    } else {
        for (column, value) in std::mem::take(&mut fields) {
            place(column, value);
        }
    }
    checked_row(number, fields, variables, rules)
}

/// A valid row, unless the template's definitions (when known) refuse its variables.
fn checked_row(
    number: u64,
    fields: Map<String, Value>,
    variables: Map<String, Value>,
    rules: &RowRules,
) -> Item {
    if let Some(definitions) = &rules.variables
        && let Some(reason) = invalid_variables(definitions, &variables)
    {
        return reject(number, RejectReason::InvalidVariable { reason });
    }
    Item::Valid(Row {
        number,
        fields,
        variables,
    })
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// UTF-8 length of a string, or the compact JSON length of any other value.
fn encoded_len(value: &Value) -> u64 {
    struct Counter(u64);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    match value {
        Value::String(s) => s.len() as u64,
        other => {
            let mut counter = Counter(0);
            // Writing to a counter cannot fail; if it somehow did, treat the field as too large.
            match serde_json::to_writer(&mut counter, other) {
                Ok(()) => counter.0,
                Err(_) => u64::MAX,
            }
        }
    }
}
