//! Dataset-level failures (the job fails) and row-level rejections (the row is skipped with a reason).

use serde::{Deserialize, Serialize};

/// Why the whole dataset cannot be read: the job fails with this reason and nothing is queued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    #[error("the dataset is empty")]
    Empty,
    #[error("header column {position} has an empty name")]
    EmptyHeaderName { position: usize },
    #[error("header column \"{column}\" appears more than once")]
    DuplicateHeader { column: String },
    #[error("the header has no column \"{column}\", which the job requires")]
    MissingRequiredColumn { column: String },
    #[error("columns \"{first}\" and \"{second}\" are both mapped to the variable \"{variable}\"")]
    ConflictingMapping {
        variable: String,
        first: String,
        second: String,
    },
    #[error("a JSON dataset must be an array of objects, but it starts with {found}")]
    NotAnArray { found: String },
    #[error("malformed dataset at byte {offset}: {message}")]
    Malformed { message: String, offset: u64 },
    #[error("the dataset has more than {limit} rows")]
    TooManyRows { limit: u64 },
    #[error("the header has {found} columns, over the {limit}-column limit")]
    TooManyColumns { found: usize, limit: usize },
    #[error("the header row is {bytes} bytes, over the {limit}-byte limit")]
    HeaderTooLarge { bytes: u64, limit: u64 },
    #[error("could not read the dataset: {0}")]
    Io(#[from] std::io::Error),
}

/// Why one row was rejected. `Display` is one sentence naming the row's problem and field;
/// the serialized form (`{"kind": "empty_value", "column": "title"}`) is stable for storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectReason {
    #[error("required column \"{column}\" is missing")]
    MissingColumn { column: String },
    #[error("required column \"{column}\" is empty")]
    EmptyValue { column: String },
    #[error("row has {found} fields but the header has {expected} columns")]
    Ragged { expected: usize, found: usize },
    #[error("row is not valid JSON: {message}")]
    BadJson { message: String },
    #[error("row is a JSON {found}, not an object")]
    NotAnObject { found: String },
    #[error("column \"{column}\" is {bytes} bytes, over the {limit}-byte limit")]
    FieldTooLarge {
        column: String,
        bytes: u64,
        limit: u64,
    },
    #[error("row is {bytes} bytes, over the {limit}-byte limit")]
    RowTooLarge { bytes: u64, limit: u64 },
    #[error("row has {found} fields, over the {limit}-field limit")]
    TooManyFields { found: usize, limit: usize },
    #[error("{}", utf8_sentence(.column.as_deref()))]
    InvalidUtf8 { column: Option<String> },
    /// The template's variable definitions refuse the row: Pictify would fail it
    /// `INVALID_VARIABLE` (and bill it), so it is not sent.
    #[error("the template refuses it (INVALID_VARIABLE): {reason}")]
    InvalidVariable { reason: String },
}

fn utf8_sentence(column: Option<&str>) -> String {
    match column {
        Some(column) => format!("column \"{column}\" is not valid UTF-8"),
        None => "row is not valid UTF-8".to_owned(),
    }
}

impl RejectReason {
    /// Short stable code for counters and logs (`missing_column`, `ragged`, …).
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingColumn { .. } => "missing_column",
            Self::EmptyValue { .. } => "empty_value",
            Self::Ragged { .. } => "ragged",
            Self::BadJson { .. } => "bad_json",
            Self::NotAnObject { .. } => "not_an_object",
            Self::FieldTooLarge { .. } => "field_too_large",
            Self::RowTooLarge { .. } => "row_too_large",
            Self::TooManyFields { .. } => "too_many_fields",
            Self::InvalidUtf8 { .. } => "invalid_utf8",
            Self::InvalidVariable { .. } => "invalid_variable",
        }
    }
}
