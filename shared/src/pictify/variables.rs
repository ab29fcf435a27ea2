//! A template's variable definitions (`GET /templates/{uid}/variables`; the emulator's template
//! sidecars) and the one rule deciding what a render of some values fails with
//! (`INVALID_VARIABLE`): the emulator's renders, `pictify-batch check` and the deployed ingest
//! (with a cached copy of the definitions) all decide with it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One variable definition from a template's sidecar (Pictify's `VariableDefinition`: a type
/// and validation besides the name, requiredness and default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VariableDef {
    pub name: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// `text` (the default), `number`, `boolean`, `image` or `color`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
}

impl VariableDef {
    /// Why `value` (present, not null) does not fit this variable, if it does not: the
    /// `INVALID_VARIABLE` a render of it fails with. Dataset values arrive as text (CSV), so a
    /// number or a boolean may be spelled as one.
    pub fn misfit(&self, value: &Value) -> Option<String> {
        let text = match value {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        };
        let kind_ok = match self.kind.as_deref().unwrap_or("text") {
            "number" => {
                value.is_number()
                    || text.is_some_and(|t| t.trim().parse::<f64>().is_ok_and(f64::is_finite))
            }
            "boolean" => {
                value.is_boolean() || text.is_some_and(|t| matches!(t.trim(), "true" | "false"))
            }
            "image" => text.is_some_and(|t| {
                ["http://", "https://", "data:image/", "file://"]
                    .iter()
                    .any(|scheme| t.starts_with(scheme))
            }),
            _ => true,
        };
        if !kind_ok {
            let kind = self.kind.as_deref().unwrap_or("text");
            return Some(format!(
                "'{}' must be {} (got {value})",
                self.name,
                article(kind)
            ));
        }
        let length = text.map(|t| t.chars().count());
        if let (Some(length), Some(max)) = (length, self.max_length)
            && length > max
        {
            return Some(format!(
                "'{}' is {length} characters long (at most {max})",
                self.name
            ));
        }
        if let (Some(length), Some(min)) = (length, self.min_length)
            && length < min
        {
            return Some(format!(
                "'{}' is {length} characters long (at least {min})",
                self.name
            ));
        }
        None
    }
}

/// `variables` with each definition's default where a value is absent or null.
pub fn with_defaults(defs: &[VariableDef], variables: &Map<String, Value>) -> Map<String, Value> {
    let mut values = variables.clone();
    for def in defs {
        let absent = values.get(&def.name).is_none_or(Value::is_null);
        if absent && let Some(default) = &def.default {
            values.insert(def.name.clone(), default.clone());
        }
    }
    values
}

/// Why a render of `values` fails `INVALID_VARIABLE`, if it does: required variables missing,
/// `null` or `""`; else values that do not fit their type or length. A value absent or `null`
/// is its definition's default (so `values` may be given with or without defaults applied:
/// ingest checks every row and copies none). The emulator's renders, `pictify-batch check` and
/// ingest decide with this one rule.
pub fn invalid_variables(defs: &[VariableDef], values: &Map<String, Value>) -> Option<String> {
    fn value_of<'a>(def: &'a VariableDef, values: &'a Map<String, Value>) -> Option<&'a Value> {
        match values.get(&def.name) {
            None | Some(Value::Null) => def.default.as_ref(),
            Some(value) => Some(value),
        }
    }
    let missing: Vec<String> = defs
        .iter()
        .filter(|def| def.required)
        .filter(|def| match value_of(def, values) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        })
        .map(|def| format!("'{}'", def.name))
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "missing required variable(s) {}",
            missing.join(", ")
        ));
    }
    let misfits: Vec<String> = defs
        .iter()
        .filter_map(|def| match value_of(def, values) {
            None | Some(Value::Null) => None,
            Some(value) => def.misfit(value),
        })
        .collect();
    (!misfits.is_empty()).then(|| misfits.join("; "))
}

fn article(kind: &str) -> String {
    match kind {
        "image" => "an image URL (http, https, data: or file:)".into(),
        "number" => "a number".into(),
        "boolean" => "true or false".into(),
        other => format!("a {other}"),
    }
}

/// `GET /templates/{uid}/variables`: `{variables: [{name, type, defaultValue, validation:
/// {required, minLength, maxLength}}]}`.
#[derive(Debug, Clone, Deserialize)]
pub struct TemplateVariables {
    pub variables: Vec<VariableDefinition>,
}

/// One variable as Pictify's API describes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VariableDefinition {
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub default_value: Option<Value>,
    #[serde(default)]
    pub validation: Validation,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub min_length: Option<usize>,
    #[serde(default)]
    pub max_length: Option<usize>,
}

impl From<VariableDefinition> for VariableDef {
    fn from(d: VariableDefinition) -> Self {
        VariableDef {
            name: d.name,
            required: d.validation.required,
            default: d.default_value,
            kind: d.kind,
            min_length: d.validation.min_length,
            max_length: d.validation.max_length,
        }
    }
}
