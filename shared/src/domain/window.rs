//! The in-flight window's rules, shared by every store: which slot a chunk may take, and whose
//! turn it is in the parking lot.
//!
//! - A slot is a lease held by one chunk (its job and key). An expired lease is a free slot, so
//!   a holder that crashed cannot keep one.
//! - A chunk that holds a slot renews it rather than taking a second one.
//! - At most `size` unexpired slots are held; slots are numbered `0..size` (a window that shrank
//!   keeps its higher slots until they are released or expire, and they count as held).
//! - Turns: jobs take turns (the job after the one served last, in id order, wrapping around);
//!   within a job, chunks go in key order. Two jobs running together both progress, whatever
//!   their sizes, and a job that starts later waits for at most one chunk of each other job.
//! - Requests: one token bucket for the stack (`RequestBudget`). Its burst lets a results poll
//!   and the next submit go in the same second; its refill is the minute's budget less the
//!   burst, so no 60 seconds ever hold more than the plan's requests a minute, however Pictify
//!   counts them.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ChunkKey, JobId};

/// A slot of the in-flight window, held by one chunk until its batch completes (or the lease
/// runs out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub job: JobId,
    pub key: ChunkKey,
    /// When the holder took (or last renewed) it.
    pub taken_at: i64,
    pub expires_at: i64,
}

impl Slot {
    pub fn is_live(&self, now: i64) -> bool {
        self.expires_at > now
    }

    pub fn is_held_by(&self, job: &JobId, key: ChunkKey) -> bool {
        &self.job == job && self.key == key
    }
}

/// What a chunk asking for a slot gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotChoice {
    /// It holds slot `n` already: renew it.
    Renew(u32),
    /// Slot `n` is free (never taken, or expired): take it.
    Take(u32),
    /// `size` live slots are held by others.
    Full,
}

/// Chooses a slot for `(job, key)` given the slots as stored (index, slot).
pub fn choose_slot(
    slots: &[(u32, Slot)],
    job: &JobId,
    key: ChunkKey,
    size: u32,
    now: i64,
) -> SlotChoice {
    if let Some((n, _)) = slots
        .iter()
        .find(|(_, s)| s.is_live(now) && s.is_held_by(job, key))
    {
        return SlotChoice::Renew(*n);
    }
    let live = slots.iter().filter(|(_, s)| s.is_live(now)).count();
    if live >= size as usize {
        return SlotChoice::Full;
    }
    (0..size)
        .find(|n| !slots.iter().any(|(i, s)| i == n && s.is_live(now)))
        .map_or(SlotChoice::Full, SlotChoice::Take)
}

/// The parked chunk whose turn is next, from the parked chunks in (job, key) order.
pub fn next_in_turn<'a>(
    parked: impl IntoIterator<Item = &'a (JobId, ChunkKey)> + Clone,
    last_served: Option<&JobId>,
    skip: &BTreeSet<JobId>,
) -> Option<(JobId, ChunkKey)> {
    let eligible = || {
        parked
            .clone()
            .into_iter()
            .filter(|(j, _)| !skip.contains(j))
    };
    let after = last_served.and_then(|last| eligible().find(|(j, _)| j > last));
    after
        .or_else(|| eligible().next())
        .map(|(j, k)| (j.clone(), *k))
}

/// The request bucket as stored: tokens left at a moment (milliseconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RequestBucket {
    pub tokens: f64,
    pub at_ms: i64,
}

/// The shape of the stack's request budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestBudget {
    pub burst: f64,
    pub refill_per_ms: f64,
}

impl RequestBudget {
    /// From requests a minute: a burst of two seconds' worth (at least 2), refilled at the
    /// minute's budget less the burst.
    pub fn per_minute(requests: u32) -> Self {
        let rpm = f64::from(requests.max(1));
        let burst = (rpm / 30.0).max(2.0).min(rpm);
        RequestBudget {
            burst,
            refill_per_ms: (rpm - burst).max(1.0) / 60_000.0,
        }
    }

    /// Takes one token at `now_ms`: the bucket to store, or how long until a token is there.
    pub fn take(
        &self,
        stored: Option<RequestBucket>,
        now_ms: i64,
    ) -> Result<RequestBucket, Duration> {
        let bucket = stored.unwrap_or(RequestBucket {
            tokens: self.burst,
            at_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(bucket.at_ms).max(0) as f64;
        let tokens = (bucket.tokens + elapsed * self.refill_per_ms).min(self.burst);
        if tokens >= 1.0 {
            return Ok(RequestBucket {
                tokens: tokens - 1.0,
                at_ms: now_ms.max(bucket.at_ms),
            });
        }
        let wait_ms = ((1.0 - tokens) / self.refill_per_ms).ceil().max(1.0);
        Err(Duration::from_millis(wait_ms as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u8) -> JobId {
        JobId::parse(&format!("job_{n:02}")).unwrap()
    }

    fn slot(j: u8, seq: u32, expires_at: i64) -> Slot {
        Slot {
            job: job(j),
            key: ChunkKey::initial(seq),
            taken_at: 0,
            expires_at,
        }
    }

    #[test]
    fn a_holder_renews_and_others_take_the_lowest_free_slot() {
        let slots = vec![(0, slot(1, 1, 100)), (2, slot(1, 2, 100))];
        let (j1, j2) = (job(1), job(2));
        assert_eq!(
            choose_slot(&slots, &j1, ChunkKey::initial(2), 3, 10),
            SlotChoice::Renew(2)
        );
        assert_eq!(
            choose_slot(&slots, &j2, ChunkKey::initial(1), 3, 10),
            SlotChoice::Take(1)
        );
        assert_eq!(
            choose_slot(&slots, &j2, ChunkKey::initial(1), 2, 10),
            SlotChoice::Full
        );
    }

    #[test]
    fn an_expired_lease_is_a_free_slot_and_a_shrunk_window_counts_its_high_slots() {
        let slots = vec![(0, slot(1, 1, 5)), (4, slot(1, 2, 100))];
        let j2 = job(2);
        assert_eq!(
            choose_slot(&slots, &j2, ChunkKey::initial(1), 2, 10),
            SlotChoice::Take(0)
        );
        assert_eq!(
            choose_slot(&slots, &j2, ChunkKey::initial(1), 1, 10),
            SlotChoice::Full
        );
        // The expired holder itself takes a fresh slot, not its dead one by renewal.
        assert_eq!(
            choose_slot(&slots, &job(1), ChunkKey::initial(1), 2, 10),
            SlotChoice::Take(0)
        );
    }

    #[test]
    fn the_request_budget_never_spends_more_than_a_minutes_worth_in_any_60_seconds() {
        let budget = RequestBudget::per_minute(60);
        assert_eq!(budget.burst, 2.0);
        // Take as fast as the bucket allows for ten minutes; count every 60 s window.
        let (mut bucket, mut now, mut taken) = (None, 0i64, Vec::new());
        while now < 600_000 {
            match budget.take(bucket, now) {
                Ok(next) => {
                    bucket = Some(next);
                    taken.push(now);
                }
                Err(wait) => now += wait.as_millis() as i64,
            }
        }
        let most = taken
            .iter()
            .map(|start| {
                taken
                    .iter()
                    .filter(|t| **t >= *start && **t < start + 60_000)
                    .count()
            })
            .max()
            .unwrap();
        assert!(most <= 60, "{most} requests in one minute");
        assert!(taken.len() >= 570, "the budget is used: {}", taken.len());
        // A results poll and the next submit fit in the same moment.
        let fresh = budget.take(None, 0).unwrap();
        assert!(budget.take(Some(fresh), 0).is_ok());
    }

    #[test]
    fn jobs_take_turns_in_id_order_and_wrap_around() {
        let parked = vec![
            (job(1), ChunkKey::initial(5)),
            (job(1), ChunkKey::initial(6)),
            (job(2), ChunkKey::initial(1)),
            (job(3), ChunkKey::initial(9)),
        ];
        let none = BTreeSet::new();
        let next = |last: Option<u8>| next_in_turn(&parked, last.map(job).as_ref(), &none);
        assert_eq!(next(None), Some((job(1), ChunkKey::initial(5))));
        assert_eq!(next(Some(1)), Some((job(2), ChunkKey::initial(1))));
        assert_eq!(next(Some(2)), Some((job(3), ChunkKey::initial(9))));
        assert_eq!(next(Some(3)), Some((job(1), ChunkKey::initial(5))));
        assert_eq!(next_in_turn(&Vec::new(), None, &none), None);
        // A job held back (paused, at its limit) is passed over, in turn and on wrapping.
        let held: BTreeSet<JobId> = [job(1)].into();
        let next = |last: Option<u8>| next_in_turn(&parked, last.map(job).as_ref(), &held);
        assert_eq!(next(None), Some((job(2), ChunkKey::initial(1))));
        assert_eq!(next(Some(3)), Some((job(2), ChunkKey::initial(1))));
        let all: BTreeSet<JobId> = [job(1), job(2), job(3)].into();
        assert_eq!(next_in_turn(&parked, None, &all), None);
    }
}
