//! Rendering: templates with Pictify placeholders/expressions turned into real images with takumi.
//!
//! PUBLIC API CONTRACT (the server module depends on exactly these names):
//! - `TemplateStore::bundled()`, `TemplateStore::load_dir(path)`, `TemplateStore::merge(other)`,
//!   `TemplateStore::get(id)`, `TemplateStore::ids()`
//! - `Template { id, name, width, height, variables, html }`, `VariableDef { name, required, default }`
//! - `Renderer::new(RenderOptions)`, `Renderer::render(&Template, &VariableSet, Format, quality)`
//! - `RenderedImage { bytes, width, height, format }`, `ItemError { code, message }`
//!
//! Choices worth knowing:
//! - Output: PNG, JPEG and lossy WebP honour `quality` (0.1–1, or 1–100; mapped to encoder 1–100;
//!   PNG ignores it). GIF is a single-frame GIF from takumi's palette-quantising writer.
//! - Images: every `<img src>` and CSS `url()` after substitution is loaded (http(s) with
//!   `fetch_timeout`, `file://`, `data:`) and decoded up front; any failure is `IMAGE_FETCH_FAILED`
//!   naming the src. SVG images are not supported (the build has no SVG feature). Decoded http(s)
//!   images are cached (bounded) across renders.
//! - `time_budget` covers image loading and rasterisation; on expiry the item fails with
//!   `RENDER_TIMEOUT` while the blocking raster task runs to completion in the background.
//! - Engine failures (encoder/layout errors) use [`RENDER_FAILED`], which Pictify does not document.

pub mod expr;
pub mod fonts;
pub mod functions;
#[cfg(test)]
mod functions_tests;
pub mod images;
pub mod raster;
pub mod substitute;
pub mod template;
pub mod value;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::pictify::wire::{Format, VariableSet, error_codes};
use takumi::prelude::ImageSource;

pub use template::{Template, TemplateError, TemplateStore, VariableDef};

/// Item code for an internal engine failure (HTML the engine rejects, an encoder error). Pictify documents
/// no UPPER_SNAKE code for this; its error-type list has `render-failed`, hence the name.
pub const RENDER_FAILED: &str = "RENDER_FAILED";

/// Decoded http(s) images kept across renders; batches reuse the same few avatars and product shots.
const IMAGE_CACHE_ENTRIES: usize = 256;

/// How items are rendered.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// A render that takes longer than this fails with `RENDER_TIMEOUT`.
    pub time_budget: Duration,
    /// Timeout for fetching one http(s) image `src`.
    pub fetch_timeout: Duration,
    /// `false` skips rasterisation (variables and expressions are still checked) and returns a
    /// cached placeholder image of the template's size: for measuring pipeline overhead.
    pub rasterize: bool,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            time_budget: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(10),
            rasterize: true,
        }
    }
}

/// A rendered image, encoded.
#[derive(Debug, Clone)]
pub struct RenderedImage {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub format: Format,
    /// What the render noticed about the image it still produced.
    pub warnings: Vec<RenderWarning>,
}

/// Warning code: text holds characters no bundled font can draw (they show as empty boxes).
pub const MISSING_GLYPHS: &str = "MISSING_GLYPHS";

/// Warning code: text did not fit where the template put it (clipped, off the image, over what
/// follows, or cut short with an ellipsis).
pub const TEXT_OVERFLOW: &str = "TEXT_OVERFLOW";

/// The response header on `GET /images/{file}` that carries the image's warnings, as a JSON array
/// of [`RenderWarning`] (ASCII only: other characters are `\u` escapes). Absent when there are none.
/// Real Pictify sends nothing like it; it is how a local run learns what layout saw.
pub const WARNINGS_HEADER: &str = "x-emulator-warnings";

/// Something a render noticed about an image it still produced: the item stays a success.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RenderWarning {
    pub code: String,
    pub message: String,
}

impl RenderWarning {
    /// The [`WARNINGS_HEADER`] value for `warnings`.
    pub fn header_value(warnings: &[RenderWarning]) -> String {
        let json = serde_json::to_string(warnings).unwrap_or_else(|_| "[]".into());
        let mut ascii = String::with_capacity(json.len());
        for c in json.chars() {
            if c.is_ascii() && !c.is_ascii_control() {
                ascii.push(c);
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    ascii.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
        ascii
    }
}

/// An item-level failure with one of the documented codes (`shared::pictify::wire::error_codes`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ItemError {
    pub code: &'static str,
    pub message: String,
}

/// Width, height and format of a cached placeholder image.
type PlaceholderKey = (u32, u32, Format);

/// Renders items; cheap to share behind an `Arc`.
pub struct Renderer {
    options: RenderOptions,
    engine: Arc<raster::Engine>,
    client: reqwest::Client,
    image_cache: Arc<Mutex<HashMap<String, ImageSource>>>,
    placeholders: Mutex<HashMap<PlaceholderKey, Arc<Vec<u8>>>>,
}

impl Renderer {
    /// Registers the bundled fonts and builds the HTTP client once; every render shares them.
    pub fn new(options: RenderOptions) -> anyhow::Result<Self> {
        let engine = raster::Engine::new()?;
        let client = reqwest::Client::builder()
            // The whole fetch is bounded by `fetch_timeout` in `images::load`, which words the error.
            .connect_timeout(options.fetch_timeout)
            .user_agent(concat!("pictify-emulator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            options,
            engine: Arc::new(engine),
            client,
            image_cache: Arc::default(),
            placeholders: Mutex::default(),
        })
    }

    pub fn options(&self) -> &RenderOptions {
        &self.options
    }

    /// Render one item. Never panics; every failure is an `ItemError` with a documented code.
    pub async fn render(
        &self,
        template: &Template,
        variables: &VariableSet,
        format: Format,
        quality: f64,
    ) -> Result<RenderedImage, ItemError> {
        let scope = substitute::TemplateScope::new(template, variables)?;
        let html = substitute::render_html(&template.html, &scope)?;
        let budget = self.options.time_budget;
        let started = std::time::Instant::now();
        let result =
            tokio::time::timeout(budget, self.rasterize(html, template, format, quality)).await;
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(_) => Err(ItemError {
                code: error_codes::RENDER_TIMEOUT,
                message: format!(
                    "render of '{}' exceeded the {} ms budget",
                    template.id,
                    budget.as_millis()
                ),
            }),
        };
        match &outcome {
            Ok(image) => tracing::debug!(
                template = %template.id, format = format.as_str(), bytes = image.bytes.len(),
                elapsed_ms = started.elapsed().as_millis() as u64, "rendered"
            ),
            Err(e) => {
                tracing::debug!(template = %template.id, code = e.code, error = %e.message, "render failed")
            }
        }
        outcome
    }

    /// Loads images, then (off the async threads) decodes them, lays out, paints and encodes.
    async fn rasterize(
        &self,
        html: String,
        template: &Template,
        format: Format,
        quality: f64,
    ) -> Result<RenderedImage, ItemError> {
        let (width, height) = (template.width, template.height);
        let loaded = self.load_images(&html).await?;
        if !self.options.rasterize {
            for (src, loaded) in &loaded {
                if let Loaded::Bytes(bytes) = loaded
                    && image::guess_format(bytes).is_err()
                {
                    return Err(images::fetch_failed(src, "not a recognised image format"));
                }
            }
            let bytes = self.placeholder(width, height, format)?;
            return Ok(RenderedImage {
                bytes: bytes.to_vec(),
                width,
                height,
                format,
                warnings: Vec::new(),
            });
        }
        let engine = Arc::clone(&self.engine);
        let cache = Arc::clone(&self.image_cache);
        let task = tokio::task::spawn_blocking(
            move || -> Result<(Vec<u8>, Vec<RenderWarning>), ItemError> {
                let mut decoded: HashMap<Arc<str>, ImageSource> = HashMap::new();
                for (src, loaded) in loaded {
                    let source = match loaded {
                        Loaded::Cached(hit) => hit,
                        Loaded::Bytes(bytes) => {
                            let source = ImageSource::from_bytes(&bytes).map_err(|e| {
                                images::fetch_failed(&src, format!("cannot decode: {e}"))
                            })?;
                            if matches!(images::classify(&src), Ok(images::SrcKind::Http)) {
                                remember_image(&cache, &src, &source);
                            }
                            source
                        }
                    };
                    decoded.insert(Arc::from(src.as_str()), source);
                }
                let painted = engine
                    .render(&html, width, height, decoded)
                    .map_err(render_failed)?;
                let mut warnings = Vec::new();
                if !painted.overflow.is_empty() {
                    warnings.push(RenderWarning {
                        code: TEXT_OVERFLOW.into(),
                        message: painted.overflow.join("; "),
                    });
                }
                if !painted.missing_glyphs.is_empty() {
                    warnings.push(RenderWarning {
                        code: MISSING_GLYPHS.into(),
                        message: fonts::describe_missing(&painted.missing_glyphs),
                    });
                }
                let bytes =
                    raster::encode(painted.bitmap, format, quality).map_err(render_failed)?;
                Ok((bytes, warnings))
            },
        );
        let (bytes, warnings) = task.await.map_err(|e| ItemError {
            code: RENDER_FAILED,
            message: format!("render task failed: {e}"),
        })??;
        Ok(RenderedImage {
            bytes,
            width,
            height,
            format,
            warnings,
        })
    }

    /// Fetches every image the HTML references, concurrently.
    async fn load_images(&self, html: &str) -> Result<Vec<(String, Loaded)>, ItemError> {
        let sources = images::image_sources(html);
        let fetches = sources.into_iter().map(|src| async move {
            if let Some(hit) = cached_image(&self.image_cache, &src) {
                return Ok((src, Loaded::Cached(hit)));
            }
            let bytes = images::load(&self.client, &src, self.options.fetch_timeout).await?;
            Ok((src, Loaded::Bytes(bytes)))
        });
        futures::future::try_join_all(fetches).await
    }

    fn placeholder(
        &self,
        width: u32,
        height: u32,
        format: Format,
    ) -> Result<Arc<Vec<u8>>, ItemError> {
        let key = (width, height, format);
        if let Some(hit) = self
            .placeholders
            .lock()
            .ok()
            .and_then(|map| map.get(&key).cloned())
        {
            return Ok(hit);
        }
        let bytes = Arc::new(raster::placeholder(width, height, format).map_err(render_failed)?);
        if let Ok(mut map) = self.placeholders.lock() {
            map.insert(key, Arc::clone(&bytes));
        }
        Ok(bytes)
    }
}

/// One image reference, either already decoded (cache hit) or as fetched bytes.
enum Loaded {
    Cached(ImageSource),
    Bytes(Vec<u8>),
}

fn render_failed(e: raster::RasterError) -> ItemError {
    ItemError {
        code: RENDER_FAILED,
        message: e.to_string(),
    }
}

fn cached_image(cache: &Mutex<HashMap<String, ImageSource>>, src: &str) -> Option<ImageSource> {
    if !matches!(images::classify(src), Ok(images::SrcKind::Http)) {
        return None;
    }
    cache.lock().ok()?.get(src).cloned()
}

fn remember_image(cache: &Mutex<HashMap<String, ImageSource>>, src: &str, source: &ImageSource) {
    if let Ok(mut map) = cache.lock() {
        // Crude but bounded: a full cache starts over rather than tracking recency.
        if map.len() >= IMAGE_CACHE_ENTRIES {
            map.clear();
        }
        map.insert(src.to_string(), source.clone());
    }
}
