//! Adapters that need no AWS service: the in-memory job store, a directory object store, an
//! in-process queue and the alert sinks (HTTP webhook, log, fan-out, memory).

pub mod alerts;
pub mod fs_store;
pub mod memory_store;
pub mod queue;

pub use alerts::{FanoutAlerts, HttpAlerts, LogAlerts, MemoryAlerts};
pub use fs_store::FsObjectStore;
pub use memory_store::{MemoryJobStore, Orphan};
pub use queue::MemoryQueue;
