//! End-to-end tests of the rendering engine: bundled templates to real, decodable, non-blank images.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use image::{DynamicImage, GenericImageView, ImageFormat, Rgba, RgbaImage};
use pictify_emulator::render::{ItemError, RenderOptions, RenderedImage, Renderer, TemplateStore};
use serde_json::{Value, json};
use shared::pictify::wire::{Format, VariableSet, error_codes};

fn renderer_with(options: RenderOptions) -> Renderer {
    Renderer::new(options).expect("renderer")
}

fn renderer() -> Renderer {
    renderer_with(RenderOptions::default())
}

fn vars(v: Value) -> VariableSet {
    match v {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// A colourful PNG (a "product shot": gradient backdrop and a disc) as a data URI.
fn sample_png(width: u32, height: u32) -> Vec<u8> {
    let (cx, cy, r) = (
        width as f32 / 2.0,
        height as f32 / 2.0,
        width.min(height) as f32 / 3.0,
    );
    let img = RgbaImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32, y as f32);
        if (fx - cx).powi(2) + (fy - cy).powi(2) < r * r {
            Rgba([250, 204, 21, 255])
        } else {
            Rgba([
                (40.0 + 180.0 * fx / width as f32) as u8,
                90,
                (220.0 - 120.0 * fy / height as f32) as u8,
                255,
            ])
        }
    });
    let mut bytes = Vec::new();
    DynamicImage::ImageRgba8(img)
        .write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Png)
        .unwrap();
    bytes
}

fn data_uri(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// Realistic variables for each bundled template (the seed guide's examples).
fn sample_variables(id: &str) -> VariableSet {
    vars(match id {
        "tmpl_blog_card" => json!({
            "title": "Getting Started with APIs: a practical guide for busy teams",
            "author": "Alice Johnson", "publishDate": "2026-01-15",
        }),
        "tmpl_social_card" => json!({
            "title": "Designing Resilient Serverless Pipelines",
            "excerpt": "How we render ten thousand social cards an hour with queues, idempotency keys and signed webhooks — and what broke on the way.",
            "author": "Bob Smith", "authorAvatar": data_uri(&sample_png(160, 160)),
            "category": "Engineering", "readTime": "7 min read", "publishDate": "2026-01-20",
        }),
        "tmpl_certificate" => json!({
            "recipientName": "alice johnson", "eventName": "Tech Conference 2026",
            "eventDate": "January 29, 2026", "certificateId": "CERT-TK001",
        }),
        "tmpl_product_card" => json!({
            "productName": "Aurora Wireless Headphones", "price": 129.99, "originalPrice": 179.99,
            "discount": "28% OFF", "imageUrl": data_uri(&sample_png(640, 410)),
            "rating": 4.6, "reviewCount": 2381, "badge": "bestseller",
        }),
        other => panic!("no sample variables for {other}"),
    })
}

async fn render(
    r: &Renderer,
    id: &str,
    v: &VariableSet,
    format: Format,
    quality: f64,
) -> Result<RenderedImage, ItemError> {
    let store = TemplateStore::bundled();
    let template = store.get(id).expect("bundled template");
    r.render(&template, v, format, quality).await
}

fn distinct_colours(img: &DynamicImage) -> usize {
    img.to_rgba8()
        .pixels()
        .map(|p| p.0)
        .collect::<HashSet<_>>()
        .len()
}

/// Pixels in a region bright enough to be white text on the blog card's dark gradient.
fn bright_pixels(img: &DynamicImage, x: u32, y: u32, w: u32, h: u32) -> usize {
    img.view(x, y, w, h)
        .pixels()
        .filter(|(_, _, p)| p.0[..3].iter().all(|c| *c > 225))
        .count()
}

#[tokio::test]
async fn every_bundled_template_renders_a_real_png() {
    let r = renderer();
    std::fs::create_dir_all("/tmp/render-samples").unwrap();
    for id in TemplateStore::bundled().ids() {
        let out = render(&r, id, &sample_variables(id), Format::Png, 1.0)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        let img = image::load_from_memory_with_format(&out.bytes, ImageFormat::Png).unwrap();
        let template = TemplateStore::bundled().get(id).unwrap();
        assert_eq!(img.dimensions(), (template.width, template.height), "{id}");
        assert_eq!(
            (out.width, out.height),
            (template.width, template.height),
            "{id}"
        );
        assert!(
            distinct_colours(&img) > 200,
            "{id} looks blank: {} colours",
            distinct_colours(&img)
        );
        std::fs::write(format!("/tmp/render-samples/{id}.png"), &out.bytes).unwrap();
    }
}

#[tokio::test]
async fn blog_card_title_is_visible_text() {
    let r = renderer();
    let long = render(
        &r,
        "tmpl_blog_card",
        &sample_variables("tmpl_blog_card"),
        Format::Png,
        1.0,
    )
    .await
    .unwrap();
    let short_vars =
        vars(json!({"title": "A", "author": "Alice Johnson", "publishDate": "2026-01-15"}));
    let short = render(&r, "tmpl_blog_card", &short_vars, Format::Png, 1.0)
        .await
        .unwrap();
    let (long, short) = (
        image::load_from_memory(&long.bytes).unwrap(),
        image::load_from_memory(&short.bytes).unwrap(),
    );
    let (long_ink, short_ink) = (
        bright_pixels(&long, 80, 150, 1040, 330),
        bright_pixels(&short, 80, 150, 1040, 330),
    );
    assert!(long_ink > 5_000, "title ink {long_ink}");
    assert!(
        long_ink > short_ink * 5,
        "long {long_ink} vs short {short_ink}"
    );
}

#[tokio::test]
async fn jpeg_and_webp_decode_at_template_size() {
    let r = renderer();
    let v = sample_variables("tmpl_blog_card");
    for (format, kind) in [
        (Format::Jpeg, ImageFormat::Jpeg),
        (Format::Webp, ImageFormat::WebP),
    ] {
        let out = render(&r, "tmpl_blog_card", &v, format, 0.8).await.unwrap();
        assert_eq!(out.format, format);
        let img = image::load_from_memory_with_format(&out.bytes, kind).unwrap();
        assert_eq!(img.dimensions(), (1200, 630));
    }
}

#[tokio::test]
async fn gif_output_is_a_gif_of_template_size() {
    let out = render(
        &renderer(),
        "tmpl_blog_card",
        &sample_variables("tmpl_blog_card"),
        Format::Gif,
        1.0,
    )
    .await
    .unwrap();
    assert!(out.bytes.starts_with(b"GIF89a"));
    assert_eq!(u16::from_le_bytes([out.bytes[6], out.bytes[7]]), 1200);
    assert_eq!(u16::from_le_bytes([out.bytes[8], out.bytes[9]]), 630);
}

#[tokio::test]
async fn lower_jpeg_quality_gives_smaller_files() {
    let r = renderer();
    let v = sample_variables("tmpl_product_card");
    let low = render(&r, "tmpl_product_card", &v, Format::Jpeg, 0.2)
        .await
        .unwrap();
    let high = render(&r, "tmpl_product_card", &v, Format::Jpeg, 0.95)
        .await
        .unwrap();
    assert!(
        low.bytes.len() * 2 < high.bytes.len(),
        "low {} high {}",
        low.bytes.len(),
        high.bytes.len()
    );
}

#[tokio::test]
async fn missing_required_variable_is_invalid_variable() {
    let v = vars(json!({"title": "Hi", "publishDate": "2026-01-15"}));
    let err = render(&renderer(), "tmpl_blog_card", &v, Format::Png, 1.0)
        .await
        .unwrap_err();
    assert_eq!(err.code, error_codes::INVALID_VARIABLE);
    assert!(err.message.contains("'author'"), "{}", err.message);
}

#[tokio::test]
async fn broken_expression_is_expression_error() {
    let dir = fixture_dir(&[("t.html", "<div>{{ title + }}</div>")]);
    let store = TemplateStore::load_dir(dir.path()).unwrap();
    let err = renderer()
        .render(
            &store.get("t").unwrap(),
            &vars(json!({"title": "x"})),
            Format::Png,
            1.0,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, error_codes::EXPRESSION_ERROR);
    assert!(err.message.contains("title +"), "{}", err.message);
}

#[tokio::test]
async fn missing_file_image_is_image_fetch_failed() {
    let mut v = sample_variables("tmpl_product_card");
    v.insert(
        "imageUrl".into(),
        json!("file:///nonexistent/pictify/shoe.png"),
    );
    let err = render(&renderer(), "tmpl_product_card", &v, Format::Png, 1.0)
        .await
        .unwrap_err();
    assert_eq!(err.code, error_codes::IMAGE_FETCH_FAILED);
    assert!(
        err.message.contains("file:///nonexistent/pictify/shoe.png"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn undecodable_image_is_image_fetch_failed() {
    let mut v = sample_variables("tmpl_product_card");
    v.insert(
        "imageUrl".into(),
        json!("data:image/png;base64,bm90IGFuIGltYWdl"),
    );
    let err = render(&renderer(), "tmpl_product_card", &v, Format::Png, 1.0)
        .await
        .unwrap_err();
    assert_eq!(err.code, error_codes::IMAGE_FETCH_FAILED);
}

#[tokio::test]
async fn file_image_is_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shot.png");
    std::fs::write(&path, sample_png(320, 200)).unwrap();
    let mut v = sample_variables("tmpl_product_card");
    v.insert(
        "imageUrl".into(),
        json!(format!("file://{}", path.display())),
    );
    let out = render(&renderer(), "tmpl_product_card", &v, Format::Png, 1.0)
        .await
        .unwrap();
    let img = image::load_from_memory(&out.bytes).unwrap();
    // The disc in the sample shot is pure yellow; it shows up in the middle of the photo area.
    let yellow = img
        .view(300, 150, 480, 400)
        .pixels()
        .filter(|(_, _, p)| p.0[..3] == [250, 204, 21])
        .count();
    assert!(yellow > 10_000, "yellow pixels: {yellow}");
}

#[tokio::test]
async fn data_image_is_drawn() {
    let out = render(
        &renderer(),
        "tmpl_product_card",
        &sample_variables("tmpl_product_card"),
        Format::Png,
        1.0,
    )
    .await
    .unwrap();
    let img = image::load_from_memory(&out.bytes).unwrap();
    let yellow = img
        .view(300, 150, 480, 400)
        .pixels()
        .filter(|(_, _, p)| p.0[..3] == [250, 204, 21])
        .count();
    assert!(yellow > 10_000, "yellow pixels: {yellow}");
}

#[tokio::test]
async fn tiny_time_budget_is_render_timeout() {
    let r = renderer_with(RenderOptions {
        time_budget: Duration::from_millis(1),
        ..RenderOptions::default()
    });
    let err = render(
        &r,
        "tmpl_certificate",
        &sample_variables("tmpl_certificate"),
        Format::Png,
        1.0,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, error_codes::RENDER_TIMEOUT);
}

#[tokio::test]
async fn without_rasterizing_variables_are_still_checked_and_a_placeholder_returned() {
    let r = renderer_with(RenderOptions {
        rasterize: false,
        ..RenderOptions::default()
    });
    let out = render(
        &r,
        "tmpl_certificate",
        &sample_variables("tmpl_certificate"),
        Format::Png,
        1.0,
    )
    .await
    .unwrap();
    assert_eq!(
        image::load_from_memory(&out.bytes).unwrap().dimensions(),
        (1600, 1131)
    );
    let again = render(
        &r,
        "tmpl_certificate",
        &sample_variables("tmpl_certificate"),
        Format::Png,
        1.0,
    )
    .await
    .unwrap();
    assert_eq!(out.bytes, again.bytes);
    let err = render(&r, "tmpl_certificate", &vars(json!({})), Format::Png, 1.0)
        .await
        .unwrap_err();
    assert_eq!(err.code, error_codes::INVALID_VARIABLE);
    let mut v = sample_variables("tmpl_product_card");
    v.insert("imageUrl".into(), json!("file:///nonexistent.png"));
    let err = render(&r, "tmpl_product_card", &v, Format::Png, 1.0)
        .await
        .unwrap_err();
    assert_eq!(err.code, error_codes::IMAGE_FETCH_FAILED);
}

#[tokio::test]
async fn optional_product_fields_may_be_null() {
    let mut v = sample_variables("tmpl_product_card");
    for key in ["originalPrice", "discount", "badge", "rating"] {
        v.insert(key.into(), Value::Null);
    }
    v.insert("price".into(), json!("$19.99"));
    let out = render(&renderer(), "tmpl_product_card", &v, Format::Png, 1.0)
        .await
        .unwrap();
    std::fs::create_dir_all("/tmp/render-samples").unwrap();
    std::fs::write(
        "/tmp/render-samples/tmpl_product_card-minimal.png",
        out.bytes,
    )
    .unwrap();
}

#[tokio::test]
async fn social_card_without_avatar_shows_an_initial() {
    let v = vars(
        json!({"title": "Ünïcode & <escaping> — “quotes” work", "author": "zoë", "readTime": 4}),
    );
    let out = render(&renderer(), "tmpl_social_card", &v, Format::Png, 1.0)
        .await
        .unwrap();
    std::fs::create_dir_all("/tmp/render-samples").unwrap();
    std::fs::write(
        "/tmp/render-samples/tmpl_social_card-minimal.png",
        out.bytes,
    )
    .unwrap();
}

#[tokio::test]
async fn text_in_generic_and_unknown_families_is_never_invisible() {
    for family in [
        "serif",
        "monospace",
        "system-ui",
        "Helvetica Neue",
        "cursive",
    ] {
        let html = format!(
            "<div style=\"width:400px;height:100px;background:#fff;color:#000;font-family:{family};font-size:48px\">Hg 123</div>"
        );
        let out = render_fixture(&renderer(), &html).await;
        let img = image::load_from_memory(&out.bytes).unwrap();
        let ink = img.pixels().filter(|(_, _, p)| p.0[0] < 100).count();
        assert!(ink > 300, "{family}: only {ink} dark pixels");
    }
}

/// Serves `/shot.png` (a sample image), `/missing.png` (404) and `/slow.png` (answers after 3 s) on 127.0.0.1.
async fn image_server() -> String {
    use axum::routing::get;
    let png = sample_png(320, 200);
    let app = axum::Router::new()
        .route("/shot.png", get(move || std::future::ready(png.clone())))
        .route(
            "/missing.png",
            get(|| async { (http::StatusCode::NOT_FOUND, "nope") }),
        )
        .route(
            "/slow.png",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn http_image_is_fetched_and_drawn() {
    let base = image_server().await;
    let mut v = sample_variables("tmpl_product_card");
    v.insert("imageUrl".into(), json!(format!("{base}/shot.png")));
    let out = render(&renderer(), "tmpl_product_card", &v, Format::Png, 1.0)
        .await
        .unwrap();
    let img = image::load_from_memory(&out.bytes).unwrap();
    let yellow = img
        .view(300, 150, 480, 400)
        .pixels()
        .filter(|(_, _, p)| p.0[..3] == [250, 204, 21])
        .count();
    assert!(yellow > 10_000, "yellow pixels: {yellow}");
}

#[tokio::test]
async fn http_404_and_slow_images_are_image_fetch_failed() {
    let base = image_server().await;
    let r = renderer_with(RenderOptions {
        fetch_timeout: Duration::from_millis(300),
        ..RenderOptions::default()
    });
    for (path, why) in [("missing.png", "404"), ("slow.png", "timed out")] {
        let mut v = sample_variables("tmpl_product_card");
        v.insert("imageUrl".into(), json!(format!("{base}/{path}")));
        let err = render(&r, "tmpl_product_card", &v, Format::Png, 1.0)
            .await
            .unwrap_err();
        assert_eq!(err.code, error_codes::IMAGE_FETCH_FAILED, "{path}");
        assert!(
            err.message.contains(path) && err.message.contains(why),
            "{}",
            err.message
        );
    }
}

/// A temp template directory holding `t.json` (400×100, variable `title`) plus the given files.
fn fixture_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.json"),
        r#"{"width":400,"height":100,"variables":[{"name":"title"}]}"#,
    )
    .unwrap();
    for (name, body) in files {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    dir
}

/// Renders `html` as the 400×100 template `t`, with no variables.
async fn render_fixture(r: &Renderer, html: &str) -> RenderedImage {
    let dir = fixture_dir(&[("t.html", html)]);
    let store = TemplateStore::load_dir(dir.path()).unwrap();
    let template = store.get("t").unwrap();
    r.render(&template, &VariableSet::new(), Format::Png, 1.0)
        .await
        .unwrap()
}

/// Renders `text` alone, black on white at `px`, in `family`, as a decoded image and its warnings.
async fn render_text(family: &str, px: u32, text: &str) -> (RgbaImage, Vec<String>) {
    let html = format!(
        "<div style=\"width:400px;height:100px;background:#fff;color:#000;font-family:{family};font-size:{px}px;line-height:1\">{text}</div>"
    );
    let out = render_fixture(&renderer(), &html).await;
    let img = image::load_from_memory(&out.bytes).unwrap().to_rgba8();
    (
        img,
        out.warnings.iter().map(|w| w.message.clone()).collect(),
    )
}

/// Pixels whose colour differs between two same-sized images.
fn differing_pixels(a: &RgbaImage, b: &RgbaImage) -> usize {
    a.pixels()
        .zip(b.pixels())
        .filter(|(p, q)| p.0.iter().zip(q.0).any(|(x, y)| x.abs_diff(y) > 40))
        .count()
}

#[tokio::test]
async fn every_script_renders_with_no_missing_glyphs() {
    let artifacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for (name, title) in [
        ("japanese", "東京の桜が満開です — 山田太郎"),
        ("chinese-simplified", "人工智能的未来发展"),
        ("chinese-traditional", "臺灣夜市的美食指南"),
        ("korean", "서울에서 보내는 편지"),
        ("cyrillic", "Привет из Москвы"),
        ("greek", "Καλημέρα από την Αθήνα"),
        ("arabic", "مرحبا بكم في القاهرة"),
        ("hebrew", "שלום מירושלים"),
        ("devanagari", "नमस्ते दिल्ली से"),
        ("thai", "สวัสดีจากกรุงเทพ"),
        ("emoji", "Launch day 🚀🎉 👍🏽 ❤️ 👩‍💻"),
    ] {
        let v = vars(json!({ "title": title, "author": "山田 花子", "publishDate": "2026-11-30" }));
        let out = render(&renderer(), "tmpl_blog_card", &v, Format::Png, 1.0)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.warnings, vec![], "{name}: {title}");
        std::fs::write(artifacts.join(format!("script-{name}.png")), &out.bytes).unwrap();
    }
}

#[tokio::test]
async fn cjk_characters_are_drawn_as_real_glyphs_not_notdef_boxes() {
    // Two characters no font covers both draw `.notdef`: the same box, pixel for pixel.
    let (notdef_a, warned) = render_text("sans-serif", 80, "\u{E000}").await;
    let (notdef_b, _) = render_text("sans-serif", 80, "\u{E001}").await;
    assert_eq!(
        differing_pixels(&notdef_a, &notdef_b),
        0,
        "the .notdef box is one shape"
    );
    assert_eq!(warned.len(), 1);
    assert!(warned[0].contains("U+E000"), "{warned:?}");
    // Real glyphs differ from the box and from each other.
    for (a, b) in [("東", "京"), ("한", "글"), ("あ", "ア")] {
        let (ga, wa) = render_text("sans-serif", 80, a).await;
        let (gb, wb) = render_text("sans-serif", 80, b).await;
        assert!(wa.is_empty() && wb.is_empty(), "{a}{b}: {wa:?} {wb:?}");
        let ink = ga.pixels().filter(|p| p.0[0] < 128).count();
        assert!(ink > 300, "{a}: only {ink} inked pixels");
        assert!(
            differing_pixels(&ga, &notdef_a) > 300,
            "{a} looks like the .notdef box"
        );
        assert!(
            differing_pixels(&ga, &gb) > 300,
            "{a} and {b} drew the same shape"
        );
    }
}

#[tokio::test]
async fn font_family_lists_fall_back_to_the_bundled_script_faces() {
    // Whatever a template lists (fonts the emulator lacks, a generic family), CJK text falls back to
    // the bundled CJK face: the same pixels as with plain sans-serif, and nothing reported missing.
    let (reference, _) = render_text("sans-serif", 60, "東京タワー").await;
    for family in [
        "'Hiragino Sans', 'Noto Sans JP', sans-serif",
        "'Inter', 'Segoe UI'",
        "Georgia, serif",
        "monospace",
    ] {
        let (img, warnings) = render_text(family, 60, "東京タワー").await;
        assert!(warnings.is_empty(), "{family}: {warnings:?}");
        assert_eq!(differing_pixels(&img, &reference), 0, "{family}");
    }
}

#[tokio::test]
async fn text_that_does_not_fit_is_reported_and_text_that_fits_is_not() {
    // The sample cards fit: no warning at all.
    let r = renderer();
    for id in [
        "tmpl_blog_card",
        "tmpl_social_card",
        "tmpl_certificate",
        "tmpl_product_card",
    ] {
        let out = render(&r, id, &sample_variables(id), Format::Png, 1.0)
            .await
            .unwrap();
        assert_eq!(out.warnings, vec![], "{id}");
    }
    // The blog card cuts a long title itself (`truncate(title, 96, '…')`): by design, no warning.
    let long = "A very long title that keeps going and going well past the point where any sensible editor would stop it, and then some more words to be sure it overflows the card";
    let v = vars(json!({ "title": long, "author": "Ann", "publishDate": "2026-11-30" }));
    let out = render(&r, "tmpl_blog_card", &v, Format::Png, 1.0)
        .await
        .unwrap();
    assert_eq!(out.warnings, vec![]);

    // A word too long for a fixed box, and lines below the bottom of the image.
    for (html, expect) in [
        (
            "<div style=\"width:120px;height:100px;font-size:30px\">Donaudampfschifffahrtsgesellschaft</div>",
            "past its 120×100 box",
        ),
        (
            "<div style=\"width:400px;height:100px;display:flex;flex-direction:column\"><div style=\"height:90px;flex-shrink:0\"></div><div style=\"font-size:40px;flex-shrink:0\">Below the fold</div></div>",
            "runs off the 400×100 image",
        ),
        (
            "<div style=\"width:200px;font-size:30px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis\">A headline much too long</div>",
            "cut short",
        ),
        (
            "<div style=\"width:200px;font-size:30px;display:-webkit-box;-webkit-box-orient:vertical;-webkit-line-clamp:2;overflow:hidden\">A headline much too long for two short lines of text</div>",
            "cut short",
        ),
    ] {
        let out = render_fixture(&r, html).await;
        let messages: Vec<&str> = out.warnings.iter().map(|w| w.message.as_str()).collect();
        assert!(
            out.warnings.iter().any(|w| w.code == "TEXT_OVERFLOW")
                && messages.iter().any(|m| m.contains(expect)),
            "{html}: {messages:?}"
        );
    }
}
