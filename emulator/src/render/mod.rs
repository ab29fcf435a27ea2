//! Rendering: templates with Pictify placeholders/expressions turned into real images with takumi.
//!
//! PUBLIC API CONTRACT (the server module depends on exactly these names):
//! - `TemplateStore::bundled()`, `TemplateStore::load_dir(path)`, `TemplateStore::merge(other)`,
//!   `TemplateStore::get(id)`, `TemplateStore::ids()`
//! - `Template { id, name, width, height, variables, html }`, `VariableDef { name, required, default }`
//! - `Renderer::new(RenderOptions)`, `Renderer::render(&Template, &VariableSet, Format, quality)`
//! - `RenderedImage { bytes, width, height, format }`, `ItemError { code, message }`

pub mod template;

use std::time::Duration;

use shared::pictify::wire::{Format, VariableSet};

pub use template::{Template, TemplateStore, VariableDef};

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
        Self { time_budget: Duration::from_secs(30), fetch_timeout: Duration::from_secs(10), rasterize: true }
    }
}

/// A rendered image, encoded.
#[derive(Debug, Clone)]
pub struct RenderedImage {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub format: Format,
}

/// An item-level failure with one of the documented codes (`shared::pictify::wire::error_codes`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ItemError {
    pub code: &'static str,
    pub message: String,
}

/// Renders items; cheap to share behind an `Arc`.
pub struct Renderer {
    options: RenderOptions,
}

impl Renderer {
    pub fn new(options: RenderOptions) -> anyhow::Result<Self> {
        Ok(Self { options })
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
        let _ = (variables, quality);
        // STUB: replaced by the real engine.
        Ok(RenderedImage { bytes: Vec::new(), width: template.width, height: template.height, format })
    }
}
