//! The takumi side: HTML + CSS to bitmap (with the bundled fonts), and bitmap to PNG/JPEG/WebP/GIF bytes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use shared::pictify::wire::Format;
use takumi::prelude::{
    AnimatedGifOptions, AnimationFrame, Bitmap, FromHtml, FromHtmlOptions, ImageSource, Node,
    NodeKind, OutputFormat, Quality, RenderOptions as TakumiOptions, StyleSheet, Viewport,
};
use takumi::unstable::base::layout::measure::MeasuredNode;

use super::fonts::BundledFonts;

/// Why the engine could not produce an image (not a user error: the caller maps it to an item error).
#[derive(Debug, thiserror::Error)]
pub enum RasterError {
    #[error("font registration failed for {font}: {message}")]
    Font { font: &'static str, message: String },
    #[error("HTML parse failed: {0}")]
    Html(String),
    #[error("layout/raster failed: {0}")]
    Render(String),
    #[error("{format} encoding failed: {message}")]
    Encode {
        format: &'static str,
        message: String,
    },
}

/// CSS placed before every template's own, so templates behave as in a browser and text is never fontless.
const BASE_CSS: &str = "*,*::before,*::after{box-sizing:content-box}\
    html{font-family:'DejaVu Sans',sans-serif}";

/// Fonts registered once and shared (cheaply cloneable) by every render.
pub struct Engine {
    bundled: Arc<BundledFonts>,
}

/// A painted bitmap, and the characters of its text that no bundled font could draw.
pub struct Painted {
    pub bitmap: Bitmap,
    pub missing_glyphs: Vec<char>,
    /// Text that did not fit, in words (e.g. "'keeps going…' runs 40 px past the bottom of its
    /// 980×379 box"); empty when everything fit.
    pub overflow: Vec<String>,
}

impl Engine {
    pub fn new() -> Result<Self, RasterError> {
        Ok(Self {
            bundled: BundledFonts::get()?,
        })
    }

    /// Lays out and paints final HTML at `width`×`height`, with images already decoded and keyed by src.
    pub fn render(
        &self,
        html: &str,
        width: u32,
        height: u32,
        images: HashMap<Arc<str>, ImageSource>,
    ) -> Result<Painted, RasterError> {
        let mut css = String::from(BASE_CSS);
        // takumi's from_html drops <style> elements, so their CSS is handed over as a stylesheet.
        for block in style_blocks(html) {
            css.push('\n');
            css.push_str(block);
        }
        let node = Node::from_html(html, FromHtmlOptions::default())
            .map_err(|e| RasterError::Html(e.to_string()))?;
        let mut text = String::new();
        collect_text(&node, &mut text);
        let missing_glyphs = self.bundled.missing_glyphs(&text);
        let stylesheet = Arc::new(StyleSheet::parse_loosy(&css));
        let options = |node: Node, images: HashMap<Arc<str>, ImageSource>| {
            TakumiOptions::builder()
                .viewport(Viewport::new((width, height)))
                .node(node)
                .fonts(&self.bundled.fonts)
                .images(images)
                .stylesheet(Arc::clone(&stylesheet))
                .build()
        };
        // Where layout put each line: a second layout pass, as takumi's render does not return it.
        let measured = takumi::measure(options(node.clone(), images.clone()))
            .map_err(|e| RasterError::Render(e.to_string()))?;
        let overflow = text_overflow(&measured, (width, height), &text);
        let options = options(node, images);
        let bitmap = takumi::render(options).map_err(|e| RasterError::Render(e.to_string()))?;
        Ok(Painted {
            bitmap,
            missing_glyphs,
            overflow,
        })
    }
}

/// Slack for rounding between a line's box and its container's.
const OVERFLOW_SLACK_PX: f32 = 2.0;
/// At most this many overflow findings are described per image.
const OVERFLOW_FINDINGS: usize = 3;

/// The lines layout could not fit: past their own box (clipped, or drawn over what follows),
/// off the image, or cut short with an ellipsis the text itself does not hold (`line-clamp`,
/// `text-overflow`). `text` is the document's text, to tell a template's ellipsis from a cut.
fn text_overflow(root: &MeasuredNode, (width, height): (u32, u32), text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut ellipses = 0;
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        stack.extend(node.children.iter());
        let (left, top) = (node.transform[4], node.transform[5]);
        for run in &node.runs {
            ellipses += run.text.matches('…').count();
            let line = excerpt(&run.text);
            // A line's glyph box may be taller than its line-height (CJK faces are), so a line
            // counts as below a box when its middle is.
            let (right, middle) = (run.x + run.width, run.y + run.height / 2.0);
            if right > node.width + OVERFLOW_SLACK_PX || middle > node.height {
                let past = (right - node.width).max(run.y + run.height - node.height);
                found.push(format!(
                    "'{line}' runs {past:.0} px past its {:.0}×{:.0} box",
                    node.width, node.height
                ));
            } else if left + right > width as f32 + OVERFLOW_SLACK_PX
                || top + middle > height as f32
                || left + run.x < -OVERFLOW_SLACK_PX
                || top + middle < 0.0
            {
                found.push(format!("'{line}' runs off the {width}×{height} image"));
            }
        }
    }
    if ellipses > text.matches('…').count() {
        found.push("text was cut short to fit (an ellipsis replaced the rest)".to_owned());
    }
    found.truncate(OVERFLOW_FINDINGS);
    found
}

/// The start of a line of text, for a message.
fn excerpt(line: &str) -> String {
    const CHARS: usize = 24;
    let trimmed = line.trim();
    if trimmed.chars().count() <= CHARS {
        trimmed.to_owned()
    } else {
        format!("{}…", trimmed.chars().take(CHARS).collect::<String>())
    }
}

/// Appends the text of every text node under `node`: what layout will draw.
fn collect_text(node: &Node, out: &mut String) {
    match &node.kind {
        NodeKind::Container { children } => {
            for child in children {
                collect_text(child, out);
            }
        }
        NodeKind::Text(data) => {
            out.push_str(&data.text);
            out.push(' ');
        }
        _ => {}
    }
}

/// The text of each `<style>` element, in document order.
fn style_blocks(html: &str) -> Vec<&str> {
    let lower = html.to_ascii_lowercase();
    let mut blocks = Vec::new();
    let mut pos = 0;
    while let Some(i) = lower[pos..].find("<style") {
        let open = pos + i;
        let Some(body) = lower[open..].find('>').map(|e| open + e + 1) else {
            break;
        };
        let end = lower[body..]
            .find("</style")
            .map_or(html.len(), |e| body + e);
        blocks.push(&html[body..end]);
        pos = end;
    }
    blocks
}

/// Maps Pictify's 0.1–1 quality (also tolerating a 1–100 scale) to an encoder quality of 1–100.
pub fn encoder_quality(quality: f64) -> u8 {
    let percent = if !quality.is_finite() {
        90.0
    } else if quality <= 1.0 {
        quality * 100.0
    } else {
        quality
    };
    percent.round().clamp(1.0, 100.0) as u8
}

/// Encodes a bitmap. GIF is a single-frame GIF via takumi's (palette-quantising) GIF writer.
pub fn encode(bitmap: Bitmap, format: Format, quality: f64) -> Result<Vec<u8>, RasterError> {
    let mut out = Vec::with_capacity(256 * 1024);
    let quality = Quality::new(encoder_quality(quality));
    let name = format.as_str();
    let fail = |e: takumi::prelude::Error| RasterError::Encode {
        format: name,
        message: e.to_string(),
    };
    match format {
        Format::Png => takumi::write_image(&bitmap, &mut out, OutputFormat::Png).map_err(fail)?,
        Format::Jpeg => {
            takumi::write_image(&bitmap, &mut out, OutputFormat::Jpeg { quality }).map_err(fail)?
        }
        Format::Webp => {
            takumi::write_image(&bitmap, &mut out, OutputFormat::WebP { quality }).map_err(fail)?
        }
        Format::Gif => {
            let frames = [AnimationFrame::new(bitmap, 0)];
            takumi::write_animated_gif(
                Cow::Borrowed(&frames[..]),
                &mut out,
                AnimatedGifOptions::default(),
            )
            .map_err(fail)?;
        }
    }
    Ok(out)
}

/// Encodes raw RGBA pixels (e.g. a thumbnail made elsewhere) with the same encoders as a render.
pub fn encode_rgba(
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    format: Format,
    quality: f64,
) -> Result<Vec<u8>, RasterError> {
    let bitmap = Bitmap::from_raw(width, height, pixels).ok_or(RasterError::Render(format!(
        "{width}x{height} pixels do not match their buffer"
    )))?;
    encode(bitmap, format, quality)
}

/// A flat light-grey image of the given size (the `rasterize: false` stand-in).
pub fn placeholder(width: u32, height: u32, format: Format) -> Result<Vec<u8>, RasterError> {
    let pixels = [0xE5, 0xE7, 0xEB, 0xFF].repeat((width as usize) * (height as usize));
    let bitmap = Bitmap::from_raw(width, height, pixels).ok_or(RasterError::Render(format!(
        "cannot allocate a {width}x{height} placeholder"
    )))?;
    encode(bitmap, format, 0.9)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn quality_maps_fraction_and_percent_scales() {
        assert_eq!(encoder_quality(0.8), 80);
        assert_eq!(encoder_quality(0.1), 10);
        assert_eq!(encoder_quality(1.0), 100);
        assert_eq!(encoder_quality(75.0), 75);
        assert_eq!(encoder_quality(0.0), 1);
        assert_eq!(encoder_quality(f64::NAN), 90);
        assert_eq!(encoder_quality(500.0), 100);
    }

    #[test]
    fn style_blocks_are_extracted_in_order() {
        let html =
            "<html><head><STYLE media=x>.a{}</STYLE><style>.b{}</style></head><body></body></html>";
        assert_eq!(style_blocks(html), [".a{}", ".b{}"]);
    }
}
