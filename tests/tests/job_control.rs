//! Controlling deployed jobs end to end through moto and the emulator (Pro plan, render time
//! scaled down): a cancel mid-job, a pause of one job while another runs, a limit changed
//! mid-run, and the abort rule. The operator's calls are the ones `pictify-batch` makes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use integration_tests::datasets::{blog_csv, job_id_of};
use integration_tests::stack::{Stack, StackOptions};
use pictify_emulator::{Faults, Plan, PlanLimits};
use shared::domain::{ControlChange, Controlled, Job, JobId, JobStatus};
use shared::pictify::wire::BatchStatus;
use shared::ports::{ChunkLedger, SubmitWindow};

/// Pro: chunks of 100, 3 batches at once; a batch renders in about a second.
async fn pro_stack(faults: Faults) -> anyhow::Result<Stack> {
    Stack::start(StackOptions {
        faults,
        ..StackOptions::on_plan(Plan::Pro, PlanLimits::default(), 0.05)
    })
    .await
}

async fn start_job(stack: &Stack, name: &str, rows: usize) -> anyhow::Result<JobId> {
    stack.start_blog_job(name, rows).await
}

/// Drives the stack until the job has `rows` rendered (or a minute passes).
async fn drive_until_rendered(stack: &Stack, id: &JobId, rows: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    while stack.job(id).await?.counters.rendered < rows {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "{rows} rows not rendered in time"
        );
        if stack.drain_once().await? == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// The manifest's rows by status.
async fn manifest_statuses(stack: &Stack, job: &Job) -> anyhow::Result<BTreeMap<String, u64>> {
    let manifest = job
        .manifest
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no manifest written"))?;
    let text = stack.get_text(&manifest.jsonl.key).await?;
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line)?;
        *counts
            .entry(row["status"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    Ok(counts)
}

fn assert_accounted(job: &Job) {
    let c = job.counters;
    assert!(
        c.invariant_holds() && c.in_flight() == 0 && c.terminal() == c.rows,
        "{c:?}"
    );
}

#[tokio::test]
async fn a_job_cancelled_mid_run_stops_sending_cancels_its_batches_and_accounts_for_every_row()
-> anyhow::Result<()> {
    let stack = pro_stack(Faults::default()).await?;
    let id = start_job(&stack, "cancelled", 800).await?;
    drive_until_rendered(&stack, &id, 100).await?;

    let cancel = ControlChange::Cancel {
        reason: "wrong template".into(),
    };
    let answer = stack.pipeline.control_job(&id, &cancel).await?;
    assert_eq!(answer, Some(Controlled::Applied));
    let sent_before = stack.emulator.ledger().batches_accepted.len();
    let job = stack.run_until_done(&id, Duration::from_secs(60)).await?;

    assert_eq!(job.status, JobStatus::Cancelled);
    assert_accounted(&job);
    let c = job.counters;
    assert!(c.rendered >= 100 && c.cancelled >= 200, "{c:?}");
    let ledger = stack.emulator.ledger();
    assert_eq!(
        ledger.batches_accepted.len(),
        sent_before,
        "nothing was sent after the cancel"
    );
    let cancelled_at_pictify = ledger
        .batches_accepted
        .iter()
        .filter(|b| b.status == BatchStatus::Cancelled)
        .count();
    println!("cancel: {c:?}; {cancelled_at_pictify} batch(es) cancelled at Pictify");
    let statuses = manifest_statuses(&stack, &job).await?;
    assert_eq!(statuses.get("cancelled").copied(), Some(c.cancelled));
    // Without render.completed deliveries (see `pro_stack`) rendered rows carry no URL.
    let rendered: u64 = statuses
        .iter()
        .filter(|(status, _)| status.starts_with("rendered"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(rendered, c.rendered, "{statuses:?}");
    assert!(stack.store.live_slots(i64::MAX - 1).await?.is_empty());
    assert_eq!(stack.dlq_depth().await?, 0);

    // Repeated, it changes nothing; the reconciler finds nothing to do for it.
    let again = stack.pipeline.control_job(&id, &cancel).await?;
    assert_eq!(again, Some(Controlled::Finished(JobStatus::Cancelled)));
    stack.reconcile(Duration::ZERO).await?;
    assert_eq!(stack.job(&id).await?.counters, c);
    assert_eq!(stack.alerts_of_kind("job_finished"), 1);
    Ok(())
}

#[tokio::test]
async fn one_job_paused_and_limited_mid_run_while_another_runs_through() -> anyhow::Result<()> {
    let stack = pro_stack(Faults::default()).await?;
    let held = start_job(&stack, "held", 600).await?;
    let pause = ControlChange::Pause {
        reason: "checking the first images".into(),
    };
    assert_eq!(
        stack.pipeline.control_job(&held, &pause).await?,
        Some(Controlled::Applied)
    );
    let other = start_job(&stack, "other", 500).await?;
    let other_job = stack
        .run_until_done(&other, Duration::from_secs(60))
        .await?;
    assert_eq!(other_job.status, JobStatus::Completed);

    let paused = stack.job(&held).await?;
    assert_eq!(
        (paused.status, paused.counters.rendered),
        (JobStatus::Running, 0)
    );
    let ledger = stack.emulator.ledger();
    let held_prefix = format!("{held}-");
    let sent_for = |ledger: &pictify_emulator::Ledger| {
        ledger
            .batches_accepted
            .iter()
            .filter(|b| {
                b.idempotency_key
                    .as_deref()
                    .is_some_and(|k| k.starts_with(&held_prefix))
            })
            .count()
    };
    assert_eq!(sent_for(&ledger), 0, "a paused job sends nothing");

    // Resumed with a limit of one batch at a time; raised to three half-way.
    let limit = |n| ControlChange::MaxInFlight(Some(n));
    stack.pipeline.control_job(&held, &limit(1)).await?;
    stack
        .pipeline
        .control_job(&held, &ControlChange::Resume)
        .await?;
    let mut most = 0;
    let mut raised = false;
    let started = Instant::now();
    loop {
        let job = stack.job(&held).await?;
        if job.status.is_terminal() {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(90),
            "not done: {job:?}"
        );
        let now = chrono::Utc::now().timestamp();
        let mine = stack
            .store
            .live_slots(now)
            .await?
            .iter()
            .filter(|s| s.job == held)
            .count();
        if !raised {
            most = most.max(mine);
            if job.counters.rendered >= 200 {
                stack.pipeline.control_job(&held, &limit(3)).await?;
                raised = true;
            }
        }
        if stack.drain_once().await? == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(most, 1, "at most one batch of the limited job at once");
    assert!(raised);
    let job = stack.job(&held).await?;
    assert_eq!(
        (job.status, job.counters.rendered),
        (JobStatus::Completed, 600)
    );
    for chunk in stack.store.chunks_of_job(&held).await? {
        assert_eq!(
            stack
                .emulator
                .ledger()
                .accepted_with_key(&chunk.idempotency_key()),
            1
        );
    }
    assert!(stack.emulator.ledger().max_batches_in_flight <= 3);
    assert_eq!(stack.dlq_depth().await?, 0);
    Ok(())
}

#[tokio::test]
async fn the_abort_rule_cancels_a_failing_job_with_one_alert() -> anyhow::Result<()> {
    let faults = Faults {
        item_failures: [("INVALID_VARIABLE".to_owned(), 0.2)].into(),
        ..Faults::default()
    };
    let stack = pro_stack(faults).await?;
    let key = "uploads/tmpl_blog_card/failing.csv";
    let sidecar = br#"{"maxFailureRate": 0.05, "abortAfterRows": 100, "onAbort": "cancel"}"#;
    stack
        .upload(&format!("{key}.job.json"), sidecar.to_vec())
        .await?;
    stack.upload(key, blog_csv(1_000)).await?;
    let id = job_id_of(&stack.ingest(key).await?)?;
    let started = Instant::now();
    loop {
        let job = stack.job(&id).await?;
        if job.status.is_terminal() {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "not done: {job:?}"
        );
        // The scheduled reconciler's pass repeats the cancel for what was at Pictify.
        stack.reconcile(Duration::from_secs(3600)).await?;
        if stack.drain_once().await? == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let job = stack.job(&id).await?;
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_accounted(&job);
    assert!(
        job.control
            .cancelled
            .as_deref()
            .is_some_and(|r| r.contains("maxFailureRate")),
        "{:?}",
        job.control
    );
    assert!(job.counters.cancelled >= 500, "{:?}", job.counters);
    assert_eq!(stack.alerts_of_kind("job_aborted"), 1);
    assert!(stack.alerts_of_kind("batch_high_failure_rate") >= 1);
    Ok(())
}
