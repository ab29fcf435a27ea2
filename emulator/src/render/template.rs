//! Template store: HTML templates with JSON sidecars (size and variable definitions).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

pub use shared::pictify::variables::{VariableDef, invalid_variables, with_defaults};

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
    /// The sample templates compiled into the binary, so the emulator serves them with no files around.
    pub fn bundled() -> Self {
        let mut store = Self::default();
        for (id, sidecar, html) in BUNDLED {
            // The samples are tested to parse; a broken one is skipped (and logged) rather than panicking.
            match Template::from_parts(id, sidecar, html) {
                Ok(t) => store.insert(t),
                Err(e) => tracing::error!(template = id, error = %e, "bundled template is invalid"),
            }
        }
        store
    }

    /// Load `<id>.html` + `<id>.json` pairs from a directory; every error names the offending file.
    pub fn load_dir(path: &Path) -> anyhow::Result<Self> {
        let entries = std::fs::read_dir(path).map_err(|e| TemplateError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut sidecars: Vec<PathBuf> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| TemplateError::Io {
                path: path.to_path_buf(),
                source: e,
            })?;
            let file = entry.path();
            if file.extension().is_some_and(|ext| ext == "json") {
                sidecars.push(file);
            }
        }
        sidecars.sort();
        let mut store = Self::default();
        for sidecar_path in sidecars {
            let id = sidecar_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let html_path = sidecar_path.with_extension("html");
            let sidecar =
                std::fs::read_to_string(&sidecar_path).map_err(|e| TemplateError::Io {
                    path: sidecar_path.clone(),
                    source: e,
                })?;
            let html = std::fs::read_to_string(&html_path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => TemplateError::MissingHtml {
                    sidecar: sidecar_path.clone(),
                    html: html_path.clone(),
                },
                _ => TemplateError::Io {
                    path: html_path.clone(),
                    source: e,
                },
            })?;
            let template =
                Template::from_parts(&id, &sidecar, &html).map_err(|e| e.in_file(&sidecar_path))?;
            store.insert(template);
        }
        Ok(store)
    }

    fn insert(&mut self, template: Template) {
        self.templates
            .insert(template.id.clone(), Arc::new(template));
    }

    /// How many templates are loaded.
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
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

/// The samples shipped in `emulator/templates/`: (id, sidecar JSON, HTML).
const BUNDLED: [(&str, &str, &str); 4] = [
    (
        "tmpl_blog_card",
        include_str!("../../templates/tmpl_blog_card.json"),
        include_str!("../../templates/tmpl_blog_card.html"),
    ),
    (
        "tmpl_social_card",
        include_str!("../../templates/tmpl_social_card.json"),
        include_str!("../../templates/tmpl_social_card.html"),
    ),
    (
        "tmpl_certificate",
        include_str!("../../templates/tmpl_certificate.json"),
        include_str!("../../templates/tmpl_certificate.html"),
    ),
    (
        "tmpl_product_card",
        include_str!("../../templates/tmpl_product_card.json"),
        include_str!("../../templates/tmpl_product_card.html"),
    ),
];

/// Largest accepted side, in pixels.
pub const MAX_SIDE: u32 = 4096;

/// Why a template could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{sidecar} has no matching HTML file {html}")]
    MissingHtml { sidecar: PathBuf, html: PathBuf },
    #[error("invalid sidecar JSON: {0}")]
    BadJson(#[from] serde_json::Error),
    #[error("{what} {value} is out of range 1..={MAX_SIDE}")]
    BadSize { what: &'static str, value: u32 },
    #[error("variable #{index} has an empty name")]
    EmptyVariableName { index: usize },
    #[error("in {path}: {source}")]
    InFile {
        path: PathBuf,
        source: Box<TemplateError>,
    },
}

impl TemplateError {
    fn in_file(self, path: &Path) -> Self {
        Self::InFile {
            path: path.to_path_buf(),
            source: Box::new(self),
        }
    }
}

/// The sidecar's shape on disk.
#[derive(Debug, Deserialize)]
struct Sidecar {
    #[serde(default)]
    name: Option<String>,
    width: u32,
    height: u32,
    #[serde(default)]
    variables: Vec<VariableDef>,
}

impl Template {
    /// Builds a template from its sidecar JSON and HTML, validating size and variable names.
    pub fn from_parts(id: &str, sidecar: &str, html: &str) -> Result<Self, TemplateError> {
        let sidecar: Sidecar = serde_json::from_str(sidecar)?;
        for (what, value) in [("width", sidecar.width), ("height", sidecar.height)] {
            if !(1..=MAX_SIDE).contains(&value) {
                return Err(TemplateError::BadSize { what, value });
            }
        }
        if let Some(index) = sidecar
            .variables
            .iter()
            .position(|v| v.name.trim().is_empty())
        {
            return Err(TemplateError::EmptyVariableName { index });
        }
        Ok(Self {
            id: id.to_string(),
            name: sidecar.name.unwrap_or_else(|| id.to_string()),
            width: sidecar.width,
            height: sidecar.height,
            variables: sidecar.variables,
            html: html.to_string(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, body: &str) {
        std::fs::write(dir.join(name), body).unwrap();
    }

    fn load_error(files: &[(&str, &str)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in files {
            write(dir.path(), name, body);
        }
        format!("{:#}", TemplateStore::load_dir(dir.path()).unwrap_err())
    }

    #[test]
    fn bundled_store_has_the_four_samples() {
        let store = TemplateStore::bundled();
        let ids: Vec<&str> = store.ids().collect();
        assert_eq!(
            ids,
            [
                "tmpl_blog_card",
                "tmpl_certificate",
                "tmpl_product_card",
                "tmpl_social_card"
            ]
        );
        let blog = store.get("tmpl_blog_card").unwrap();
        assert_eq!((blog.width, blog.height), (1200, 630));
        let names: Vec<&str> = blog.variables.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["title", "author", "publishDate"]);
    }

    #[test]
    fn load_dir_reads_pairs() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "t1.json",
            r#"{"name":"One","width":10,"height":20,"variables":[{"name":"a","required":true}]}"#,
        );
        write(dir.path(), "t1.html", "<p>{{a}}</p>");
        write(dir.path(), "notes.txt", "ignored");
        let store = TemplateStore::load_dir(dir.path()).unwrap();
        let t = store.get("t1").unwrap();
        assert_eq!(
            (t.name.as_str(), t.width, t.height, t.html.as_str()),
            ("One", 10, 20, "<p>{{a}}</p>")
        );
        assert!(t.variables[0].required);
    }

    #[test]
    fn load_dir_errors_name_the_file() {
        let bad_json = load_error(&[("broken.json", "{"), ("broken.html", "")]);
        assert!(
            bad_json.contains("broken.json") && bad_json.contains("invalid sidecar JSON"),
            "{bad_json}"
        );
        let no_html = load_error(&[("lonely.json", r#"{"width":1,"height":1}"#)]);
        assert!(no_html.contains("lonely.html"), "{no_html}");
        let too_big = load_error(&[
            ("huge.json", r#"{"width":5000,"height":1}"#),
            ("huge.html", ""),
        ]);
        assert!(
            too_big.contains("huge.json") && too_big.contains("width 5000"),
            "{too_big}"
        );
        let zero = load_error(&[
            ("flat.json", r#"{"width":10,"height":0}"#),
            ("flat.html", ""),
        ]);
        assert!(zero.contains("height 0"), "{zero}");
    }

    #[test]
    fn missing_directory_is_an_error() {
        assert!(TemplateStore::load_dir(Path::new("/nonexistent/templates")).is_err());
    }

    #[test]
    fn a_value_that_does_not_fit_its_type_or_length_is_named() {
        let def = |kind: &str, min: Option<usize>, max: Option<usize>| VariableDef {
            name: "v".into(),
            required: false,
            default: None,
            kind: Some(kind.into()),
            min_length: min,
            max_length: max,
        };
        let number = def("number", None, None);
        // CSV cells are text: a number may be spelled as one.
        for fits in [json!(4.5), json!("4.5"), json!(" 12 ")] {
            assert_eq!(number.misfit(&fits), None, "{fits}");
        }
        let misfit = number.misfit(&json!("great")).unwrap();
        assert!(misfit.contains("'v' must be a number"), "{misfit}");
        assert!(def("boolean", None, None).misfit(&json!("yes")).is_some());
        assert_eq!(def("boolean", None, None).misfit(&json!("true")), None);
        let image = def("image", None, None);
        assert_eq!(image.misfit(&json!("https://x.test/a.png")), None);
        assert_eq!(image.misfit(&json!("file:///tmp/a.png")), None);
        assert!(
            image.misfit(&json!("images/a.png")).is_some(),
            "a bare path is no URL"
        );
        let text = def("text", Some(2), Some(5));
        assert_eq!(text.misfit(&json!("abc")), None);
        assert!(
            text.misfit(&json!("ab\u{e9}cde"))
                .unwrap()
                .contains("6 characters long (at most 5)")
        );
        assert!(text.misfit(&json!("a")).unwrap().contains("at least 2"));
    }
}
