//! `MemoryQueue`: the work queue as an in-process FIFO, for tests and local runs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::aws::sqs::{NoStepQueue, SQS_MAX_MESSAGE_BYTES, encode_messages};
use crate::domain::{ChunkMessage, JobStep};
use crate::ports::{PortError, PortResult, WorkQueue};

/// Cloning shares the queue, so a test can keep a handle while the pipeline owns another.
#[derive(Debug, Clone, Default)]
pub struct MemoryQueue {
    messages: Arc<Mutex<VecDeque<ChunkMessage>>>,
    /// Long steps handed to a worker, when this queue takes them (`with_steps`).
    steps: Option<Arc<Mutex<VecDeque<JobStep>>>>,
}

impl MemoryQueue {
    /// A queue that takes no long steps: the pipeline does them in place (local runs).
    pub fn new() -> Self {
        Self::default()
    }

    /// A queue that also keeps long steps for the caller to run (`pop_step`), as the step queue
    /// does for the ingest function.
    pub fn with_steps() -> Self {
        MemoryQueue {
            steps: Some(Arc::default()),
            ..Self::default()
        }
    }

    /// Takes every queued message, oldest first.
    pub fn drain(&self) -> Vec<ChunkMessage> {
        self.lock().drain(..).collect()
    }

    /// The oldest long step not yet taken.
    pub fn pop_step(&self) -> Option<JobStep> {
        self.steps
            .as_ref()?
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop_front()
    }

    pub fn pop(&self) -> Option<ChunkMessage> {
        self.lock().pop_front()
    }

    /// Puts a message back at the end (a local stand-in for "deliver again later").
    pub fn push(&self, message: ChunkMessage) {
        self.lock().push_back(message);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<ChunkMessage>> {
        // Only whole messages are pushed or popped under the lock: a poisoned queue is intact.
        self.messages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl WorkQueue for MemoryQueue {
    /// The SQS limit, so local runs exercise the by-reference path exactly when AWS would.
    fn max_message_bytes(&self) -> usize {
        SQS_MAX_MESSAGE_BYTES
    }

    /// All or nothing: an oversize message refuses the whole call before anything is queued.
    async fn send(&self, messages: &[ChunkMessage]) -> PortResult<()> {
        encode_messages(messages, SQS_MAX_MESSAGE_BYTES)?;
        self.lock().extend(messages.iter().cloned());
        Ok(())
    }

    fn takes_steps(&self) -> bool {
        self.steps.is_some()
    }

    async fn queue_step(&self, step: &JobStep) -> PortResult<()> {
        let Some(steps) = &self.steps else {
            return Err(PortError::permanent(
                format!("queue a step of {}", step.job()),
                NoStepQueue,
            ));
        };
        steps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push_back(step.clone());
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::{ChunkKey, JobId};

    fn message(seq: u32) -> ChunkMessage {
        ChunkMessage {
            job: JobId::parse("job_abc").unwrap(),
            key: ChunkKey::initial(seq),
            payload: None,
            payload_ref: None,
        }
    }

    #[tokio::test]
    async fn messages_come_out_in_order() {
        let queue = MemoryQueue::new();
        queue.send(&[message(0), message(1)]).await.unwrap();
        queue.clone().send(&[message(2)]).await.unwrap();
        assert_eq!(queue.pop(), Some(message(0)));
        assert_eq!(queue.drain(), vec![message(1), message(2)]);
        assert!(queue.is_empty());
    }
}
