//! The pipeline steps (ingest, submit, webhook, batch completion, job completion), written against
//! the ports only, so the Lambda functions and the local runner share one implementation.

mod batch;
mod ingest;
mod manifest;
mod reconcile;
mod reopen;
mod submit;
mod webhook;

use std::sync::Arc;

pub use batch::BatchApplied;
pub use ingest::IngestOutcome;
pub use manifest::ManifestSummary;
pub use reconcile::ReconcileReport;
pub use reopen::{ReopenOutcome, Selection};
pub use submit::SubmitOutcome;
pub use webhook::{WebhookReply, WebhookRequest};

use crate::ports::{Alerts, Clock, JobStore, ObjectStore, PictifyApi, PortError, WorkQueue};
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
}

/// A step failed in a way the caller should retry (the trigger redelivers).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("pictify: {0}")]
    Pictify(#[from] crate::pictify::PictifyError),
    #[error("{0}")]
    Other(String),
}

#[cfg(test)]
mod tests;
