//! `llmux::Client` built with governance: requests made through `Client::with_api_key` are
//! authenticated, held to the key's models, aliases, budget and rate limits, and their spend is
//! recorded, as the HTTP server does it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use llmux::types::openai::{ChatCompletionRequest, ChatMessage};
use llmux_governance::keys::hash_key;
use llmux_governance::Governance;
use llmux_store::{Kind, Object, Store};
use serde_json::json;

const CONFIG: &str = "
model_list:
  - model_name: demo
    litellm_params: {model: mock/demo, mock_response: pong, input_cost_per_token: 0.001, output_cost_per_token: 0.002}
  - model_name: other
    litellm_params: {model: mock/other, mock_response: other}
";

async fn governed_client(dir: &std::path::Path) -> (llmux::Client, Arc<Governance>) {
    let loaded = llmux_config::load_str(CONFIG, &llmux_config::ProcessEnv).unwrap();
    let store = Store::open(&llmux_store::testing::sqlite_url(dir))
        .await
        .unwrap();
    let doc = json!({
        "models": ["demo"],
        "aliases": {"fast": "demo"},
        "max_budget": 10.0,
        "rpm_limit": 2,
    });
    let serde_json::Value::Object(doc) = doc else {
        unreachable!()
    };
    assert!(store
        .insert(&Object::new(Kind::Key, hash_key("sk-library"), doc))
        .await
        .unwrap());
    let gov = Governance::builder(store, &loaded.config).build();
    let (client, _) = llmux::Client::builder(loaded.config)
        .gate(gov.gate())
        .build()
        .unwrap();
    (client, gov)
}

fn chat(model: &str) -> ChatCompletionRequest {
    ChatCompletionRequest::new(model, vec![ChatMessage::user("ping")])
}

#[tokio::test]
async fn requests_made_with_a_key_are_governed_like_the_servers() {
    let dir = tempfile::tempdir().unwrap();
    let (client, gov) = governed_client(dir.path()).await;
    let keyed = client.with_api_key("sk-library");

    // The key may use `demo`, also through its alias `fast`.
    assert_eq!(keyed.chat(&chat("demo")).await.unwrap().text(), "pong");
    assert_eq!(keyed.chat(&chat("fast")).await.unwrap().text(), "pong");
    // Not `other`, which its model list does not name.
    let refused = keyed.chat(&chat("other")).await.unwrap_err();
    assert_eq!(refused.status, 403);
    // rpm_limit 2: the third request in the minute is refused.
    let limited = keyed.chat(&chat("demo")).await.unwrap_err();
    assert_eq!(limited.status, 429, "{limited:?}");
    assert_eq!(limited.body.code.as_deref(), Some("rate_limit_exceeded"));

    // An unknown key is not let in.
    let unknown = client
        .with_api_key("sk-nobody")
        .chat(&chat("demo"))
        .await
        .unwrap_err();
    assert_eq!(unknown.status, 401);

    // The two answered requests were settled: their cost counts against the key's budget and
    // their spend rows are written.
    let owner = (Kind::Key, hash_key("sk-library"));
    let (spent, reserved) = gov.spend_and_reserved(&owner).await;
    assert!(spent > 0.0, "spend settled: {spent}");
    assert_eq!(reserved, 0.0);
    gov.shutdown().await;
    let logs = gov
        .store
        .spend_logs(&llmux_store::SpendFilter::default())
        .await
        .unwrap();
    let answered: Vec<_> = logs.iter().filter(|r| r.status == "success").collect();
    assert_eq!(answered.len(), 2, "{logs:?}");
    assert!(answered
        .iter()
        .all(|r| r.api_key == owner.1 && r.model_group == "demo"));

    // The plain client is the operator's own: not governed.
    assert_eq!(client.chat(&chat("other")).await.unwrap().text(), "other");
}

#[tokio::test]
async fn a_client_without_governance_refuses_keyed_requests() {
    let (client, _) = llmux::Client::builder(
        llmux_config::load_str(CONFIG, &llmux_config::ProcessEnv)
            .unwrap()
            .config,
    )
    .build()
    .unwrap();
    let refused = client
        .with_api_key("sk-library")
        .chat(&chat("demo"))
        .await
        .unwrap_err();
    assert_eq!(refused.status, 401);
    assert_eq!(refused.body.code.as_deref(), Some("governance_disabled"));
}

/// Counts the requests it is told about.
#[derive(Default)]
struct Counting(std::sync::atomic::AtomicUsize);

impl llmux::RequestHook for Counting {
    fn finished(&self, _: &llmux::RequestLog) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A keyed caller's own request id, hook and tags: the id is kept beside llmux's own (it never
/// keys the spend row, which a reused id would otherwise collapse), its hook is told as well as
/// the gate's, and its tags are recorded.
#[tokio::test]
async fn a_keyed_callers_options_are_kept_without_being_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (client, gov) = governed_client(dir.path()).await;
    let keyed = client.with_api_key("sk-library");
    let hook = Arc::new(Counting::default());
    let body = bytes::Bytes::from_static(
        br#"{"model":"demo","messages":[{"role":"user","content":"hi"}]}"#,
    );
    for _ in 0..2 {
        let options = llmux::RequestOptions {
            request_id: "same-id".into(),
            tags: vec!["team-a".into()],
            hook: Some(Arc::clone(&hook) as Arc<dyn llmux::RequestHook>),
            ..llmux::RequestOptions::default()
        };
        keyed
            .execute(llmux::Operation::Chat, body.clone(), options)
            .await
            .unwrap();
    }
    assert_eq!(hook.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    gov.shutdown().await;
    let logs = gov
        .store
        .spend_logs(&llmux_store::SpendFilter::default())
        .await
        .unwrap();
    assert_eq!(logs.len(), 2, "two rows, not one: {logs:?}");
    assert_ne!(logs[0].request_id, logs[1].request_id);
    for row in &logs {
        assert_ne!(row.request_id, "same-id");
        assert_eq!(row.client_request_id, "same-id");
        assert_eq!(row.tags, ["team-a"]);
    }
    let stored = gov
        .store
        .get(Kind::Key, &hash_key("sk-library"))
        .await
        .unwrap()
        .unwrap();
    let per_request = logs[0].spend;
    assert!(per_request > 0.0);
    assert!(
        (stored.spend - 2.0 * per_request).abs() < 1e-12,
        "both requests' spend is stored: {} vs 2 x {per_request}",
        stored.spend
    );
}
