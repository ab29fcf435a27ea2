//! JSON value semantics shared by the evaluator (`expr`) and the built-in functions (`functions`):
//! the error type, number construction, truthiness, display and numeric coercion, type names, loose equality.

use serde_json::Value;

/// Why an expression could not be parsed or evaluated; becomes `EXPRESSION_ERROR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExprError(pub String);

impl ExprError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

pub type ExprResult<T> = Result<T, ExprError>;

/// A JSON number from an f64, kept integral when it is one so output reads `3`, not `3.0`.
pub fn number(n: f64) -> ExprResult<Value> {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 9.0e15 {
        return Ok(Value::from(n as i64));
    }
    serde_json::Number::from_f64(n)
        .map(Value::Number)
        .ok_or_else(|| ExprError::new("result is not a finite number"))
}

/// JS truthiness: `false`, `0`, `""`, `null` are falsy; arrays and objects are truthy.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0 && !n.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// How a value prints into the page: strings as-is, `null` as nothing, arrays comma-joined (like JS).
pub fn to_display(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => items.iter().map(to_display).collect::<Vec<_>>().join(","),
        Value::Object(_) => v.to_string(),
    }
}

/// Numeric coercion for arithmetic and comparisons; `None` when the value has no numeric reading.
pub fn to_number(v: &Value) -> Option<f64> {
    match v {
        Value::Null => Some(0.0),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() {
                Some(0.0)
            } else {
                t.parse().ok()
            }
        }
        Value::Array(_) | Value::Object(_) => None,
    }
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Loose equality: same-typed values compare directly; a number and a numeric string compare as numbers.
pub fn loose_eq(l: &Value, r: &Value) -> bool {
    match (l, r) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Number(_), Value::String(_)) | (Value::String(_), Value::Number(_)) => {
            matches!((to_number(l), to_number(r)), (Some(a), Some(b)) if a == b)
        }
        _ => l == r,
    }
}
