//! S3 notifications as ingest receives them: `ObjectCreated` records with URL-encoded keys, and the
//! `s3:TestEvent` S3 sends when a notification is configured. Parsed leniently on purpose: moto's
//! and AWS's shapes differ in fields we do not use.

use serde::Deserialize;

use crate::domain::ObjectRef;

#[derive(Debug, Deserialize)]
pub struct S3Notification {
    #[serde(rename = "Records", default)]
    pub records: Vec<S3Record>,
    /// `s3:TestEvent` (no records).
    #[serde(rename = "Event", default)]
    pub event: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3Record {
    #[serde(default)]
    pub event_name: String,
    pub s3: S3Entity,
}

#[derive(Debug, Deserialize)]
pub struct S3Entity {
    pub bucket: S3Bucket,
    pub object: S3Object,
}

#[derive(Debug, Deserialize)]
pub struct S3Bucket {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3Object {
    pub key: String,
    #[serde(default)]
    pub e_tag: Option<String>,
    #[serde(default)]
    pub version_id: Option<String>,
}

/// What to do with one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    Ingest {
        upload: ObjectRef,
        version: Option<String>,
    },
    Skip {
        reason: String,
    },
}

/// Event keys are form-encoded: `+` is a space, then `%XX` escapes.
pub fn decode_key(raw: &str) -> String {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

impl S3Record {
    pub fn trigger(&self) -> Trigger {
        if !self.event_name.starts_with("ObjectCreated")
            && !self.event_name.starts_with("s3:ObjectCreated")
        {
            return Trigger::Skip {
                reason: format!("event type `{}` is not ObjectCreated", self.event_name),
            };
        }
        // A version id pins the exact object; an ETag is the next best identity.
        let version = self
            .s3
            .object
            .version_id
            .clone()
            .or_else(|| self.s3.object.e_tag.clone())
            .filter(|v| !v.is_empty());
        Trigger::Ingest {
            upload: ObjectRef {
                bucket: self.s3.bucket.name.clone(),
                key: decode_key(&self.s3.object.key),
            },
            version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_form_decoded() {
        assert_eq!(
            decode_key("uploads/t/my+posts%2B2026.csv"),
            "uploads/t/my posts+2026.csv"
        );
    }

    #[test]
    fn a_test_event_has_no_records() {
        let n: S3Notification =
            serde_json::from_str(r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#)
                .unwrap();
        assert!(n.records.is_empty());
        assert_eq!(n.event.as_deref(), Some("s3:TestEvent"));
    }

    #[test]
    fn removals_are_skipped() {
        let n: S3Notification = serde_json::from_str(
            r#"{"Records":[{"eventName":"ObjectRemoved:Delete","s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}]}"#,
        )
        .unwrap();
        assert!(matches!(n.records[0].trigger(), Trigger::Skip { .. }));
    }
}
