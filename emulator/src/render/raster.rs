//! The takumi side: bundled fonts, HTML + CSS to bitmap, and bitmap to PNG/JPEG/WebP/GIF bytes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use shared::pictify::wire::Format;
use takumi::prelude::{
    AnimatedGifOptions, AnimationFrame, Bitmap, FontOverride, FontResource, FontSource, Fonts,
    FromHtml, FromHtmlOptions, GenericFamily, ImageSource, Node, OutputFormat, Quality,
    RenderOptions as TakumiOptions, StyleSheet, Viewport,
};

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
    fonts: Fonts,
}

impl Engine {
    pub fn new() -> Result<Self, RasterError> {
        const SANS: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
        const SANS_BOLD: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf");
        const SERIF: &[u8] = include_bytes!("../../assets/fonts/DejaVuSerif.ttf");
        const MONO: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");
        // Registration order is also the fallback order for unknown families: sans first.
        let faces: [(&'static str, &'static [u8], GenericFamily, Option<&str>); 8] = [
            ("DejaVuSans.ttf", SANS, GenericFamily::SANS_SERIF, None),
            (
                "DejaVuSans-Bold.ttf",
                SANS_BOLD,
                GenericFamily::SANS_SERIF,
                None,
            ),
            ("DejaVuSerif.ttf", SERIF, GenericFamily::SERIF, None),
            ("DejaVuSansMono.ttf", MONO, GenericFamily::MONOSPACE, None),
            // A face joins one generic family per registration, and re-registering under the same family
            // name is a no-op, so the UI generics get aliases of the sans faces.
            (
                "DejaVuSans.ttf",
                SANS,
                GenericFamily::SYSTEM_UI,
                Some("DejaVu Sans UI"),
            ),
            (
                "DejaVuSans-Bold.ttf",
                SANS_BOLD,
                GenericFamily::SYSTEM_UI,
                Some("DejaVu Sans UI"),
            ),
            (
                "DejaVuSans.ttf",
                SANS,
                GenericFamily::UI_SANS_SERIF,
                Some("DejaVu Sans UI Sans"),
            ),
            (
                "DejaVuSans-Bold.ttf",
                SANS_BOLD,
                GenericFamily::UI_SANS_SERIF,
                Some("DejaVu Sans UI Sans"),
            ),
        ];
        let mut fonts = Fonts::default();
        for (font, bytes, generic, alias) in faces {
            let mut resource =
                FontResource::new(FontSource::from_static(bytes)).generic_family(generic);
            if let Some(alias) = alias {
                resource = resource.override_info(FontOverride {
                    family_name: Some(alias.into()),
                    ..Default::default()
                });
            }
            fonts.register(resource).map_err(|e| RasterError::Font {
                font,
                message: e.to_string(),
            })?;
        }
        Ok(Self { fonts })
    }

    /// Lays out and paints final HTML at `width`×`height`, with images already decoded and keyed by src.
    pub fn render(
        &self,
        html: &str,
        width: u32,
        height: u32,
        images: HashMap<Arc<str>, ImageSource>,
    ) -> Result<Bitmap, RasterError> {
        let mut css = String::from(BASE_CSS);
        // takumi's from_html drops <style> elements, so their CSS is handed over as a stylesheet.
        for block in style_blocks(html) {
            css.push('\n');
            css.push_str(block);
        }
        let node = Node::from_html(html, FromHtmlOptions::default())
            .map_err(|e| RasterError::Html(e.to_string()))?;
        let options = TakumiOptions::builder()
            .viewport(Viewport::new((width, height)))
            .node(node)
            .fonts(&self.fonts)
            .images(images)
            .stylesheet(Arc::new(StyleSheet::parse_loosy(&css)))
            .build();
        takumi::render(options).map_err(|e| RasterError::Render(e.to_string()))
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
