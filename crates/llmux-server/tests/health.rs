//! `GET /health` probes every deployment (LiteLLM's healthy / unhealthy endpoints), background
//! health checks take a failing deployment out of rotation, and alerts reach Slack and a webhook:
//! slow responses, cooldowns, budgets crossed, failing log sinks, deduplicated.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{start_governed, Db, MASTER};
use serde_json::{json, Value};

const MODELS: &str = r#"
model_list:
  - model_name: gpt
    litellm_params: {model: openai/mock-gpt, api_base: "{mock}", api_key: k}
  - model_name: emb
    litellm_params: {model: openai/mock-embed, api_base: "{mock}", api_key: k}
    model_info: {mode: embedding}
  - model_name: broken
    litellm_params: {model: openai/mock-gpt, api_base: "{mock}", api_key: k, extra_headers: {x-mock-status: "500"}}
  - model_name: "wild/*"
    litellm_params: {model: "openai/*", api_base: "{mock}", api_key: k}
"#;

#[tokio::test]
async fn health_probes_every_deployment_and_reports_the_failing_ones() {
    let h = start_governed(
        &format!("{MODELS}router_settings: {{num_retries: 0}}\n"),
        Db::Sqlite,
    )
    .await;
    let report = h.get_json(MASTER, "/health").await;
    assert_eq!(report["healthy_count"], 2, "{report}");
    assert_eq!(report["unhealthy_count"], 1, "{report}");
    let unhealthy = &report["unhealthy_endpoints"][0];
    assert_eq!(unhealthy["model_name"], "broken");
    assert_eq!(unhealthy["model"], "openai/mock-gpt");
    assert!(!unhealthy["error"].as_str().unwrap().is_empty());
    let names: Vec<&str> = report["healthy_endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["model_name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"gpt") && names.contains(&"emb"),
        "{names:?}"
    );
    // Each was asked what it serves: a one-token chat, an embedding.
    let recorded = h.mock.recorded.lock().unwrap().clone();
    assert!(recorded
        .iter()
        .any(|r| r.path.ends_with("/embeddings") && r.body.contains("ping")));
    assert!(recorded
        .iter()
        .any(|r| r.path.ends_with("/chat/completions") && r.body.contains("\"max_tokens\":1")));

    // One group only.
    let one = h.get_json(MASTER, "/health?model=gpt").await;
    assert_eq!(one["healthy_count"], 1);
    assert_eq!(one["unhealthy_count"], 0);

    // Probes cost money: admins only.
    let key = h.new_key(json!({"models": ["gpt"]})).await;
    assert_eq!(h.get_as(&key, "/health").await.status(), 403);
    assert_eq!(h.get_as("sk-wrong", "/health").await.status(), 401);
}

/// A receiver for alerts: each JSON body posted to it.
async fn alert_receiver() -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let state = Arc::clone(&got);
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, axum::Json(body): axum::Json<Value>| {
            let state = Arc::clone(&state);
            async move {
                state.lock().unwrap().push((uri.path().to_owned(), body));
                "ok"
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), got)
}

/// Wait until `check` holds for what the receiver got.
async fn until(
    got: &Mutex<Vec<(String, Value)>>,
    what: &str,
    check: impl Fn(&[(String, Value)]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if check(&got.lock().unwrap()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never arrived: {:?}",
            got.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn events(got: &[(String, Value)], event: &str) -> usize {
    got.iter()
        .filter(|(path, body)| path == "/webhook" && body["event"] == event)
        .count()
}

#[tokio::test]
async fn background_checks_cool_a_failing_deployment_and_alerts_reach_slack_and_a_webhook() {
    let (receiver, got) = alert_receiver().await;
    let yaml = format!(
        r#"{MODELS}
  - model_name: cheap
    litellm_params: {{model: openai/cheap, api_base: "{{mock}}", api_key: k, input_cost_per_token: 0.001, output_cost_per_token: 0.002}}
  - model_name: pair
    litellm_params: {{model: openai/mock-a, api_base: "{{mock}}", api_key: k}}
  - model_name: pair
    litellm_params: {{model: openai/mock-b, api_base: "{{mock}}", api_key: k}}
  - model_name: broken
    litellm_params: {{model: openai/mock-gpt, api_base: "{{mock}}", api_key: k}}
router_settings: {{num_retries: 0, allowed_fails: 0, cooldown_time: 30}}
litellm_settings:
  success_callback: ["generic_api"]
environment_variables:
  SLACK_WEBHOOK_URL: "{receiver}/slack"
  WEBHOOK_URL: "{receiver}/webhook"
  GENERIC_LOGGER_ENDPOINT: "http://127.0.0.1:9/nobody-listens"
general_settings:
  alerting: ["slack", "webhook"]
  alerting_threshold: 0.2
  background_health_checks: true
  health_check_interval: 1
"#
    );
    let h = start_governed(&yaml, Db::Sqlite).await;

    // The background check found `broken` failing: alerted, and out of rotation.
    until(&got, "the unhealthy alert", |g| {
        events(g, "deployment_unhealthy") >= 1
    })
    .await;
    let report = h.get_json(MASTER, "/health").await;
    assert!(report["last_checked"].as_f64().is_some(), "{report}");
    assert_eq!(report["unhealthy_count"], 1, "{report}");
    let failing = &report["unhealthy_endpoints"][0];
    assert_eq!(failing["model_name"], "broken");
    let deployments = h.get_json(MASTER, "/router/deployments").await;
    let deployments = deployments
        .as_array()
        .or_else(|| deployments["deployments"].as_array())
        .unwrap()
        .clone();
    let state = |id: &Value| {
        deployments
            .iter()
            .find(|d| d["id"] == *id)
            .cloned()
            .unwrap()
    };
    // The failing deployment is out of rotation; its group's healthy one is not. A group with
    // a single deployment (`gpt` here never fails) would have kept it.
    assert_eq!(state(&failing["model_id"])["healthy"], false, "{failing}");
    let broken_ids: Vec<Value> = deployments
        .iter()
        .filter(|d| d["model_name"] == "broken" && d["id"] != failing["model_id"])
        .map(|d| d["id"].clone())
        .collect();
    assert_eq!(state(&broken_ids[0])["healthy"], true);
    for _ in 0..4 {
        let r = h
            .post_as(
                MASTER,
                "/v1/chat/completions",
                &json!({"model": "broken", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(
            r.status(),
            200,
            "the group answers from its healthy deployment"
        );
    }

    // A slow response (the mock waits 300 ms; the threshold is 200 ms), alerted once.
    for _ in 0..2 {
        let r = h
            .post_as(
                MASTER,
                "/v1/chat/completions",
                &json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}],
                        "mock_options": {"latency_ms": 300}}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    until(&got, "the slow response alert", |g| {
        events(g, "slow_response") >= 1
    })
    .await;

    // A deployment that fails a request is cooled down (no allowed fails): alerted.
    let r = h
        .post_as(
            MASTER,
            "/v1/chat/completions",
            &json!({"model": "pair", "messages": [{"role": "user", "content": "hi"}],
                    "mock_options": {"status": 500}}),
        )
        .await;
    assert_eq!(r.status(), 500);
    until(&got, "the cooldown alert", |g| {
        events(g, "deployment_cooled_down") >= 1
    })
    .await;

    // A budget crossed: the soft budget and the budget itself.
    let key = h
        .new_key(json!({"key_alias": "spender", "soft_budget": 0.000001, "max_budget": 0.000002, "models": ["cheap"]}))
        .await;
    let r = h
        .post_as(
            &key,
            "/v1/chat/completions",
            &json!({"model": "cheap", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    until(&got, "the budget alerts", |g| {
        let budget = g
            .iter()
            .find(|(p, b)| p == "/webhook" && b["event"] == "budget_crossed");
        events(g, "soft_budget_crossed") >= 1 && budget.is_some_and(|(_, b)| b["name"] == "spender")
    })
    .await;

    // The log sink cannot deliver: alerted.
    until(&got, "the sink alert", |g| {
        events(g, "log_sink_failing") >= 1
    })
    .await;

    // Slack got the same alerts as text; nothing was repeated within the window.
    let got = got.lock().unwrap().clone();
    let slack: Vec<&str> = got
        .iter()
        .filter(|(p, _)| p == "/slack")
        .map(|(_, b)| b["text"].as_str().unwrap())
        .collect();
    assert!(
        slack
            .iter()
            .any(|t| t.contains("`broken`") || t.contains("health check")),
        "{slack:?}"
    );
    assert!(slack.iter().any(|t| t.contains("`spender`")), "{slack:?}");
    assert_eq!(events(&got, "slow_response"), 1, "deduplicated: {got:?}");
    assert_eq!(
        events(&got, "deployment_unhealthy"),
        1,
        "deduplicated: {got:?}"
    );
}

#[tokio::test]
async fn a_reload_that_changes_alerting_health_checks_or_the_cache_says_they_apply_at_the_next_start(
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let base =
        "model_list:\n  - model_name: m\n    litellm_params: {model: mock/m, mock_response: hi}\n";
    std::fs::write(&path, base).unwrap();
    let env: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let loaded = llmux_config::load_str(base, &env).unwrap();
    let (client, _) = llmux::Client::with_env(loaded.config, &env).unwrap();
    let state = llmux_server::AppState::new(client);
    llmux_server::reload::started_from(&state, &path);
    std::fs::write(
        &path,
        format!(
            "{base}general_settings:\n  alerting: [webhook]\n  background_health_checks: true\n\
             litellm_settings:\n  cache: true\n"
        ),
    )
    .unwrap();
    let warnings = match llmux_server::reload::reload(&state, &path).await {
        Ok(llmux_server::reload::Reloaded::Applied(warnings)) => warnings,
        other => panic!("{other:?}"),
    };
    let paths: Vec<String> = warnings.iter().map(|w| w.path.clone()).collect();
    assert!(
        paths.contains(&"general_settings.alerting".to_owned()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"general_settings.background_health_checks".to_owned()),
        "{paths:?}"
    );
    assert!(!paths.contains(&"general_settings.health_check_interval".to_owned()));
    assert!(
        paths.contains(&"litellm_settings.cache_params".to_owned()),
        "{paths:?}"
    );
    assert!(
        state.client.snapshot().cache.is_none(),
        "the running (absent) cache is kept"
    );
}

/// With a fleet's Redis, an alert about one subject is sent once for the whole fleet: the
/// instance that claims it in Redis sends it, the others do not. Without one, each instance
/// sends its own.
#[tokio::test]
async fn a_fleet_sends_an_alert_once() {
    use llmux_telemetry::alerts::{Alert, Alerter};
    let (receiver, got) = alert_receiver().await;
    let redis = std::env::var("LLMUX_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!("LLMUX_TEST_REDIS_URL is not set: run the tests through scripts/test.sh, which starts Redis")
    });
    let env: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let config = |fleet: bool| {
        let yaml = format!(
            "model_list: []\ngeneral_settings: {{alerting: [webhook]}}\nenvironment_variables: {{WEBHOOK_URL: \"{receiver}/webhook\"}}\n{}",
            if fleet {
                format!("router_settings: {{redis_url: \"{redis}\"}}\n")
            } else {
                String::new()
            }
        );
        llmux_config::load_str(&yaml, &env).unwrap().config
    };
    // A subject of this run's own (the Redis is shared with other tests).
    let id = llmux::new_request_id();
    let alert = || Alert::Budget {
        kind: "Key".into(),
        id: id.clone(),
        name: None,
        spend: 2.0,
        budget: 1.0,
        soft: false,
    };
    for fleet in [true, false] {
        let instances: Vec<_> = (0..3)
            .map(|_| Alerter::from_config(&config(fleet), &env).unwrap().unwrap())
            .collect();
        got.lock().unwrap().clear();
        for instance in &instances {
            assert!(instance.send(alert()), "each instance's own window is open");
        }
        let expected = if fleet { 1 } else { 3 };
        until(&got, "the alerts", |g| {
            events(g, "budget_crossed") >= expected
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            events(&got.lock().unwrap(), "budget_crossed"),
            expected,
            "fleet: {fleet}"
        );
    }
}
