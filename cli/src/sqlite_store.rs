//! `SqliteJobStore`: the embedded, durable `JobStore` of local runs (`DIR/.state/jobs.db`).
//!
//! Same semantics as `shared::local::MemoryJobStore` (the reference; its module docs list what
//! the store does beyond the domain's rules): every method is one SQLite transaction on one
//! connection behind a mutex, so each is atomic exactly like the in-memory store's single lock.
//! State changes are the domain's rules (`shared::domain`: `Chunk::begin_submit`,
//! `Job::transition`, …): each method loads, calls the rule and saves what it returns. Where this
//! store differs: `record_submitted` refuses another batch id (an error, not a log line) and
//! records the batch id of a completed chunk that holds none; completing an unknown chunk is an
//! error. Jobs and chunks are stored as
//! their serde JSON plus the columns queries need. WAL with `synchronous=NORMAL` survives a killed
//! process (only an OS crash can lose the last commits), which is what `--resume` relies on.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shared::domain::window::{choose_slot, next_in_turn};
use shared::domain::{
    Chunk, ChunkKey, Complete, ControlChange, Controlled, IngestCheckpoint, Job, JobId, JobStatus,
    ManifestCheckpoint, ManifestLocation, RecordSubmitted,
};
use shared::ports::{
    BeginSubmit, ChunkCompletion, ChunkLedger, FailureRecord, JobLedger, PortError, PortResult,
    RenderLog, RenderRecord, Reopen, RequestBucket, RequestBudget, Slot, SlotChoice, SubmitSwitch,
    SubmitWindow,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    job TEXT NOT NULL, seq INTEGER NOT NULL, attempt INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (job, seq, attempt));
CREATE TABLE IF NOT EXISTS batches (batch_id TEXT PRIMARY KEY, job TEXT NOT NULL, seq INTEGER NOT NULL, attempt INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS renders (fingerprint TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS failures (fingerprint TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerted (job TEXT NOT NULL, seq INTEGER NOT NULL, attempt INTEGER NOT NULL, PRIMARY KEY (job, seq, attempt));
CREATE TABLE IF NOT EXISTS job_alerts (job TEXT NOT NULL, kind TEXT NOT NULL, at INTEGER NOT NULL, PRIMARY KEY (job, kind));
CREATE TABLE IF NOT EXISTS control (name TEXT PRIMARY KEY, reason TEXT NOT NULL, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS slots (n INTEGER PRIMARY KEY, job TEXT NOT NULL, seq INTEGER NOT NULL, attempt INTEGER NOT NULL, taken_at INTEGER NOT NULL, expires_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS parked (job TEXT NOT NULL, seq INTEGER NOT NULL, attempt INTEGER NOT NULL, at INTEGER NOT NULL, PRIMARY KEY (job, seq, attempt));
CREATE TABLE IF NOT EXISTS request_bucket (id INTEGER PRIMARY KEY CHECK (id = 0), tokens REAL NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS orphans (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, ext_id TEXT NOT NULL, body TEXT NOT NULL, at INTEGER NOT NULL);
";

/// Key of the submissions switch in `control`.
const PAUSED: &str = "submissions_paused";
/// Key of the job served last from the parking lot, in `control` (its `reason` is the job id).
const TURN: &str = "window_turn";

#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("sqlite: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored JSON is unreadable: {0}")]
    Json(#[from] serde_json::Error),
    #[error("job {0} does not exist")]
    NoJob(JobId),
    #[error("chunk {job}/{label} does not exist", label = key.label())]
    NoChunk { job: JobId, key: ChunkKey },
    #[error("chunk {job}/{label} exists already", label = key.label())]
    ChunkExists { job: JobId, key: ChunkKey },
    #[error("chunk {job}/{label} is already submitted as batch {existing}, not {offered}", label = key.label())]
    OtherBatch {
        job: JobId,
        key: ChunkKey,
        existing: String,
        offered: String,
    },
    #[error("a stored job id is invalid: {0}")]
    BadId(String),
    #[error("store task failed: {0}")]
    Join(String),
}

impl StoreError {
    /// Logical errors are permanent; a busy or failing database may recover.
    fn into_port(self, operation: &str) -> PortError {
        match self {
            StoreError::Sql(_) | StoreError::Join(_) => PortError::new(operation, self),
            _ => PortError::permanent(operation, self),
        }
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// The durable job store for local runs. Cheap to clone (shares the connection).
#[derive(Clone)]
pub struct SqliteJobStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteJobStore {
    /// Opens (creating if needed) the database file.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteJobStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Local-run recovery only: the in-process emulator that accepted this chunk's batch died with
    /// the interrupted run, so its batch can never complete. Back to `queued` (same idempotency
    /// key), unless its outcome is already applied. `true` when it was reset.
    pub async fn forget_batch(&self, job: &JobId, key: ChunkKey) -> PortResult<bool> {
        let job = job.clone();
        self.call("forget batch", move |tx| {
            let Some(chunk) = load_chunk(tx, &job, key)? else {
                return Ok(false);
            };
            chunk.forget_batch().save_with(|next| {
                if let Some(batch) = &chunk.batch_id {
                    tx.execute("DELETE FROM batches WHERE batch_id = ?1", params![batch])?;
                }
                save_chunk(tx, next)
            })
        })
        .await
    }

    /// Every job, oldest first (a local state dir normally holds one).
    pub async fn jobs(&self) -> PortResult<Vec<Job>> {
        self.call("list jobs", |tx| {
            let mut stmt = tx.prepare("SELECT body FROM jobs")?;
            let bodies = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let mut jobs = bodies
                .iter()
                .map(|b| serde_json::from_str::<Job>(b))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            jobs.sort_by_key(|j| j.created_at);
            Ok(jobs)
        })
        .await
    }

    #[cfg(test)]
    fn alerted_chunks(&self) -> Vec<(String, u32, u32)> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT job, seq, attempt FROM alerted ORDER BY job, seq, attempt")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    #[cfg(test)]
    fn orphan_ids(&self) -> Vec<String> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT ext_id FROM orphans ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic inside a transaction rolls it back when the transaction drops: still consistent.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `work` in one immediate transaction on a blocking thread; commits when it returns Ok.
    async fn call<T: Send + 'static>(
        &self,
        operation: &'static str,
        work: impl FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    ) -> PortResult<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = store.lock();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let value = work(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Join(e.to_string())))
        .map_err(|e: StoreError| e.into_port(operation))
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    Ok(serde_json::to_string(value)?)
}

fn from_json<T: DeserializeOwned>(text: &str) -> Result<T> {
    Ok(serde_json::from_str(text)?)
}

fn load_job(tx: &Transaction<'_>, id: &JobId) -> Result<Option<Job>> {
    let body: Option<String> = tx
        .query_row(
            "SELECT body FROM jobs WHERE id = ?1",
            params![id.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    body.map(|b| from_json(&b)).transpose()
}

fn save_job(tx: &Transaction<'_>, job: &Job) -> Result<()> {
    tx.execute(
        "INSERT INTO jobs (id, body) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET body = excluded.body",
        params![job.id.as_str(), to_json(job)?],
    )?;
    Ok(())
}

fn load_chunk(tx: &Transaction<'_>, job: &JobId, key: ChunkKey) -> Result<Option<Chunk>> {
    let body: Option<String> = tx
        .query_row(
            "SELECT body FROM chunks WHERE job = ?1 AND seq = ?2 AND attempt = ?3",
            params![job.as_str(), key.seq, key.attempt],
            |r| r.get(0),
        )
        .optional()?;
    body.map(|b| from_json(&b)).transpose()
}

fn save_chunk(tx: &Transaction<'_>, chunk: &Chunk) -> Result<()> {
    tx.execute(
        "INSERT INTO chunks (job, seq, attempt, body) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(job, seq, attempt) DO UPDATE SET body = excluded.body",
        params![
            chunk.job.as_str(),
            chunk.key.seq,
            chunk.key.attempt,
            to_json(chunk)?
        ],
    )?;
    Ok(())
}

/// Put-if-absent.
fn insert_chunk(tx: &Transaction<'_>, chunk: &Chunk) -> Result<()> {
    tx.execute(
        "INSERT OR IGNORE INTO chunks (job, seq, attempt, body) VALUES (?1, ?2, ?3, ?4)",
        params![
            chunk.job.as_str(),
            chunk.key.seq,
            chunk.key.attempt,
            to_json(chunk)?
        ],
    )?;
    Ok(())
}

/// Looks up records by fingerprint, in groups that stay under SQLite's parameter limit.
fn records<T: DeserializeOwned>(
    tx: &Transaction<'_>,
    table: &str,
    fingerprints: &[String],
) -> Result<HashMap<String, T>> {
    let mut found = HashMap::new();
    for group in fingerprints.chunks(500) {
        let marks = vec!["?"; group.len()].join(",");
        let mut stmt = tx.prepare(&format!(
            "SELECT fingerprint, body FROM {table} WHERE fingerprint IN ({marks})"
        ))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(group.iter()), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (fp, body) = row?;
            found.insert(fp, from_json(&body)?);
        }
    }
    Ok(found)
}

#[async_trait]
impl JobLedger for SqliteJobStore {
    async fn create_job(&self, job: &Job) -> PortResult<(Job, bool)> {
        let job = job.clone();
        self.call("create job", move |tx| match load_job(tx, &job.id)? {
            Some(existing) => Ok((existing, false)),
            None => {
                save_job(tx, &job)?;
                Ok((job, true))
            }
        })
        .await
    }

    async fn job(&self, id: &JobId) -> PortResult<Option<Job>> {
        let id = id.clone();
        self.call("read job", move |tx| load_job(tx, &id)).await
    }

    async fn active_jobs(&self) -> PortResult<Vec<JobId>> {
        self.call("active jobs", move |tx| {
            let mut statement = tx.prepare("SELECT body FROM jobs")?;
            let bodies = statement
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let mut active = Vec::new();
            for body in bodies {
                let job: Job = from_json(&body)?;
                if !job.status.is_terminal() {
                    active.push(job.id);
                }
            }
            Ok(active)
        })
        .await
    }

    async fn finish_ingest(&self, job: &Job) -> PortResult<()> {
        let job = job.clone();
        self.call("finish ingest", move |tx| {
            let stored = load_job(tx, &job.id)?.ok_or_else(|| StoreError::NoJob(job.id.clone()))?;
            if !stored.finish_ingest(&job).save_with(|next| save_job(tx, next))? {
                tracing::debug!(job_id = %job.id, status = stored.status.as_str(), "ingest already finished");
            }
            Ok(())
        })
        .await
    }

    async fn mark_progress(&self, job: &JobId, status: JobStatus, now: i64) -> PortResult<bool> {
        let id = job.clone();
        self.call("mark progress", move |tx| match load_job(tx, &id)? {
            Some(job) => job
                .mark_progress(status, now)
                .save_with(|next| save_job(tx, next)),
            None => Ok(false),
        })
        .await
    }

    async fn save_manifest_checkpoint(
        &self,
        job: &JobId,
        checkpoint: Option<&ManifestCheckpoint>,
        now: i64,
    ) -> PortResult<bool> {
        let (id, checkpoint) = (job.clone(), checkpoint.cloned());
        self.call("save manifest checkpoint", move |tx| {
            match load_job(tx, &id)? {
                Some(job) => job
                    .save_manifest_checkpoint(checkpoint.as_ref(), now)
                    .save_with(|next| save_job(tx, next)),
                None => Ok(false),
            }
        })
        .await
    }

    async fn save_checkpoint(
        &self,
        job: &JobId,
        checkpoint: &IngestCheckpoint,
        rejected_sample: &[(u64, String)],
    ) -> PortResult<bool> {
        let (id, checkpoint, sample) = (job.clone(), *checkpoint, rejected_sample.to_vec());
        self.call("save checkpoint", move |tx| match load_job(tx, &id)? {
            Some(job) => job
                .save_checkpoint(&checkpoint, &sample)
                .save_with(|next| save_job(tx, next)),
            None => Ok(false),
        })
        .await
    }

    async fn control_job(
        &self,
        id: &JobId,
        change: &ControlChange,
    ) -> PortResult<Option<Controlled>> {
        let (id, change) = (id.clone(), change.clone());
        self.call("control job", move |tx| match load_job(tx, &id)? {
            Some(job) => job
                .control(&change)
                .save_with(|next| save_job(tx, next))
                .map(Some),
            None => Ok(None),
        })
        .await
    }

    async fn transition_job(&self, id: &JobId, from: JobStatus, to: JobStatus) -> PortResult<bool> {
        let id = id.clone();
        self.call("transition job", move |tx| match load_job(tx, &id)? {
            Some(job) => job
                .transition(from, to)
                .save_with(|next| save_job(tx, next)),
            None => Ok(false),
        })
        .await
    }

    async fn finish_job(
        &self,
        id: &JobId,
        status: JobStatus,
        manifest: &ManifestLocation,
        now: i64,
    ) -> PortResult<()> {
        let (id, manifest) = (id.clone(), manifest.clone());
        self.call("finish job", move |tx| {
            let mut job = load_job(tx, &id)?.ok_or_else(|| StoreError::NoJob(id.clone()))?;
            job.finish(status, &manifest, now);
            save_job(tx, &job)
        })
        .await
    }

    async fn reopen_job(&self, reopen: &Reopen) -> PortResult<bool> {
        let reopen = reopen.clone();
        self.call("reopen job", move |tx| {
            let Some(reopened) = load_job(tx, &reopen.job)?.and_then(|j| j.reopen(&reopen).next)
            else {
                return Ok(false);
            };
            for chunk in &reopen.chunks {
                if load_chunk(tx, &chunk.job, chunk.key)?.is_some() {
                    return Err(StoreError::ChunkExists {
                        job: chunk.job.clone(),
                        key: chunk.key,
                    });
                }
                save_chunk(tx, chunk)?;
            }
            save_job(tx, &reopened)?;
            Ok(true)
        })
        .await
    }

    async fn claim_alert(&self, job: &JobId, kind: &str, now: i64) -> PortResult<bool> {
        let (job, kind) = (job.clone(), kind.to_owned());
        self.call("claim alert", move |tx| {
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO job_alerts (job, kind, at) VALUES (?1, ?2, ?3)",
                params![job.as_str(), kind, now],
            )?;
            Ok(inserted == 1)
        })
        .await
    }
}

#[async_trait]
impl ChunkLedger for SqliteJobStore {
    async fn put_chunks(&self, chunks: &[Chunk]) -> PortResult<()> {
        let chunks = chunks.to_vec();
        self.call("put chunks", move |tx| {
            chunks.iter().try_for_each(|c| insert_chunk(tx, c))
        })
        .await
    }

    async fn chunk(&self, job: &JobId, key: ChunkKey) -> PortResult<Option<Chunk>> {
        let job = job.clone();
        self.call("read chunk", move |tx| load_chunk(tx, &job, key))
            .await
    }

    async fn chunks_of_job(&self, job: &JobId) -> PortResult<Vec<Chunk>> {
        let job = job.clone();
        self.call("list chunks", move |tx| {
            let mut stmt =
                tx.prepare("SELECT body FROM chunks WHERE job = ?1 ORDER BY seq, attempt")?;
            let bodies = stmt.query_map(params![job.as_str()], |r| r.get::<_, String>(0))?;
            bodies.map(|b| from_json(&b?)).collect()
        })
        .await
    }

    async fn chunks_by_key(&self, job: &JobId, keys: &[ChunkKey]) -> PortResult<Vec<Chunk>> {
        let (job, mut keys) = (job.clone(), keys.to_vec());
        keys.sort_unstable();
        keys.dedup();
        self.call("read chunks", move |tx| {
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                found.extend(load_chunk(tx, &job, key)?);
            }
            Ok(found)
        })
        .await
    }

    async fn begin_submit(
        &self,
        job: &JobId,
        key: ChunkKey,
        now: i64,
        grace: Duration,
    ) -> PortResult<BeginSubmit> {
        let job = job.clone();
        self.call("begin submit", move |tx| match load_chunk(tx, &job, key)? {
            Some(chunk) => chunk
                .begin_submit(now, grace)
                .save_with(|next| save_chunk(tx, next)),
            None => Ok(BeginSubmit::Unknown),
        })
        .await
    }

    async fn record_submitted(
        &self,
        job: &JobId,
        key: ChunkKey,
        batch_id: &str,
        now: i64,
    ) -> PortResult<()> {
        let (job, batch_id) = (job.clone(), batch_id.to_owned());
        self.call("record submitted", move |tx| {
            let mut chunk = load_chunk(tx, &job, key)?.ok_or_else(|| StoreError::NoChunk { job: job.clone(), key })?;
            match chunk.record_submitted(&batch_id, now).apply(&mut chunk) {
                // This store's own: another batch id is refused, not logged.
                RecordSubmitted::OtherBatch { first } => {
                    return Err(StoreError::OtherBatch { job, key, existing: first, offered: batch_id });
                }
                // This store's own: a completed chunk that holds no batch id records this one.
                RecordSubmitted::Repeated if chunk.batch_id.is_none() => {
                    chunk.batch_id = Some(batch_id.clone());
                }
                RecordSubmitted::Recorded | RecordSubmitted::Repeated => {}
            }
            save_chunk(tx, &chunk)?;
            tx.execute(
                "INSERT INTO batches (batch_id, job, seq, attempt) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(batch_id) DO UPDATE SET job = excluded.job, seq = excluded.seq, attempt = excluded.attempt",
                params![batch_id, job.as_str(), key.seq, key.attempt],
            )?;
            Ok(())
        })
        .await
    }

    async fn release_submit(&self, job: &JobId, key: ChunkKey) -> PortResult<()> {
        let job = job.clone();
        self.call("release submit", move |tx| {
            match load_chunk(tx, &job, key)? {
                Some(chunk) => chunk
                    .release_submit()
                    .save_with(|next| save_chunk(tx, next)),
                None => Ok(()),
            }
        })
        .await
    }

    async fn chunk_by_batch(&self, batch_id: &str) -> PortResult<Option<(JobId, ChunkKey)>> {
        let batch_id = batch_id.to_owned();
        self.call("find batch", move |tx| {
            let row: Option<(String, u32, u32)> = tx
                .query_row(
                    "SELECT job, seq, attempt FROM batches WHERE batch_id = ?1",
                    params![batch_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            row.map(|(job, seq, attempt)| {
                Ok((
                    JobId::parse(&job).map_err(StoreError::BadId)?,
                    ChunkKey { seq, attempt },
                ))
            })
            .transpose()
        })
        .await
    }

    async fn complete_chunk(&self, completion: &ChunkCompletion) -> PortResult<bool> {
        let c = completion.clone();
        self.call("complete chunk", move |tx| {
            let chunk = load_chunk(tx, &c.job, c.key)?.ok_or_else(|| StoreError::NoChunk {
                job: c.job.clone(),
                key: c.key,
            })?;
            let transition = chunk.complete(&c.outcome);
            match transition.answer {
                Complete::Applied => {}
                Complete::AlreadyApplied => return Ok(false),
                Complete::NotSubmitted => {
                    tracing::warn!(job_id = %c.job, chunk = %c.key.label(),
                        "completion for a chunk that was never submitted; ignored");
                    return Ok(false);
                }
            }
            let mut job = load_job(tx, &c.job)?.ok_or_else(|| StoreError::NoJob(c.job.clone()))?;
            transition.save_with(|next| save_chunk(tx, next))?;
            job.apply_outcome(&c.outcome, &c.delta);
            save_job(tx, &job)?;
            if let Some(retry) = &c.retry {
                insert_chunk(tx, retry)?;
            }
            if c.alert {
                tx.execute(
                    "INSERT OR IGNORE INTO alerted (job, seq, attempt) VALUES (?1, ?2, ?3)",
                    params![c.job.as_str(), c.key.seq, c.key.attempt],
                )?;
            }
            Ok(true)
        })
        .await
    }
}

#[async_trait]
impl RenderLog for SqliteJobStore {
    async fn record_render(&self, fingerprint: &str, record: &RenderRecord) -> PortResult<()> {
        let (fp, record) = (fingerprint.to_owned(), record.clone());
        self.call("record render", move |tx| {
            tx.execute(
                "INSERT INTO renders (fingerprint, body) VALUES (?1, ?2) ON CONFLICT(fingerprint) DO UPDATE SET body = excluded.body",
                params![fp, to_json(&record)?],
            )?;
            Ok(())
        })
        .await
    }

    async fn record_failure(&self, fingerprint: &str, record: &FailureRecord) -> PortResult<()> {
        let (fp, record) = (fingerprint.to_owned(), record.clone());
        self.call("record failure", move |tx| {
            tx.execute(
                "INSERT INTO failures (fingerprint, body) VALUES (?1, ?2) ON CONFLICT(fingerprint) DO UPDATE SET body = excluded.body",
                params![fp, to_json(&record)?],
            )?;
            Ok(())
        })
        .await
    }

    async fn renders(&self, fingerprints: &[String]) -> PortResult<HashMap<String, RenderRecord>> {
        let fps = fingerprints.to_vec();
        self.call("read renders", move |tx| records(tx, "renders", &fps))
            .await
    }

    async fn failures(
        &self,
        fingerprints: &[String],
    ) -> PortResult<HashMap<String, FailureRecord>> {
        let fps = fingerprints.to_vec();
        self.call("read failures", move |tx| records(tx, "failures", &fps))
            .await
    }

    async fn record_orphan(&self, kind: &str, id: &str, body: &str, now: i64) -> PortResult<()> {
        let (kind, id, body) = (kind.to_owned(), id.to_owned(), body.to_owned());
        self.call("record orphan", move |tx| {
            tx.execute(
                "INSERT INTO orphans (kind, ext_id, body, at) VALUES (?1, ?2, ?3, ?4)",
                params![kind, id, body, now],
            )?;
            Ok(())
        })
        .await
    }

    async fn batch_completed_early(&self, batch_id: &str) -> PortResult<bool> {
        let batch_id = batch_id.to_owned();
        self.call("batch completed early", move |tx| {
            let n: i64 = tx.query_row(
                "SELECT COUNT(*) FROM orphans WHERE kind = 'batch.completed' AND ext_id = ?1",
                params![batch_id],
                |row| row.get(0),
            )?;
            Ok(n > 0)
        })
        .await
    }
}

#[async_trait]
impl SubmitSwitch for SqliteJobStore {
    async fn pause_submissions(&self, reason: &str, now: i64) -> PortResult<bool> {
        let reason = reason.to_owned();
        self.call("pause submissions", move |tx| {
            let changed = tx.execute(
                "INSERT OR IGNORE INTO control (name, reason, at) VALUES (?1, ?2, ?3)",
                params![PAUSED, reason, now],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn submissions_paused(&self) -> PortResult<Option<String>> {
        self.call("read pause", |tx| {
            Ok(tx
                .query_row(
                    "SELECT reason FROM control WHERE name = ?1",
                    params![PAUSED],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await
    }

    async fn resume_submissions(&self) -> PortResult<()> {
        self.call("resume submissions", |tx| {
            tx.execute("DELETE FROM control WHERE name = ?1", params![PAUSED])?;
            Ok(())
        })
        .await
    }
}

fn job_id(raw: String) -> Result<JobId> {
    JobId::parse(&raw).map_err(StoreError::BadId)
}

fn load_slots(tx: &Transaction<'_>) -> Result<Vec<(u32, Slot)>> {
    let mut stmt =
        tx.prepare("SELECT n, job, seq, attempt, taken_at, expires_at FROM slots ORDER BY n")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, u32>(0)?,
            r.get::<_, String>(1)?,
            ChunkKey {
                seq: r.get(2)?,
                attempt: r.get(3)?,
            },
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    let mut slots = Vec::new();
    for row in rows {
        let (n, job, key, taken_at, expires_at) = row?;
        let slot = Slot {
            job: job_id(job)?,
            key,
            taken_at,
            expires_at,
        };
        slots.push((n, slot));
    }
    Ok(slots)
}

fn load_parked(tx: &Transaction<'_>) -> Result<Vec<(JobId, ChunkKey)>> {
    let mut stmt = tx.prepare("SELECT job, seq, attempt FROM parked ORDER BY job, seq, attempt")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            ChunkKey {
                seq: r.get(1)?,
                attempt: r.get(2)?,
            },
        ))
    })?;
    let mut parked = Vec::new();
    for row in rows {
        let (job, key) = row?;
        parked.push((job_id(job)?, key));
    }
    Ok(parked)
}

#[async_trait]
impl SubmitWindow for SqliteJobStore {
    async fn acquire_slot(
        &self,
        job: &JobId,
        key: ChunkKey,
        size: u32,
        now: i64,
        expires_at: i64,
    ) -> PortResult<bool> {
        let job = job.clone();
        self.call("acquire slot", move |tx| {
            let n = match choose_slot(&load_slots(tx)?, &job, key, size, now) {
                SlotChoice::Renew(n) | SlotChoice::Take(n) => n,
                SlotChoice::Full => return Ok(false),
            };
            tx.execute(
                "INSERT INTO slots (n, job, seq, attempt, taken_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(n) DO UPDATE SET job = excluded.job, seq = excluded.seq, attempt = excluded.attempt,
                 taken_at = excluded.taken_at, expires_at = excluded.expires_at",
                params![n, job.as_str(), key.seq, key.attempt, now, expires_at],
            )?;
            Ok(true)
        })
        .await
    }

    async fn release_slot(&self, job: &JobId, key: ChunkKey) -> PortResult<bool> {
        let job = job.clone();
        self.call("release slot", move |tx| {
            let deleted = tx.execute(
                "DELETE FROM slots WHERE job = ?1 AND seq = ?2 AND attempt = ?3",
                params![job.as_str(), key.seq, key.attempt],
            )?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn live_slots(&self, now: i64) -> PortResult<Vec<Slot>> {
        self.call("live slots", move |tx| {
            Ok(load_slots(tx)?
                .into_iter()
                .map(|(_, slot)| slot)
                .filter(|slot| slot.is_live(now))
                .collect())
        })
        .await
    }

    async fn park(&self, job: &JobId, key: ChunkKey, now: i64) -> PortResult<()> {
        let job = job.clone();
        self.call("park", move |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO parked (job, seq, attempt, at) VALUES (?1, ?2, ?3, ?4)",
                params![job.as_str(), key.seq, key.attempt, now],
            )?;
            Ok(())
        })
        .await
    }

    async fn next_parked(&self, skip: &BTreeSet<JobId>) -> PortResult<Option<(JobId, ChunkKey)>> {
        let skip = skip.clone();
        self.call("next parked", move |tx| {
            let last: Option<String> = tx
                .query_row(
                    "SELECT reason FROM control WHERE name = ?1",
                    params![TURN],
                    |r| r.get(0),
                )
                .optional()?;
            let last = last.and_then(|raw| JobId::parse(&raw).ok());
            Ok(next_in_turn(&load_parked(tx)?, last.as_ref(), &skip))
        })
        .await
    }

    async fn unpark(&self, job: &JobId, key: ChunkKey) -> PortResult<bool> {
        let job = job.clone();
        self.call("unpark", move |tx| {
            let deleted = tx.execute(
                "DELETE FROM parked WHERE job = ?1 AND seq = ?2 AND attempt = ?3",
                params![job.as_str(), key.seq, key.attempt],
            )?;
            if deleted == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO control (name, reason, at) VALUES (?1, ?2, 0)
                 ON CONFLICT(name) DO UPDATE SET reason = excluded.reason",
                params![TURN, job.as_str()],
            )?;
            Ok(true)
        })
        .await
    }

    async fn parked(&self) -> PortResult<Vec<(JobId, ChunkKey)>> {
        self.call("parked", load_parked).await
    }

    async fn take_request(
        &self,
        budget: RequestBudget,
        now_ms: i64,
    ) -> PortResult<Option<Duration>> {
        self.call("take request", move |tx| {
            let stored = tx
                .query_row(
                    "SELECT tokens, at_ms FROM request_bucket WHERE id = 0",
                    [],
                    |r| {
                        Ok(RequestBucket {
                            tokens: r.get(0)?,
                            at_ms: r.get(1)?,
                        })
                    },
                )
                .optional()?;
            match budget.take(stored, now_ms) {
                Ok(next) => {
                    tx.execute(
                        "INSERT INTO request_bucket (id, tokens, at_ms) VALUES (0, ?1, ?2)
                         ON CONFLICT(id) DO UPDATE SET tokens = excluded.tokens, at_ms = excluded.at_ms",
                        params![next.tokens, next.at_ms],
                    )?;
                    Ok(None)
                }
                Err(wait) => Ok(Some(wait)),
            }
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! The shared `JobStore` contract (`shared::store_contract`), run against SQLite, plus what
    //! only this store does: refusing another batch id, durability across a reopen, and forgetting a batch of a dead local run.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use shared::store_contract::{
        GRACE, check_job_store, completion, with_chunk, with_submitted_chunk,
    };

    use super::*;

    fn open(dir: &tempfile::TempDir) -> SqliteJobStore {
        SqliteJobStore::open(&dir.path().join("jobs.db")).unwrap()
    }

    /// A store in its own directory, holding `job()` and its queued chunk 0.
    async fn store_with_chunk() -> (SqliteJobStore, JobId, ChunkKey, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let (job, key) = with_chunk(&store).await;
        (store, job, key, dir)
    }

    #[tokio::test]
    async fn the_sqlite_store_keeps_the_job_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let opened = AtomicUsize::new(0);
        check_job_store(|| {
            let n = opened.fetch_add(1, Ordering::Relaxed);
            let path = dir.path().join(format!("jobs-{n}.db"));
            async move {
                Arc::new(SqliteJobStore::open(&path).unwrap()) as Arc<dyn shared::ports::JobStore>
            }
        })
        .await;
    }

    #[tokio::test]
    async fn a_submit_is_taken_over_exactly_when_the_grace_period_ends() {
        let (store, job, key, _dir) = store_with_chunk().await;
        store.begin_submit(&job, key, 100, GRACE).await.unwrap();
        assert_eq!(
            store.begin_submit(&job, key, 160, GRACE).await.unwrap(),
            BeginSubmit::Proceed { attempt: 2 }
        );
    }

    #[tokio::test]
    async fn recording_a_different_batch_for_a_submitted_chunk_is_refused() {
        let (store, job, key, _dir) = store_with_chunk().await;
        store.begin_submit(&job, key, 100, GRACE).await.unwrap();
        store.record_submitted(&job, key, "b1", 101).await.unwrap();
        store.record_submitted(&job, key, "b1", 102).await.unwrap();
        let error = store
            .record_submitted(&job, key, "b2", 103)
            .await
            .unwrap_err();
        assert!(
            !error.retryable && error.to_string().contains("b1"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn completing_an_unknown_chunk_is_an_error() {
        let (store, job, _, _dir) = store_with_chunk().await;
        let error = store
            .complete_chunk(&completion(&job, ChunkKey::initial(9), 1, false))
            .await
            .unwrap_err();
        assert!(!error.retryable);
    }

    #[tokio::test]
    async fn a_completion_marks_its_alert() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let (job, key) = with_submitted_chunk(&store).await;
        let done = completion(&job, key, 2, true);
        store.complete_chunk(&done).await.unwrap();
        store.complete_chunk(&done).await.unwrap();
        assert_eq!(store.alerted_chunks(), vec![(job.to_string(), 0, 0)]);
    }

    #[tokio::test]
    async fn orphans_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store
            .record_orphan("batch.completed", "b9", "{}", 4)
            .await
            .unwrap();
        assert_eq!(store.orphan_ids(), vec!["b9".to_owned()]);
    }

    #[tokio::test]
    async fn state_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let (job, key) = with_submitted_chunk(&store).await;
        drop(store);
        let reopened = open(&dir);
        assert_eq!(
            reopened.chunk_by_batch("b1").await.unwrap(),
            Some((job.clone(), key))
        );
        assert_eq!(reopened.jobs().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_forgotten_batch_goes_back_to_queued_with_the_same_key() {
        let (store, job, key, _dir) = store_with_chunk().await;
        store.begin_submit(&job, key, 100, GRACE).await.unwrap();
        store.record_submitted(&job, key, "b1", 101).await.unwrap();
        assert!(store.forget_batch(&job, key).await.unwrap());
        assert_eq!(store.chunk_by_batch("b1").await.unwrap(), None);
        assert_eq!(
            store.begin_submit(&job, key, 102, GRACE).await.unwrap(),
            BeginSubmit::Proceed { attempt: 2 }
        );
    }
}
