//! Template variable definitions cached in the bucket (`layout::template_variables_ref`), so
//! ingest, which holds no Pictify key, can reject rows the template refuses before they are
//! billed. The reconciler refreshes the definitions of the templates active jobs use; ingest
//! freezes the cached copy into the job it creates (`JobSpec::template_variables`).

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Pipeline, StepError};
use crate::layout;
use crate::pictify::PictifyError;
use crate::pictify::variables::VariableDef;

/// A cached copy older than this is fetched again by the reconciler.
const REFRESH_AFTER_SECONDS: i64 = 5 * 60;
/// A cached copy older than this is not trusted by ingest (the template may have changed and
/// no reconciler has refreshed it): rows go to Pictify unchecked, as with no copy at all.
const TRUST_FOR_SECONDS: i64 = 60 * 60;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CachedVariables {
    template_id: String,
    fetched_at: i64,
    variables: Vec<VariableDef>,
}

impl Pipeline {
    /// The cached definitions of a template, if fresh enough to judge rows by. Never an error:
    /// without them rows are simply not checked here (Pictify checks them).
    pub(crate) async fn cached_template_variables(
        &self,
        bucket: &str,
        template_id: &str,
    ) -> Option<Vec<VariableDef>> {
        let at = layout::template_variables_ref(bucket, template_id, &self.settings);
        let bytes = match self.objects.get_bytes(&at).await {
            Ok(bytes) => bytes?,
            Err(e) => {
                warn!(template_id, error = %e, "template definitions unreadable; rows go unchecked");
                return None;
            }
        };
        let cached: CachedVariables = match serde_json::from_slice(&bytes) {
            Ok(cached) => cached,
            Err(e) => {
                warn!(template_id, error = %e, "cached template definitions are not valid; rows go unchecked");
                return None;
            }
        };
        let age = self.clock.now().saturating_sub(cached.fetched_at);
        if age > TRUST_FOR_SECONDS {
            info!(
                template_id,
                age_s = age,
                "cached template definitions too old; rows go unchecked"
            );
            return None;
        }
        Some(cached.variables)
    }

    /// Fetches a template's definitions from Pictify into the cache unless the copy there is
    /// recent; `true` when it wrote one.
    pub(crate) async fn refresh_template_variables(
        &self,
        bucket: &str,
        template_id: &str,
    ) -> Result<bool, StepError> {
        let at = layout::template_variables_ref(bucket, template_id, &self.settings);
        let now = self.clock.now();
        if let Some(bytes) = self.objects.get_bytes(&at).await?
            && let Ok(cached) = serde_json::from_slice::<CachedVariables>(&bytes)
            && now.saturating_sub(cached.fetched_at) < REFRESH_AFTER_SECONDS
        {
            return Ok(false);
        }
        self.spend_request().await?;
        let variables = match self.pictify.template_variables(template_id).await {
            Ok(variables) => variables,
            // Unknown to Pictify (its jobs fail TEMPLATE_NOT_FOUND), or a stand-in: nothing to cache.
            Err(PictifyError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let cached = CachedVariables {
            template_id: template_id.to_owned(),
            fetched_at: now,
            variables,
        };
        let bytes = serde_json::to_vec(&cached).map_err(|e| StepError::Unreadable {
            what: format!("the definitions of {template_id}"),
            reason: e.to_string(),
        })?;
        self.objects
            .put_bytes(&at, bytes, "application/json")
            .await?;
        info!(
            template_id,
            variables = cached.variables.len(),
            "template definitions cached"
        );
        Ok(true)
    }
}
