//! Test helpers: an emulator per test with one small template, a JSON client, and a webhook receiver.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use pictify_emulator::render::{Template, TemplateStore};
use pictify_emulator::{Config, PresetSubscription, RunningEmulator, start};
use serde_json::{Value, json};
use tempfile::TempDir;

pub const KEY: &str = "pk_test_emulator";
pub const TEMPLATE: &str = "tmpl_card";
pub const SECRET: &str = "whsec_test_secret";

/// A tiny template built in code, so tests do not depend on the bundled samples.
pub fn card_template() -> Template {
    Template {
        id: TEMPLATE.into(),
        name: "Test card".into(),
        width: 80,
        height: 40,
        variables: Vec::new(),
        html: r#"<div style="display:flex;width:80px;height:40px;background:#ffffff;color:#111111">{{title}}</div>"#
            .into(),
    }
}

/// `{"variableSets":[{"title":"card 0"}, …]}`.
pub fn cards(n: usize) -> Value {
    let sets: Vec<Value> = (0..n)
        .map(|i| json!({ "title": format!("card {i}") }))
        .collect();
    json!({ "variableSets": sets })
}

pub struct Emu {
    pub emu: RunningEmulator,
    pub http: reqwest::Client,
    _data: TempDir,
}

pub async fn emulator() -> Emu {
    emulator_with(|_| {}).await
}

pub async fn emulator_with(tweak: impl FnOnce(&mut Config)) -> Emu {
    let data = TempDir::new().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        templates: TemplateStore::default(),
        extra_templates: vec![card_template()],
        data_dir: data.path().to_path_buf(),
        webhook_retry_scale: 0.001,
        webhook_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    tweak(&mut config);
    let emu = start(config).await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    Emu {
        emu,
        http,
        _data: data,
    }
}

impl Emu {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emu.base_url())
    }

    pub async fn submit(&self, body: Value) -> (u16, Value) {
        self.send(
            self.http
                .post(self.url(&format!("/templates/{TEMPLATE}/batch-render")))
                .json(&body),
        )
        .await
    }

    pub async fn submit_keyed(&self, key: &str, body: Value) -> (u16, Value) {
        let req = self
            .http
            .post(self.url(&format!("/templates/{TEMPLATE}/batch-render")));
        self.send(req.header("Idempotency-Key", key).json(&body))
            .await
    }

    /// A POST with a hand-made body and content type.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let req = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body);
        self.send(req).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let response = req.bearer_auth(KEY).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Submits `body` and returns the batch id, asserting 202.
    pub async fn accepted(&self, body: Value) -> String {
        let (status, answer) = self.submit(body).await;
        assert_eq!(status, 202, "{answer}");
        answer["batchId"].as_str().unwrap().to_owned()
    }

    /// The ledger once `settled` holds (the emulator counts a delivery's answer after the
    /// receiver has seen the request, so a test must not read it the moment the request lands).
    pub async fn ledger_when(
        &self,
        settled: impl Fn(&pictify_emulator::Ledger) -> bool,
    ) -> pictify_emulator::Ledger {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ledger = self.emu.ledger();
            if settled(&ledger) || Instant::now() >= deadline {
                return ledger;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the batch is terminal and returns the results body.
    pub async fn finished(&self, batch_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self
                .get(&format!("/templates/batch/{batch_id}/results"))
                .await;
            assert_eq!(status, 200, "{body}");
            if ["completed", "partial", "failed", "cancelled"]
                .contains(&body["status"].as_str().unwrap())
            {
                return body;
            }
            assert!(Instant::now() < deadline, "batch never finished: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Preset subscriptions for `events`, all pointing at `url` with `SECRET`.
pub fn subscribe(config: &mut Config, url: &str, events: &[&str]) {
    for event in events {
        config.subscriptions.push(PresetSubscription {
            event: (*event).into(),
            target_url: url.into(),
            secret: SECRET.into(),
        });
    }
}

pub const ALL_EVENTS: [&str; 3] = ["render.completed", "render.failed", "batch.completed"];

#[derive(Debug, Clone)]
pub struct Hit {
    pub event: String,
    pub delivery_id: String,
    pub signature: String,
    pub body: Bytes,
}

impl Hit {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Clone, Default)]
struct Inbox {
    hits: Arc<Mutex<Vec<Hit>>>,
    /// Statuses to answer with, in order; 200 once exhausted.
    script: Arc<Mutex<VecDeque<u16>>>,
    always: Option<u16>,
}

/// A webhook receiver on 127.0.0.1 that records every request.
pub struct Receiver {
    pub url: String,
    inbox: Inbox,
}

pub async fn receiver() -> Receiver {
    receiver_scripted(&[], None).await
}

/// Answers with `script` first (then 200, or `always` if set).
pub async fn receiver_scripted(script: &[u16], always: Option<u16>) -> Receiver {
    let inbox = Inbox {
        script: Arc::new(Mutex::new(script.iter().copied().collect())),
        always,
        ..Inbox::default()
    };
    let app = axum::Router::new()
        .route("/hook", post(record))
        .with_state(inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, inbox }
}

async fn record(State(inbox): State<Inbox>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    inbox.hits.lock().unwrap().push(Hit {
        event: header("x-pictify-event"),
        delivery_id: header("x-pictify-delivery-id"),
        signature: header("x-pictify-signature"),
        body,
    });
    let scripted = inbox.script.lock().unwrap().pop_front();
    StatusCode::from_u16(scripted.or(inbox.always).unwrap_or(200)).unwrap()
}

impl Receiver {
    pub fn hits(&self) -> Vec<Hit> {
        self.inbox.hits.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived, then returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Hit> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} webhook requests arrived",
                hits.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Splits `t=..,v1=..` into its parts.
pub fn parse_signature(header: &str) -> (i64, String) {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse().ok(),
            Some(("v1", value)) => v1 = Some(value.to_owned()),
            _ => {}
        }
    }
    (t.unwrap(), v1.unwrap())
}
