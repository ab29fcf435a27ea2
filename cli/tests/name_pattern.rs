//! `pictify-batch run --name-pattern`: image files named by a pattern (folders, slugs, row
//! numbers), results and gallery pointing at them, `--resume` finding them again, collisions
//! never overwriting, and bad patterns refused before anything runs. The built binary, the
//! in-process emulator, temp dirs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const PATTERN: &str = "{templateId}/{slug(title)}-{row}.{ext}";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(dataset: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pictify-batch"))
        .arg("run")
        .arg(dataset)
        .args(["--template", "tmpl_blog_card", "--out"])
        .arg(out)
        .args(extra)
        .env_remove("PICTIFY_API_KEY")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn results(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `results.csv`'s `file` column, row by row.
fn csv_files(out: &Path) -> Vec<String> {
    let mut reader = csv::Reader::from_path(out.join("results.csv")).unwrap();
    let at = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "file")
        .unwrap();
    reader
        .records()
        .map(|r| r.unwrap()[at].to_owned())
        .collect()
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap();
                found.insert(relative.to_string_lossy().into_owned());
            }
        }
    }
    found
}

fn warning_codes(line: &Value) -> Vec<&str> {
    line["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap())
        .collect()
}

#[test]
fn the_blog_posts_are_named_by_the_pattern_and_found_again_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let dataset = workspace_root().join("examples/blog-posts.csv");
    let flags = ["--no-render", "--name-pattern", PATTERN];
    let output = run(&dataset, &out, &flags);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    let lines = results(&out);
    assert_eq!(lines.len(), 200);
    let images = files_under(&out.join("images"));
    assert_eq!(images.len(), 200, "{images:?}");
    // Known rows, by their titles.
    assert_eq!(
        lines[0]["file"],
        "images/tmpl_blog_card/gentle-sqs-part-1-0.png"
    );
    assert_eq!(
        lines[1]["file"],
        "images/tmpl_blog_card/csv-parsing-the-honest-way-part-2-1.png"
    );
    let csv = csv_files(&out);
    for (line, csv_file) in lines.iter().zip(&csv) {
        let row = line["row"].as_u64().unwrap();
        let file = line["file"].as_str().unwrap();
        assert_eq!(file, csv_file, "results.csv and results.jsonl agree");
        let name = file.strip_prefix("images/").unwrap();
        assert!(name.starts_with("tmpl_blog_card/"), "{file}");
        assert!(name.ends_with(&format!("-{row}.png")), "{file}");
        assert!(images.contains(name), "{file} was not saved");
        let stem = name.strip_suffix(".png").unwrap();
        assert!(
            out.join(format!("thumbs/{stem}.webp")).is_file(),
            "thumbnail of {file}"
        );
        assert!(warning_codes(line).is_empty(), "{line}");
    }
    let gallery = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(
        gallery.contains("tmpl_blog_card/gentle-sqs-part-1-0.png")
            && gallery.contains("thumbs/tmpl_blog_card/gentle-sqs-part-1-0.webp"),
        "the gallery links the named files"
    );

    // --resume with the same pattern keeps every file it saved (not downloaded again).
    let inode = |name: &str| {
        std::fs::metadata(out.join("images").join(name))
            .unwrap()
            .ino()
    };
    let before: Vec<u64> = images.iter().map(|n| inode(n)).collect();
    let resumed = run(&dataset, &out, &[&flags[..], &["--resume"]].concat());
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    assert_eq!(files_under(&out.join("images")), images);
    let after: Vec<u64> = images.iter().map(|n| inode(n)).collect();
    assert_eq!(before, after, "a resumed run must keep the files it finds");
    assert_eq!(csv_files(&out), csv);
}

#[test]
fn colliding_names_get_the_row_number_and_a_warning_never_an_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let dataset = dir.path().join("posts.csv");
    std::fs::write(
        &dataset,
        "title,author,publishDate\n\
         Same,Ann,2026-01-01\n\
         Other,Bob,2026-01-02\n\
         Same,Cy,2026-01-03\n\
         SAME!,Di,2026-01-04\n\
         東京,Eve,2026-01-05\n",
    )
    .unwrap();
    let output = run(&dataset, &out, &["--name-pattern", "{slug(title)}.{ext}"]);
    let said = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "warnings exit 2: {said}");
    assert!(said.contains("NAME_COLLISION 2"), "{said}");
    assert!(
        said.contains("row 2: NAME_COLLISION: rows 0 and 2"),
        "{said}"
    );

    let lines = results(&out);
    let files: Vec<&str> = lines.iter().map(|l| l["file"].as_str().unwrap()).collect();
    assert_eq!(
        files,
        [
            "images/same.png",
            "images/other.png",
            "images/same-2.png",
            "images/same-3.png",
            "images/00004.png",
        ]
    );
    assert_eq!(
        files_under(&out.join("images")),
        files
            .iter()
            .map(|f| f.strip_prefix("images/").unwrap().to_owned())
            .collect()
    );
    // Each row's own image: rows 0, 2 and 3 differ by author, so by their pixels.
    let bytes = |f: &str| std::fs::read(out.join(f)).unwrap();
    assert_ne!(bytes(files[0]), bytes(files[2]));
    assert_ne!(bytes(files[2]), bytes(files[3]));

    assert_eq!(warning_codes(&lines[0]), Vec::<&str>::new());
    assert_eq!(warning_codes(&lines[2]), ["NAME_COLLISION"]);
    let message = lines[2]["warnings"][0]["message"].as_str().unwrap();
    assert_eq!(
        message,
        "rows 0 and 2 are both named images/same.png; row 2's image is saved as images/same-2.png"
    );
    assert_eq!(warning_codes(&lines[3]), ["NAME_COLLISION"]);
    // The row whose title has nothing a slug keeps gets the default name, and says why.
    assert_eq!(warning_codes(&lines[4]), ["NAME_PATTERN_FAILED"]);
    let message = lines[4]["warnings"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "row 4: field \"title\" (\"東京\") has no ASCII letter or digit, so {slug(title)} has nothing to name the file with; saved as images/00004.png"
        ),
        "{message}"
    );
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(
        csv.contains("NAME_COLLISION: rows 0 and 3 are both named images/same.png"),
        "{csv}"
    );

    // Warnings alone are allowed with --allow-warnings; the names stay the same.
    let again = run(
        &dataset,
        &out,
        &[
            "--name-pattern",
            "{slug(title)}.{ext}",
            "--allow-warnings",
            "--resume",
        ],
    );
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let again: Vec<String> = results(&out)
        .iter()
        .map(|l| l["file"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(again, files);
}

#[test]
fn a_bad_pattern_is_a_one_line_usage_error_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("posts.csv");
    std::fs::write(&dataset, "title,author,publishDate\nOne,Ann,2026-01-01\n").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--name-pattern", "{slug(title)"],
            "--name-pattern '{slug(title)': unclosed `{` at position 1: expected `}`",
        ),
        (
            &["--name-pattern", "{upper(title)}.{ext}"],
            "unknown function `upper(…)` at position 1: expected slug(<field>)",
        ),
        (
            &["--name-pattern", "a/{}.png"],
            "empty placeholder `{}` at position 3",
        ),
        (
            &["--name-pattern", "../{row}.{ext}"],
            "a name must stay inside its folder",
        ),
        (
            &["--name-pattern", "{slug(titel)}.{ext}"],
            "uses field \"titel\", which is not in the CSV header",
        ),
        (
            &["--name-pattern", "{row}.png", "--format", "webp"],
            "ends in .png but the images are webp: end it with .{ext}",
        ),
    ];
    for (i, (flags, needle)) in cases.iter().enumerate() {
        let out = dir.path().join(format!("out{i}"));
        let output = run(&dataset, &out, flags);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(3), "{flags:?}: {text}");
        assert_eq!(text.trim().lines().count(), 1, "one line expected: {text}");
        assert!(text.contains(needle), "{flags:?}: {text}");
        assert!(
            !out.join("images").exists() && !out.join(".state").exists(),
            "nothing may run on a bad pattern"
        );
    }
}

/// `--resume` with another pattern that hands one row's name to another row: the file left
/// under that name is the other row's image, so it is downloaded again, never kept.
#[test]
fn a_resumed_run_never_keeps_a_file_saved_for_another_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let dataset = dir.path().join("posts.csv");
    std::fs::write(
        &dataset,
        "title,author,publishDate\nAlpha,Beta,2026-01-01\nBeta,Alpha,2026-01-02\n",
    )
    .unwrap();
    let first = run(&dataset, &out, &["--name-pattern", "{slug(title)}.{ext}"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let row0 = std::fs::read(out.join("images/alpha.png")).unwrap();
    let row1 = std::fs::read(out.join("images/beta.png")).unwrap();
    assert_ne!(row0, row1);

    let swapped = run(
        &dataset,
        &out,
        &["--name-pattern", "{slug(author)}.{ext}", "--resume"],
    );
    assert_eq!(swapped.status.code(), Some(0), "{}", stderr(&swapped));
    let lines = results(&out);
    assert_eq!(lines[0]["file"], "images/beta.png");
    assert_eq!(lines[1]["file"], "images/alpha.png");
    assert_eq!(std::fs::read(out.join("images/beta.png")).unwrap(), row0);
    assert_eq!(std::fs::read(out.join("images/alpha.png")).unwrap(), row1);
}
