//! Image sources: find every `<img src>` and CSS `url()` in final HTML and load their bytes (http(s), file, data).

use std::time::Duration;

use base64::Engine as _;
use shared::pictify::wire::error_codes;

use super::ItemError;
use super::substitute::unescape_html;

/// Largest image we accept, so one hostile URL cannot exhaust memory.
const MAX_IMAGE_BYTES: usize = 25 * 1024 * 1024;

pub fn fetch_failed(src: &str, why: impl std::fmt::Display) -> ItemError {
    ItemError {
        code: error_codes::IMAGE_FETCH_FAILED,
        message: format!("image '{}': {why}", shorten(src)),
    }
}

/// Long data URIs would drown the message; keep its head.
fn shorten(src: &str) -> String {
    if src.chars().count() > 96 {
        src.chars().take(96).collect::<String>() + "…"
    } else {
        src.to_string()
    }
}

/// Every distinct image reference, as takumi will see it (entities decoded), in document order.
pub fn image_sources(html: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut push = |src: String| {
        let src = src.trim().to_string();
        // `#id` points at an in-document SVG fragment, not a resource.
        if !src.is_empty() && !src.starts_with('#') && !found.contains(&src) {
            found.push(src);
        }
    };
    let lower = html.to_ascii_lowercase();
    let mut pos = 0;
    while let Some(i) = lower[pos..].find("<img") {
        let tag_start = pos + i;
        let tag_end = lower[tag_start..]
            .find('>')
            .map_or(lower.len(), |e| tag_start + e);
        if let Some(src) = attribute(&html[tag_start..tag_end], &lower[tag_start..tag_end], "src") {
            push(unescape_html(&src));
        }
        pos = tag_end;
    }
    let mut pos = 0;
    while let Some(i) = lower[pos..].find("url(") {
        let start = pos + i + 4;
        let Some(len) = html[start..].find(')') else {
            break;
        };
        let raw = unescape_html(html[start..start + len].trim());
        push(raw.trim_matches(|c| c == '\'' || c == '"').to_string());
        pos = start + len;
    }
    found
}

/// The value of attribute `name` inside one tag (`lower` is the tag lowercased, for matching).
fn attribute(tag: &str, lower: &str, name: &str) -> Option<String> {
    let needle = format!("{name}=");
    let mut from = 0;
    while let Some(i) = lower[from..].find(&needle) {
        let at = from + i;
        from = at + needle.len();
        if !lower[..at].ends_with(char::is_whitespace) {
            continue;
        }
        let rest = &tag[from..];
        let quote = rest.chars().next()?;
        if quote == '"' || quote == '\'' {
            let end = rest[1..].find(quote)?;
            return Some(rest[1..1 + end].to_string());
        }
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(rest.len());
        return Some(rest[..end].to_string());
    }
    None
}

/// Which loader handles a src.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrcKind {
    Http,
    File,
    Data,
}

pub fn classify(src: &str) -> Result<SrcKind, ItemError> {
    let lower = src.get(..8).unwrap_or(src).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        Ok(SrcKind::Http)
    } else if lower.starts_with("file://") {
        Ok(SrcKind::File)
    } else if lower.starts_with("data:") {
        Ok(SrcKind::Data)
    } else {
        Err(fetch_failed(
            src,
            "unsupported scheme (use http(s)://, file:// or data:)",
        ))
    }
}

/// Loads the raw bytes behind one src.
pub async fn load(
    client: &reqwest::Client,
    src: &str,
    timeout: Duration,
) -> Result<Vec<u8>, ItemError> {
    match classify(src)? {
        SrcKind::Data => decode_data_uri(src),
        SrcKind::File => {
            let url = url::Url::parse(src)
                .map_err(|e| fetch_failed(src, format!("bad file URL: {e}")))?;
            let path = url
                .to_file_path()
                .map_err(|()| fetch_failed(src, "not a local file path"))?;
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| fetch_failed(src, e))?;
            check_size(src, bytes.len())?;
            Ok(bytes)
        }
        SrcKind::Http => {
            let fetch = async {
                let response = client
                    .get(src)
                    .send()
                    .await
                    .map_err(|e| fetch_failed(src, e))?;
                let status = response.status();
                if !status.is_success() {
                    return Err(fetch_failed(src, format!("HTTP {status}")));
                }
                if let Some(len) = response.content_length() {
                    check_size(src, usize::try_from(len).unwrap_or(usize::MAX))?;
                }
                let bytes = response.bytes().await.map_err(|e| fetch_failed(src, e))?;
                check_size(src, bytes.len())?;
                Ok(bytes.to_vec())
            };
            tokio::time::timeout(timeout, fetch).await.map_err(|_| {
                fetch_failed(src, format!("timed out after {} ms", timeout.as_millis()))
            })?
        }
    }
}

fn check_size(src: &str, len: usize) -> Result<(), ItemError> {
    if len > MAX_IMAGE_BYTES {
        return Err(fetch_failed(
            src,
            format!("larger than {MAX_IMAGE_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// `data:[<mime>][;base64],<payload>`
pub fn decode_data_uri(src: &str) -> Result<Vec<u8>, ItemError> {
    let (meta, payload) = src
        .get(5..)
        .and_then(|rest| rest.split_once(','))
        .ok_or_else(|| fetch_failed(src, "malformed data URI"))?;
    if meta.to_ascii_lowercase().ends_with(";base64") {
        let compact: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact.trim_end_matches('='))
            .or_else(|_| {
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(compact.trim_end_matches('='))
            })
            .map_err(|e| fetch_failed(src, format!("bad base64: {e}")))
    } else {
        Ok(percent_encoding::percent_decode_str(payload).collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_img_and_css_sources_once_each() {
        let html = r##"<style>.a{background-image:url("http://x/bg.png")}</style>
            <IMG class="p" SRC="http://x/a.png?w=1&amp;h=2"><div style="background: url(&quot;file:///tmp/b.png&quot;)"></div>
            <img src='http://x/a.png?w=1&h=2'><svg><use href="#icon"/></svg><div style="mask:url(#m)"></div>"##;
        assert_eq!(
            image_sources(html),
            [
                "http://x/a.png?w=1&h=2",
                "http://x/bg.png",
                "file:///tmp/b.png"
            ]
        );
    }

    #[test]
    fn data_uris_decode_base64_and_percent_forms() {
        assert_eq!(
            decode_data_uri("data:text/plain;base64,aGk=").unwrap(),
            b"hi"
        );
        assert_eq!(
            decode_data_uri("data:text/plain;base64,aGk").unwrap(),
            b"hi"
        );
        assert_eq!(decode_data_uri("data:,a%20b").unwrap(), b"a b");
        assert_eq!(
            decode_data_uri("data:image/png;base64,@@@")
                .unwrap_err()
                .code,
            error_codes::IMAGE_FETCH_FAILED
        );
    }

    #[test]
    fn unknown_schemes_are_fetch_failures_naming_the_src() {
        let err = classify("logo.png").unwrap_err();
        assert_eq!(err.code, error_codes::IMAGE_FETCH_FAILED);
        assert!(err.message.contains("logo.png"));
    }
}
