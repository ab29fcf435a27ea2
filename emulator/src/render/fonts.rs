//! The bundled fonts: registered once per process, and the set of characters they can draw, so a
//! render can say which characters came out as `.notdef` boxes instead of drawing them silently.
//!
//! Why these faces (emulator/assets/fonts/README.md has sources, sizes and licences):
//! - DejaVu Sans/Serif/Mono: Latin, Greek, Cyrillic, Arabic, Hebrew and many symbols, and the
//!   generic families templates name.
//! - Noto Sans Devanagari and Noto Sans Thai, whole.
//! - Noto Sans CJK JP, cut to the characters of GB 2312, Big5 level 1, JIS X 0208 and KS X 1001
//!   (10,563 Han, 2,350 Hangul, all kana): what running Chinese, Japanese and Korean text uses,
//!   for 3.5 MB instead of 16 MB. A rarer character is reported as `MISSING_GLYPHS`, never drawn
//!   as an empty box in silence. Bold is synthesised, as browsers do for a face with no bold.
//! - Twemoji (COLR v0 colour layers, which takumi paints): colour emoji in 0.5 MB, where Noto
//!   Color Emoji's bitmaps take 10 MB.
//!
//! The script faces are registered as last-resort families: any `font-family` list, generic or
//! not, falls back to them for the characters its own faces lack, as a browser's system fallback
//! does.

use std::sync::{Arc, OnceLock};

use skrifa::{FontRef, MetadataProvider};
use takumi::prelude::{FontOverride, FontResource, FontSource, Fonts, GenericFamily};

use super::raster::RasterError;

/// Where a face serves.
#[derive(Clone, Copy)]
enum Role {
    /// Under a generic family (and, with an alias, as a second family name for the same bytes:
    /// re-registering a face under its own name is a no-op, so each extra generic needs one).
    Generic(GenericFamily, Option<&'static str>),
    /// Behind every family list, for the characters no listed face has.
    Fallback,
}

struct Face {
    file: &'static str,
    bytes: &'static [u8],
    role: Role,
}

macro_rules! face {
    ($file:literal, $role:expr) => {
        Face {
            file: $file,
            bytes: include_bytes!(concat!("../../assets/fonts/", $file)),
            role: $role,
        }
    };
}

/// Registration order is also the fallback order for unknown families: sans first.
fn faces() -> [Face; 14] {
    use GenericFamily as G;
    [
        face!("DejaVuSans.ttf", Role::Generic(G::SANS_SERIF, None)),
        face!("DejaVuSans-Bold.ttf", Role::Generic(G::SANS_SERIF, None)),
        face!("DejaVuSerif.ttf", Role::Generic(G::SERIF, None)),
        face!("DejaVuSansMono.ttf", Role::Generic(G::MONOSPACE, None)),
        face!(
            "DejaVuSans.ttf",
            Role::Generic(G::SYSTEM_UI, Some("DejaVu Sans UI"))
        ),
        face!(
            "DejaVuSans-Bold.ttf",
            Role::Generic(G::SYSTEM_UI, Some("DejaVu Sans UI"))
        ),
        face!(
            "DejaVuSans.ttf",
            Role::Generic(G::UI_SANS_SERIF, Some("DejaVu Sans UI Sans"))
        ),
        face!(
            "DejaVuSans-Bold.ttf",
            Role::Generic(G::UI_SANS_SERIF, Some("DejaVu Sans UI Sans"))
        ),
        face!("NotoSansDevanagari-Regular.woff2", Role::Fallback),
        face!("NotoSansDevanagari-Bold.woff2", Role::Fallback),
        face!("NotoSansThai-Regular.woff2", Role::Fallback),
        face!("NotoSansThai-Bold.woff2", Role::Fallback),
        face!("NotoSansCJKjp-Regular-subset.woff2", Role::Fallback),
        face!("Twemoji.woff2", Role::Fallback),
    ]
}

/// The registered fonts and every character at least one of them maps to a glyph.
pub struct BundledFonts {
    pub fonts: Fonts,
    /// Sorted, distinct code points.
    coverage: Vec<u32>,
}

impl BundledFonts {
    /// Decodes and registers the faces on first use; later calls share the result.
    pub fn get() -> Result<Arc<BundledFonts>, RasterError> {
        static BUNDLED: OnceLock<Result<Arc<BundledFonts>, String>> = OnceLock::new();
        BUNDLED
            .get_or_init(|| Self::load().map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(|message| RasterError::Font {
                font: "bundled fonts",
                message,
            })
    }

    fn load() -> Result<Self, RasterError> {
        let mut fonts = Fonts::default();
        let mut coverage = Vec::new();
        let mut seen: Vec<&'static str> = Vec::new();
        for face in faces() {
            let fail = |message: String| RasterError::Font {
                font: face.file,
                message,
            };
            let bytes: Vec<u8> = if face.bytes.starts_with(b"wOF2") {
                wuff::decompress_woff2(face.bytes).map_err(|e| fail(format!("{e:?}")))?
            } else {
                face.bytes.to_vec()
            };
            if !seen.contains(&face.file) {
                seen.push(face.file);
                let font = FontRef::new(&bytes).map_err(|e| fail(e.to_string()))?;
                coverage.extend(font.charmap().mappings().map(|(c, _)| c));
            }
            let mut resource = FontResource::new(FontSource::from(bytes));
            match face.role {
                Role::Generic(generic, alias) => {
                    resource = resource.generic_family(generic);
                    if let Some(alias) = alias {
                        resource = resource.override_info(FontOverride {
                            family_name: Some(alias.into()),
                            ..Default::default()
                        });
                    }
                }
                Role::Fallback => resource = resource.last_resort(),
            }
            fonts.register(resource).map_err(|e| fail(e.to_string()))?;
        }
        coverage.sort_unstable();
        coverage.dedup();
        Ok(Self { fonts, coverage })
    }

    /// Whether some bundled face has a glyph for `c`.
    pub fn covers(&self, c: char) -> bool {
        self.coverage.binary_search(&u32::from(c)).is_ok()
    }

    /// The distinct characters of `text` no bundled face can draw, in order of first appearance.
    /// Characters that draw nothing by design (spaces, controls, joiners, variation selectors)
    /// never count.
    pub fn missing_glyphs(&self, text: &str) -> Vec<char> {
        let mut missing = Vec::new();
        for c in text.chars() {
            if !draws_nothing(c) && !self.covers(c) && !missing.contains(&c) {
                missing.push(c);
            }
        }
        missing
    }
}

/// Characters a renderer consumes without a glyph of their own: whitespace, controls and the
/// Unicode default-ignorables (joiners, direction marks, variation selectors, tags).
fn draws_nothing(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(u32::from(c),
            0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5
            | 0x180B..=0x180F | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F
            | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFF8
            | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

/// How a `MISSING_GLYPHS` warning names the characters: each with its code point, so a
/// private-use or unassigned character is identifiable even where it shows as nothing.
pub fn describe_missing(missing: &[char]) -> String {
    let listed: Vec<String> = missing
        .iter()
        .map(|c| format!("U+{:04X} '{c}'", u32::from(*c)))
        .collect();
    format!(
        "the fonts cannot draw {} character(s): {}",
        missing.len(),
        listed.join(", ")
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_script_the_templates_promise_is_covered() {
        let fonts = BundledFonts::get().unwrap();
        for sample in [
            "Déjà vu, façade, Ærøskøbing",
            "東京の夜景と桜",    // Japanese: kanji + kana
            "简体中文的标题",    // simplified Chinese
            "繁體中文的標題",    // traditional Chinese
            "한국어 제목입니다", // Korean
            "Привет, мир",       // Cyrillic
            "Καλημέρα κόσμε",    // Greek
            "مرحبا بالعالم",     // Arabic
            "שלום עולם",         // Hebrew
            "नमस्ते दुनिया",        // Devanagari
            "สวัสดีชาวโลก",        // Thai
            "🎉🚀😀👍🏽❤️👨‍👩‍👧",      // emoji, a skin tone, VS16 and a ZWJ sequence
        ] {
            assert_eq!(fonts.missing_glyphs(sample), Vec::<char>::new(), "{sample}");
        }
    }

    #[test]
    fn uncovered_characters_are_listed_once_in_order() {
        let fonts = BundledFonts::get().unwrap();
        let text = "ok \u{E000} and \u{F8FF}\u{E000}";
        assert_eq!(fonts.missing_glyphs(text), vec!['\u{E000}', '\u{F8FF}']);
        assert_eq!(
            describe_missing(&['\u{E000}']),
            "the fonts cannot draw 1 character(s): U+E000 '\u{E000}'"
        );
    }
}
