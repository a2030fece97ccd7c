//! Test harness: a real `llmux-mock` upstream and the gateway app, each on an ephemeral port.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;

use llmux_mock::MockState;
use llmux_server::{build_router, AppState};
use serde_json::Value;

pub struct Harness {
    /// Gateway base URL, e.g. `http://127.0.0.1:1234`.
    pub url: String,
    /// Keys, budgets and spend (`start_governed` only).
    pub gov: Option<Arc<llmux_governance::Governance>>,
    /// The governed harness's clock (unix ms), movable by tests.
    pub clock: Arc<std::sync::atomic::AtomicI64>,
    /// Mock base URL including `/v1`.
    pub mock_url: String,
    pub mock: Arc<MockState>,
    pub client: llmux::Client,
    pub http: reqwest::Client,
    /// Traces and log sinks, when the config names any (`callbacks`).
    pub telemetry: Option<Arc<llmux_telemetry::Telemetry>>,
}

/// The config's traces and log sinks, started as the binary starts them (variables from the
/// config's `environment_variables` only).
fn telemetry(config: &llmux_config::Config) -> Option<Arc<llmux_telemetry::Telemetry>> {
    let env: HashMap<String, String> = HashMap::new();
    llmux_telemetry::Telemetry::start(config, &env).unwrap_or_else(|e| panic!("telemetry: {e}"))
}

async fn spawn(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// The gateway's app served as the binary serves it (`llmux_server::serve`).
async fn spawn_gateway(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let timeout = std::time::Duration::from_secs(30);
    tokio::spawn(llmux_server::serve(
        listener,
        router,
        timeout,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

/// Start the mock and a gateway whose config is `yaml` with `{mock}` replaced by the mock's
/// `/v1` base URL and `{mock_root}` by its root URL.
pub async fn start(yaml: &str) -> Harness {
    let (mock_router, mock) = llmux_mock::app(true);
    let mock_root = spawn(mock_router).await;
    let mock_url = format!("{mock_root}/v1");
    let yaml = yaml
        .replace("{mock}", &mock_url)
        .replace("{mock_root}", &mock_root);
    let env: HashMap<String, String> = HashMap::new();
    let loaded = llmux_config::load_str(&yaml, &env).unwrap_or_else(|d| panic!("config: {d:?}"));
    let (client, _) =
        llmux::Client::with_env(loaded.config, &env).unwrap_or_else(|e| panic!("{e}"));
    let state = AppState::new(client.clone());
    let telemetry = telemetry(&client.snapshot().config);
    state.telemetry.store(telemetry.clone());
    let url = spawn_gateway(build_router(state)).await;
    Harness {
        url,
        gov: None,
        clock: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        mock_url,
        mock,
        client,
        http: reqwest::Client::new(),
        telemetry,
    }
}

pub const BASIC: &str = r#"
model_list:
  - model_name: gpt-test
    litellm_params: {model: openai/mock-gpt, api_base: "{mock}", api_key: sk-upstream}
  - model_name: with-defaults
    litellm_params: {model: openai/mock-gpt, api_base: "{mock}", api_key: sk-upstream, temperature: 0.25, max_tokens: 99}
  - model_name: "mockp/*"
    litellm_params: {model: "openai/*", api_base: "{mock}", api_key: sk-upstream}
  - model_name: groq-strict
    litellm_params: {model: groq/llama, api_base: "{mock}", api_key: sk-upstream}
  - model_name: demo
    litellm_params: {model: mock/demo}
  - model_name: slow
    litellm_params: {model: openai/mock-gpt, api_base: "{mock}", api_key: k, timeout: 0.3, stream_timeout: 0.3}
  - model_name: dead
    litellm_params: {model: openai/x, api_base: "http://127.0.0.1:9/v1", api_key: k}
router_settings: {num_retries: 0}
"#;

impl Harness {
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Requests the mock received, oldest first.
    pub fn recorded(&self) -> Vec<llmux_mock::RecordedRequest> {
        self.mock.recorded.lock().unwrap().iter().cloned().collect()
    }

    pub fn last_upstream_body(&self) -> Value {
        let last = self.recorded().pop().expect("the mock received a request");
        serde_json::from_str(&last.body).unwrap()
    }

    pub fn stat(&self, name: &str) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.mock.stats;
        match name {
            "requests" => s.requests.load(Relaxed),
            "streams_started" => s.streams_started.load(Relaxed),
            "streams_completed" => s.streams_completed.load(Relaxed),
            "streams_cancelled" => s.streams_cancelled.load(Relaxed),
            "tokens_minted" => s.tokens_minted.load(Relaxed),
            _ => panic!("no stat {name}"),
        }
    }
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// Concatenated `delta.content` of chat chunks.
pub fn stream_text(payloads: &[String]) -> String {
    payloads
        .iter()
        .filter(|p| p.as_str() != "[DONE]")
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// The test service account (`tests/fixtures/credentials`) as a YAML-quoted inline
/// `vertex_credentials` value whose `token_uri` is the mock's Google token endpoint.
pub fn vertex_credentials_yaml() -> String {
    let path = format!(
        "{}/../../tests/fixtures/credentials/vertex-service-account.json",
        std::env::var("CARGO_MANIFEST_DIR").unwrap()
    );
    let mut sa: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    sa["token_uri"] = Value::String("{mock_root}/token".into());
    serde_json::to_string(&sa.to_string()).unwrap()
}

/// The store backends governance tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub const BACKENDS: [Db; 2] = [Db::Sqlite, Db::Postgres];

pub const MASTER: &str = "sk-master-test";

/// Like `start`, with governance on a fresh database of `db`, the master key `MASTER`, and a
/// clock the test controls (starting at the real time).
pub async fn start_governed(yaml: &str, db: Db) -> Harness {
    let (mock_router, mock) = llmux_mock::app(true);
    let mock_root = spawn(mock_router).await;
    let mock_url = format!("{mock_root}/v1");
    let yaml = yaml
        .replace("{mock}", &mock_url)
        .replace("{mock_root}", &mock_root);
    // A block-style `general_settings:` of the test's own gets the master key added to it.
    let yaml = if yaml.contains("\ngeneral_settings:\n") {
        yaml.replace(
            "\ngeneral_settings:\n",
            &format!("\ngeneral_settings:\n  master_key: {MASTER}\n"),
        )
    } else {
        format!("{yaml}\ngeneral_settings: {{master_key: {MASTER}}}\n")
    };
    let env: HashMap<String, String> = HashMap::new();
    let loaded = llmux_config::load_str(&yaml, &env).unwrap_or_else(|d| panic!("config: {d:?}"));
    let config = loaded.config.clone();
    let (client, _) =
        llmux::Client::with_env(loaded.config, &env).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap().keep();
    let url = match db {
        Db::Sqlite => llmux_store::testing::sqlite_url(&dir),
        Db::Postgres => llmux_store::testing::fresh_postgres_url().await,
    };
    let store = llmux_store::Store::open(&url).await.unwrap();
    let clock = Arc::new(std::sync::atomic::AtomicI64::new(llmux_store::now_ms()));
    let c = Arc::clone(&clock);
    let gov = llmux_governance::Governance::builder(store, &config)
        .clock(Arc::new(move || {
            c.load(std::sync::atomic::Ordering::SeqCst)
        }))
        .build();
    let state = AppState::new(client.clone())
        .with_governance(Arc::clone(&gov))
        .await
        .unwrap();
    let telemetry = telemetry(&config);
    state.telemetry.store(telemetry.clone());
    llmux_server::health::start_alerts(&state, &config).unwrap();
    if config.background_health_checks {
        llmux_server::health::spawn_background_checks(&state, config.health_check_interval);
    }
    let url = spawn_gateway(build_router(state)).await;
    Harness {
        url,
        gov: Some(gov),
        clock,
        mock_url,
        mock,
        client,
        http: reqwest::Client::new(),
        telemetry,
    }
}

impl Harness {
    /// POST JSON with a bearer key.
    pub async fn post_as(&self, key: &str, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// GET with a bearer key.
    pub async fn get_as(&self, key: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// GET with a bearer key; the answer's JSON.
    pub async fn get_json(&self, key: &str, path: &str) -> Value {
        self.get_as(key, path).await.json().await.unwrap()
    }

    /// A new key made by the master key (its secret).
    pub async fn new_key(&self, body: Value) -> String {
        self.admin("/key/generate", body).await["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// POST as the master key and return the JSON answer, asserting a 200.
    pub async fn admin(&self, path: &str, body: Value) -> Value {
        let r = self.post_as(MASTER, path, &body).await;
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{path}: {v}");
        v
    }

    /// A chat request with `key`.
    pub async fn chat_as(&self, key: &str, model: &str) -> reqwest::Response {
        self.post_as(
            key,
            "/v1/chat/completions",
            &serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
    }

    /// Wait until the spend writer has nothing queued (the writer lingers up to 100 ms).
    pub async fn flush_spend(&self) {
        let gov = self.gov.as_ref().expect("governed harness");
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            if gov.in_flight() == 0 && gov.writer.idle() {
                return;
            }
        }
        panic!(
            "spend writer did not drain: in flight {}, writer idle {}, counts {:?}",
            gov.in_flight(),
            gov.writer.idle(),
            gov.writer.counts()
        );
    }
}
