//! Client-side checks of a batch submit against Pictify's documented limits, so a request the
//! server would refuse with 400 is refused here, with field errors, without spending a call.

use super::error::FieldError;
use super::wire::BatchRenderRequest;

pub const MAX_VARIABLE_SETS: usize = 100;
pub const MAX_LAYOUTS: usize = 20;
pub const MAX_CONCURRENCY: u32 = 10;
pub const MIN_QUALITY: f64 = 0.1;
pub const MAX_QUALITY: f64 = 1.0;

/// `^[a-z0-9-]{1,64}$`, the documented layout name pattern.
pub fn is_valid_layout_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Every problem with `request` (empty when it is acceptable). Field names are the wire names.
pub fn validate_batch_request(request: &BatchRenderRequest) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let sets = request.variable_sets.len();
    if sets == 0 {
        errors.push(FieldError::new(
            "variableSets",
            "at least one variable set is required",
            "required",
        ));
    } else if sets > MAX_VARIABLE_SETS {
        errors.push(FieldError::new(
            "variableSets",
            format!("{sets} variable sets exceed the maximum of {MAX_VARIABLE_SETS}"),
            "too_long",
        ));
    }
    if let Some(quality) = request.quality
        && !(quality.is_finite() && (MIN_QUALITY..=MAX_QUALITY).contains(&quality))
    {
        errors.push(FieldError::new(
            "quality",
            format!("quality must be between {MIN_QUALITY} and {MAX_QUALITY}, got {quality}"),
            "out_of_range",
        ));
    }
    if let Some(concurrency) = request.concurrency
        && !(1..=MAX_CONCURRENCY).contains(&concurrency)
    {
        errors.push(FieldError::new(
            "concurrency",
            format!("concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}"),
            "out_of_range",
        ));
    }
    if request.layout.is_some() && request.layouts.is_some() {
        errors.push(FieldError::new(
            "layouts",
            "give either layout or layouts, not both",
            "invalid_format",
        ));
    }
    if let Some(layout) = &request.layout
        && !is_valid_layout_name(layout)
    {
        errors.push(layout_error("layout".to_string()));
    }
    if let Some(layouts) = &request.layouts {
        if layouts.len() > MAX_LAYOUTS {
            errors.push(FieldError::new(
                "layouts",
                format!(
                    "{} layouts exceed the maximum of {MAX_LAYOUTS}",
                    layouts.len()
                ),
                "too_long",
            ));
        }
        for (i, layout) in layouts.iter().enumerate() {
            if !is_valid_layout_name(layout) {
                errors.push(layout_error(format!("layouts[{i}]")));
            }
        }
    }
    errors
}

fn layout_error(field: String) -> FieldError {
    FieldError::new(
        field,
        "layout names are 1-64 characters of a-z, 0-9 and -",
        "invalid_format",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    fn request(sets: usize) -> BatchRenderRequest {
        let set = json!({"title": "Hello"})
            .as_object()
            .cloned()
            .unwrap_or_else(Map::new);
        BatchRenderRequest {
            variable_sets: vec![set; sets],
            format: None,
            quality: None,
            concurrency: None,
            layout: None,
            layouts: None,
        }
    }

    fn fields(request: &BatchRenderRequest) -> Vec<String> {
        validate_batch_request(request)
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_plain_request_is_valid() {
        assert!(validate_batch_request(&request(1)).is_empty());
        assert!(validate_batch_request(&request(100)).is_empty());
    }

    #[test]
    fn variable_set_count_must_be_1_to_100() {
        assert_eq!(fields(&request(0)), ["variableSets"]);
        assert_eq!(fields(&request(101)), ["variableSets"]);
    }

    #[test]
    fn quality_must_be_a_finite_number_in_range() {
        for (quality, ok) in [
            (0.1, true),
            (1.0, true),
            (0.05, false),
            (1.01, false),
            (f64::NAN, false),
            (f64::INFINITY, false),
        ] {
            let req = BatchRenderRequest {
                quality: Some(quality),
                ..request(1)
            };
            assert_eq!(fields(&req).is_empty(), ok, "quality {quality}");
        }
    }

    #[test]
    fn concurrency_must_be_1_to_10() {
        for (concurrency, ok) in [(1, true), (10, true), (0, false), (11, false)] {
            let req = BatchRenderRequest {
                concurrency: Some(concurrency),
                ..request(1)
            };
            assert_eq!(fields(&req).is_empty(), ok, "concurrency {concurrency}");
        }
    }

    #[test]
    fn layout_names_follow_the_pattern() {
        for (name, ok) in [
            ("og-image", true),
            ("a", true),
            ("x".repeat(64).as_str(), true),
            ("", false),
            ("Square", false),
            ("a_b", false),
            ("x".repeat(65).as_str(), false),
            ("é", false),
        ] {
            assert_eq!(is_valid_layout_name(name), ok, "{name:?}");
        }
        let req = BatchRenderRequest {
            layouts: Some(vec!["ok".into(), "Not OK".into()]),
            ..request(1)
        };
        assert_eq!(fields(&req), ["layouts[1]"]);
    }

    #[test]
    fn layouts_are_capped_and_exclusive_with_layout() {
        let many = BatchRenderRequest {
            layouts: Some(vec!["a".into(); 21]),
            ..request(1)
        };
        assert_eq!(fields(&many), ["layouts"]);
        let both = BatchRenderRequest {
            layout: Some("a".into()),
            layouts: Some(vec!["b".into()]),
            ..request(1)
        };
        assert_eq!(fields(&both), ["layouts"]);
    }
}
