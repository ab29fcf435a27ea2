//! Pacing to a Pictify plan, end to end through moto and the emulator enforcing that plan (with
//! its render time scaled down): the window stays full but never over the plan, nothing is
//! refused for concurrency or rate, waiting burns no receive counts (nothing reaches the DLQ,
//! even across a 3-hour pause), two jobs share the window fairly, and an exhausted quota pauses
//! with one alert and resumes when raised.

use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::stack::{Stack, StackOptions};
use pictify_emulator::{Plan, PlanLimits};
use shared::domain::{Job, JobId, JobStatus};
use shared::ports::{ChunkLedger, Clock, SubmitSwitch, SubmitWindow};

/// The tests measure utilisation: one at a time, so they do not share the machine's two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn stack_on(plan: Plan, limits: PlanLimits, time_scale: f64) -> anyhow::Result<Stack> {
    Stack::start(StackOptions::on_plan(plan, limits, time_scale)).await
}

async fn start_job(stack: &Stack, name: &str, rows: usize) -> anyhow::Result<JobId> {
    stack.start_blog_job(name, rows).await
}

/// Every chunk of the job became exactly one batch.
async fn each_chunk_once(stack: &Stack, job: &Job) -> anyhow::Result<()> {
    let ledger = stack.emulator.ledger();
    for chunk in stack.store.chunks_of_job(&job.id).await? {
        let key = chunk.idempotency_key();
        anyhow::ensure!(
            ledger.accepted_with_key(&key) == 1,
            "chunk {key} became {} batches",
            ledger.accepted_with_key(&key)
        );
    }
    Ok(())
}

#[tokio::test]
async fn pro_5000_rows_keep_the_three_batch_window_full_with_no_refusal_and_nothing_in_the_dlq()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    if std::env::var("PACING_TRACE").is_ok() {
        let _ = tracing_subscriber::fmt().with_env_filter("info").try_init();
    }
    // 100 items at 5 at a time, 1 s each, scaled by 0.3: a batch renders in about 6 s. The
    // hand-over between two batches costs ~15 calls to moto at ~20 ms each (DynamoDB answers in
    // ~5 ms): real Pro batches take ~20 s, so this ratio is the harsher one.
    let stack = stack_on(Plan::Pro, PlanLimits::default(), 0.3).await?;
    let job = start_job(&stack, "pro", 5_000).await?;
    let job = stack.run_until_done(&job, Duration::from_secs(300)).await?;

    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!((job.counters.rendered, job.counters.chunks), (5_000, 50));
    each_chunk_once(&stack, &job).await?;
    let ledger = stack.emulator.ledger();
    println!(
        "pro: max {} in flight, mean {:.2} while work remained, throttled {:?}",
        ledger.max_batches_in_flight, ledger.mean_batches_in_flight, ledger.throttled
    );
    assert_eq!(ledger.max_batches_in_flight, 3, "never more than Pro's 3");
    assert_eq!(
        (ledger.throttled.concurrency, ledger.throttled.rate),
        (0, 0),
        "no submit refused for concurrency or rate"
    );
    assert_eq!(stack.dlq_depth().await?, 0);
    assert!(
        ledger.mean_batches_in_flight >= 2.7,
        "the window stays full while work remains: mean {:.2} of 3",
        ledger.mean_batches_in_flight
    );
    assert!(stack.store.live_slots(i64::MIN).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn free_renders_ten_item_batches_one_at_a_time() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    // Free's 100 renders a month, exactly: 10 batches of 10.
    let stack = stack_on(Plan::Free, PlanLimits::default(), 0.1).await?;
    let job = start_job(&stack, "free", 100).await?;
    let job = stack.run_until_done(&job, Duration::from_secs(180)).await?;

    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!((job.counters.rendered, job.counters.chunks), (100, 10));
    each_chunk_once(&stack, &job).await?;
    let ledger = stack.emulator.ledger();
    println!(
        "free: max {} in flight, mean {:.2} while work remained, throttled {:?}",
        ledger.max_batches_in_flight, ledger.mean_batches_in_flight, ledger.throttled
    );
    assert!(ledger.batches_accepted.iter().all(|b| b.total_items == 10));
    assert_eq!(ledger.max_batches_in_flight, 1);
    assert_eq!(ledger.throttled, Default::default(), "no 429 of any cause");
    assert_eq!(stack.dlq_depth().await?, 0);
    Ok(())
}

/// The wall clock, moved on: the reconciler's passes during a long pause.
struct Later(i64);

impl Clock for Later {
    fn now(&self) -> i64 {
        chrono::Utc::now().timestamp() + self.0
    }
}

#[tokio::test]
async fn a_three_hour_pause_parks_every_chunk_sends_nothing_to_the_dlq_and_resumes_to_the_end()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let stack = stack_on(Plan::Pro, PlanLimits::default(), 0.01).await?;
    stack.store.pause_submissions("account on hold", 0).await?;
    let job = start_job(&stack, "paused", 1_000).await?;
    while stack.drain_once().await? > 0 {}

    // Three hours of reconciler passes, every 5 minutes: none re-sends or hands over anything
    // (a re-sent message is a receive count spent), and nothing reaches the queue.
    for pass in 1..=36 {
        let mut later = stack.pipeline.clone();
        later.clock = Arc::new(Later(pass * 300));
        let report = later.reconcile(later.settings.stuck_after).await?;
        assert_eq!(
            (report.resent, report.handed_over, report.errors),
            (0, 0, 0),
            "pass {pass}: {report:?}"
        );
    }
    assert_eq!(
        stack.drain_once().await?,
        0,
        "nothing was queued while paused"
    );
    assert_eq!(stack.emulator.ledger().submit_requests, 0);
    assert_eq!(
        stack.store.parked().await?.len(),
        10,
        "every chunk waits parked"
    );
    assert_eq!(
        stack.dlq_depth().await?,
        0,
        "no receive count spent waiting"
    );

    stack.store.resume_submissions().await?;
    while stack.pipeline.hand_over().await? > 0 {}
    let job = stack.run_until_done(&job, Duration::from_secs(120)).await?;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.counters.rendered, 1_000);
    each_chunk_once(&stack, &job).await?;
    assert_eq!(stack.dlq_depth().await?, 0);
    Ok(())
}

#[tokio::test]
async fn two_jobs_running_together_share_the_window_and_finish_within_20_percent()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    // A batch of 100 renders in about 1 s.
    let stack = stack_on(Plan::Pro, PlanLimits::default(), 0.05).await?;
    // Both jobs' chunks wait parked before the window opens. Otherwise the first job's
    // messages, first on the queue, take the free slots, and its next chunks may be handed
    // over before the second job's messages are even received (how soon depends on moto's
    // speed): a race of queue order, not the turn this test is about.
    stack
        .store
        .pause_submissions("both jobs queue up", 0)
        .await?;
    let jobs = [
        start_job(&stack, "first", 1_000).await?,
        start_job(&stack, "second", 1_000).await?,
    ];
    while stack.drain_once().await? > 0 {}
    assert_eq!(stack.store.parked().await?.len(), 20, "every chunk waits");
    let started = Instant::now();
    stack.store.resume_submissions().await?;
    while stack.pipeline.hand_over().await? > 0 {}
    let mut finished = [None, None];
    while finished.iter().any(Option::is_none) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(240),
            "jobs not done"
        );
        for (i, id) in jobs.iter().enumerate() {
            if finished[i].is_none() && stack.job(id).await?.status.is_terminal() {
                finished[i] = Some(started.elapsed());
            }
        }
        if stack.drain_once().await? == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let [Some(a), Some(b)] = finished else {
        anyhow::bail!("unreachable: both finished");
    };
    let (fast, slow) = (a.min(b).as_secs_f64(), a.max(b).as_secs_f64());
    println!("fairness: finished after {a:?} and {b:?}");
    assert!(
        (slow - fast) / slow <= 0.20,
        "the jobs finished {a:?} and {b:?} after the start: more than 20% apart"
    );
    for id in &jobs {
        assert_eq!(stack.job(id).await?.counters.rendered, 1_000);
    }
    assert!(stack.emulator.ledger().max_batches_in_flight <= 3);
    assert_eq!(stack.dlq_depth().await?, 0);
    Ok(())
}

#[tokio::test]
async fn an_exhausted_quota_pauses_with_one_alert_and_resumes_once_raised() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let quota = |monthly| PlanLimits {
        monthly_renders: Some(monthly),
        ..PlanLimits::default()
    };
    // Free: 10-item batches, one at a time; 30 renders left this month for a 60-row job.
    let stack = stack_on(Plan::Free, quota(30), 0.01).await?;
    let id = start_job(&stack, "quota", 60).await?;
    let started = Instant::now();
    while stack.store.submissions_paused().await?.is_none() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "never paused");
        if stack.drain_once().await? == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Let the batches already at Pictify finish; everything else waits parked.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while stack.drain_once().await? > 0 {}
    let job = stack.job(&id).await?;
    assert_eq!(job.status, JobStatus::Running, "paused, not failed");
    assert_eq!(job.counters.rendered, 30);
    assert_eq!(stack.store.parked().await?.len(), 3);
    assert_eq!(stack.alerts_of_kind("submissions_paused"), 1);
    assert_eq!(
        stack.emulator.ledger().throttled.quota,
        1,
        "asked once, not in a loop"
    );

    stack.emulator.set_limits(PlanLimits {
        monthly_renders: Some(1_000),
        ..Plan::Free.limits()
    })?;
    stack.store.resume_submissions().await?;
    while stack.pipeline.hand_over().await? > 0 {}
    let job = stack.run_until_done(&id, Duration::from_secs(120)).await?;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.counters.rendered, 60);
    each_chunk_once(&stack, &job).await?;
    assert_eq!(stack.alerts_of_kind("submissions_paused"), 1);
    assert_eq!(stack.dlq_depth().await?, 0);
    Ok(())
}
