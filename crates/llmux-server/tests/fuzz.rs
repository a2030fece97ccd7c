//! Fuzzing the management API by property at scale: arbitrary JSON (and bytes) to every route
//! of `management::ROUTES`, as the master key and as an internal user, never earns a 5xx
//! and every refusal has the OpenAI error shape. Cases: `LLMUX_FUZZ_CASES` (64 by default;
//! `scripts/test.sh` runs a larger batch).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{start_governed, Db, Harness, MASTER};
use llmux_server::management::ROUTES;
use proptest::prelude::*;
use serde_json::{json, Value};

fn cases() -> u32 {
    std::env::var("LLMUX_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(64)
}

const MODELS: &str = "model_list: [{model_name: m, litellm_params: {model: mock/m}}]";

const KEYS: &str = "[a-z_]{1,10}|key|keys|key_alias|key_aliases|user_id|user_ids|team_id|team_ids|organization_id|organization_ids|budget_id|budgets|id|models|max_budget|budget_duration|rpm_limit|tpm_limit|max_parallel_requests|duration|spend|metadata|tags|blocked|aliases|allowed_routes|user_role|members_with_roles|member|role|model_name|litellm_params|model_info|model|new_key|admins|members|soft_budget|model_rpm_limit|permissions";

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[ -~]{0,12}".prop_map(Value::String),
        Just(json!("sk-1")),
        Just(json!("proxy_admin")),
        Just(json!("30d")),
        Just(json!("os.environ/HOME")),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(KEYS, inner, 0..7)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => arb_json().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn shaped(status: u16, text: &str) -> bool {
    if status < 400 {
        return true;
    }
    serde_json::from_str::<Value>(text)
        .ok()
        .is_some_and(|v| v["error"]["message"].is_string() && v["error"]["type"].is_string())
}

async fn send(h: &Harness, key: &str, method: &str, path: &str, body: Vec<u8>) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let r = h
        .http
        .request(method, format!("{}{path}", h.url))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

#[test]
fn arbitrary_management_bodies_never_fail_server_side() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (h, user_key) = runtime.block_on(async {
        let h = start_governed(MODELS, Db::Sqlite).await;
        let user = h
            .admin(
                "/user/new",
                json!({"user_id": "fuzzer", "user_role": "internal_user"}),
            )
            .await;
        let key = user["key"].as_str().unwrap().to_owned();
        (h, key)
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let routes: Vec<(&str, &str)> = ROUTES
        .iter()
        .flat_map(|(p, ms)| ms.iter().map(move |m| (*p, *m)))
        .collect();
    runner
        .run(
            &(
                0..routes.len(),
                arb_body(),
                any::<bool>(),
                "[a-zA-Z0-9=&%_.-]{0,24}",
            ),
            |(route, body, as_master, query)| {
                let (path, method) = routes[route];
                let path = format!("{}?{query}", path.replace("{key}", "sk-fuzz"));
                let key = if as_master { MASTER } else { user_key.as_str() };
                let (status, text) = runtime.block_on(send(&h, key, method, &path, body.clone()));
                prop_assert!(
                    status < 500,
                    "{method} {path} {} -> {status} {text}",
                    String::from_utf8_lossy(&body)
                );
                prop_assert!(shaped(status, &text), "{method} {path} -> {status} {text}");
                Ok(())
            },
        )
        .unwrap();
}
