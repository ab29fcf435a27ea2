//! Datasets and answers the end-to-end tests share.

use shared::domain::JobId;

/// A blog-card CSV of `rows` rows; titles hold a comma, so they are quoted.
pub fn blog_csv(rows: usize) -> Vec<u8> {
    let mut s = String::from("title,author,publishDate\n");
    for i in 0..rows {
        s.push_str(&format!(
            "\"Post {i}, a story\",Author {i},2026-01-{:02}\n",
            i % 28 + 1
        ));
    }
    s.into_bytes()
}

/// The job id in the ingest handler's answer.
pub fn job_id_of(ingest_answer: &serde_json::Value) -> anyhow::Result<JobId> {
    let raw = ingest_answer["outcomes"][0]["job"]
        .as_str()
        .unwrap_or_default();
    JobId::parse(raw).map_err(anyhow::Error::msg)
}
