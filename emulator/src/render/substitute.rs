//! Turns a template's HTML plus one variable set into final HTML: required checks, `_if` elements, `{{ … }}` placeholders.

use std::collections::HashSet;

use serde_json::{Map, Value};
use shared::pictify::wire::error_codes;

use super::ItemError;
use super::expr::{self, Scope, to_display, truthy};
use super::template::{Template, invalid_variables, with_defaults};

/// Supplied variables over sidecar defaults; declared names without a value read as `null`.
pub struct TemplateScope<'a> {
    values: Map<String, Value>,
    declared: HashSet<&'a str>,
}

impl Scope for TemplateScope<'_> {
    fn lookup(&self, name: &str) -> Option<Value> {
        match self.values.get(name) {
            Some(v) => Some(v.clone()),
            None => self.declared.contains(name).then_some(Value::Null),
        }
    }
}

impl<'a> TemplateScope<'a> {
    /// Applies defaults, then rejects the set if a required variable is missing, `null` or `""`,
    /// or a value does not fit its type or length (`template::invalid_variables`).
    pub fn new(template: &'a Template, variables: &Map<String, Value>) -> Result<Self, ItemError> {
        let values = with_defaults(&template.variables, variables);
        if let Some(reason) = invalid_variables(&template.variables, &values) {
            return Err(ItemError {
                code: error_codes::INVALID_VARIABLE,
                message: format!("{reason} (template '{}')", template.id),
            });
        }
        let declared = template.variables.iter().map(|d| d.name.as_str()).collect();
        Ok(Self { values, declared })
    }
}

fn expression_error(message: impl std::fmt::Display) -> ItemError {
    ItemError {
        code: error_codes::EXPRESSION_ERROR,
        message: message.to_string(),
    }
}

/// The full substitution: `_if` elements first (so a hidden branch may reference absent values), then placeholders.
pub fn render_html(html: &str, scope: &dyn Scope) -> Result<String, ItemError> {
    let pruned = apply_conditionals(html, scope)?;
    substitute(&pruned, scope)
}

/// Escapes text for HTML content and quoted attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Undoes the entity escapes a template or [`escape_html`] may have written into an attribute value.
pub fn unescape_html(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Replaces every `{{ expr }}` (and `{{{ expr }}}`, escaped all the same) with its escaped value.
fn substitute(html: &str, scope: &dyn Scope) -> Result<String, ItemError> {
    let mut out = String::with_capacity(html.len() + 256);
    let mut rest = html;
    let mut in_style = false;
    while let Some(open) = rest.find("{{") {
        let before = &rest[..open];
        in_style = style_state(before, in_style);
        out.push_str(before);
        let triple = rest[open..].starts_with("{{{");
        let body_start = open + if triple { 3 } else { 2 };
        let close_len = if triple { 3 } else { 2 };
        let Some(close) = find_close(&rest[body_start..], close_len) else {
            return Err(expression_error(format!(
                "unclosed placeholder starting '{}'",
                preview(&rest[open..])
            )));
        };
        let source = rest[body_start..body_start + close].trim();
        let value = eval_placeholder(source, scope)?;
        let text = to_display(&value);
        // Raw-text <style> content is not entity-decoded, so only neutralise a closing tag there.
        if in_style {
            out.push_str(&text.replace('<', "\\3c "))
        } else {
            out.push_str(&escape_html(&text))
        }
        rest = &rest[body_start + close + close_len..];
    }
    out.push_str(rest);
    Ok(out)
}

fn eval_placeholder(source: &str, scope: &dyn Scope) -> Result<Value, ItemError> {
    let parsed =
        expr::parse(source).map_err(|e| expression_error(format!("in '{{{{{source}}}}}': {e}")))?;
    expr::eval(&parsed, scope).map_err(|e| expression_error(format!("in '{{{{{source}}}}}': {e}")))
}

/// Whether we are inside a `<style>` element after `chunk`, given the state before it.
fn style_state(chunk: &str, mut inside: bool) -> bool {
    let lower = chunk.to_ascii_lowercase();
    let mut rest = lower.as_str();
    loop {
        let needle = if inside { "</style" } else { "<style" };
        match rest.find(needle) {
            Some(i) => {
                inside = !inside;
                rest = &rest[i + needle.len()..];
            }
            None => return inside,
        }
    }
}

/// Offset of the closing braces, skipping braces inside quoted strings.
fn find_close(body: &str, braces: usize) -> Option<usize> {
    let closer = if braces == 3 { "}}}" } else { "}}" };
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => quote = Some(c),
            None if body[i..].starts_with(closer) => return Some(i),
            None => {}
        }
    }
    None
}

fn preview(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Void elements never have a closing tag.
const VOID: [&str; 14] = [
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
];

/// Removes each element whose `_if="expr"` is falsy; strips the attribute from the rest.
fn apply_conditionals(html: &str, scope: &dyn Scope) -> Result<String, ItemError> {
    if !html.contains("_if=") {
        return Ok(html.to_string());
    }
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(attr) = find_if_attribute(rest) {
        let Some(tag_start) = rest[..attr].rfind('<') else {
            return Err(expression_error("_if attribute outside a tag"));
        };
        let name: String = rest[tag_start + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let (value, attr_end) = attribute_value(rest, attr + "_if=".len())
            .ok_or_else(|| expression_error(format!("malformed _if attribute on <{name}>")))?;
        let tag_end = open_tag_end(rest, attr_end)
            .ok_or_else(|| expression_error(format!("unclosed <{name}> tag")))?;
        let source = unescape_html(&value);
        let source = source.trim();
        let source = source
            .strip_prefix("{{")
            .and_then(|s| s.strip_suffix("}}"))
            .unwrap_or(source)
            .trim();
        let keep = truthy(&eval_placeholder(source, scope)?);
        out.push_str(&rest[..tag_start]);
        if keep {
            out.push_str(rest[tag_start..attr].trim_end());
            out.push_str(&rest[attr_end..tag_end]);
            rest = &rest[tag_end..];
        } else {
            let self_closing = rest[..tag_end].ends_with("/>")
                || VOID.contains(&name.to_ascii_lowercase().as_str());
            let element_end = if self_closing {
                Some(tag_end)
            } else {
                matching_close(rest, tag_end, &name)
            };
            let element_end = element_end.ok_or_else(|| {
                expression_error(format!("no closing </{name}> for the _if element"))
            })?;
            rest = &rest[element_end..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Byte offset of the next ` _if=` attribute (preceded by whitespace so `data_if=` is not one).
fn find_if_attribute(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find("_if=") {
        let at = from + i;
        if s[..at].ends_with(char::is_whitespace) {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

/// A quoted (or bare) attribute value starting at `at`; returns it and the offset just past it.
fn attribute_value(s: &str, at: usize) -> Option<(String, usize)> {
    let rest = s.get(at..)?;
    let quote = rest.chars().next()?;
    if quote == '"' || quote == '\'' {
        let end = rest[1..].find(quote)?;
        return Some((rest[1..1 + end].to_string(), at + end + 2));
    }
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .unwrap_or(rest.len());
    Some((rest[..end].to_string(), at + end))
}

/// Offset just past the `>` that ends the opening tag, respecting quoted attribute values.
fn open_tag_end(s: &str, from: usize) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in s.get(from..)?.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '>' => return Some(from + i + 1),
            None => {}
        }
    }
    None
}

/// Offset just past the `</name>` that closes the element whose opening tag ends at `from`.
fn matching_close(s: &str, from: usize, name: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    let name = name.to_ascii_lowercase();
    let open = format!("<{name}");
    let close = format!("</{name}");
    let mut depth = 1usize;
    let mut pos = from;
    loop {
        let next_open = lower[pos..]
            .find(&open)
            .map(|i| pos + i)
            .filter(|&i| is_tag_boundary(&lower, i + open.len()));
        let next_close = lower[pos..].find(&close).map(|i| pos + i)?;
        match next_open {
            Some(o) if o < next_close => {
                let end = open_tag_end(s, o)?;
                if !s[..end].ends_with("/>") {
                    depth += 1;
                }
                pos = end;
            }
            _ => {
                depth -= 1;
                let end = open_tag_end(s, next_close)?;
                if depth == 0 {
                    return Some(end);
                }
                pos = end;
            }
        }
    }
}

fn is_tag_boundary(s: &str, at: usize) -> bool {
    s[at..].starts_with(|c: char| c.is_whitespace() || c == '>' || c == '/')
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::render::template::VariableDef;

    fn template(html: &str) -> Template {
        let var = |name: &str, required: bool, default: Option<Value>| VariableDef {
            name: name.into(),
            required,
            default,
            kind: None,
            min_length: None,
            max_length: None,
        };
        Template {
            id: "tmpl_test".into(),
            name: "Test".into(),
            width: 100,
            height: 100,
            variables: vec![
                var("title", true, None),
                var("subtitle", false, Some(json!("Default sub"))),
                var("badge", false, None),
                var("price", false, None),
            ],
            html: html.into(),
        }
    }

    fn run(html: &str, vars: Value) -> Result<String, ItemError> {
        let Value::Object(vars) = vars else {
            unreachable!()
        };
        let t = template(html);
        let scope = TemplateScope::new(&t, &vars)?;
        render_html(&t.html, &scope)
    }

    #[test]
    fn placeholders_are_replaced_and_escaped() {
        let html = run(
            "<h1>{{title}}</h1><p>{{ subtitle }}</p><i>{{badge}}</i>",
            json!({"title": "<b>&'\""}),
        )
        .unwrap();
        assert_eq!(
            html,
            "<h1>&lt;b&gt;&amp;&#39;&quot;</h1><p>Default sub</p><i></i>"
        );
    }

    #[test]
    fn triple_braces_are_escaped_too() {
        assert_eq!(
            run("{{{title}}}", json!({"title": "<x>"})).unwrap(),
            "&lt;x&gt;"
        );
    }

    #[test]
    fn expressions_may_contain_braces_in_strings() {
        assert_eq!(
            run("{{ title + '}}' }}", json!({"title": "a"})).unwrap(),
            "a}}"
        );
    }

    #[test]
    fn unicode_survives_substitution() {
        assert_eq!(
            run("{{uppercase(title)}} ✓", json!({"title": "héllo 世界"})).unwrap(),
            "HÉLLO 世界 ✓"
        );
    }

    #[test]
    fn missing_required_variables_are_invalid() {
        for vars in [json!({}), json!({"title": null}), json!({"title": ""})] {
            let err = run("{{title}}", vars).unwrap_err();
            assert_eq!(err.code, error_codes::INVALID_VARIABLE);
            assert!(err.message.contains("'title'"), "{}", err.message);
        }
    }

    #[test]
    fn undeclared_names_are_expression_errors() {
        let err = run("{{ghost}}", json!({"title": "t"})).unwrap_err();
        assert_eq!(err.code, error_codes::EXPRESSION_ERROR);
        assert!(
            err.message.contains("undefined variable 'ghost'"),
            "{}",
            err.message
        );
    }

    #[test]
    fn syntax_errors_and_unknown_functions_are_expression_errors() {
        for (html, want) in [
            ("{{ 1 + }}", "unexpected end"),
            ("{{ shout(title) }}", "unknown function 'shout'"),
            ("{{title", "unclosed"),
        ] {
            let err = run(html, json!({"title": "t"})).unwrap_err();
            assert_eq!(err.code, error_codes::EXPRESSION_ERROR);
            assert!(err.message.contains(want), "{}", err.message);
        }
    }

    #[test]
    fn falsy_if_removes_the_whole_element() {
        let html = r#"<div><span class="b" _if="badge">{{uppercase(badge)}}<span>x</span></span><p>{{title}}</p></div>"#;
        assert_eq!(
            run(html, json!({"title": "T"})).unwrap(),
            "<div><p>T</p></div>"
        );
        assert_eq!(
            run(html, json!({"title": "T", "badge": "new"})).unwrap(),
            r#"<div><span class="b">NEW<span>x</span></span><p>T</p></div>"#
        );
    }

    #[test]
    fn if_accepts_braces_entities_and_void_elements() {
        let html = r#"<img _if="{{ price &gt; 5 }}" src="a.png"><b _if='price &amp;&amp; price < 5'>cheap</b>"#;
        assert_eq!(
            run(html, json!({"title": "T", "price": 3})).unwrap(),
            "<b>cheap</b>"
        );
        assert_eq!(
            run(html, json!({"title": "T", "price": 9})).unwrap(),
            r#"<img src="a.png">"#
        );
    }

    #[test]
    fn style_blocks_get_raw_values() {
        let html = "<style>.a{background:url('{{title}}')}</style><p>{{title}}</p>";
        assert_eq!(
            run(html, json!({"title": "x&y"})).unwrap(),
            "<style>.a{background:url('x&y')}</style><p>x&amp;y</p>"
        );
    }
}
