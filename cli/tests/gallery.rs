//! The results gallery (`out/index.html`) in a real browser: the built CLI renders the example
//! products, then headless Chromium opens the page from file:// (no server) and its DOM is read
//! back after the page's script ran (`--dump-dom`), unfiltered and filtered through the URL hash.
//!
//! Needs Chromium: `CHROMIUM`, else /usr/bin/chromium. `scripts/test` installs it when missing.
//! The screenshot lands in target/test-artifacts/gallery.png; with UPDATE_README_SCREENSHOT=1 it
//! is also copied to docs/img/gallery.png.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// Headless, and nothing contacted: no sync, updates, component downloads or QUIC probes, and no
/// host name resolves, so a request the page should not make fails instead of leaving the machine.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--allow-file-access-from-files",
    "--virtual-time-budget=5000",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let runs = Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        runs,
        "Chromium is needed for this test and `{}` does not run. scripts/test installs it \
         (apt-get install chromium); or set CHROMIUM to a Chromium binary",
        path.display()
    );
    path
}

/// Runs Chromium on `url` with `extra` flags, a fresh profile, and a hard time limit; its stdout.
fn browse(browser: &Path, scratch: &Path, url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir_in(scratch).unwrap();
    // stdout goes to a file: a page's DOM can outgrow a pipe that nobody reads while we wait.
    let stdout_path = profile.path().join("stdout.html");
    let stderr_path = profile.path().join("stderr.txt");
    let mut child = Command::new(browser)
        .args(CHROMIUM_FLAGS)
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("p").display()
        ))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        // Its own process group, so a hung browser is killed with its renderer and GPU helpers.
        .process_group(0)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BROWSER_TIMEOUT {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!(
                "Chromium did not finish {url} within {BROWSER_TIMEOUT:?}; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "Chromium failed on {url} ({status}); stderr:\n{}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    std::fs::read_to_string(&stdout_path).unwrap()
}

/// `pictify-batch run DATASET ARGS --out OUT`, locally.
fn run_example(dataset: &Path, args: &[&str], out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pictify-batch"))
        .arg("run")
        .arg(dataset)
        .args(args)
        .arg("--out")
        .arg(out)
        // The local run needs no AWS and no Pictify account: never the metadata address, never
        // a developer's API key.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("PICTIFY_API_KEY")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The opening tags of the cards in a dumped DOM. Only matching cards are ever in the DOM (the
/// page never creates the others, rather than hiding them), so these are the cards shown.
fn cards(dom: &str) -> Vec<&str> {
    dom.match_indices("<article class=\"card\"")
        .map(|(at, _)| {
            let tag = &dom[at..];
            &tag[..=tag.find('>').unwrap()]
        })
        .collect()
}

fn shown_count(dom: &str) -> u64 {
    let marker = "id=\"shown-count\">";
    let at = dom.find(marker).expect("no #shown-count in the DOM") + marker.len();
    let digits: String = dom[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

#[test]
fn the_gallery_of_a_run_lists_and_filters_its_rows_in_a_browser() {
    let browser = chromium();
    let root = workspace_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = run_example(
        &root.join("examples/products.csv"),
        &[
            "--template",
            "tmpl_product_card",
            "--file-column",
            "imageUrl",
        ],
        &out,
    );
    let said = String::from_utf8_lossy(&run.stderr);
    // Four products name missing images on purpose (IMAGE_FETCH_FAILED): exit 2.
    assert_eq!(run.status.code(), Some(2), "{said}");
    let page = out.join("index.html");
    assert!(
        said.contains(&format!("gallery: {}", page.display())),
        "{said}"
    );

    let html = std::fs::read_to_string(&page).unwrap();
    // Everything is inline and the images are files beside the page: nothing to fetch remotely.
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page names a remote URL"
    );
    let url = format!("file://{}", page.display());
    let dump = |hash: &str| {
        browse(
            &browser,
            dir.path(),
            &format!("{url}{hash}"),
            &["--dump-dom".to_owned()],
        )
    };

    let all = dump("");
    assert_eq!(cards(&all).len(), 100, "{all}");
    assert_eq!(shown_count(&all), 100);
    // The thumbnails are the run's own files, loaded lazily.
    let sources: Vec<&str> = all
        .match_indices(" src=\"")
        .map(|(at, m)| &all[at + m.len()..])
        .collect();
    assert_eq!(sources.len(), 96, "one thumbnail per rendered row");
    assert!(
        sources
            .iter()
            .all(|s| s.starts_with("thumbs/") && s.contains(".webp\"")),
        "{sources:?}"
    );
    assert_eq!(all.matches("loading=\"lazy\"").count(), 96);

    let failed = dump("#status=failed");
    let failed_cards = cards(&failed);
    assert_eq!(failed_cards.len(), 4, "{failed}");
    assert!(
        failed_cards
            .iter()
            .all(|c| c.contains("data-status=\"failed\"")),
        "{failed_cards:?}"
    );
    assert_eq!(shown_count(&failed), 4);
    // A failed row shows its error where the image would be.
    assert_eq!(failed.matches("class=\"no-image\"").count(), 4);
    assert!(failed.contains("IMAGE_FETCH_FAILED"));

    let rendered = dump("#status=rendered");
    assert_eq!(cards(&rendered).len(), 96);
    assert_eq!(shown_count(&rendered), 96);

    let searched = dump("#q=DESK%20mat");
    let found = cards(&searched);
    assert!(!found.is_empty() && found.len() < 100, "{found:?}");
    assert_eq!(shown_count(&searched), found.len() as u64);

    // The screenshot, for a person to look at (and for the README): a search whose matches mix
    // rendered rows with two whose image is missing, so both kinds of card are in view.
    let artifacts = root.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("gallery.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &browser,
        dir.path(),
        &format!("{url}#q=desk%20mat"),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,900".to_owned(),
            // `decoding="async"` images may otherwise be captured before they are drawn.
            "--disable-checker-imaging".to_owned(),
        ],
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 20_000, "{} is {size} bytes", shot.display());
    if std::env::var("UPDATE_README_SCREENSHOT").as_deref() == Ok("1") {
        std::fs::copy(&shot, root.join("docs/img/gallery.png")).unwrap();
        eprintln!("docs/img/gallery.png updated");
    }
    eprintln!(
        "gallery: {} bytes for 100 rows; screenshot {}",
        html.len(),
        shot.display()
    );
}

#[test]
fn the_warning_filter_finds_the_row_with_a_character_no_font_draws() {
    let browser = chromium();
    let root = workspace_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = run_example(
        &root.join("examples/multilingual.csv"),
        &["--template", "tmpl_blog_card"],
        &out,
    );
    let said = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{said}");
    let url = format!("file://{}", out.join("index.html").display());

    let all = browse(&browser, dir.path(), &url, &["--dump-dom".to_owned()]);
    assert_eq!(cards(&all).len(), 13);
    let warned = browse(
        &browser,
        dir.path(),
        &format!("{url}#warning=MISSING_GLYPHS"),
        &["--dump-dom".to_owned()],
    );
    let found = cards(&warned);
    assert_eq!(found.len(), 1, "{warned}");
    assert!(found[0].contains("data-row=\"12\""), "{}", found[0]);
    assert!(found[0].contains("MISSING_GLYPHS"), "{}", found[0]);
    assert!(warned.contains("U+E000"), "the warning's message is shown");
    assert_eq!(shown_count(&warned), 1);
}
