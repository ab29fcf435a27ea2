//! `pictify-batch check`: the built binary against the bundled templates (and the emulator over
//! HTTP for `--api-key`), image probes against a local HTTP server. Nothing renders.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn check(dataset: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pictify-batch"))
        .arg("check")
        .arg(dataset)
        .args(extra)
        .env_remove("PICTIFY_API_KEY")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn report(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A server for the image probes: `/ok.png` answers 200, anything else 404.
async fn image_host() -> String {
    let app = axum::Router::new()
        .route("/ok.png", axum::routing::get(|| async { "png" }))
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "gone") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

/// A product dataset with one of each problem, beside a real image file.
fn faulty_products(dir: &Path, host: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("img")).unwrap();
    std::fs::write(dir.join("img/a.png"), b"png").unwrap();
    let text = format!(
        "productName,price,imageUrl,rating,sku\n\
         Lamp,10,img/a.png,4.5,S1\n\
         ,12,img/a.png,4.0,S2\n\
         Desk,99,img/a.png,great,S3\n\
         Chair,45,{host}/ok.png,3.9,S4\n\
         Shelf,30,{host}/missing.png,4.1,S5\n\
         Lamp,10,img/a.png,4.5,S1\n\
         Stool,15,img/none.png,4.2,S6\n"
    );
    let path = dir.join("products.csv");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_example_products_are_checked_without_rendering_and_its_missing_images_found() {
    let output = check(
        &examples().join("products.csv"),
        &[
            "--template",
            "tmpl_product_card",
            "--file-column",
            "imageUrl",
        ],
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("rows: 100 · ok 96 · would be rejected 0 · would fail 4"),
        "{text}"
    );
    assert!(text.contains("IMAGE_FETCH_FAILED (4)"), "{text}");
    // Row numbers are the manifest's (0-based): the 25th product is row 24.
    assert!(
        text.contains("row 24: file://") && text.contains("missing-024.png: no such file"),
        "{text}"
    );
    assert!(
        text.contains("on Pro: 96 credits (of 5000 a month), 1 batch(es), 2 requests"),
        "{text}"
    );
}

#[tokio::test]
async fn every_kind_of_problem_is_named_with_its_row_and_code() {
    let host = image_host().await;
    let dir = tempfile::tempdir().unwrap();
    let dataset = faulty_products(dir.path(), &host);
    let dataset_arg = dataset.clone();
    let output = tokio::task::spawn_blocking(move || {
        check(
            &dataset_arg,
            &[
                "--template",
                "tmpl_product_card",
                "--file-column",
                "imageUrl",
                "--require",
                "productName",
                "--plan",
                "free",
                "--json",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let r = report(&output);
    assert_eq!(
        (&r["rows"], &r["ok"], &r["rejected"], &r["wouldFail"]),
        (&7.into(), &3.into(), &1.into(), &3.into()),
        "{r:#}"
    );
    let problems: Vec<(u64, String)> = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["row"].as_u64().unwrap(),
                p["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        problems,
        vec![
            (1, "REJECTED".into()),
            (2, "INVALID_VARIABLE".into()),
            (4, "IMAGE_FETCH_FAILED".into()),
            (6, "IMAGE_FETCH_FAILED".into()),
        ]
    );
    let reasons = r["problems"].to_string();
    assert!(
        reasons.contains("required column \\\"productName\\\" is empty"),
        "{reasons}"
    );
    assert!(reasons.contains("'rating' must be a number"), "{reasons}");
    assert!(reasons.contains("HTTP 404"), "{reasons}");
    assert!(reasons.contains("no such file"), "{reasons}");
    // Row 5 repeats row 0 (0-based data rows, as in the manifest): both render (and bill). Distinct among the rows the template accepts.
    assert_eq!(r["duplicates"], serde_json::json!([[5, 0]]));
    assert_eq!(r["distinctRenders"], 4);
    assert_eq!(r["unusedColumns"], serde_json::json!(["sku"]));
    // Free: batches of 10 one at a time, 100 renders a month.
    assert_eq!(r["estimate"]["credits"], 3);
    assert_eq!(r["estimate"]["monthlyRenders"], 100);
    assert_eq!(r["estimate"]["batches"], 1);
}

#[tokio::test]
async fn with_an_api_key_the_definitions_come_from_pictify() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = pictify_emulator::start(pictify_emulator::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("emulator"),
        ..pictify_emulator::Config::default()
    })
    .await
    .unwrap();
    let base = emulator.base_url();
    let dataset = examples().join("blog-posts.csv");
    let (ok, refused) = tokio::task::spawn_blocking(move || {
        let ok = check(
            &dataset,
            &[
                "--template",
                "tmpl_blog_card",
                "--api-key",
                "pk_test_emulator",
                "--base-url",
                &base,
                "--json",
            ],
        );
        let refused = check(
            &dataset,
            &[
                "--template",
                "tmpl_blog_card",
                "--api-key",
                "pk_wrong",
                "--base-url",
                &base,
            ],
        );
        (ok, refused)
    })
    .await
    .unwrap();
    let r = report(&ok);
    assert_eq!(ok.status.code(), Some(0), "{r:#}");
    assert_eq!(r["definitionsFrom"], emulator.base_url());
    assert_eq!((&r["rows"], &r["ok"]), (&200.into(), &200.into()));
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("refused the API key"));
    // Nothing was submitted.
    assert_eq!(emulator.ledger().submit_requests, 0);
}
