//! Counts the AWS requests the pipeline really sends (every HTTP attempt, by service and
//! operation), through an SDK interceptor: the basis of the per-1,000-rows cost figures.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

#[derive(Debug, Clone, Default)]
pub struct RequestCounter(Arc<Mutex<BTreeMap<(String, String), u64>>>);

impl RequestCounter {
    /// (service, operation) → requests sent.
    pub fn snapshot(&self) -> BTreeMap<(String, String), u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn reset(&self) {
        if let Ok(mut m) = self.0.lock() {
            m.clear();
        }
    }

    pub fn total_for(&self, service: &str) -> u64 {
        self.snapshot()
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|(_, n)| n)
            .sum()
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "RequestCounter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let (Some(meta), Ok(mut counts)) = (cfg.load::<Metadata>(), self.0.lock()) {
            *counts
                .entry((meta.service().to_owned(), meta.name().to_owned()))
                .or_default() += 1;
        }
        Ok(())
    }
}
