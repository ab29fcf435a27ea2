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

/// A blog-card CSV with what breaks naive splitting: a BOM, CRLF and bare LF line ends, quoted
/// newlines, commas and quotes, blank lines, and every 10th row rejected (no title).
pub fn awkward_csv(rows: usize) -> Vec<u8> {
    let mut data = b"\xEF\xBB\xBFtitle,author,publishDate\r\n".to_vec();
    for i in 0..rows {
        let line = match i % 10 {
            0 => format!(",Nobody {i},2026-01-02\r\n"),
            1 => format!("\"Post {i}\r\nsecond line\",\"Doe, \"\"J\"\"\",2026-01-01\r\n"),
            2 => format!("\r\nPost {i},\"multi\nline\",2026-01-03\n"),
            _ => format!("Post {i},Author {i},2026-01-{:02}\r\n", i % 28 + 1),
        };
        data.extend_from_slice(line.as_bytes());
    }
    data
}

/// The job id in the ingest handler's answer.
pub fn job_id_of(ingest_answer: &serde_json::Value) -> anyhow::Result<JobId> {
    let raw = ingest_answer["outcomes"][0]["job"]
        .as_str()
        .unwrap_or_default();
    JobId::parse(raw).map_err(anyhow::Error::msg)
}
