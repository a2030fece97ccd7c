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
    /// Mock base URL including `/v1`.
    pub mock_url: String,
    pub mock: Arc<MockState>,
    pub client: llmux::Client,
    pub http: reqwest::Client,
}

async fn spawn(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
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
    let url = spawn(build_router(AppState::new(client.clone()))).await;
    Harness {
        url,
        mock_url,
        mock,
        client,
        http: reqwest::Client::new(),
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
