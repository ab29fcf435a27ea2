//! Glyph and image QA in a local run: the built binary, the in-process emulator, temp dirs.
//! Every image is checked (decodes, template size, not blank) and thumbnailed; what the fonts
//! cannot draw is a `MISSING_GLYPHS` warning; warnings exit 2 unless `--allow-warnings`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use image::GenericImageView;
use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(dataset: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pictify-batch"))
        .arg("run")
        .arg(dataset)
        .args(["--out"])
        .arg(out)
        .args(extra)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("PICTIFY_API_KEY")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn results(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn codes(line: &Value) -> Vec<&str> {
    line["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap())
        .collect()
}

#[test]
fn every_script_renders_and_only_the_private_use_character_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let dataset = workspace_root().join("examples/multilingual.csv");
    let output = run(&dataset, &out, &["--template", "tmpl_blog_card"]);
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "warnings exit 2: {said}");
    assert!(
        said.contains("image warnings (1 image(s): MISSING_GLYPHS 1)"),
        "{said}"
    );
    assert!(said.contains("row 12: MISSING_GLYPHS"), "{said}");

    let lines = results(&out);
    assert_eq!(lines.len(), 13);
    for line in &lines {
        assert_eq!(line["status"], "rendered", "{line}");
        let expected: &[&str] = if line["row"] == 12 {
            &["MISSING_GLYPHS"]
        } else {
            &[]
        };
        assert_eq!(codes(line), expected, "{line}");
    }
    let message = lines[12]["warnings"][0]["message"].as_str().unwrap();
    assert!(message.contains("U+E000 '\u{E000}'"), "{message}");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with(",status,file,url,error,warnings")
    );
    assert!(
        csv.lines()
            .last()
            .unwrap()
            .contains("MISSING_GLYPHS: the fonts cannot draw 1 character(s): U+E000")
    );

    // A thumbnail per image for the gallery, which lists the warning too.
    let thumbs: Vec<_> = std::fs::read_dir(out.join("thumbs")).unwrap().collect();
    assert_eq!(thumbs.len(), 13);
    for thumb in thumbs {
        let img = image::open(thumb.unwrap().path()).unwrap();
        assert_eq!(img.dimensions(), (320, 168));
    }
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(page.contains("MISSING_GLYPHS"));

    // --resume keeps the images it has; their warnings are asked of the emulator again.
    let output = run(
        &dataset,
        &out,
        &["--template", "tmpl_blog_card", "--resume"],
    );
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{said}");
    let lines = results(&out);
    assert_eq!(codes(&lines[12]), ["MISSING_GLYPHS"], "{said}");

    // --allow-warnings: the same run exits 0 and still lists the warning.
    let allowed_out = dir.path().join("allowed");
    let output = run(
        &dataset,
        &allowed_out,
        &["--template", "tmpl_blog_card", "--allow-warnings"],
    );
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{said}");
    assert!(said.contains("MISSING_GLYPHS 1), allowed"), "{said}");
}

#[test]
fn a_template_that_draws_nothing_gives_blank_image_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    // White text on white: the title is laid out but nothing shows.
    std::fs::write(
        templates.join("tmpl_ghost.html"),
        r#"<div style="width:600px;height:300px;background:#fff;color:#fff;font-size:40px">{{title}}</div>"#,
    )
    .unwrap();
    std::fs::write(
        templates.join("tmpl_ghost.json"),
        r#"{"name":"Ghost","width":600,"height":300,"variables":[{"name":"title","required":true}]}"#,
    )
    .unwrap();
    let dataset = dir.path().join("rows.csv");
    std::fs::write(&dataset, "title\nfirst\nsecond\nthird\n").unwrap();
    let out = dir.path().join("out");
    let output = run(
        &dataset,
        &out,
        &[
            "--template",
            "tmpl_ghost",
            "--templates",
            templates.to_str().unwrap(),
        ],
    );
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(said.contains("BLANK_IMAGE 3"), "{said}");
    for line in results(&out) {
        assert_eq!(line["status"], "rendered");
        assert_eq!(codes(&line), ["BLANK_IMAGE"], "{line}");
    }
}
