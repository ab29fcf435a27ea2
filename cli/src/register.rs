//! `register-webhooks`: subscribe the deployed stack's webhook URL to Pictify's events and put
//! each new signing secret first in the stack secret's `webhookSecrets`, keeping the older ones.
//!
//! Pictify shows a subscription's secret only in the create answer, so the order is: read and
//! check the stack secret (fails before anything is created), list the subscriptions, create the
//! missing ones, store their secrets. Old secrets stay in the list so deliveries signed with them
//! (retries, a rotation's old subscription) keep verifying. The secrets are never printed, except
//! when storing them failed: then stderr is the only place left that holds them.

use std::fmt::Write as _;

use anyhow::{Context, anyhow};
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use clap::Args;
use clap::builder::PossibleValuesParser;
use serde_json::{Map, Value};
use shared::pictify::client::DEFAULT_BASE_URL;
use shared::pictify::wire::{CreateSubscription, Subscription};
use shared::pictify::{PictifyClient, PictifyConfig, PictifyError};
use shared::secret::Secret;
use tracing::info;

use crate::{Failure, Outcome};

/// The reconciler checks these same subscriptions (`WEBHOOK_URL`).
const EVENTS: [&str; 3] = shared::pipeline::subscriptions::NEEDED_EVENTS;
const API_KEY_FIELD: &str = "pictifyApiKey";
const SECRETS_FIELD: &str = "webhookSecrets";

#[derive(Args, Debug)]
pub struct RegisterArgs {
    /// The stack's webhook URL (the `WebhookUrl` output). https; plain http only to 127.0.0.1 or localhost.
    #[arg(long)]
    pub url: String,
    /// The stack secret (the `StackSecretArn` output, or its name); new signing secrets go first in its `webhookSecrets`.
    #[arg(long, env = "SECRET_ARN", value_name = "ARN_OR_NAME")]
    pub secret_id: String,
    /// Pictify API key [default: the `pictifyApiKey` stored in the secret].
    #[arg(long, env = "PICTIFY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Pictify API base URL.
    #[arg(long, env = "PICTIFY_BASE_URL", default_value = DEFAULT_BASE_URL)]
    pub base_url: String,
    /// Events to subscribe to, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = EVENTS.map(String::from),
        value_parser = PossibleValuesParser::new(EVENTS)
    )]
    pub events: Vec<String>,
    /// Create a new subscription per event even where one exists (step 1 of a secret rotation).
    #[arg(long)]
    pub rotate: bool,
    /// Show what would be created; create nothing and leave the secret unchanged.
    #[arg(long)]
    pub dry_run: bool,
}

/// A subscription created by this run, with the secret Pictify will not show again.
struct Created {
    event: String,
    uid: String,
    secret: Secret,
}

pub async fn register_webhooks(args: RegisterArgs) -> Result<Outcome, Failure> {
    let url = webhook_url(&args.url)?;
    let mut events: Vec<String> = Vec::new();
    for event in &args.events {
        if !events.contains(event) {
            events.push(event.clone());
        }
    }

    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = aws_sdk_secretsmanager::Client::new(&aws);
    let document = read_secret(&store, &args.secret_id).await?;
    let api_key = args
        .api_key
        .clone()
        .filter(|k| !k.trim().is_empty())
        .or_else(|| stored_api_key(&document))
        .ok_or_else(|| {
            Failure::usage(format!(
                "no Pictify API key: pass --api-key, set PICTIFY_API_KEY, or store {API_KEY_FIELD} in secret `{}`",
                args.secret_id
            ))
        })?;
    let client = PictifyClient::new(
        PictifyConfig::new(Secret::new(api_key)).with_base_url(args.base_url.clone()),
    )
    .map_err(|e| Failure::usage(format!("--base-url: {e}")))?;

    let existing: Vec<Subscription> = client
        .list_subscriptions()
        .await
        .map_err(|e| pictify_failure(&client, "listing the webhook subscriptions", e))?
        .into_iter()
        .filter(|s| same_url(&s.target_url, &url))
        .collect();
    println!("webhook URL {url} at {}", client.base_url());
    let mut missing = Vec::new();
    for event in &events {
        let present: Vec<&Subscription> = existing.iter().filter(|s| &s.event == event).collect();
        for sub in &present {
            let status = sub.status.as_deref().unwrap_or("unknown");
            println!("  {event:<17} exists   {} ({status})", sub.uid);
        }
        if present.is_empty() || args.rotate {
            missing.push(event.clone());
        }
    }
    if args.dry_run {
        for event in &missing {
            println!("  {event:<17} would be created");
        }
        println!(
            "dry run: nothing created, secret `{}` unchanged",
            args.secret_id
        );
        return Ok(Outcome::AllRendered);
    }

    let (created, refused, stopped) = create_all(&client, &url, &missing).await;
    if created.is_empty() {
        if let Some(failure) = stopped {
            return Err(failure);
        }
        if refused.is_empty() {
            println!(
                "nothing to create: every event already has a subscription; secret `{}` unchanged",
                args.secret_id
            );
            return Ok(Outcome::AllRendered);
        }
    } else {
        match prepend_secrets(&store, &args.secret_id, &created).await {
            Ok(total) => println!(
                "stored {} new signing secret(s) first in {SECRETS_FIELD} of `{}` ({total} in all; older ones kept so deliveries signed with them still verify)",
                created.len(),
                args.secret_id
            ),
            Err(e) => {
                eprint!("{}", unstored_notice(&created, &args.secret_id));
                return Err(Failure::Internal(e));
            }
        }
        print_next_steps(&existing, &events, args.rotate);
    }
    if let Some(failure) = stopped {
        return Err(failure);
    }
    if !refused.is_empty() {
        let rest = if created.is_empty() {
            ""
        } else {
            "; the others are registered and their secrets stored"
        };
        return Err(Failure::usage(format!(
            "Pictify refused the subscription for {}{rest}",
            refused.join("; ")
        )));
    }
    Ok(Outcome::AllRendered)
}

/// Creates one subscription per event. A refused event (4xx) does not stop the others; any other
/// error does (the rest would fail the same way). What was created is returned in every case,
/// because its secret must be stored.
async fn create_all(
    client: &PictifyClient,
    url: &str,
    events: &[String],
) -> (Vec<Created>, Vec<String>, Option<Failure>) {
    let (mut created, mut refused) = (Vec::new(), Vec::new());
    for event in events {
        let request = CreateSubscription {
            event: event.clone(),
            target_url: url.to_owned(),
            platform: None,
            filters: None,
        };
        match client.create_subscription(&request).await {
            Ok(sub) => {
                let Some(secret) = sub.secret.filter(|s| !s.is_empty()) else {
                    let failure = Failure::Internal(anyhow!(
                        "Pictify created subscription {} ({event}) without showing its secret: delete it (DELETE /webhook-subscriptions/{}) and run again",
                        sub.uid,
                        sub.uid
                    ));
                    return (created, refused, Some(failure));
                };
                info!(event = %event, uid = %sub.uid, "webhook subscription created");
                println!(
                    "  {event:<17} created  {}  secret {}",
                    sub.uid,
                    masked(&secret)
                );
                created.push(Created {
                    event: event.clone(),
                    uid: sub.uid,
                    secret: Secret::new(secret),
                });
            }
            Err(PictifyError::InvalidRequest { message, .. }) => {
                println!("  {event:<17} refused  {message}");
                refused.push(format!("{event} ({message})"));
            }
            Err(e) => {
                let failure =
                    pictify_failure(client, &format!("creating the {event} subscription"), e);
                return (created, refused, Some(failure));
            }
        }
    }
    (created, refused, None)
}

fn print_next_steps(existing: &[Subscription], events: &[String], rotate: bool) {
    println!(
        "next: refresh the four functions so new instances read the secret (docs/deploy.md §3); until then Pictify retries the deliveries they refuse"
    );
    let old: Vec<&str> = existing
        .iter()
        .filter(|s| events.contains(&s.event))
        .map(|s| s.uid.as_str())
        .collect();
    if rotate && !old.is_empty() {
        println!(
            "then delete the old subscription(s) {} (DELETE /webhook-subscriptions/<uid>), and 24 h later remove their secrets from {SECRETS_FIELD} (docs/deploy.md §6)",
            old.join(", ")
        );
    }
}

/// What stderr says when the secrets could not be stored: the only copy left of each secret.
fn unstored_notice(created: &[Created], secret_id: &str) -> String {
    let mut text = format!(
        "WARNING: these subscriptions were created but their signing secrets could NOT be stored in `{secret_id}`.\n\
         Pictify will not show them again. Put them first in {SECRETS_FIELD} now (docs/deploy.md §3), then clear this output:\n"
    );
    for c in created {
        let _ = writeln!(text, "  {} {} {}", c.event, c.uid, c.secret.expose());
    }
    text
}

/// `whsec_…ab12`: enough to tell secrets apart, never enough to use one.
fn masked(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 16 {
        return "…".to_owned();
    }
    let prefix = if secret.starts_with("whsec_") {
        "whsec_"
    } else {
        ""
    };
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{prefix}…{tail}")
}

/// Checks `--url`. Pictify's deliveries carry rendered-image URLs, so they go over https; plain
/// http is accepted only to this machine (tests, tunnels' local side).
fn webhook_url(raw: &str) -> Result<String, Failure> {
    let url = url::Url::parse(raw).map_err(|e| {
        Failure::usage(format!(
            "--url `{raw}` is not an absolute URL ({e}); give the stack's WebhookUrl output, https://…"
        ))
    })?;
    let local = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match url.scheme() {
        "https" if url.host().is_some() => Ok(raw.to_owned()),
        "http" if local => Ok(raw.to_owned()),
        "http" => Err(Failure::usage(format!(
            "--url `{raw}` is plain http; Pictify must deliver to https (http only to 127.0.0.1 or localhost)"
        ))),
        other => Err(Failure::usage(format!(
            "--url `{raw}` has scheme `{other}`; expected https://…"
        ))),
    }
}

/// Same URL up to normalisation, so `https://h` and `https://h/` count as one target.
fn same_url(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn pictify_failure(client: &PictifyClient, doing: &str, error: PictifyError) -> Failure {
    match error {
        PictifyError::Unauthorized { .. } => Failure::usage(format!(
            "Pictify at {} refused the API key (401) while {doing}: check --api-key, PICTIFY_API_KEY or {API_KEY_FIELD} in the secret",
            client.base_url()
        )),
        PictifyError::InvalidRequest { .. }
        | PictifyError::NotFound { .. }
        | PictifyError::Quota { .. }
        | PictifyError::RateLimited { .. } => Failure::usage(format!("{doing}: {error}")),
        other => Failure::Internal(anyhow::Error::new(other).context(doing.to_owned())),
    }
}

/// Reads the secret as a JSON object, checking the fields this command relies on, so a wrong
/// secret is reported before any subscription exists.
async fn read_secret(
    store: &aws_sdk_secretsmanager::Client,
    id: &str,
) -> Result<Map<String, Value>, Failure> {
    let answer = match store.get_secret_value().secret_id(id).send().await {
        Ok(answer) => answer,
        Err(e) => {
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception())
            {
                return Err(Failure::usage(format!(
                    "secret `{id}` not found; give the stack's StackSecretArn output"
                )));
            }
            return Err(match e.code() {
                Some(code) => Failure::usage(format!(
                    "cannot read secret `{id}`: {code}: {}",
                    e.message().unwrap_or("no message")
                )),
                None => Failure::Internal(
                    anyhow::Error::new(e).context(format!("reading secret `{id}`")),
                ),
            });
        }
    };
    let shape = || {
        Failure::usage(format!(
            "secret `{id}` is not JSON of the form {{\"{API_KEY_FIELD}\": \"…\", \"{SECRETS_FIELD}\": [\"whsec_…\"]}}"
        ))
    };
    let text = answer.secret_string().ok_or_else(shape)?;
    let Ok(Value::Object(document)) = serde_json::from_str::<Value>(text) else {
        return Err(shape());
    };
    let secrets_ok = match document.get(SECRETS_FIELD) {
        None | Some(Value::Null) => true,
        Some(Value::Array(items)) => items.iter().all(Value::is_string),
        Some(_) => false,
    };
    let key_ok = matches!(
        document.get(API_KEY_FIELD),
        None | Some(Value::Null | Value::String(_))
    );
    if !(secrets_ok && key_ok) {
        return Err(shape());
    }
    Ok(document)
}

fn stored_api_key(document: &Map<String, Value>) -> Option<String> {
    document
        .get(API_KEY_FIELD)
        .and_then(Value::as_str)
        .filter(|k| !k.trim().is_empty())
        .map(str::to_owned)
}

/// Re-reads the secret (so a change made meanwhile is kept), puts the new secrets first, keeps
/// every other field and older secret, and writes a new version. Returns the list's length.
async fn prepend_secrets(
    store: &aws_sdk_secretsmanager::Client,
    id: &str,
    created: &[Created],
) -> anyhow::Result<usize> {
    let mut document = read_secret(store, id).await.map_err(|e| {
        anyhow::Error::new(e).context(format!("re-reading secret `{id}` before the update"))
    })?;
    let old: Vec<String> = match document.get(SECRETS_FIELD) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let mut merged: Vec<String> = created
        .iter()
        .map(|c| c.secret.expose().to_owned())
        .collect();
    for secret in old {
        if !merged.contains(&secret) {
            merged.push(secret);
        }
    }
    let total = merged.len();
    document.insert(
        SECRETS_FIELD.to_owned(),
        Value::Array(merged.into_iter().map(Value::String).collect()),
    );
    let text = serde_json::to_string(&document).context("encoding the secret")?;
    store
        .put_secret_value()
        .secret_id(id)
        .secret_string(text)
        .send()
        .await
        .with_context(|| format!("writing secret `{id}`"))?;
    info!(secret_id = %id, added = created.len(), total, "webhook secrets stored");
    Ok(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_the_prefix_and_four_last_characters() {
        let secret = "whsec_0123456789abcdef0123456789abcdef";
        assert_eq!(masked(secret), "whsec_…cdef");
        assert_eq!(masked("whsec_short"), "…");
    }

    #[test]
    fn only_https_or_local_http_urls_are_accepted() {
        assert!(webhook_url("https://abc.lambda-url.us-east-1.on.aws/").is_ok());
        assert!(webhook_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(webhook_url("http://example.com/hook").is_err());
        assert!(webhook_url("example.com/hook").is_err());
        assert!(webhook_url("ftp://example.com/hook").is_err());
    }

    #[test]
    fn a_trailing_slash_does_not_make_another_target() {
        assert!(same_url("https://h.example", "https://h.example/"));
        assert!(!same_url("https://h.example/a", "https://h.example/b"));
    }

    #[test]
    fn the_unstored_notice_holds_each_full_secret() {
        let created = vec![Created {
            event: "render.failed".into(),
            uid: "wh_1".into(),
            secret: Secret::new("whsec_full_value_here"),
        }];
        let notice = unstored_notice(&created, "stack-secret");
        assert!(notice.starts_with("WARNING"));
        assert!(notice.contains("render.failed wh_1 whsec_full_value_here"));
    }
}
