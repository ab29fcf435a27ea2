//! The pipeline steps, written against the ports only, so the Lambda functions and the local
//! runner share one implementation.
//!
//! Calls run downhill only. Each file calls the files below it, never one above it or beside it
//! (`layering` checks this against the sources in the tests):
//!
//! ```text
//!  ingest     submit     webhook     reconcile      the steps a trigger (or the CLI) runs
//!     │          │          │            │
//!     │          └──────────┴─► batch ◄──┘          batch completion: poll, classify, retry, count
//!     │                           │
//!     │                          halt               pause, resume, limit, cancel; the abort rule
//!     │                           │
//!     └──────────────────────► finish               job completion: manifest, final status
//!                                 │
//!                              reopen               another attempt at some rows of a finished job
//!                                 │
//!                             manifest              one line per input row
//!                                 │
//!                              deliver              images to the user's bucket; row events
//!                                 │
//!                              schema               template definitions cached for ingest
//!                                 │
//!                              window               the plan's pace: slots, parking, requests
//!                                 │
//!                      payload      alerting        chunk payloads; alert rules and sending
//! ```
//!
//! Where to look: the 5% batch alert is `alerting::batch_failure_alert`; what a queue consumer does
//! with a chunk message is `submit::MessageFate`; when a job finishes is `finish`; pausing or
//! cancelling one job is `halt`.

mod alerting;
mod batch;
mod deliver;
mod finish;
mod halt;
mod ingest;
mod manifest;
mod payload;
mod reconcile;
mod reopen;
mod schema;
mod submit;
pub mod subscriptions;
mod webhook;
mod window;

use std::sync::Arc;

pub use alerting::{batch_failure_alert, failure_rate};
pub use batch::BatchApplied;
pub use deliver::{ChunkDelivery, DeliveredRow};
pub use halt::CancelPass;
pub use ingest::IngestOutcome;
pub use manifest::ManifestSummary;
pub use reconcile::ReconcileReport;
pub use reopen::{ReopenOutcome, Selection};
pub use submit::{KeepReason, MessageFate, ParkReason, SubmitOutcome};
pub use webhook::{WebhookReply, WebhookRequest};

use crate::domain::{Job, JobId};
use crate::pictify::images::HttpImages;
use crate::ports::{
    Alerts, Clock, ImageSource, JobStore, NoRowEvents, ObjectStore, PictifyApi, PortError,
    RowEvents, WorkQueue,
};
use crate::secret::Secret;
use crate::settings::Settings;

/// The ports and settings every step works with. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    pub store: Arc<dyn JobStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub queue: Arc<dyn WorkQueue>,
    pub pictify: Arc<dyn PictifyApi>,
    pub alerts: Arc<dyn Alerts>,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
    /// Accepted webhook signing secrets (several during a rotation).
    pub webhook_secrets: Vec<Secret>,
    pub outputs: Outputs,
}

/// Where finished rows go besides the manifest (`deliver`): images copied to the user's bucket
/// (read back by URL) and one event per row.
#[derive(Clone)]
pub struct Outputs {
    pub images: Arc<dyn ImageSource>,
    pub row_events: Arc<dyn RowEvents>,
}

impl Default for Outputs {
    /// Images read over HTTP; no row events.
    fn default() -> Self {
        Outputs {
            images: Arc::new(HttpImages::default()),
            row_events: Arc::new(NoRowEvents),
        }
    }
}

/// Why a step failed. `is_retryable` tells the trigger what to do next: redeliver, or record the
/// failure and move on.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("pictify: {0}")]
    Pictify(#[from] crate::pictify::PictifyError),
    /// Something the step needs was never there or is gone (a job, a chunk, a stored payload).
    #[error("{what} is missing")]
    Missing { what: String },
    /// Stored data that cannot be read as what it should be.
    #[error("{what} is unreadable: {reason}")]
    Unreadable { what: String, reason: String },
    /// Pictify's answers are behind its webhooks (a `batch.completed` before the poll agrees).
    #[error("not yet: {0}")]
    NotYet(String),
    /// Local file I/O (the manifest is written through temp files).
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A worker thread died (a panic in a parser).
    #[error("{what} crashed: {source}")]
    Crashed {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Pipeline {
    /// The stored job; `Missing` when there is none (a step for a job we have no record of).
    pub(crate) async fn stored_job(&self, id: &JobId) -> Result<Job, StepError> {
        self.store.job(id).await?.ok_or_else(|| StepError::Missing {
            what: format!("job {id}"),
        })
    }
}

impl StepError {
    /// Whether running the step again later can succeed. Missing or unreadable data stays so.
    pub fn is_retryable(&self) -> bool {
        match self {
            StepError::Port(e) => e.retryable,
            StepError::Pictify(e) => e.is_retryable(),
            StepError::Missing { .. } | StepError::Unreadable { .. } => false,
            StepError::NotYet(_) | StepError::Io { .. } | StepError::Crashed { .. } => true,
        }
    }

    /// A short name of the kind of failure, for error reports (Lambda's `errorType`).
    pub fn kind(&self) -> &'static str {
        match self {
            StepError::Port(_) => "PortError",
            StepError::Pictify(_) => "PictifyError",
            StepError::Missing { .. } => "Missing",
            StepError::Unreadable { .. } => "Unreadable",
            StepError::NotYet(_) => "NotYet",
            StepError::Io { .. } => "IoError",
            StepError::Crashed { .. } => "Crashed",
        }
    }
}

#[cfg(test)]
mod layering;
#[cfg(test)]
mod tests;
