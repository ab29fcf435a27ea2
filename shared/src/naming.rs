//! Name patterns: how a rendered row's image is named, as a file under a local run's images folder
//! or as an S3 key, e.g. `{templateId}/{slug(title)}-{row}.{ext}`.
//!
//! Placeholders:
//!
//! | placeholder | value |
//! |---|---|
//! | `{row}`, `{row:06}` | the data row number as the manifest numbers it (0-based), optionally zero-padded |
//! | `{templateId}` | the job's template id |
//! | `{job}` | the job id |
//! | `{ext}` | the image format's file extension (`png`, `jpg`, `webp`) |
//! | `{<field>}` | the row's field: strings as they are, numbers and booleans as JSON text |
//! | `{slug(<field>)}` | the field lowercased to ASCII letters and digits (common Latin accents stripped), every other run of characters one `-`, at most 80 characters |
//!
//! `{{` and `}}` are literal braces. The built-in names win over fields of the same name; a
//! `slug(…)` may also take a built-in (`{slug(templateId)}`).
//!
//! A rendered name is always a safe relative key: a field value cannot add a folder (`/` and `\`
//! become `-`), control characters become `-`, no folder is `.` or `..` or empty, the name never
//! starts with `/`, and it is at most [`MAX_KEY_BYTES`] UTF-8 bytes (S3's key limit). The pattern's
//! own `/` make folders.
//!
//! Pure: no I/O, no clock.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

/// The longest name a pattern may render: S3's key limit, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The longest `{slug(…)}`, in characters (ASCII, so also bytes).
pub const MAX_SLUG_CHARS: usize = 80;
/// The widest `{row:0N}`.
const MAX_ROW_WIDTH: usize = 20;

/// A parsed name pattern. [`fmt::Display`] gives back the text it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Value {
        source: Source,
        /// The placeholder as written, for messages: `{title}`.
        text: String,
    },
    Slug {
        source: Source,
        text: String,
    },
}

/// Where a placeholder's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Row { width: Option<usize> },
    TemplateId,
    Job,
    Ext,
    Field(String),
}

/// What a pattern is rendered for: one row of one job.
#[derive(Debug, Clone, Copy)]
pub struct NameContext<'a> {
    /// The data row number as the manifest numbers it (0-based).
    pub row: u64,
    pub template_id: &'a str,
    pub job: &'a str,
    /// The image format's file extension, without the dot (`png`).
    pub ext: &'a str,
    /// The row's input fields (the manifest line's `fields`).
    pub fields: &'a Map<String, Value>,
}

/// Why a pattern does not parse, or does not name a given row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the pattern is empty: expected e.g. {{slug(title)}}-{{row}}.{{ext}}")]
    Empty,
    #[error(
        "unclosed `{{` at position {at}: expected `}}` to end the placeholder (write `{{{{` for a literal brace)"
    )]
    UnclosedBrace { at: usize },
    #[error(
        "`{{` at position {at} is inside the placeholder opened at position {open}: expected `}}` first (placeholders do not nest)"
    )]
    NestedBrace { at: usize, open: usize },
    #[error("`}}` at position {at} closes nothing: write `}}}}` for a literal brace")]
    UnmatchedClose { at: usize },
    #[error(
        "empty placeholder `{{}}` at position {at}: expected a field name, row, templateId, job, ext or slug(<field>)"
    )]
    EmptyPlaceholder { at: usize },
    #[error("unknown function `{name}(…)` at position {at}: expected slug(<field>)")]
    UnknownFunction { at: usize, name: String },
    #[error("`{{{text}}}` at position {at} is not a function call: expected slug(<field>)")]
    BadCall { at: usize, text: String },
    #[error(
        "`{{{function}()}}` at position {at} names no field: expected e.g. {{{function}(title)}}"
    )]
    EmptyArgument { at: usize, function: String },
    #[error(
        "`{{{name}:{spec}}}` at position {at}: expected {{row}} with a zero-padded width of 1 to 20, such as {{row:06}}"
    )]
    BadFormat {
        at: usize,
        name: String,
        spec: String,
    },
    #[error(
        "the pattern starts with `/`: names are relative (folders inside the output), e.g. {{templateId}}/{{row}}.{{ext}}"
    )]
    LeadingSlash,
    #[error("`\\` at position {at}: use `/` to make folders")]
    Backslash { at: usize },
    #[error("a control character (U+{code:04X}) at position {at}")]
    ControlChar { at: usize, code: u32 },
    #[error(
        "folder `{segment}` in the pattern: a name must stay inside its folder (no `.` or `..` folder)"
    )]
    DotSegment { segment: String },
    #[error("the pattern has an empty folder name (`//`, or a `/` at the end)")]
    EmptySegment,

    #[error(
        "row {row}: field \"{field}\" is {what}, so {placeholder} has nothing to name the file with"
    )]
    NoValue {
        row: u64,
        field: String,
        /// "missing", "null" or "empty".
        what: &'static str,
        placeholder: String,
    },
    #[error(
        "row {row}: field \"{field}\" is {kind}, which {placeholder} cannot put in a file name"
    )]
    NotAValue {
        row: u64,
        field: String,
        /// "an array" or "an object".
        kind: &'static str,
        placeholder: String,
    },
    #[error(
        "row {row}: field \"{field}\" ({value:?}) has no ASCII letter or digit, so {placeholder} has nothing to name the file with"
    )]
    EmptySlug {
        row: u64,
        field: String,
        value: String,
        placeholder: String,
    },
    #[error(
        "row {row}: the name `{name}` has a `{segment}` folder; a name must stay inside its folder"
    )]
    UnsafeSegment {
        row: u64,
        name: String,
        segment: String,
    },
    #[error(
        "row {row}: the name is {bytes} bytes long, over the {MAX_KEY_BYTES}-byte limit of an S3 key (it starts `{start}…`)"
    )]
    TooLong {
        row: u64,
        bytes: usize,
        start: String,
    },
}

impl KeyPattern {
    /// Parses `pattern`; errors say where (1-based character position) and what was expected.
    pub fn parse(pattern: &str) -> Result<KeyPattern, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        if pattern.starts_with('/') {
            return Err(PatternError::LeadingSlash);
        }
        let chars: Vec<char> = pattern.chars().collect();
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut i = 0;
        while i < chars.len() {
            let (c, at) = (chars[i], i + 1);
            match c {
                '{' if chars.get(i + 1) == Some(&'{') => {
                    literal.push('{');
                    i += 2;
                }
                '}' if chars.get(i + 1) == Some(&'}') => {
                    literal.push('}');
                    i += 2;
                }
                '{' => {
                    let mut end = None;
                    for (j, &d) in chars.iter().enumerate().skip(i + 1) {
                        match d {
                            '}' => {
                                end = Some(j);
                                break;
                            }
                            '{' => {
                                return Err(PatternError::NestedBrace {
                                    at: j + 1,
                                    open: at,
                                });
                            }
                            _ => {}
                        }
                    }
                    let end = end.ok_or(PatternError::UnclosedBrace { at })?;
                    let inner: String = chars[i + 1..end].iter().collect();
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(placeholder(&inner, at)?);
                    i = end + 1;
                }
                '}' => return Err(PatternError::UnmatchedClose { at }),
                '\\' => return Err(PatternError::Backslash { at }),
                c if c.is_control() => {
                    return Err(PatternError::ControlChar {
                        at,
                        code: u32::from(c),
                    });
                }
                c => {
                    literal.push(c);
                    i += 1;
                }
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        check_literal_segments(&parts)?;
        Ok(KeyPattern {
            source: pattern.to_owned(),
            parts,
        })
    }

    /// The name of `row`: every value made safe for a path segment and an S3 key.
    pub fn render(&self, row: &NameContext<'_>) -> Result<String, PatternError> {
        let mut name = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => name.push_str(text),
                Part::Value { source, text } => {
                    name.push_str(&safe_value(&value(source, text, row)?));
                }
                Part::Slug { source, text } => {
                    let raw = value(source, text, row)?;
                    let slug = slug(&raw);
                    if slug.is_empty() {
                        return Err(PatternError::EmptySlug {
                            row: row.row,
                            field: source.name().to_owned(),
                            value: raw,
                            placeholder: text.clone(),
                        });
                    }
                    name.push_str(&slug);
                }
            }
        }
        check_name(row.row, name)
    }

    /// Whether `{row}` appears (in any form): every row's name holds its own number, so names are
    /// unique when literal text or a folder sets it apart (`-{row}.`, `{row}/`). Values run
    /// into it (`{a}{row}`) could still mimic another row's name: a caller that must never
    /// overwrite still checks.
    pub fn uses_row(&self) -> bool {
        self.parts.iter().any(|part| match part {
            Part::Value { source, .. } | Part::Slug { source, .. } => {
                matches!(source, Source::Row { .. })
            }
            Part::Literal(_) => false,
        })
    }

    /// The row fields the pattern reads (not the built-ins), in pattern order, each once.
    pub fn fields(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for part in &self.parts {
            if let Part::Value {
                source: Source::Field(f),
                ..
            }
            | Part::Slug {
                source: Source::Field(f),
                ..
            } = part
                && !names.contains(&f.as_str())
            {
                names.push(f);
            }
        }
        names
    }
}

impl FromStr for KeyPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyPattern::parse(s)
    }
}

impl fmt::Display for KeyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Source {
    fn from_name(name: &str) -> Source {
        match name {
            "row" => Source::Row { width: None },
            "templateId" => Source::TemplateId,
            "job" => Source::Job,
            "ext" => Source::Ext,
            field => Source::Field(field.to_owned()),
        }
    }

    fn name(&self) -> &str {
        match self {
            Source::Row { .. } => "row",
            Source::TemplateId => "templateId",
            Source::Job => "job",
            Source::Ext => "ext",
            Source::Field(f) => f,
        }
    }
}

/// One placeholder's inside (`title`, `row:06`, `slug(title)`), opened at position `at`.
fn placeholder(inner: &str, at: usize) -> Result<Part, PatternError> {
    let trimmed = inner.trim();
    let text = format!("{{{inner}}}");
    if trimmed.is_empty() {
        return Err(PatternError::EmptyPlaceholder { at });
    }
    if let Some((function, rest)) = trimmed.split_once('(') {
        let function = function.trim();
        let Some(argument) = rest.strip_suffix(')') else {
            return Err(PatternError::BadCall {
                at,
                text: inner.to_owned(),
            });
        };
        if function != "slug" {
            return Err(PatternError::UnknownFunction {
                at,
                name: function.to_owned(),
            });
        }
        let argument = argument.trim();
        if argument.is_empty() {
            return Err(PatternError::EmptyArgument {
                at,
                function: function.to_owned(),
            });
        }
        if argument.contains(['(', ')']) {
            return Err(PatternError::BadCall {
                at,
                text: inner.to_owned(),
            });
        }
        return Ok(Part::Slug {
            source: Source::from_name(argument),
            text,
        });
    }
    if let Some((name, spec)) = trimmed.split_once(':') {
        let name = name.trim();
        match Source::from_name(name) {
            Source::Row { .. } => {
                let width = spec
                    .strip_prefix('0')
                    .filter(|digits| {
                        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                    })
                    .and_then(|digits| digits.parse::<usize>().ok())
                    .filter(|w| (1..=MAX_ROW_WIDTH).contains(w))
                    .ok_or_else(|| PatternError::BadFormat {
                        at,
                        name: name.to_owned(),
                        spec: spec.to_owned(),
                    })?;
                return Ok(Part::Value {
                    source: Source::Row { width: Some(width) },
                    text,
                });
            }
            Source::Field(_) => {} // a field whose name holds a `:`
            _ => {
                return Err(PatternError::BadFormat {
                    at,
                    name: name.to_owned(),
                    spec: spec.to_owned(),
                });
            }
        }
    }
    Ok(Part::Value {
        source: Source::from_name(trimmed),
        text,
    })
}

/// Folders written out in the pattern itself (no placeholder in them) must be real folder names.
fn check_literal_segments(parts: &[Part]) -> Result<(), PatternError> {
    // Segments as runs between '/', each marked whether a placeholder is in it.
    let mut segments: Vec<(String, bool)> = vec![(String::new(), false)];
    for part in parts {
        match part {
            Part::Literal(text) => {
                let mut pieces = text.split('/');
                if let (Some(first), Some(last)) = (pieces.next(), segments.last_mut()) {
                    last.0.push_str(first);
                }
                segments.extend(pieces.map(|p| (p.to_owned(), false)));
            }
            Part::Value { .. } | Part::Slug { .. } => {
                if let Some(last) = segments.last_mut() {
                    last.1 = true;
                }
            }
        }
    }
    for (segment, dynamic) in &segments {
        if *dynamic {
            continue;
        }
        if segment.is_empty() {
            return Err(PatternError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(PatternError::DotSegment {
                segment: segment.clone(),
            });
        }
    }
    Ok(())
}

/// The text of one placeholder for `row`.
fn value(source: &Source, text: &str, row: &NameContext<'_>) -> Result<String, PatternError> {
    Ok(match source {
        Source::Row { width: None } => row.row.to_string(),
        Source::Row { width: Some(w) } => format!("{:0w$}", row.row, w = *w),
        Source::TemplateId => row.template_id.to_owned(),
        Source::Job => row.job.to_owned(),
        Source::Ext => row.ext.to_owned(),
        Source::Field(field) => {
            let no_value = |what| PatternError::NoValue {
                row: row.row,
                field: field.clone(),
                what,
                placeholder: text.to_owned(),
            };
            let not_a_value = |kind| PatternError::NotAValue {
                row: row.row,
                field: field.clone(),
                kind,
                placeholder: text.to_owned(),
            };
            match row.fields.get(field) {
                None => return Err(no_value("missing")),
                Some(Value::Null) => return Err(no_value("null")),
                Some(Value::String(s)) if s.trim().is_empty() => return Err(no_value("empty")),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(_)) => return Err(not_a_value("an array")),
                Some(Value::Object(_)) => return Err(not_a_value("an object")),
                Some(other @ (Value::Number(_) | Value::Bool(_))) => other.to_string(),
            }
        }
    })
}

/// A value as part of one path segment: no `/` or `\` (a value never makes a folder), no control
/// characters, and not a `.` / `..` of its own.
fn safe_value(value: &str) -> String {
    if value.chars().all(|c| c == '.') {
        return "-".repeat(value.chars().count());
    }
    value
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '-'
            } else {
                c
            }
        })
        .collect()
}

/// Lowercase ASCII letters and digits; common Latin accents stripped (`é` → `e`, `ß` → `ss`);
/// every other run of characters one `-`; trimmed of `-`; at most [`MAX_SLUG_CHARS`].
pub fn slug(text: &str) -> String {
    let mut out = String::new();
    let mut gap = false;
    for ch in text.chars() {
        if out.len() > MAX_SLUG_CHARS {
            break;
        }
        if ch.is_ascii() {
            slug_push(&mut out, &mut gap, ch);
        } else if let Some(folded) = fold(ch) {
            for c in folded.chars() {
                slug_push(&mut out, &mut gap, c);
            }
        } else {
            gap = true;
        }
    }
    out.truncate(MAX_SLUG_CHARS);
    let kept = out.trim_end_matches('-').len();
    out.truncate(kept);
    out
}

/// One ASCII character into a slug: letters and digits kept (lowercased), the rest a gap that
/// becomes one `-` before the next kept character.
fn slug_push(out: &mut String, gap: &mut bool, c: char) {
    if c.is_ascii_alphanumeric() {
        if *gap && !out.is_empty() {
            out.push('-');
        }
        *gap = false;
        out.push(c.to_ascii_lowercase());
    } else {
        *gap = true;
    }
}

/// A Latin letter with an accent (Latin-1 and Latin Extended-A) as ASCII; `None` for the rest.
fn fold(ch: char) -> Option<&'static str> {
    Some(match ch {
        'À'..='Å' | 'à'..='å' | 'Ā'..='ą' => "a",
        'Æ' | 'æ' => "ae",
        'Ç' | 'ç' | 'Ć'..='č' => "c",
        'Ð' | 'ð' | 'Ď'..='đ' => "d",
        'È'..='Ë' | 'è'..='ë' | 'Ē'..='ě' => "e",
        'Ĝ'..='ģ' => "g",
        'Ĥ'..='ħ' => "h",
        'Ì'..='Ï' | 'ì'..='ï' | 'Ĩ'..='ı' => "i",
        'Ĳ' | 'ĳ' => "ij",
        'Ĵ' | 'ĵ' => "j",
        'Ķ'..='ĸ' => "k",
        'Ĺ'..='ł' => "l",
        'Ñ' | 'ñ' | 'Ń'..='ŋ' => "n",
        'Ò'..='Ö' | 'Ø' | 'ò'..='ö' | 'ø' | 'Ō'..='ő' => "o",
        'Œ' | 'œ' => "oe",
        'Ŕ'..='ř' => "r",
        'Ś'..='š' | 'ſ' => "s",
        'ß' => "ss",
        'Ţ'..='ŧ' => "t",
        'Þ' | 'þ' => "th",
        'Ù'..='Ü' | 'ù'..='ü' | 'Ũ'..='ų' => "u",
        'Ŵ' | 'ŵ' => "w",
        'Ý' | 'ý' | 'ÿ' | 'Ŷ'..='Ÿ' => "y",
        'Ź'..='ž' => "z",
        _ => return None,
    })
}

/// The whole name's checks: no empty, `.` or `..` folder, no leading `/`, within the key limit.
fn check_name(row: u64, name: String) -> Result<String, PatternError> {
    let unsafe_segment = |segment: &str| PatternError::UnsafeSegment {
        row,
        name: name.clone(),
        segment: segment.to_owned(),
    };
    if name.starts_with('/') {
        return Err(unsafe_segment("/"));
    }
    if let Some(bad) = name
        .split('/')
        .find(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err(unsafe_segment(if bad.is_empty() { "" } else { bad }));
    }
    if name.len() > MAX_KEY_BYTES {
        let start: String = name.chars().take(40).collect();
        return Err(PatternError::TooLong {
            row,
            bytes: name.len(),
            start,
        });
    }
    Ok(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    fn render_row(pattern: &str, row: u64, f: &Map<String, Value>) -> Result<String, PatternError> {
        KeyPattern::parse(pattern).unwrap().render(&NameContext {
            row,
            template_id: "tmpl_blog_card",
            job: "job_0123",
            ext: "png",
            fields: f,
        })
    }

    fn render(pattern: &str, f: Value) -> Result<String, PatternError> {
        render_row(pattern, 12, &fields(f))
    }

    fn parse_err(pattern: &str) -> PatternError {
        KeyPattern::parse(pattern).unwrap_err()
    }

    #[test]
    fn built_ins_fields_and_slugs_render() {
        let row =
            json!({"title": "Hello, Wörld!", "price": 9.5, "featured": true, "author": "Ann"});
        assert_eq!(
            render("{templateId}/{slug(title)}-{row}.{ext}", row.clone()).unwrap(),
            "tmpl_blog_card/hello-world-12.png"
        );
        assert_eq!(
            render("{job}/{row:06}-{author}.{ext}", row.clone()).unwrap(),
            "job_0123/000012-Ann.png"
        );
        assert_eq!(
            render("{price}-{featured}.png", row.clone()).unwrap(),
            "9.5-true.png"
        );
        assert_eq!(render("{title}", row.clone()).unwrap(), "Hello, Wörld!");
        assert_eq!(render("{slug(templateId)}", row).unwrap(), "tmpl-blog-card");
    }

    #[test]
    fn row_padding_widens_but_never_cuts() {
        let f = Map::new();
        assert_eq!(render_row("{row:03}", 7, &f).unwrap(), "007");
        assert_eq!(render_row("{row:03}", 12345, &f).unwrap(), "12345");
        assert_eq!(
            parse_err("x{row:1}"),
            PatternError::BadFormat {
                at: 2,
                name: "row".into(),
                spec: "1".into()
            }
        );
    }

    #[test]
    fn double_braces_are_literal() {
        assert_eq!(
            render("{{{title}}}-{{row}}.png", json!({"title": "x"})).unwrap(),
            "{x}-{row}.png"
        );
    }

    #[test]
    fn display_gives_back_the_source_and_from_str_parses() {
        let text = "{templateId}/{ slug( title ) }-{row:05}.{ext}";
        let pattern: KeyPattern = text.parse().unwrap();
        assert_eq!(pattern.to_string(), text);
        assert_eq!(
            render(text, json!({"title": "A b"})).unwrap(),
            "tmpl_blog_card/a-b-00012.png"
        );
    }

    #[test]
    fn uses_row_and_fields() {
        let p = KeyPattern::parse("{templateId}/{slug(title)}-{row}.{ext}").unwrap();
        assert!(p.uses_row());
        assert_eq!(p.fields(), vec!["title"]);
        let p = KeyPattern::parse("{slug(title)}/{author}-{title}.{ext}").unwrap();
        assert!(!p.uses_row());
        assert_eq!(p.fields(), vec!["title", "author"]);
        assert!(KeyPattern::parse("{row:04}.png").unwrap().uses_row());
        assert!(!KeyPattern::parse("row.png").unwrap().uses_row());
    }

    #[test]
    fn values_never_make_folders_or_escape() {
        let f = json!({"a": "x/y\\z", "dots": "..", "one": ".", "nl": "line\none\u{7}"});
        assert_eq!(render("{a}.png", f.clone()).unwrap(), "x-y-z.png");
        assert_eq!(render("{dots}/{row}.png", f.clone()).unwrap(), "--/12.png");
        assert_eq!(render("{one}.png", f.clone()).unwrap(), "-.png");
        // A lone-dot value next to a literal dot cannot make a `..` folder.
        assert_eq!(render(".{one}/x", f.clone()).unwrap(), ".-/x");
        assert_eq!(render("{nl}.png", f.clone()).unwrap(), "line-one-.png");
        assert_eq!(render("{slug(a)}.png", f).unwrap(), "x-y-z.png");
    }

    #[test]
    fn the_final_check_refuses_unsafe_names() {
        for (name, segment) in [("./12", "."), ("a/../b", ".."), ("a//b", ""), ("/a", "/")] {
            assert_eq!(
                check_name(3, name.to_owned()).unwrap_err(),
                PatternError::UnsafeSegment {
                    row: 3,
                    name: name.into(),
                    segment: segment.into()
                }
            );
        }
        assert_eq!(check_name(3, "a/b.png".into()).unwrap(), "a/b.png");
    }

    #[test]
    fn missing_null_and_empty_fields_name_field_and_row() {
        let f = json!({"title": "", "nothing": null, "blank": "  ", "tags": ["a"], "obj": {}});
        let err = render("{slug(title)}.png", f.clone()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "row 12: field \"title\" is empty, so {slug(title)} has nothing to name the file with"
        );
        assert_eq!(
            render("{nothing}.png", f.clone()).unwrap_err().to_string(),
            "row 12: field \"nothing\" is null, so {nothing} has nothing to name the file with"
        );
        assert_eq!(
            render("{absent}.png", f.clone()).unwrap_err().to_string(),
            "row 12: field \"absent\" is missing, so {absent} has nothing to name the file with"
        );
        assert!(matches!(
            render("{blank}", f.clone()).unwrap_err(),
            PatternError::NoValue { what: "empty", .. }
        ));
        assert_eq!(
            render("{tags}", f.clone()).unwrap_err().to_string(),
            "row 12: field \"tags\" is an array, which {tags} cannot put in a file name"
        );
        assert!(matches!(
            render("{obj}", f).unwrap_err(),
            PatternError::NotAValue {
                kind: "an object",
                ..
            }
        ));
    }

    #[test]
    fn an_empty_slug_names_the_field() {
        let err = render("{slug(title)}.png", json!({"title": "東京 !!"})).unwrap_err();
        assert_eq!(
            err,
            PatternError::EmptySlug {
                row: 12,
                field: "title".into(),
                value: "東京 !!".into(),
                placeholder: "{slug(title)}".into()
            }
        );
        let text = err.to_string();
        assert!(text.starts_with("row 12: field \"title\""), "{text}");
        assert!(text.contains("{slug(title)}"), "{text}");
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("Hello, World!"), "hello-world");
        assert_eq!(slug("  --Café Crème--  "), "cafe-creme");
        assert_eq!(slug("Straße Łódź Æsir Œuvre"), "strasse-lodz-aesir-oeuvre");
        assert_eq!(slug("Tokyo 東京 2026"), "tokyo-2026");
        assert_eq!(slug("a/b\\c..d"), "a-b-c-d");
        assert_eq!(slug("東京"), "");
        let long = "word ".repeat(40);
        let s = slug(&long);
        assert!(s.len() <= MAX_SLUG_CHARS, "{s}");
        assert!(!s.ends_with('-') && !s.starts_with('-'), "{s}");
        assert_eq!(slug(&"a".repeat(200)).len(), MAX_SLUG_CHARS);
        assert_eq!(slug("42"), "42");
    }

    #[test]
    fn names_over_the_s3_key_limit_are_refused() {
        let long = "é".repeat(600); // 1200 bytes
        let err = render("{t}.png", json!({ "t": long })).unwrap_err();
        assert!(
            matches!(
                err,
                PatternError::TooLong {
                    row: 12,
                    bytes: 1204,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("1024-byte limit"), "{err}");
        let fits = "e".repeat(MAX_KEY_BYTES - 4);
        assert_eq!(
            render("{t}.png", json!({ "t": fits })).unwrap().len(),
            MAX_KEY_BYTES
        );
    }

    #[test]
    fn parse_errors_say_where_and_what_was_expected() {
        assert_eq!(parse_err(""), PatternError::Empty);
        assert_eq!(parse_err("ab{title"), PatternError::UnclosedBrace { at: 3 });
        assert!(
            parse_err("ab{title")
                .to_string()
                .contains("unclosed `{` at position 3: expected `}`")
        );
        assert_eq!(
            parse_err("{a{b}}"),
            PatternError::NestedBrace { at: 3, open: 1 }
        );
        assert_eq!(parse_err("a}b"), PatternError::UnmatchedClose { at: 2 });
        assert_eq!(parse_err("x-{}"), PatternError::EmptyPlaceholder { at: 3 });
        assert_eq!(
            parse_err("x-{  }"),
            PatternError::EmptyPlaceholder { at: 3 }
        );
        assert!(
            parse_err("{}")
                .to_string()
                .contains("empty placeholder `{}` at position 1")
        );
        let err = parse_err("{upper(title)}.png");
        assert_eq!(
            err,
            PatternError::UnknownFunction {
                at: 1,
                name: "upper".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "unknown function `upper(…)` at position 1: expected slug(<field>)"
        );
        assert!(matches!(
            parse_err("{slug(title}"),
            PatternError::BadCall { at: 1, .. }
        ));
        assert!(matches!(
            parse_err("{slug(a(b))}"),
            PatternError::BadCall { .. }
        ));
        assert_eq!(
            parse_err("{slug()}"),
            PatternError::EmptyArgument {
                at: 1,
                function: "slug".into()
            }
        );
        assert!(matches!(
            parse_err("{row:6}"),
            PatternError::BadFormat { .. }
        ));
        assert!(matches!(
            parse_err("{row:0}"),
            PatternError::BadFormat { .. }
        ));
        assert!(matches!(
            parse_err("{row:021}"),
            PatternError::BadFormat { .. }
        ));
        assert!(matches!(
            parse_err("{ext:03}"),
            PatternError::BadFormat { .. }
        ));
        assert_eq!(parse_err("/{row}.png"), PatternError::LeadingSlash);
        assert_eq!(parse_err("a\\{row}"), PatternError::Backslash { at: 2 });
        assert_eq!(
            parse_err("a\n{row}"),
            PatternError::ControlChar { at: 2, code: 10 }
        );
        assert_eq!(
            parse_err("../{row}.png"),
            PatternError::DotSegment {
                segment: "..".into()
            }
        );
        assert_eq!(
            parse_err("a/./{row}.png"),
            PatternError::DotSegment {
                segment: ".".into()
            }
        );
        assert_eq!(parse_err("a//{row}.png"), PatternError::EmptySegment);
        assert_eq!(parse_err("{row}/"), PatternError::EmptySegment);
        // Positions count characters, not bytes.
        assert_eq!(parse_err("é{x"), PatternError::UnclosedBrace { at: 2 });
    }

    #[test]
    fn field_names_may_hold_colons_and_spaces() {
        assert_eq!(
            render(
                "{Post Title}|{date:iso}",
                json!({"Post Title": "P", "date:iso": "2026"})
            )
            .unwrap(),
            "P|2026"
        );
    }
}
