//! The in-flight window on the table (`SubmitWindow`; rules in `domain::window`):
//! - slots: `pk = WINDOW`, `sk = SLOT#<n>`, holder `jobId` + `chunk`, `takenAt`, `expiresAt`.
//!   A chunk takes a slot with a conditional put (the slot is absent or expired) and renews or
//!   releases it with a write conditioned on being its holder, so racing submitters never hold
//!   more than `size`.
//! - the parking lot: `pk = PARKED`, `sk = <jobId>#<chunk>`; the job served last is
//!   `pk = WINDOW`, `sk = #TURN`. The next turn is one Query (`sk` after the last job's, limit 1).
//! - the request bucket: `pk = WINDOW`, `sk = #BUDGET`, `tokens` and `atMs`, replaced with a
//!   put conditioned on the `atMs` it was read at (a racing taker makes us read again).

use std::collections::BTreeSet;
use std::time::Duration;

use tracing::debug;

use super::codec::{Item, Reader, describe, key, n, s};
use super::errors::{checked, sdk_error};
use super::{DynamoJobStore, PK, SK};
use crate::domain::window::choose_slot;
use crate::domain::{ChunkKey, JobId};
use crate::ports::{
    PortError, PortResult, RequestBucket, RequestBudget, Slot, SlotChoice, SubmitWindow,
};

const WINDOW_PK: &str = "WINDOW";
const SLOT_PREFIX: &str = "SLOT#";
const PARKED_PK: &str = "PARKED";
const TURN_SK: &str = "#TURN";
const BUDGET_SK: &str = "#BUDGET";
/// Conditional writes lost to a racing submitter before giving up for now (the caller parks).
const ACQUIRE_TRIES: usize = 8;

fn slot_sk(n: u32) -> String {
    format!("{SLOT_PREFIX}{n:04}")
}

/// `<jobId>#<chunk label>`: sorts by job, then (up to seq 99 999) by key.
fn parked_sk(job: &JobId, key: ChunkKey) -> String {
    format!("{job}#{}", key.label())
}

/// The first sort key after every parked chunk of `job` (`$` sorts right after `#`).
fn after_job(job: &JobId) -> String {
    format!("{job}$")
}

fn holder(item: &Item) -> Result<(JobId, ChunkKey), String> {
    let r = Reader::new(item);
    let job = r.s("jobId").map_err(|e| e.to_string())?;
    let chunk = r.s("chunk").map_err(|e| e.to_string())?;
    let job = JobId::parse(job)?;
    let key = ChunkKey::parse_label(chunk).ok_or_else(|| format!("bad chunk label `{chunk}`"))?;
    Ok((job, key))
}

impl DynamoJobStore {
    async fn slots(&self, operation: &str) -> PortResult<Vec<(u32, Slot)>> {
        let mut slots = Vec::new();
        for item in self
            .query_all(operation, WINDOW_PK, Some(SLOT_PREFIX))
            .await?
        {
            let bad = |reason: String| {
                PortError::permanent(operation, format!("slot {}: {reason}", describe(&item)))
            };
            let index = item
                .get(SK)
                .and_then(|v| v.as_s().ok())
                .and_then(|sk| sk.strip_prefix(SLOT_PREFIX))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| bad("bad sort key".into()))?;
            let (job, key) = holder(&item).map_err(bad)?;
            let r = Reader::new(&item);
            let taken_at = r.n("takenAt").map_err(|e| bad(e.to_string()))?;
            let expires_at = r.n("expiresAt").map_err(|e| bad(e.to_string()))?;
            let slot = Slot {
                job,
                key,
                taken_at,
                expires_at,
            };
            slots.push((index, slot));
        }
        Ok(slots)
    }

    /// The first parked item at or after `from` (`None`: from the start).
    async fn first_parked(&self, from: Option<String>) -> PortResult<Option<(JobId, ChunkKey)>> {
        let operation = "next_parked";
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":pk", s(PARKED_PK))
            .consistent_read(true)
            .limit(1);
        query = match from {
            Some(from) => query
                .key_condition_expression("#pk = :pk AND #sk >= :from")
                .expression_attribute_names("#sk", SK)
                .expression_attribute_values(":from", s(from)),
            None => query.key_condition_expression("#pk = :pk"),
        };
        let out = query.send().await.map_err(|e| sdk_error(operation, e))?;
        match out.items.unwrap_or_default().first() {
            Some(item) => holder(item)
                .map(Some)
                .map_err(|e| PortError::permanent(operation, e)),
            None => Ok(None),
        }
    }
}

#[async_trait::async_trait]
impl SubmitWindow for DynamoJobStore {
    async fn acquire_slot(
        &self,
        job: &JobId,
        key: ChunkKey,
        size: u32,
        now: i64,
        expires_at: i64,
    ) -> PortResult<bool> {
        let operation = format!("acquire_slot {job} {}", key.label());
        for _ in 0..ACQUIRE_TRIES {
            let slots = self.slots(&operation).await?;
            let (n, renew) = match choose_slot(&slots, job, key, size, now) {
                SlotChoice::Full => return Ok(false),
                SlotChoice::Renew(n) => (n, true),
                SlotChoice::Take(n) => (n, false),
            };
            let mut item = key_item(n);
            item.insert("jobId".into(), s(job.as_str()));
            item.insert("chunk".into(), s(key.label()));
            item.insert("takenAt".into(), self::n(now));
            item.insert("expiresAt".into(), self::n(expires_at));
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item));
            // Renew only our own slot; take only a slot that is absent or expired.
            let put = if renew {
                put.condition_expression("#job = :job AND #chunk = :chunk")
                    .expression_attribute_names("#job", "jobId")
                    .expression_attribute_names("#chunk", "chunk")
                    .expression_attribute_values(":job", s(job.as_str()))
                    .expression_attribute_values(":chunk", s(key.label()))
            } else {
                put.condition_expression("attribute_not_exists(#pk) OR #expires <= :now")
                    .expression_attribute_names("#pk", PK)
                    .expression_attribute_names("#expires", "expiresAt")
                    .expression_attribute_values(":now", self::n(now))
            };
            if checked(&operation, put.send().await)?.is_ok() {
                return Ok(true);
            }
            debug!(job_id = %job, chunk = %key.label(), slot = n, "lost a race for a window slot; looking again");
        }
        Ok(false)
    }

    async fn release_slot(&self, job: &JobId, key: ChunkKey) -> PortResult<bool> {
        let operation = format!("release_slot {job} {}", key.label());
        let slots = self.slots(&operation).await?;
        let Some((n, _)) = slots.iter().find(|(_, s)| s.is_held_by(job, key)) else {
            return Ok(false);
        };
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_item(*n)))
            .condition_expression("#job = :job AND #chunk = :chunk")
            .expression_attribute_names("#job", "jobId")
            .expression_attribute_names("#chunk", "chunk")
            .expression_attribute_values(":job", s(job.as_str()))
            .expression_attribute_values(":chunk", s(key.label()))
            .send()
            .await;
        Ok(checked(&operation, result)?.is_ok())
    }

    async fn live_slots(&self, now: i64) -> PortResult<Vec<Slot>> {
        let slots = self.slots("live_slots").await?;
        Ok(slots
            .into_iter()
            .map(|(_, slot)| slot)
            .filter(|slot| slot.is_live(now))
            .collect())
    }

    async fn park(&self, job: &JobId, key: ChunkKey, now: i64) -> PortResult<()> {
        let operation = format!("park {job} {}", key.label());
        let mut item = self::key(PARKED_PK.to_owned(), &parked_sk(job, key));
        item.insert("jobId".into(), s(job.as_str()));
        item.insert("chunk".into(), s(key.label()));
        item.insert("parkedAt".into(), n(now));
        self.put_record(&operation, item).await
    }

    async fn next_parked(&self, skip: &BTreeSet<JobId>) -> PortResult<Option<(JobId, ChunkKey)>> {
        let turn = self
            .get("next_parked", WINDOW_PK.to_owned(), TURN_SK)
            .await?;
        let last = turn
            .as_ref()
            .and_then(|item| item.get("jobId"))
            .and_then(|v| v.as_s().ok())
            .and_then(|raw| JobId::parse(raw).ok());
        // From the job after the last served to the end, then from the start: a skipped job is
        // stepped over with one more query, so a pass costs one query per job it passes.
        let starts = match &last {
            Some(last) => vec![Some(after_job(last)), None],
            None => vec![None],
        };
        for start in starts {
            let mut from = start;
            while let Some((job, key)) = self.first_parked(from).await? {
                if !skip.contains(&job) {
                    return Ok(Some((job, key)));
                }
                from = Some(after_job(&job));
            }
        }
        Ok(None)
    }

    async fn unpark(&self, job: &JobId, key: ChunkKey) -> PortResult<bool> {
        let operation = format!("unpark {job} {}", key.label());
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(self::key(PARKED_PK.to_owned(), &parked_sk(job, key))))
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await;
        if checked(&operation, result)?.is_err() {
            return Ok(false);
        }
        // Racing unparkers may overwrite each other's turn: a turn can repeat, none is skipped
        // for long (the next call moves on again).
        let mut turn = self::key(WINDOW_PK.to_owned(), TURN_SK);
        turn.insert("jobId".into(), s(job.as_str()));
        self.put_record(&operation, turn).await?;
        Ok(true)
    }

    async fn parked(&self) -> PortResult<Vec<(JobId, ChunkKey)>> {
        let operation = "parked";
        let items = self.query_all(operation, PARKED_PK, None).await?;
        let mut parked = items
            .iter()
            .map(holder)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PortError::permanent(operation, e))?;
        // Labels sort like keys only up to seq 99 999; the key never lies.
        parked.sort();
        Ok(parked)
    }

    async fn take_request(
        &self,
        budget: RequestBudget,
        now_ms: i64,
    ) -> PortResult<Option<Duration>> {
        let operation = "take_request";
        for _ in 0..ACQUIRE_TRIES {
            let item = self.get(operation, WINDOW_PK.to_owned(), BUDGET_SK).await?;
            let stored = match &item {
                Some(item) => {
                    let r = Reader::new(item);
                    let bad = |e: super::ItemError| PortError::permanent(operation, e);
                    Some(RequestBucket {
                        tokens: r.n("tokens").map_err(bad)?,
                        at_ms: r.n("atMs").map_err(bad)?,
                    })
                }
                None => None,
            };
            let next = match budget.take(stored, now_ms) {
                Ok(next) => next,
                Err(wait) => return Ok(Some(wait)),
            };
            let mut put = self::key(WINDOW_PK.to_owned(), BUDGET_SK);
            put.insert("tokens".into(), n(next.tokens));
            put.insert("atMs".into(), n(next.at_ms));
            let request = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(put));
            // Replace exactly the bucket we read (or create it if there was none).
            let request = match stored {
                Some(old) => request
                    .condition_expression("#at = :at")
                    .expression_attribute_names("#at", "atMs")
                    .expression_attribute_values(":at", n(old.at_ms)),
                None => request
                    .condition_expression("attribute_not_exists(#pk)")
                    .expression_attribute_names("#pk", PK),
            };
            if checked(operation, request.send().await)?.is_ok() {
                return Ok(None);
            }
        }
        // Lost every race: someone is taking tokens right now; try again shortly.
        Ok(Some(Duration::from_millis(50)))
    }
}

fn key_item(n: u32) -> Item {
    key(WINDOW_PK.to_owned(), &slot_sk(n))
}
