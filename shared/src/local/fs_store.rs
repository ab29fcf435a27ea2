//! `FsObjectStore`: the object store as a directory tree (`<root>/<bucket>/<key>`) for local runs.
//!
//! Versions are cheap fingerprints, not content hashes: sha256 of (size, mtime in nanoseconds,
//! inode on unix), cut to 32 hex digits. Every write is write-to-temp + rename, so a rewrite gets
//! a new inode and a new version even when the filesystem's mtime is coarse, and a reader that
//! opened the old file keeps reading the old bytes.

use std::fs::{self, File, Metadata};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::domain::ObjectRef;
use crate::ports::{ObjectBody, ObjectStore, PortError, PortResult, UploadedPart};

/// Objects as files under one root directory.
#[derive(Debug, Clone)]
pub struct FsObjectStore {
    root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
enum FsStoreError {
    #[error("bucket `{0}` is not a plain directory name")]
    BadBucket(String),
    #[error(
        "key `{0}` is not a relative path of plain segments (no `..`, `.`, empty or absolute parts)"
    )]
    BadKey(String),
    #[error("object does not exist")]
    NotFound,
    #[error("object changed since it was listed: version {found}, expected {expected}")]
    Changed { expected: String, found: String },
    #[error("blocking file task failed: {0}")]
    Join(String),
}

impl FsObjectStore {
    pub fn new(root: PathBuf) -> Self {
        FsObjectStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file backing `object`, refusing anything that could escape `<root>/<bucket>`.
    pub fn path_of(&self, object: &ObjectRef) -> Result<PathBuf, PortError> {
        let plain = |part: &str| {
            !part.is_empty() && part != "." && part != ".." && !part.contains(['/', '\0'])
        };
        if !plain(&object.bucket) {
            return Err(PortError::permanent(
                format!("locate {object}"),
                FsStoreError::BadBucket(object.bucket.clone()),
            ));
        }
        let key = Path::new(&object.key);
        let segments_ok = object.key.split('/').all(plain)
            && key.components().all(|c| matches!(c, Component::Normal(_)));
        if !segments_ok {
            return Err(PortError::permanent(
                format!("locate {object}"),
                FsStoreError::BadKey(object.key.clone()),
            ));
        }
        Ok(self.root.join(&object.bucket).join(key))
    }
}

/// The cheap version of a file (see the module docs).
fn version_of(meta: &Metadata) -> String {
    let mut hasher = Sha256::new();
    hasher.update(meta.len().to_le_bytes());
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    hasher.update(mtime.to_le_bytes());
    #[cfg(unix)]
    hasher.update(std::os::unix::fs::MetadataExt::ino(meta).to_le_bytes());
    hex::encode(&hasher.finalize()[..16])
}

/// Writes via a sibling temp file and a rename, so readers never see a partial object.
fn write_atomically(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "object path has no parent"))?;
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let result = File::create(&temp).and_then(|mut file| {
        fill(&mut file)?;
        file.sync_all()
    });
    match result.and_then(|()| fs::rename(&temp, path)) {
        Ok(()) => Ok(()),
        Err(error) => {
            // Best effort: the write already failed, a leftover temp file is only clutter.
            let _ = fs::remove_file(&temp);
            Err(error)
        }
    }
}

fn io_error(operation: String, error: io::Error) -> PortError {
    let retryable = matches!(
        error.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    );
    PortError {
        operation,
        retryable,
        source: Box::new(error),
    }
}

/// Runs blocking file work off the async worker threads.
async fn blocking<T: Send + 'static>(
    operation: String,
    work: impl FnOnce() -> PortResult<T> + Send + 'static,
) -> PortResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| {
            Err(PortError::new(
                operation,
                FsStoreError::Join(join.to_string()),
            ))
        })
}

#[async_trait]
impl ObjectStore for FsObjectStore {
    async fn version(&self, object: &ObjectRef) -> PortResult<Option<String>> {
        let path = self.path_of(object)?;
        let operation = format!("stat {object}");
        blocking(operation.clone(), move || match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(version_of(&meta))),
            Ok(_) => Ok(None),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error(operation, error)),
        })
        .await
    }

    async fn open(&self, object: &ObjectRef, version: Option<&str>) -> PortResult<ObjectBody> {
        let path = self.path_of(object)?;
        let operation = format!("open {object}");
        let expected = version.map(str::to_owned);
        blocking(operation.clone(), move || {
            let file = File::open(&path).map_err(|error| match error.kind() {
                io::ErrorKind::NotFound => {
                    PortError::permanent(operation.clone(), FsStoreError::NotFound)
                }
                _ => io_error(operation.clone(), error),
            })?;
            // Version from the open handle, not the path: the bytes we return are this file's.
            let metadata = file
                .metadata()
                .map_err(|e| io_error(operation.clone(), e))?;
            let found = version_of(&metadata);
            if let Some(expected) = expected
                && expected != found
            {
                return Err(PortError::permanent(
                    operation,
                    FsStoreError::Changed { expected, found },
                ));
            }
            Ok(ObjectBody {
                reader: Box::new(file),
                version: found,
                size: Some(metadata.len()),
            })
        })
        .await
    }

    async fn get_bytes(&self, object: &ObjectRef) -> PortResult<Option<Vec<u8>>> {
        let path = self.path_of(object)?;
        let operation = format!("read {object}");
        blocking(operation.clone(), move || match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error(operation, error)),
        })
        .await
    }

    async fn put_bytes(
        &self,
        object: &ObjectRef,
        bytes: Vec<u8>,
        _content_type: &str,
    ) -> PortResult<()> {
        let path = self.path_of(object)?;
        let operation = format!("write {object}");
        blocking(operation.clone(), move || {
            write_atomically(&path, |file| file.write_all(&bytes))
                .map_err(|e| io_error(operation, e))
        })
        .await
    }

    async fn put_file(
        &self,
        object: &ObjectRef,
        source: &Path,
        _content_type: &str,
    ) -> PortResult<()> {
        let path = self.path_of(object)?;
        let source = source.to_path_buf();
        let operation = format!("copy {} to {object}", source.display());
        blocking(operation.clone(), move || {
            write_atomically(&path, |file| {
                io::copy(&mut File::open(&source)?, file).map(drop)
            })
            .map_err(|e| io_error(operation, e))
        })
        .await
    }

    /// Parts are files in a hidden directory beside the object until `finish_upload`
    /// concatenates them (streamed, never in memory) and renames the result into place.
    async fn start_upload(&self, object: &ObjectRef, _content_type: &str) -> PortResult<String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let upload = format!(
            "{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            UNIX_EPOCH
                .elapsed()
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let dir = parts_dir(&self.path_of(object)?, &upload);
        let operation = format!("start an upload to {object}");
        blocking(operation.clone(), move || {
            fs::create_dir_all(&dir).map_err(|e| io_error(operation, e))
        })
        .await?;
        Ok(upload)
    }

    async fn upload_part(
        &self,
        object: &ObjectRef,
        upload: &str,
        number: u32,
        bytes: Vec<u8>,
    ) -> PortResult<String> {
        let dir = parts_dir(&self.path_of(object)?, upload);
        let operation = format!("write part {number} of {object}");
        blocking(operation.clone(), move || {
            write_atomically(&dir.join(format!("{number:05}")), |file| {
                file.write_all(&bytes)
            })
            .map_err(|e| io_error(operation, e))
        })
        .await?;
        Ok(format!("part-{number}"))
    }

    async fn finish_upload(
        &self,
        object: &ObjectRef,
        upload: &str,
        parts: &[UploadedPart],
    ) -> PortResult<()> {
        let path = self.path_of(object)?;
        let dir = parts_dir(&path, upload);
        let numbers: Vec<u32> = parts.iter().map(|p| p.number).collect();
        let operation = format!("finish the upload to {object}");
        blocking(operation.clone(), move || {
            write_atomically(&path, |file| {
                for number in numbers {
                    io::copy(&mut File::open(dir.join(format!("{number:05}")))?, file)?;
                }
                Ok(())
            })
            .and_then(|()| fs::remove_dir_all(&dir))
            .map_err(|e| io_error(operation, e))
        })
        .await
    }
}

/// Where the parts of an upload to `path` wait.
fn parts_dir(path: &Path, upload: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.parts-{upload}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::io::Read;

    use super::*;

    fn object(key: &str) -> ObjectRef {
        ObjectRef {
            bucket: "data".into(),
            key: key.into(),
        }
    }

    fn read_all(body: ObjectBody) -> Vec<u8> {
        let mut out = Vec::new();
        let mut reader = body.reader;
        reader.read_to_end(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn put_then_open_reads_the_same_bytes_at_the_listed_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsObjectStore::new(dir.path().to_path_buf());
        store
            .put_bytes(
                &object("uploads/t/a b.csv"),
                b"x,y\n1,2\n".to_vec(),
                "text/csv",
            )
            .await
            .unwrap();
        let version = store
            .version(&object("uploads/t/a b.csv"))
            .await
            .unwrap()
            .unwrap();
        let body = store
            .open(&object("uploads/t/a b.csv"), Some(&version))
            .await
            .unwrap();
        assert_eq!(body.version, version);
        assert_eq!(read_all(body), b"x,y\n1,2\n");
    }

    #[tokio::test]
    async fn a_rewritten_object_has_a_new_version_and_the_old_one_fails_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsObjectStore::new(dir.path().to_path_buf());
        store
            .put_bytes(&object("k"), b"one".to_vec(), "text/plain")
            .await
            .unwrap();
        let old = store.version(&object("k")).await.unwrap().unwrap();
        store
            .put_bytes(&object("k"), b"two".to_vec(), "text/plain")
            .await
            .unwrap();
        assert_ne!(store.version(&object("k")).await.unwrap().unwrap(), old);
        let error = store.open(&object("k"), Some(&old)).await.err().unwrap();
        assert!(
            !error.retryable && error.to_string().contains("changed"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn missing_objects_are_none_and_fail_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsObjectStore::new(dir.path().to_path_buf());
        assert_eq!(store.version(&object("nope")).await.unwrap(), None);
        assert_eq!(store.get_bytes(&object("nope")).await.unwrap(), None);
        assert!(store.open(&object("nope"), None).await.is_err());
    }

    #[tokio::test]
    async fn keys_that_escape_the_bucket_are_refused() {
        let store = FsObjectStore::new(PathBuf::from("/nonexistent"));
        for key in ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", ""] {
            assert!(store.get_bytes(&object(key)).await.is_err(), "{key}");
        }
        let bad_bucket = ObjectRef {
            bucket: "..".into(),
            key: "x".into(),
        };
        assert!(store.get_bytes(&bad_bucket).await.is_err());
    }

    #[tokio::test]
    async fn put_file_copies_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src.bin");
        fs::write(&source, vec![7u8; 100_000]).unwrap();
        let store = FsObjectStore::new(dir.path().join("store"));
        store
            .put_file(&object("out/m.jsonl"), &source, "application/x-ndjson")
            .await
            .unwrap();
        assert_eq!(
            store
                .get_bytes(&object("out/m.jsonl"))
                .await
                .unwrap()
                .unwrap(),
            vec![7u8; 100_000]
        );
        let names: Vec<_> = fs::read_dir(dir.path().join("store/data/out"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["m.jsonl"]);
    }
}
