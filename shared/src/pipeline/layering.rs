//! Keeps the module doc's drawing true: every call between the step files runs downhill.
//!
//! The step files extend one type (`impl Pipeline`), so their calls to each other show in no `use`
//! line. This reads the sources: for each file, the methods and items it defines, and the
//! `self.method(` calls and `super::` paths it uses; every use of another file's item must go to
//! a file on a lower layer.

use std::collections::BTreeMap;

/// The layers, top first; files on one layer may not call each other.
const LAYERS: &[&[(&str, &str)]] = &[
    &[
        ("ingest", include_str!("ingest.rs")),
        ("submit", include_str!("submit.rs")),
        ("webhook", include_str!("webhook.rs")),
        ("reconcile", include_str!("reconcile.rs")),
    ],
    &[("batch", include_str!("batch.rs"))],
    &[("halt", include_str!("halt.rs"))],
    &[("finish", include_str!("finish.rs"))],
    &[("reopen", include_str!("reopen.rs"))],
    &[("manifest", include_str!("manifest.rs"))],
    &[("deliver", include_str!("deliver.rs"))],
    &[("schema", include_str!("schema.rs"))],
    &[("window", include_str!("window.rs"))],
    &[
        ("payload", include_str!("payload.rs")),
        ("alerting", include_str!("alerting.rs")),
    ],
];

/// The part of a file before its unit tests.
fn code(source: &str) -> &str {
    source.split("#[cfg(test)]").next().unwrap_or(source)
}

/// Names a file defines: functions and methods, types and constants.
fn defined(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in code(source).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            if matches!(pair[0], "fn" | "struct" | "enum" | "const") {
                let name: String = pair[1]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.push(name);
            }
        }
    }
    names
}

/// Names a file uses from elsewhere in the pipeline: `self.name(` calls, and the items of its
/// `super::` paths (`use super::payload::{A, B}`, `super::BatchApplied::Applied`).
fn used(source: &str) -> Vec<String> {
    let source = code(source);
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    for (i, _) in source.match_indices("self.") {
        let rest = &source[i + 5..];
        let name = ident(rest);
        if rest[name.len()..].starts_with('(') {
            names.push(name);
        }
    }
    for (i, _) in source.match_indices("super::") {
        let rest = &source[i + 7..];
        let end = rest
            .find([';', '\n', '(', ' ', ',', '='])
            .unwrap_or(rest.len());
        // A group (`super::{A, B}`, `super::payload::{A, B}`) runs to its closing brace.
        let end = match rest.find('{') {
            Some(open) if open < end => rest[open..].find('}').map_or(end, |close| open + close),
            _ => end,
        };
        let path = &rest[..end];
        names.extend(
            path.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .map(str::to_owned),
        );
    }
    names
}

#[test]
fn every_call_between_step_files_runs_downhill() {
    // name → (layer, file) for every item defined in one file only.
    let mut owner: BTreeMap<String, Vec<(usize, &str)>> = BTreeMap::new();
    for (layer, files) in LAYERS.iter().enumerate() {
        for (file, source) in *files {
            for name in defined(source) {
                owner.entry(name).or_default().push((layer, file));
            }
        }
    }
    let mut uphill = Vec::new();
    for (layer, files) in LAYERS.iter().enumerate() {
        for (file, source) in *files {
            let own = defined(source);
            for name in used(source) {
                if own.contains(&name) {
                    continue;
                }
                // A file name in a path (`super::payload::…`) counts as using that file.
                let targets: Vec<(usize, &str)> = LAYERS
                    .iter()
                    .enumerate()
                    .flat_map(|(l, fs)| fs.iter().map(move |(f, _)| (l, *f)))
                    .filter(|(_, f)| *f == name)
                    .chain(owner.get(&name).into_iter().flatten().copied())
                    .collect();
                for (target_layer, target) in targets {
                    if target_layer <= layer && target != *file {
                        uphill.push(format!("{file} uses `{name}` from {target}"));
                    }
                }
            }
        }
    }
    assert!(
        uphill.is_empty(),
        "calls that do not run downhill (see the drawing in pipeline/mod.rs):\n{}",
        uphill.join("\n")
    );
}

#[test]
fn the_check_sees_an_uphill_call() {
    let source = "impl Pipeline { fn a(&self) { self.complete_batch(1); } }";
    assert!(used(source).contains(&"complete_batch".to_owned()));
    let source = "use super::payload::{CHUNK_ROWS, EncodedChunk};";
    let names = used(source);
    assert!(names.contains(&"payload".to_owned()) && names.contains(&"EncodedChunk".to_owned()));
    assert!(
        defined("    pub(crate) async fn store_payload(").contains(&"store_payload".to_owned())
    );
}
