//! Batches: request validation, the state machine, and the worker that renders the items.
//!
//! pending → processing (first item starts) → completed | partial | failed; cancel moves a
//! non-terminal batch to cancelled and skips the items not started yet.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use serde_json::Value;
use shared::pictify::wire::{
    BatchCompleted, BatchItemStatus, BatchResults, BatchStatus, Format, RenderCompleted,
    RenderFailed, VariableSet, event_names,
};
use tracing::{error, info};

use crate::config::Plan;
use crate::error::FieldError;
use crate::faults::item_failure_message;
use crate::render::Template;
use crate::state::{AppState, Batch, Item, iso};
use crate::webhooks;

const DEFAULT_QUALITY: f64 = 0.9;
const DEFAULT_CONCURRENCY: usize = 5;
const MAX_LAYOUTS: usize = 20;

/// A submit body that passed validation.
#[derive(Debug)]
pub(crate) struct ValidBatch {
    pub variable_sets: Vec<VariableSet>,
    pub format: Format,
    pub quality: f64,
    pub concurrency: usize,
}

/// Checks a submit body against the documented limits, collecting every problem.
/// `layout`/`layouts` are validated but otherwise ignored: templates here have one layout.
/// `plan` only shapes the message when a batch has too many items.
pub(crate) fn validate(
    body: &Value,
    max_items: usize,
    plan: Option<Plan>,
) -> Result<ValidBatch, Vec<FieldError>> {
    let Some(obj) = body.as_object() else {
        return Err(vec![FieldError::new(
            "body",
            "invalid_type",
            "request body must be a JSON object",
        )]);
    };
    let mut errors = Vec::new();
    let mut variable_sets = Vec::new();
    match obj.get("variableSets") {
        None | Some(Value::Null) => errors.push(FieldError::new(
            "variableSets",
            "required",
            "variableSets is required",
        )),
        Some(Value::Array(sets)) if sets.is_empty() => errors.push(FieldError::new(
            "variableSets",
            "out_of_range",
            "variableSets must contain at least 1 item",
        )),
        Some(Value::Array(sets)) if sets.len() > max_items => errors.push(FieldError::new(
            "variableSets",
            "too_long",
            match plan {
                Some(plan) => format!(
                    "variableSets has {} items; the {plan} plan allows at most {max_items} items \
                     per batch",
                    sets.len()
                ),
                None => format!(
                    "variableSets has {} items; at most {max_items} are allowed",
                    sets.len()
                ),
            },
        )),
        Some(Value::Array(sets)) => {
            for (i, set) in sets.iter().enumerate() {
                match set {
                    Value::Object(map) => variable_sets.push(map.clone()),
                    _ => errors.push(FieldError::new(
                        format!("variableSets[{i}]"),
                        "invalid_type",
                        format!("variableSets[{i}] must be an object"),
                    )),
                }
            }
        }
        Some(_) => errors.push(FieldError::new(
            "variableSets",
            "invalid_type",
            "variableSets must be an array",
        )),
    }

    let format = match obj.get("format") {
        None | Some(Value::Null) => Format::Png,
        Some(Value::String(s)) => s.parse().unwrap_or_else(|_| {
            errors.push(FieldError::new(
                "format",
                "invalid_format",
                format!("format must be one of png, jpeg, webp, gif (got \"{s}\")"),
            ));
            Format::Png
        }),
        Some(_) => {
            errors.push(FieldError::new(
                "format",
                "invalid_type",
                "format must be a string",
            ));
            Format::Png
        }
    };

    let quality = match obj.get("quality") {
        None | Some(Value::Null) => DEFAULT_QUALITY,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(q) if (0.1..=1.0).contains(&q) => q,
            _ => {
                errors.push(FieldError::new(
                    "quality",
                    "out_of_range",
                    format!("quality must be between 0.1 and 1 (got {n})"),
                ));
                DEFAULT_QUALITY
            }
        },
        Some(_) => {
            errors.push(FieldError::new(
                "quality",
                "invalid_type",
                "quality must be a number",
            ));
            DEFAULT_QUALITY
        }
    };

    let concurrency = match obj.get("concurrency") {
        None | Some(Value::Null) => DEFAULT_CONCURRENCY,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(c @ 1..=10) => c as usize,
            _ => {
                errors.push(FieldError::new(
                    "concurrency",
                    "out_of_range",
                    format!("concurrency must be an integer between 1 and 10 (got {n})"),
                ));
                DEFAULT_CONCURRENCY
            }
        },
        Some(_) => {
            errors.push(FieldError::new(
                "concurrency",
                "invalid_type",
                "concurrency must be an integer",
            ));
            DEFAULT_CONCURRENCY
        }
    };

    match obj.get("layout") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if is_layout_name(s) => {}
        Some(_) => errors.push(FieldError::new(
            "layout",
            "invalid_format",
            "layout must match ^[a-z0-9-]{1,64}$",
        )),
    }
    match obj.get("layouts") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) if list.len() > MAX_LAYOUTS => errors.push(FieldError::new(
            "layouts",
            "too_long",
            format!(
                "layouts has {} entries; at most {MAX_LAYOUTS} are allowed",
                list.len()
            ),
        )),
        Some(Value::Array(list)) => {
            for (i, name) in list.iter().enumerate() {
                if !name.as_str().is_some_and(is_layout_name) {
                    errors.push(FieldError::new(
                        format!("layouts[{i}]"),
                        "invalid_format",
                        format!("layouts[{i}] must match ^[a-z0-9-]{{1,64}}$"),
                    ));
                }
            }
        }
        Some(_) => errors.push(FieldError::new(
            "layouts",
            "invalid_type",
            "layouts must be an array of strings",
        )),
    }

    if errors.is_empty() {
        Ok(ValidBatch {
            variable_sets,
            format,
            quality,
            concurrency,
        })
    } else {
        Err(errors)
    }
}

fn is_layout_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The poll answer in the SDK shape; failures carry `"CODE: message"` since the poll has no code field.
pub(crate) fn results(batch: &Batch) -> BatchResults {
    let names = |i: usize| {
        batch
            .variable_sets
            .get(i)
            .map(|v| v.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in batch.items.iter().enumerate() {
        match item {
            Item::Rendered => results.push(BatchItemStatus {
                index: i as u32,
                success: true,
                variables: names(i),
                error: None,
            }),
            Item::Failed { code, message } => errors.push(BatchItemStatus {
                index: i as u32,
                success: false,
                variables: names(i),
                error: Some(format!("{code}: {message}")),
            }),
            Item::Pending | Item::Running | Item::Skipped => {}
        }
    }
    let total = batch.items.len() as u32;
    let done = (results.len() + errors.len()) as u32;
    BatchResults {
        batch_id: batch.id.clone(),
        status: batch.status,
        progress: (100.0 * f64::from(done) / f64::from(total.max(1))).round(),
        total_items: total,
        completed_items: results.len() as u32,
        failed_items: errors.len() as u32,
        results,
        errors,
        created_at: Some(iso(batch.created_at)),
        started_at: batch.started_at.map(iso),
        completed_at: batch.completed_at.map(iso),
    }
}

/// Renders every item with up to `concurrency` in flight, then settles the batch and announces it.
pub(crate) async fn run(state: Arc<AppState>, batch_id: String) {
    let Some((total, concurrency)) = state
        .lock()
        .batches
        .get(&batch_id)
        .map(|b| (b.items.len(), b.concurrency))
    else {
        return;
    };
    futures::stream::iter(0..total)
        .for_each_concurrent(concurrency, |index| run_item(&state, &batch_id, index))
        .await;
    finish(&state, &batch_id);
}

struct ItemJob {
    template: Arc<Template>,
    sets: Arc<Vec<VariableSet>>,
    format: Format,
    quality: f64,
    fingerprint: [u8; 32],
}

/// Claims item `index` if the batch still wants it; moves the batch to processing on first claim.
fn claim(state: &AppState, batch_id: &str, index: usize) -> Option<ItemJob> {
    let mut inner = state.lock();
    let batch = inner.batches.get_mut(batch_id)?;
    if batch.status.is_terminal() || batch.items.get(index) != Some(&Item::Pending) {
        return None;
    }
    if batch.status == BatchStatus::Pending {
        batch.status = BatchStatus::Processing;
        batch.started_at = Some(Utc::now());
    }
    batch.items[index] = Item::Running;
    Some(ItemJob {
        template: batch.template.clone(),
        sets: batch.variable_sets.clone(),
        format: batch.format,
        quality: batch.quality,
        fingerprint: batch.fingerprint,
    })
}

/// Writes the image, and its warnings beside it (served as a header with the image).
async fn store_image(
    dir: &std::path::Path,
    file: &str,
    image: &crate::render::RenderedImage,
) -> std::io::Result<()> {
    if !image.warnings.is_empty() {
        let header = crate::render::RenderWarning::header_value(&image.warnings);
        tokio::fs::write(dir.join(warnings_file(file)), header).await?;
    }
    tokio::fs::write(dir.join(file), &image.bytes).await
}

/// Where the warnings of the image `file` are kept.
pub(crate) fn warnings_file(file: &str) -> String {
    format!("{file}.warnings")
}

async fn run_item(state: &Arc<AppState>, batch_id: &str, index: usize) {
    let Some(job) = claim(state, batch_id, index) else {
        return;
    };
    let faults = state.lock().faults.clone();
    // The plan's simulated render time, then any injected extra latency.
    let latency = state.latency + Duration::from_millis(faults.render_latency_ms);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let empty = VariableSet::new();
    let variables = job.sets.get(index).unwrap_or(&empty);
    let outcome = match faults.item_failure(state.config.seed, &job.fingerprint, index) {
        Some(code) => Err((code.to_owned(), item_failure_message(code))),
        None => state
            .renderer
            .render(&job.template, variables, job.format, job.quality)
            .await
            .map_err(|e| (e.code.to_owned(), e.message)),
    };
    let outcome = match outcome {
        Ok(image) => {
            let image_id = state.lock().new_id("img_");
            let file = format!("{image_id}.{}", job.format.extension());
            match store_image(&state.config.data_dir, &file, &image).await {
                Ok(()) => Ok((image_id, file, image)),
                Err(e) => {
                    error!(batch_id, index, error = %e, "could not store a rendered image");
                    Err((
                        "RENDER_FAILED".to_owned(),
                        "could not store the rendered image".to_owned(),
                    ))
                }
            }
        }
        Err(failure) => Err(failure),
    };

    let correlate = state.config.correlation_fields;
    let (event, data) = {
        let mut inner = state.lock();
        let success = outcome.is_ok();
        if let Some(item) = inner
            .batches
            .get_mut(batch_id)
            .and_then(|b| b.items.get_mut(index))
        {
            *item = match &outcome {
                Ok(_) => Item::Rendered,
                Err((code, message)) => Item::Failed {
                    code: code.clone(),
                    message: message.clone(),
                },
            };
        }
        if success {
            inner.ledger.items_rendered += 1;
            inner.ledger.renders_billed += 1;
            let used = inner.renders_this_month();
            inner.ledger.renders_this_month += 1;
            if inner.limits.monthly_renders.is_some_and(|cap| used >= cap) {
                inner.ledger.overage_items += 1;
            }
            inner.quota = inner.quota.map(|left| left.saturating_sub(1));
        } else {
            inner.ledger.items_failed += 1;
        }
        match outcome {
            Ok((image_id, file, image)) => (
                event_names::RENDER_COMPLETED,
                serde_json::to_value(RenderCompleted {
                    r#type: Some("image".into()),
                    source: Some("api".into()),
                    image_id: Some(image_id),
                    url: format!("{}/images/{file}", state.public_base_url),
                    width: Some(image.width),
                    height: Some(image.height),
                    format: Some(job.format.as_str().into()),
                    template_id: Some(job.template.id.clone()),
                    variables: Some(variables.clone()),
                    rendered_at: Some(iso(Utc::now())),
                    batch_id: correlate.then(|| batch_id.to_owned()),
                    batch_index: correlate.then_some(index as u32),
                }),
            ),
            Err((code, message)) => (
                event_names::RENDER_FAILED,
                serde_json::to_value(RenderFailed {
                    r#type: Some("image".into()),
                    source: Some("api".into()),
                    template_id: Some(job.template.id.clone()),
                    error_code: Some(code),
                    error: Some(message),
                    variables: Some(variables.clone()),
                    batch_id: correlate.then(|| batch_id.to_owned()),
                    batch_index: correlate.then_some(index as u32),
                }),
            ),
        }
    };
    match data {
        Ok(data) => {
            let index_bytes = (index as u64).to_le_bytes();
            webhooks::emit(
                state,
                event,
                data,
                &job.template.id,
                &[&job.fingerprint, &index_bytes],
            );
        }
        Err(e) => error!(batch_id, index, error = %e, "could not serialize a render event"),
    }
}

/// Settles the final status (unless cancelled) and emits `batch.completed` after every item event.
fn finish(state: &Arc<AppState>, batch_id: &str) {
    let summary = {
        let mut inner = state.lock();
        let Some(batch) = inner.batches.get_mut(batch_id) else {
            return;
        };
        let (rendered, failed) = (batch.rendered(), batch.failed());
        if !batch.status.is_terminal() {
            batch.status = match (rendered, failed) {
                (_, 0) => BatchStatus::Completed,
                (0, _) => BatchStatus::Failed,
                _ => BatchStatus::Partial,
            };
            batch.completed_at = Some(Utc::now());
        }
        let ended = batch.completed_at.unwrap_or_else(Utc::now);
        let duration = (ended - batch.created_at).num_milliseconds().max(0) as u64;
        info!(batch_id, status = ?batch.status, rendered, failed, duration_ms = duration, "batch finished");
        let summary = (
            BatchCompleted {
                batch_id: batch.id.clone(),
                template_uid: Some(batch.template.id.clone()),
                status: batch.status,
                total_count: batch.items.len() as u32,
                completed_count: rendered,
                failed_count: failed,
                duration: Some(duration),
            },
            batch.fingerprint,
            batch.template.id.clone(),
        );
        // The batch left the in-flight count (unless a cancel already took it out: then the
        // recount finds no change, which is harmless).
        inner.in_flight_changed();
        summary
    };
    let (data, fingerprint, template_id) = summary;
    match serde_json::to_value(data) {
        Ok(data) => webhooks::emit(
            state,
            event_names::BATCH_COMPLETED,
            data,
            &template_id,
            &[&fingerprint],
        ),
        Err(e) => error!(batch_id, error = %e, "could not serialize batch.completed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(body: Value) -> Vec<String> {
        validate(&body, 100, None)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.message)
            .collect()
    }

    #[test]
    fn defaults_apply_when_fields_are_absent() {
        let ok = validate(&json!({"variableSets": [{"a": 1}]}), 100, None).unwrap();
        assert_eq!(
            (ok.format, ok.quality, ok.concurrency),
            (Format::Png, 0.9, 5)
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let found = problems(
            json!({"variableSets": [{}, 3], "format": "jpg", "quality": 2, "concurrency": 0,
            "layout": "Bad_Name", "layouts": ["ok", "NO"]}),
        );
        assert_eq!(found.len(), 6, "{found:?}");
        assert!(found.contains(&"variableSets[1] must be an object".to_owned()));
    }

    #[test]
    fn too_many_variable_sets_are_rejected() {
        let sets: Vec<Value> = (0..101).map(|_| json!({})).collect();
        assert_eq!(
            problems(json!({"variableSets": sets})),
            vec!["variableSets has 101 items; at most 100 are allowed"]
        );
    }
}
