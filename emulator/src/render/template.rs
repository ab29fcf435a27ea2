//! Template store: HTML templates with JSON sidecars (size and variable definitions).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

/// One variable definition from a template's sidecar.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VariableDef {
    pub name: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub default: Option<Value>,
}

/// A loaded template.
#[derive(Debug, Clone)]
pub struct Template {
    pub id: String,
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub variables: Vec<VariableDef>,
    pub html: String,
}

/// Templates by id.
#[derive(Debug, Clone, Default)]
pub struct TemplateStore {
    templates: BTreeMap<String, Arc<Template>>,
}

impl TemplateStore {
    /// The sample templates compiled into the binary. STUB.
    pub fn bundled() -> Self {
        Self::default()
    }

    /// Load `<id>.html` + `<id>.json` pairs from a directory. STUB.
    pub fn load_dir(path: &Path) -> anyhow::Result<Self> {
        let _ = path;
        Ok(Self::default())
    }

    /// Add (or replace) templates from `other`.
    pub fn merge(&mut self, other: TemplateStore) {
        self.templates.extend(other.templates);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Template>> {
        self.templates.get(id).cloned()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.templates.keys().map(String::as_str)
    }
}
