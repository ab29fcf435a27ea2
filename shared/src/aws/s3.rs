//! `S3ObjectStore`: the object store on S3, streaming reads pinned to the version that was listed.
//!
//! Versions: the object's VersionId when the bucket is versioned (S3 says `null` otherwise), else
//! its ETag as S3 returns it (quoted). `open` pins a read with `versionId` for a version id and
//! with `If-Match` for an ETag (quoted or not, as S3 events carry it unquoted), so a file replaced
//! between the event and the read fails clearly instead of yielding different rows.
//!
//! Also home of [`sdk_port_error`], the SDK-error → `PortError` mapping the SQS and SNS adapters
//! share.

use std::error::Error as StdError;
use std::fmt;
use std::path::Path;

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use tokio_util::io::SyncIoBridge;

use crate::domain::ObjectRef;
use crate::ports::{ObjectBody, ObjectStore, PortError, PortResult, UploadedPart};

/// An SDK error with a readable message (the SDK's own `Display` is just "service error") and the
/// original kept as the source.
#[derive(Debug)]
pub struct AwsError {
    message: String,
    source: Box<dyn StdError + Send + Sync>,
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for AwsError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

/// Maps an SDK error to a `PortError`: transport failures, throttling and 5xx are retryable,
/// anything else the caller sent is not.
pub fn sdk_port_error<E>(operation: impl Into<String>, error: SdkError<E>) -> PortError
where
    E: StdError + ProvideErrorMetadata + Send + Sync + 'static,
{
    let (retryable, message) = match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (true, DisplayErrorContext(&error).to_string())
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("unknown error");
            let throttled = code.contains("Throttl") || code == "SlowDown";
            let message = match service.err().message() {
                Some(message) => format!("{code}: {message} (HTTP {status})"),
                None => format!("{code} (HTTP {status})"),
            };
            (status >= 500 || status == 429 || throttled, message)
        }
        _ => (false, DisplayErrorContext(&error).to_string()),
    };
    PortError {
        operation: operation.into(),
        retryable,
        source: Box::new(AwsError {
            message,
            source: Box::new(error),
        }),
    }
}

fn http_status<E>(error: &SdkError<E>) -> Option<u16> {
    error.raw_response().map(|raw| raw.status().as_u16())
}

#[derive(Debug, thiserror::Error)]
enum S3Error {
    #[error("object does not exist")]
    NotFound,
    #[error("object changed since version {0} was listed; not reading a different file")]
    Changed(String),
    #[error("S3 answered without an ETag or version id")]
    NoVersion,
    #[error("a streaming read needs a tokio runtime: {0}")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    #[error("cannot read the object body: {0}")]
    Body(#[source] aws_sdk_s3::primitives::ByteStreamError),
    #[error("S3 started a multipart upload without an upload id")]
    NoUploadId,
}

/// How a read is pinned to a version.
#[derive(Debug, PartialEq)]
enum Pin {
    /// `If-Match` value, quoted as HTTP wants.
    ETag(String),
    VersionId(String),
}

impl Pin {
    /// ETags are 32 hex digits, `-<parts>` for multipart uploads; version ids never look like that.
    fn of(version: &str) -> Pin {
        let bare = version.trim_matches('"');
        let (digest, parts) = bare.split_once('-').unwrap_or((bare, "0"));
        let is_etag = digest.len() == 32
            && digest.bytes().all(|b| b.is_ascii_hexdigit())
            && !parts.is_empty()
            && parts.bytes().all(|b| b.is_ascii_digit());
        if is_etag {
            Pin::ETag(format!("\"{bare}\""))
        } else {
            Pin::VersionId(version.to_owned())
        }
    }
}

/// The version string for what S3 reported (see the module docs).
fn version_from(etag: Option<&str>, version_id: Option<&str>) -> Option<String> {
    match version_id {
        Some(id) if !id.is_empty() && id != "null" => Some(id.to_owned()),
        _ => etag.filter(|e| !e.is_empty()).map(str::to_owned),
    }
}

/// Objects in S3. The client is built once by the caller (with `force_path_style` for moto).
#[derive(Debug, Clone)]
pub struct S3ObjectStore {
    client: aws_sdk_s3::Client,
}

impl S3ObjectStore {
    pub fn new(client: aws_sdk_s3::Client) -> Self {
        S3ObjectStore { client }
    }
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    async fn version(&self, object: &ObjectRef) -> PortResult<Option<String>> {
        let operation = format!("head {object}");
        match self
            .client
            .head_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .send()
            .await
        {
            Ok(head) => version_from(head.e_tag(), head.version_id())
                .map(Some)
                .ok_or_else(|| PortError::permanent(operation, S3Error::NoVersion)),
            Err(error) if http_status(&error) == Some(404) => Ok(None),
            Err(error) => Err(sdk_port_error(operation, error)),
        }
    }

    /// The reader blocks on the async body: read it only from a blocking thread
    /// (`tokio::task::spawn_blocking`), never on an async worker, where it would panic.
    /// The body streams; nothing beyond the SDK's small buffers is held in memory.
    async fn open(&self, object: &ObjectRef, version: Option<&str>) -> PortResult<ObjectBody> {
        self.open_at(object, version, 0).await
    }

    /// A ranged GET: a resumed ingest reads only what is left.
    async fn open_at(
        &self,
        object: &ObjectRef,
        version: Option<&str>,
        offset: u64,
    ) -> PortResult<ObjectBody> {
        let operation = format!("open {object} at byte {offset}");
        let mut request = self
            .client
            .get_object()
            .bucket(&object.bucket)
            .key(&object.key);
        if offset > 0 {
            request = request.range(format!("bytes={offset}-"));
        }
        request = match version.map(Pin::of) {
            Some(Pin::ETag(etag)) => request.if_match(etag),
            Some(Pin::VersionId(id)) => request.version_id(id),
            None => request,
        };
        let output = match request.send().await {
            Ok(output) => output,
            Err(error) => {
                let code = error.code().unwrap_or_default().to_owned();
                return Err(match (http_status(&error), version) {
                    (Some(412), Some(version)) => {
                        PortError::permanent(operation, S3Error::Changed(version.to_owned()))
                    }
                    (Some(400 | 404), Some(version))
                        if code == "NoSuchVersion" || code == "InvalidArgument" =>
                    {
                        PortError::permanent(operation, S3Error::Changed(version.to_owned()))
                    }
                    (Some(404), _) => PortError::permanent(operation, S3Error::NotFound),
                    _ => sdk_port_error(operation, error),
                });
            }
        };
        let read_version = version_from(output.e_tag(), output.version_id())
            .or_else(|| version.map(str::to_owned))
            .ok_or_else(|| PortError::permanent(operation.clone(), S3Error::NoVersion))?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| PortError::permanent(operation.clone(), S3Error::NoRuntime(e)))?;
        // Pinned on the heap so the bridge's `Unpin` bound holds whatever the SDK's reader is.
        let size = output.content_length.and_then(|n| u64::try_from(n).ok());
        let reader = SyncIoBridge::new_with_handle(Box::pin(output.body.into_async_read()), handle);
        Ok(ObjectBody {
            size,
            reader: Box::new(reader),
            version: read_version,
        })
    }

    async fn get_bytes(&self, object: &ObjectRef) -> PortResult<Option<Vec<u8>>> {
        let operation = format!("get {object}");
        let output = match self
            .client
            .get_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(error) if http_status(&error) == Some(404) => return Ok(None),
            Err(error) => return Err(sdk_port_error(operation, error)),
        };
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|e| PortError::new(operation, S3Error::Body(e)))?;
        Ok(Some(bytes.to_vec()))
    }

    async fn put_bytes(
        &self,
        object: &ObjectRef,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> PortResult<()> {
        self.client
            .put_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| sdk_port_error(format!("put {object}"), e))?;
        Ok(())
    }

    async fn put_file(
        &self,
        object: &ObjectRef,
        path: &Path,
        content_type: &str,
    ) -> PortResult<()> {
        let operation = format!("upload {} to {object}", path.display());
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| PortError::permanent(operation.clone(), S3Error::Body(e)))?;
        self.client
            .put_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .content_type(content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| sdk_port_error(operation, e))?;
        Ok(())
    }

    async fn start_upload(&self, object: &ObjectRef, content_type: &str) -> PortResult<String> {
        let operation = format!("start a multipart upload to {object}");
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&object.bucket)
            .key(&object.key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| sdk_port_error(operation.clone(), e))?;
        out.upload_id
            .ok_or_else(|| PortError::permanent(operation, S3Error::NoUploadId))
    }

    async fn upload_part(
        &self,
        object: &ObjectRef,
        upload: &str,
        number: u32,
        bytes: Vec<u8>,
    ) -> PortResult<String> {
        let operation = format!("upload part {number} of {object}");
        let out = self
            .client
            .upload_part()
            .bucket(&object.bucket)
            .key(&object.key)
            .upload_id(upload)
            .part_number(i32::try_from(number).unwrap_or(i32::MAX))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| sdk_port_error(operation.clone(), e))?;
        out.e_tag
            .ok_or_else(|| PortError::permanent(operation, S3Error::NoVersion))
    }

    async fn finish_upload(
        &self,
        object: &ObjectRef,
        upload: &str,
        parts: &[UploadedPart],
    ) -> PortResult<()> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let operation = format!("complete the multipart upload to {object}");
        let parts = parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(i32::try_from(p.number).unwrap_or(i32::MAX))
                    .e_tag(&p.etag)
                    .build()
            })
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&object.bucket)
            .key(&object.key)
            .upload_id(upload)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_port_error(operation, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_pin_with_if_match_and_anything_else_by_version_id() {
        let md5 = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            Pin::of(&format!("\"{md5}\"")),
            Pin::ETag(format!("\"{md5}\""))
        );
        assert_eq!(Pin::of(md5), Pin::ETag(format!("\"{md5}\"")));
        assert_eq!(
            Pin::of(&format!("{md5}-12")),
            Pin::ETag(format!("\"{md5}-12\""))
        );
        let uuid = "3c8b7a10-1234-4abc-8def-0123456789ab";
        assert_eq!(Pin::of(uuid), Pin::VersionId(uuid.into()));
        assert_eq!(
            Pin::of("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"),
            Pin::VersionId("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY".into())
        );
    }

    #[test]
    fn the_version_id_wins_unless_the_bucket_is_unversioned() {
        assert_eq!(
            version_from(Some("\"e\""), Some("v1")).as_deref(),
            Some("v1")
        );
        assert_eq!(
            version_from(Some("\"e\""), Some("null")).as_deref(),
            Some("\"e\"")
        );
        assert_eq!(version_from(None, None), None);
    }
}
