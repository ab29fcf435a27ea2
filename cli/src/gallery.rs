//! `index.html`: a static results gallery beside the run's outputs. One self-contained file (HTML,
//! CSS, JS and the rows as JSON all inline) so it opens from `file://` with no server, no CDN and
//! no network request other than the images it names.
//!
//! The page itself is `gallery.html`; this module only fills in its three placeholders.

use std::path::Path;

use anyhow::Context;
use pictify_emulator::render::substitute::escape_html;
use serde::Serialize;
use serde_json::{Map, Value};

const TEMPLATE: &str = include_str!("gallery.html");
const KEY_FIELDS: usize = 3;
const FIELD_MAX_CHARS: usize = 80;
/// Keys that name a row best, most telling first; compared ignoring case, `_` and `-`.
const TITLE_LIKE: &[&str] = &[
    "title",
    "name",
    "productname",
    "recipientname",
    "fullname",
    "headline",
    "heading",
    "subject",
    "label",
    "author",
    "eventname",
    "company",
];

/// One finding on a row (e.g. code "MISSING_GLYPHS", message "cannot draw U+E000"): the
/// emulator's own type, so its warnings reach the page as they were sent.
pub use pictify_emulator::render::RenderWarning as Warning;

/// One input row as the gallery shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Card {
    pub row: u64,
    /// "rendered", "failed", "rejected", "cancelled", "download_failed", …
    pub status: String,
    /// The key fields to show (already chosen by the caller), in order.
    pub fields: Vec<(String, String)>,
    /// Full-size image: a path relative to index.html ("images/x.png") or an absolute URL.
    pub image: Option<String>,
    /// Thumbnail: a relative path ("thumbs/x.webp") or URL; the page falls back to `image`.
    pub thumb: Option<String>,
    pub error: Option<String>,
    pub warnings: Vec<Warning>,
}

/// The page heading, e.g. "job abc · tmpl_product_card" and "100 rows · 96 rendered · 4 failed".
pub struct Page<'a> {
    pub title: &'a str,
    pub subtitle: &'a str,
}

/// Writes the page to `path` (creating parent dirs).
pub fn write(path: &Path, page: &Page<'_>, cards: &[Card]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let html = render(page, cards)?;
    std::fs::write(path, html).with_context(|| format!("writing the gallery {}", path.display()))
}

/// Rows counted by status, in the order the statuses first appear.
#[derive(Debug, Default)]
pub struct StatusCounts {
    rows: u64,
    counts: Vec<(String, u64)>,
}

impl StatusCounts {
    pub fn add(&mut self, status: &str) {
        self.rows += 1;
        match self.counts.iter_mut().find(|(s, _)| s == status) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((status.to_owned(), 1)),
        }
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// "100 rows · 96 rendered · 4 failed": the row count, then each status, most frequent first.
    pub fn summary(&self) -> String {
        let mut counts: Vec<&(String, u64)> = self.counts.iter().collect();
        // Stable: equal counts keep the order the statuses first appeared in.
        counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let mut text = format!("{} rows", self.rows);
        for (status, n) in counts {
            text.push_str(&format!(" · {n} {}", status.replace('_', " ")));
        }
        text
    }
}

/// [`StatusCounts::summary`] of `cards`.
pub fn status_summary(cards: &[Card]) -> String {
    let mut counts = StatusCounts::default();
    for card in cards {
        counts.add(&card.status);
    }
    counts.summary()
}

/// The key fields of a row: up to 3 non-empty scalar fields that are not links, title-like keys
/// first, then the columns in order (then keys a JSON row added), each cut to about 80 characters.
pub fn key_fields(fields: &Map<String, Value>, columns: &[String]) -> Vec<(String, String)> {
    let normal = |key: &str| {
        key.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect::<String>()
    };
    let title_like = TITLE_LIKE
        .iter()
        .flat_map(|want| fields.keys().filter(move |k| normal(k) == *want));
    let in_order = columns
        .iter()
        .chain(fields.keys().filter(|k| !columns.contains(k)));
    let mut chosen: Vec<(String, String)> = Vec::new();
    for key in title_like.chain(in_order) {
        if chosen.len() == KEY_FIELDS {
            break;
        }
        if chosen.iter().any(|(k, _)| k == key) {
            continue;
        }
        // Objects and arrays say little in a card; numbers and booleans read fine as text.
        let text = match fields.get(key) {
            Some(Value::String(s)) => s.trim().to_owned(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            _ => continue,
        };
        // Links (image URLs, file:// paths) are long and say little about the row.
        if !text.is_empty() && !text.contains("://") {
            chosen.push((key.clone(), shorten(&text)));
        }
    }
    chosen
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(FIELD_MAX_CHARS) {
        Some((at, _)) => format!("{}…", text[..at].trim_end()),
        None => text.to_owned(),
    }
}

fn render(page: &Page<'_>, cards: &[Card]) -> anyhow::Result<String> {
    let data = script_json(cards)?;
    Ok(fill(
        TEMPLATE,
        &[
            ("{{TITLE}}", &escape_html(page.title)),
            ("{{SUBTITLE}}", &escape_html(page.subtitle)),
            ("{{DATA}}", &data),
        ],
    ))
}

/// The cards as JSON that is safe inside `<script type="application/json">`: `</` would end the
/// element early, and `<!--` could make the parser skip past the real `</script>`. Both only occur
/// inside JSON strings, where `\/` and `\u0021` mean the same characters.
fn script_json(cards: &[Card]) -> anyhow::Result<String> {
    let json = serde_json::to_string(cards).context("encoding the gallery data")?;
    Ok(json.replace("</", "<\\/").replace("<!--", "<\\u0021--"))
}

/// Replaces each `{{NAME}}` of `template` in one pass, so text already inserted (a title that
/// says `{{DATA}}`) is never substituted again. Unknown `{{` are kept as they are.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let extra: usize = values.iter().map(|(_, v)| v.len()).sum();
    let mut out = String::with_capacity(template.len() + extra);
    let mut rest = template;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        match values.iter().find(|(key, _)| tail.starts_with(key)) {
            Some((key, value)) => {
                out.push_str(value);
                rest = &tail[key.len()..];
            }
            None => {
                out.push_str("{{");
                rest = &tail[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn card(row: u64, status: &str, title: &str) -> Card {
        Card {
            row,
            status: status.to_owned(),
            fields: vec![("title".to_owned(), title.to_owned())],
            image: Some(format!("images/{row:05}.png")),
            thumb: None,
            error: None,
            warnings: vec![],
        }
    }

    fn object(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn the_embedded_json_cannot_close_its_script_element() {
        let mut evil = card(0, "failed", "</script><script>alert(1)</script>");
        evil.error = Some("<!--<script>".to_owned());
        let json = script_json(&[evil]).unwrap();
        assert!(!json.contains("</"), "{json}");
        assert!(!json.contains("<!--"), "{json}");
        assert!(
            json.contains(r"<\/script><script>alert(1)<\/script>"),
            "{json}"
        );
        // Still the same data once parsed.
        let back: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back[0]["fields"][0][1],
            "</script><script>alert(1)</script>"
        );
        assert_eq!(back[0]["error"], "<!--<script>");
    }

    #[test]
    fn key_fields_prefer_title_like_keys_then_the_columns_in_order() {
        let columns: Vec<String> = ["price", "imageUrl", "sku", "productName", "empty", "rating"]
            .map(String::from)
            .to_vec();
        let fields = object(&[
            ("price", Value::from("85.36")),
            ("imageUrl", Value::from("file:///data/lamp.png")),
            ("sku", Value::from("S1")),
            ("productName", Value::from("Hands-on Lamp")),
            ("empty", Value::from("  ")),
            ("rating", Value::from(4.5)),
        ]);
        assert_eq!(
            key_fields(&fields, &columns),
            [
                ("productName", "Hands-on Lamp"),
                ("price", "85.36"),
                ("sku", "S1")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );

        let fields = object(&[
            ("author", Value::from("Grace")),
            ("publish_date", Value::from("2026-01-01")),
            ("tags", Value::from(vec!["a", "b"])),
            ("Title", Value::from("x".repeat(200))),
        ]);
        let chosen = key_fields(&fields, &[]);
        let keys: Vec<&str> = chosen.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["Title", "author", "publish_date"]);
        assert_eq!(chosen[0].1.chars().count(), FIELD_MAX_CHARS + 1);
        assert!(chosen[0].1.ends_with('…'));
    }

    #[test]
    fn write_produces_a_page_holding_the_rows_and_the_escaped_heading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/out/index.html");
        let mut failed = card(1, "failed", "Tokyo Mug");
        failed.image = None;
        failed.error = Some("IMAGE_FETCH_FAILED: images/x.png".to_owned());
        failed.warnings.push(Warning {
            code: "MISSING_GLYPHS".to_owned(),
            message: "cannot draw U+E000".to_owned(),
        });
        let cards = [card(0, "rendered", "Café Lamp"), failed];
        let summary = status_summary(&cards);
        assert_eq!(summary, "2 rows · 1 rendered · 1 failed");
        let page = Page {
            title: "job <b>{{DATA}}</b> · tmpl",
            subtitle: &summary,
        };
        write(&path, &page, &cards).unwrap();
        let html = std::fs::read_to_string(&path).unwrap();
        assert!(html.starts_with("<!doctype html>"));
        assert!(
            html.contains("job &lt;b&gt;{{DATA}}&lt;/b&gt; · tmpl"),
            "title"
        );
        assert!(html.contains("2 rows · 1 rendered · 1 failed"));
        assert!(html.contains(r#"<script type="application/json" id="gallery-data">[{"row":0"#));
        for needle in [
            "Café Lamp",
            "Tokyo Mug",
            "IMAGE_FETCH_FAILED: images/x.png",
            "MISSING_GLYPHS",
            "images/00000.png",
        ] {
            assert!(html.contains(needle), "{needle}");
        }
        // Every placeholder was filled, and the page names nothing it would have to fetch.
        for placeholder in ["{{TITLE}}", "{{SUBTITLE}}"] {
            assert!(!html.contains(placeholder), "{placeholder}");
        }
        assert_eq!(
            html.matches("{{DATA}}").count(),
            2,
            "only the escaped title's"
        );
        assert!(!html.contains("http://") && !html.contains("https://"));
    }

    #[test]
    fn the_template_holds_each_placeholder() {
        for placeholder in ["{{TITLE}}", "{{SUBTITLE}}", "{{DATA}}"] {
            assert!(TEMPLATE.contains(placeholder), "{placeholder}");
        }
        assert_eq!(TEMPLATE.matches("{{DATA}}").count(), 1);
    }
}
