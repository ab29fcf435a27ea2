//! Bad requests get a clean 4xx JSON answer that names the problem; nothing panics.

use serde_json::{Value, json};

use crate::support::*;

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn missing_or_unknown_api_key_is_401() {
    let emu = emulator().await;
    let url = emu.url("/templates/batch/batch_x/results");
    let anonymous = emu.http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = emu
        .http
        .get(&url)
        .bearer_auth("pk_test_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(
        wrong.json::<Value>().await.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("API key")
    );
}

#[tokio::test]
async fn a_non_object_variable_set_is_named_by_its_index() {
    let emu = emulator().await;
    let (status, body) = emu
        .submit(json!({ "variableSets": [{}, {}, {}, "oops"] }))
        .await;
    assert_eq!(status, 400);
    assert!(
        message(&body).contains("variableSets[3] must be an object"),
        "{body}"
    );
    assert_eq!(body["errors"][0]["field"], "variableSets[3]");
}

#[tokio::test]
async fn empty_and_oversized_batches_are_rejected() {
    let emu = emulator().await;
    let (status, body) = emu.submit(json!({ "variableSets": [] })).await;
    assert_eq!(
        (status, message(&body)),
        (
            400,
            "Validation failed: variableSets must contain at least 1 item"
        )
    );
    let (status, body) = emu.submit(cards(101)).await;
    assert_eq!(status, 400);
    assert!(message(&body).contains("at most 100"), "{body}");
}

#[tokio::test]
async fn each_out_of_range_option_is_named() {
    let emu = emulator().await;
    let cases = [
        (
            "format",
            json!("jpg"),
            "format must be one of png, jpeg, webp, gif",
        ),
        ("quality", json!(0.05), "quality must be between 0.1 and 1"),
        (
            "concurrency",
            json!(11),
            "concurrency must be an integer between 1 and 10",
        ),
        ("layout", json!("Not_OK"), "layout must match"),
        ("layouts", json!(vec!["a"; 21]), "layouts has 21 entries"),
    ];
    for (field, value, expected) in cases {
        let mut body = cards(1);
        body[field] = value;
        let (status, answer) = emu.submit(body).await;
        assert_eq!(status, 400, "{field}");
        assert!(message(&answer).contains(expected), "{field}: {answer}");
        assert_eq!(answer["errors"][0]["field"], field);
    }
}

#[tokio::test]
async fn malformed_json_is_400() {
    let emu = emulator().await;
    let (status, body) = emu
        .post_raw(
            &format!("/templates/{TEMPLATE}/batch-render"),
            "application/json",
            "{nope",
        )
        .await;
    assert_eq!(status, 400);
    assert!(message(&body).starts_with("Malformed JSON body"), "{body}");
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let emu = emulator().await;
    let payload = cards(1).to_string();
    let (status, body) = emu
        .post_raw(
            &format!("/templates/{TEMPLATE}/batch-render"),
            "text/plain",
            payload,
        )
        .await;
    assert_eq!(status, 415);
    assert!(message(&body).contains("application/json"), "{body}");
}

#[tokio::test]
async fn oversized_body_is_413() {
    let emu = emulator().await;
    let huge = format!(
        r#"{{"variableSets":[{{"title":"{}"}}]}}"#,
        "x".repeat(6 * 1024 * 1024)
    );
    let (status, body) = emu
        .post_raw(
            &format!("/templates/{TEMPLATE}/batch-render"),
            "application/json",
            huge,
        )
        .await;
    assert_eq!(status, 413);
    assert!(message(&body).contains("too large"), "{body}");
}

#[tokio::test]
async fn unicode_variables_are_accepted_and_reported_by_name() {
    let emu = emulator().await;
    let set = json!({ "title": "Ünïcødé 标题 🎉", "título": "ñ" });
    let id = emu.accepted(json!({ "variableSets": [set] })).await;
    let results = emu.finished(&id).await;
    assert_eq!(results["status"], "completed", "{results}");
    let names = results["results"][0]["variables"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        names.contains(&json!("título")) && names.len() == 2,
        "{results}"
    );
}

#[tokio::test]
async fn unknown_template_batch_and_route_are_404() {
    let emu = emulator().await;
    let req = emu
        .http
        .post(emu.url("/templates/tmpl_missing/batch-render"))
        .json(&cards(1));
    let (status, body) = emu.send(req).await;
    assert_eq!((status, message(&body)), (404, "Template not found"));
    let (status, body) = emu.get("/templates/batch/batch_missing/results").await;
    assert_eq!((status, message(&body)), (404, "Batch not found"));
    let (status, _) = emu.get("/v1/nothing-here").await;
    assert_eq!(status, 404);
}
