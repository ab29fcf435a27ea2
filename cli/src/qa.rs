//! Image QA on every saved image, whoever rendered it: it must decode, have the template's size and
//! not be blank. The same decode makes the gallery's thumbnail. A finding is a warning on its row:
//! the row stays `rendered` (the image exists and was billed), and the run says what is wrong.

use std::path::Path;

use image::{GenericImageView, RgbaImage};
use pictify_emulator::render::raster;
use shared::pictify::wire::Format;

use crate::gallery::Warning;

/// The file is not an image this tool can decode (truncated, HTML error page, unknown format).
pub const IMAGE_UNDECODABLE: &str = "IMAGE_UNDECODABLE";
/// The image's size is not the template's.
pub const WRONG_DIMENSIONS: &str = "WRONG_DIMENSIONS";
/// The image is (nearly) one colour: text and pictures did not draw.
pub const BLANK_IMAGE: &str = "BLANK_IMAGE";

/// Thumbnails are this wide (the gallery shows cards about 260–320 px wide).
pub const THUMB_WIDTH: u32 = 320;
const THUMB_QUALITY: f64 = 0.8;
/// A pixel within this many levels (every channel) of the image's mean colour counts as "the
/// same colour"; an image whose pixels are almost all the same colour is blank.
const BLANK_TOLERANCE: u8 = 10;
const BLANK_SHARE: f64 = 0.995;

/// What inspecting one image found.
#[derive(Debug, Default)]
pub struct Inspection {
    /// Width and height, when it decoded.
    pub size: Option<(u32, u32)>,
    pub warnings: Vec<Warning>,
    /// Whether the thumbnail was written.
    pub thumb: bool,
}

/// What to hold an image to.
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    /// The template's width and height, when known.
    pub size: Option<(u32, u32)>,
    /// Off for `--no-render`, whose placeholder images are blank by design.
    pub blank: bool,
}

impl Inspection {
    /// The check itself broke (a decoder panicked): the image counts as undecodable.
    pub fn failed(why: &str) -> Self {
        Inspection {
            warnings: vec![warning(
                IMAGE_UNDECODABLE,
                format!("the image could not be checked: {why}"),
            )],
            ..Inspection::default()
        }
    }
}

/// Decodes `image`, checks it, and writes a WebP thumbnail to `thumb`. Never fails: what goes
/// wrong is a warning.
pub fn inspect(image: &Path, checks: Checks, thumb: &Path) -> Inspection {
    let mut found = Inspection::default();
    let decoded = match image::open(image) {
        Ok(decoded) => decoded,
        Err(e) => {
            found.warnings.push(warning(
                IMAGE_UNDECODABLE,
                format!("the file does not decode as an image: {e}"),
            ));
            return found;
        }
    };
    let (width, height) = decoded.dimensions();
    found.size = Some((width, height));
    if let Some(w) = wrong_size((width, height), checks.size) {
        found.warnings.push(w);
    }
    let small = box_downscale(&decoded.into_rgba8(), THUMB_WIDTH);
    if let Some(share) = blank_share(&small).filter(|_| checks.blank) {
        found.warnings.push(warning(
            BLANK_IMAGE,
            format!(
                "the image is blank: {:.1}% of it is one colour",
                share * 100.0
            ),
        ));
    }
    found.thumb = write_thumb(small, thumb).is_ok();
    found
}

/// `img` scaled to `width` (never up), each pixel the mean of the source pixels it covers: a third
/// of the time of `image`'s own thumbnail filter, which is most of a local run's QA cost.
fn box_downscale(img: &RgbaImage, width: u32) -> RgbaImage {
    let (sw, sh) = img.dimensions();
    if sw <= width || sh == 0 {
        return img.clone();
    }
    let tw = width as usize;
    let th = ((u64::from(sh) * u64::from(width)) / u64::from(sw)).max(1) as usize;
    let (sw, sh) = (sw as usize, sh as usize);
    // The target column of each source column.
    let columns: Vec<usize> = (0..sw).map(|x| x * tw / sw).collect();
    let mut out = vec![0u8; tw * th * 4];
    let (mut sums, mut counts) = (vec![0u32; tw * 4], vec![0u32; tw]);
    let mut flush = |row: usize, sums: &mut [u32], counts: &mut [u32]| {
        for (tx, count) in counts.iter_mut().enumerate() {
            for c in 0..4 {
                let at = tx * 4 + c;
                out[row * tw * 4 + at] = (sums[at] / (*count).max(1)) as u8;
                sums[at] = 0;
            }
            *count = 0;
        }
    };
    let mut row = 0;
    for (sy, pixels) in img.as_raw().chunks_exact(sw * 4).enumerate() {
        let target = sy * th / sh;
        if target != row {
            flush(row, &mut sums, &mut counts);
            row = target;
        }
        for (pixel, &tx) in pixels.chunks_exact(4).zip(&columns) {
            for c in 0..4 {
                sums[tx * 4 + c] += u32::from(pixel[c]);
            }
            counts[tx] += 1;
        }
    }
    flush(row, &mut sums, &mut counts);
    RgbaImage::from_raw(tw as u32, th as u32, out).unwrap_or_else(|| img.clone())
}

/// A `WRONG_DIMENSIONS` warning when `size` is not `expected`.
pub fn wrong_size(size: (u32, u32), expected: Option<(u32, u32)>) -> Option<Warning> {
    let (w, h) = expected?;
    (size != (w, h)).then(|| {
        warning(
            WRONG_DIMENSIONS,
            format!(
                "the image is {}x{}; the template is {w}x{h}",
                size.0, size.1
            ),
        )
    })
}

/// The share of pixels near the mean colour, when it makes the image blank.
fn blank_share(img: &RgbaImage) -> Option<f64> {
    let n = u64::from(img.width()) * u64::from(img.height());
    if n == 0 {
        return Some(1.0);
    }
    let mut sum = [0u64; 4];
    for p in img.pixels() {
        for (s, c) in sum.iter_mut().zip(p.0) {
            *s += u64::from(c);
        }
    }
    let mean = sum.map(|s| (s / n) as u8);
    let same = img
        .pixels()
        .filter(|p| {
            p.0.iter()
                .zip(mean)
                .all(|(c, m)| c.abs_diff(m) <= BLANK_TOLERANCE)
        })
        .count() as f64;
    let share = same / n as f64;
    (share >= BLANK_SHARE).then_some(share)
}

fn write_thumb(small: RgbaImage, path: &Path) -> anyhow::Result<()> {
    let (w, h) = small.dimensions();
    let bytes = raster::encode_rgba(w, h, small.into_raw(), Format::Webp, THUMB_QUALITY)?;
    let temp = path.with_extension("part");
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, path)?;
    Ok(())
}

fn warning(code: &str, message: String) -> Warning {
    Warning {
        code: code.to_owned(),
        message,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use image::Rgba;

    fn save(img: &RgbaImage, dir: &Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        img.save(&path).unwrap();
        path
    }

    fn checks(size: Option<(u32, u32)>) -> Checks {
        Checks { size, blank: true }
    }

    fn codes(found: &Inspection) -> Vec<&str> {
        found.warnings.iter().map(|w| w.code.as_str()).collect()
    }

    #[test]
    fn thumbnails_average_the_pixels_they_cover() {
        // 4×2 → 2×1: each target pixel is the mean of a 2×2 block.
        let img = RgbaImage::from_fn(4, 2, |x, y| {
            let v = (10 * x + 100 * y) as u8;
            Rgba([v, v, v, 255])
        });
        let small = box_downscale(&img, 2);
        assert_eq!(small.dimensions(), (2, 1));
        assert_eq!(small.get_pixel(0, 0).0, [55, 55, 55, 255]);
        assert_eq!(small.get_pixel(1, 0).0, [75, 75, 75, 255]);
        // Never scaled up.
        assert_eq!(box_downscale(&img, 10).dimensions(), (4, 2));
    }

    #[test]
    fn a_good_image_passes_and_gets_a_thumbnail() {
        let dir = tempfile::tempdir().unwrap();
        let img = RgbaImage::from_fn(1200, 630, |x, y| {
            Rgba([(x % 256) as u8, (y % 256) as u8, 90, 255])
        });
        let path = save(&img, dir.path(), "ok.png");
        let thumb = dir.path().join("ok.webp");
        let found = inspect(&path, checks(Some((1200, 630))), &thumb);
        assert_eq!(codes(&found), Vec::<&str>::new());
        assert_eq!(found.size, Some((1200, 630)));
        assert!(found.thumb);
        let small = image::open(&thumb).unwrap();
        assert_eq!(small.dimensions(), (320, 168));
    }

    #[test]
    fn blank_wrong_sized_and_undecodable_images_are_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        // One colour but for a 3×3 speck: still blank.
        let mut white = RgbaImage::from_pixel(1200, 600, Rgba([255, 255, 255, 255]));
        for x in 0..3 {
            for y in 0..3 {
                white.put_pixel(x, y, Rgba([0, 0, 0, 255]));
            }
        }
        let path = save(&white, dir.path(), "blank.png");
        let found = inspect(&path, checks(Some((1200, 630))), &dir.path().join("b.webp"));
        assert_eq!(codes(&found), [WRONG_DIMENSIONS, BLANK_IMAGE]);
        assert_eq!(
            found.warnings[0].message,
            "the image is 1200x600; the template is 1200x630"
        );
        let placeholder = Checks {
            size: Some((1200, 600)),
            blank: false,
        };
        let found = inspect(&path, placeholder, &dir.path().join("b.webp"));
        assert_eq!(
            codes(&found),
            Vec::<&str>::new(),
            "--no-render placeholders"
        );

        // Text on a plain background is not blank.
        let mut text = RgbaImage::from_pixel(400, 100, Rgba([255, 255, 255, 255]));
        for x in 20..300 {
            for y in 40..60 {
                text.put_pixel(x, y, Rgba([0, 0, 0, 255]));
            }
        }
        let path = save(&text, dir.path(), "text.png");
        assert!(
            inspect(&path, checks(None), &dir.path().join("t.webp"))
                .warnings
                .is_empty()
        );

        let html = dir.path().join("error.png");
        std::fs::write(&html, "<html>Access Denied</html>").unwrap();
        let found = inspect(&html, checks(None), &dir.path().join("e.webp"));
        assert_eq!(codes(&found), [IMAGE_UNDECODABLE]);
        assert!(!found.thumb);
    }
}
