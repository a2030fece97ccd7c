//! Prometheus metrics under LiteLLM's names, checked against known traffic: request counts by
//! status, failures by exception class, latency histograms, tokens and spend per key and model
//! group, deployment series; who may scrape them; and the exposition checked by `promtool`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{start_governed, Db, Harness, MASTER};
use serde_json::{json, Value};

const MODELS: &str = r#"
model_list:
  - model_name: cheap
    litellm_params: {model: openai/cheap, api_base: "{mock}", api_key: k, input_cost_per_token: 0.001, output_cost_per_token: 0.002}
router_settings: {num_retries: 0}
"#;

/// The value of the one sample of `name` whose labels include every `label="value"` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?} matches {} samples",
        matching.len()
    );
    matching.first().copied()
}

/// The metrics page, as an admin scrapes it.
async fn scrape(h: &Harness) -> String {
    h.http
        .get(format!("{}/metrics", h.url))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `promtool check metrics` accepts `text` (Debian's `prometheus` package; scripts/test.sh
/// installs it).
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's `prometheus` package; scripts/test.sh installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[tokio::test]
async fn known_traffic_is_counted_under_litellms_names_and_labels() {
    let h = start_governed(MODELS, Db::Sqlite).await;
    let team = h
        .admin("/team/new", json!({"team_alias": "search-team"}))
        .await["team_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let generated = h
        .admin(
            "/key/generate",
            json!({"key_alias": "search-bot", "team_id": team, "rpm_limit": 3, "max_budget": 10.0}),
        )
        .await;
    let key = generated["key"].as_str().unwrap().to_owned();
    let hash = generated["token"].as_str().unwrap().to_owned();

    let (mut prompt, mut completion, mut cost) = (0.0, 0.0, 0.0);
    for _ in 0..3 {
        let r = h.chat_as(&key, "cheap").await;
        assert_eq!(r.status(), 200);
        cost += r.headers()["x-litellm-response-cost"]
            .to_str()
            .unwrap()
            .parse::<f64>()
            .unwrap();
        let body: Value = r.json().await.unwrap();
        prompt += body["usage"]["prompt_tokens"].as_f64().unwrap();
        completion += body["usage"]["completion_tokens"].as_f64().unwrap();
    }
    // The fourth request in the minute is refused by the key's rpm limit.
    assert_eq!(h.chat_as(&key, "cheap").await.status(), 429);

    // Who may scrape: nobody without a key, not a user's key, an admin.
    let url = format!("{}/metrics", h.url);
    assert_eq!(h.http.get(&url).send().await.unwrap().status(), 401);
    let user_key = h.new_key(json!({})).await;
    let as_user = h
        .http
        .get(&url)
        .bearer_auth(&user_key)
        .send()
        .await
        .unwrap();
    assert_eq!(as_user.status(), 403);
    let text = h
        .http
        .get(&url)
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let caller = [
        ("hashed_api_key", hash.as_str()),
        ("api_key_alias", "search-bot"),
        ("team", team.as_str()),
        ("team_alias", "search-team"),
        ("requested_model", "cheap"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut labels: Vec<(&str, &str)> = caller.to_vec();
        labels.extend_from_slice(extra);
        labels
    };
    let total = "litellm_proxy_total_requests_metric_total";
    assert_eq!(
        sample(
            &text,
            total,
            &with(&[("status_code", "200"), ("route", "/chat/completions")])
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, total, &with(&[("status_code", "429")])),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "litellm_proxy_failed_requests_metric_total",
            &with(&[
                ("exception_status", "429"),
                ("exception_class", "RateLimitError")
            ])
        ),
        Some(1.0)
    );
    let served = with(&[("model_group", "cheap"), ("model", "openai/cheap")]);
    assert_eq!(
        sample(&text, "litellm_input_tokens_metric_total", &served),
        Some(prompt)
    );
    assert_eq!(
        sample(&text, "litellm_output_tokens_metric_total", &served),
        Some(completion)
    );
    assert_eq!(
        sample(&text, "litellm_total_tokens_metric_total", &served),
        Some(prompt + completion)
    );
    let spend = sample(&text, "litellm_spend_metric_total", &served).unwrap();
    assert!((spend - cost).abs() < 1e-9, "{spend} vs {cost}");
    for histogram in [
        "litellm_request_total_latency_metric_count",
        "litellm_llm_api_latency_metric_count",
    ] {
        assert_eq!(sample(&text, histogram, &served), Some(3.0), "{histogram}");
    }
    // LiteLLM's buckets, in seconds.
    assert!(text.contains("litellm_request_total_latency_metric_bucket{"));
    assert!(text.contains("le=\"0.005\""));
    assert!(text.contains("le=\"600.0\""));
    let deployment = [
        ("requested_model", "cheap"),
        ("litellm_model_name", "openai/cheap"),
        ("api_provider", "openai"),
        ("hashed_api_key", hash.as_str()),
    ];
    assert_eq!(
        sample(
            &text,
            "litellm_deployment_success_responses_total",
            &deployment
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "litellm_deployment_total_requests_total",
            &deployment
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "litellm_deployment_state",
            &[("litellm_model_name", "openai/cheap")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "llmux_admission_refusals_total",
            &[("reason", "rate_limit")]
        ),
        Some(1.0)
    );
    // Budgets as governance counts them: the key's 10 less what it spent; the team has none.
    let key_budget = [
        ("hashed_api_key", hash.as_str()),
        ("api_key_alias", "search-bot"),
    ];
    assert_eq!(
        sample(&text, "litellm_api_key_max_budget_metric", &key_budget),
        Some(10.0)
    );
    let remaining = sample(
        &text,
        "litellm_remaining_api_key_budget_metric",
        &key_budget,
    )
    .unwrap();
    assert!(
        (remaining - (10.0 - cost)).abs() < 1e-9,
        "{remaining} vs {}",
        10.0 - cost
    );
    let team_budget = [("team", team.as_str()), ("team_alias", "search-team")];
    assert_eq!(
        sample(&text, "litellm_remaining_team_budget_metric", &team_budget),
        Some(f64::INFINITY),
        "{text}"
    );
    assert_eq!(
        sample(&text, "litellm_team_max_budget_metric", &team_budget),
        None
    );
    // Keys are named by their hash and alias, never by the secret.
    assert!(!text.contains(&key), "the secret key is in the metrics");
    // Prometheus's classic text by default (what promtool reads); OpenMetrics on request.
    assert!(!text.contains("# EOF"));
    assert!(text.contains("# TYPE litellm_spend_metric_total counter"));
    let openmetrics = h
        .http
        .get(&url)
        .bearer_auth(MASTER)
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(openmetrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(openmetrics.text().await.unwrap().ends_with("# EOF\n"));

    // The exposition passes Prometheus's own checker.
    promtool_check(&text);
}

#[tokio::test]
async fn past_the_key_cap_further_keys_are_counted_as_other() {
    let yaml = format!("{MODELS}llmux_settings: {{metrics_max_keys: 1}}\n");
    let h = start_governed(&yaml, Db::Sqlite).await;
    let first = h.new_key(json!({"key_alias": "first"})).await;
    let second = h.new_key(json!({"key_alias": "second"})).await;
    assert_eq!(h.chat_as(&first, "cheap").await.status(), 200);
    assert_eq!(h.chat_as(&second, "cheap").await.status(), 200);
    assert_eq!(h.chat_as(&second, "cheap").await.status(), 200);
    let text = scrape(&h).await;
    let total = "litellm_proxy_total_requests_metric_total";
    assert_eq!(
        sample(&text, total, &[("api_key_alias", "first")]),
        Some(1.0)
    );
    assert_eq!(sample(&text, total, &[("api_key_alias", "second")]), None);
    assert_eq!(
        sample(&text, total, &[("hashed_api_key", "other")]),
        Some(2.0),
        "{text}"
    );
}

/// What a client names cannot grow the series: a model that routes nowhere is `unknown`.
#[tokio::test]
async fn model_names_that_route_nowhere_are_one_series() {
    let h = start_governed(MODELS, Db::Sqlite).await;
    for model in ["no-such-model-1", "no-such-model-2", "cheap"] {
        h.chat_as(MASTER, model).await;
    }
    let text = scrape(&h).await;
    let total = "litellm_proxy_total_requests_metric_total";
    assert_eq!(
        sample(
            &text,
            total,
            &[("requested_model", "unknown"), ("status_code", "404")]
        ),
        Some(2.0),
        "{text}"
    );
    assert!(!text.contains("no-such-model"));
    assert_eq!(
        sample(
            &text,
            total,
            &[("requested_model", "cheap"), ("status_code", "200")]
        ),
        Some(1.0)
    );
}

/// A name a key's holder chose cannot end its label value and write samples of its own: it is
/// escaped, and the page still passes promtool.
#[tokio::test]
async fn a_hostile_alias_is_escaped() {
    let h = start_governed(MODELS, Db::Sqlite).await;
    let alias = r#"evil"} litellm_spend_metric_total{hashed_api_key="victim"} 1e9 \ x"#;
    let key = h.new_key(json!({"key_alias": alias})).await;
    assert_eq!(h.chat_as(&key, "cheap").await.status(), 200);
    let text = scrape(&h).await;
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("litellm_spend_metric_total{hashed_api_key=\"victim\"")),
        "{text}"
    );
    assert!(text.contains(r#"api_key_alias="evil\"} litellm_spend_metric_total{hashed_api_key=\"victim\"} 1e9 \\ x""#), "{text}");
    promtool_check(&text);
}

/// Retries and fallbacks are counted (LiteLLM's fallback counters, llmux's retries), and the
/// upstream's reported rate-limit state becomes LiteLLM's remaining gauges.
#[tokio::test]
async fn retries_fallbacks_and_upstream_limits_are_counted() {
    // `down` has two deployments nobody listens on: one retry (on the other deployment), then
    // a fallback to `cheap`, which answers. `doomed` falls back to `down`, which fails again.
    let yaml = r#"
model_list:
  - model_name: cheap
    litellm_params: {model: openai/cheap, api_base: "{mock}", api_key: k}
  - model_name: down
    litellm_params: {model: openai/down-a, api_base: "http://127.0.0.1:9/v1", api_key: k}
  - model_name: down
    litellm_params: {model: openai/down-b, api_base: "http://127.0.0.1:9/v1", api_key: k}
  - model_name: doomed
    litellm_params: {model: openai/doomed, api_base: "http://127.0.0.1:9/v1", api_key: k}
router_settings:
  num_retries: 1
  allowed_fails: 100
  fallbacks: [{down: [cheap]}, {doomed: [down]}]
"#;
    let h = start_governed(yaml, Db::Sqlite).await;
    let key = h.new_key(json!({"key_alias": "falls"})).await;
    let served = h.chat_as(&key, "down").await;
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()["x-litellm-attempted-fallbacks"],
        "1",
        "{:?}",
        served.headers()
    );
    let failed = h.chat_as(&key, "doomed").await;
    assert!(failed.status().is_server_error(), "{}", failed.status());

    let text = scrape(&h).await;
    let ok = sample(
        &text,
        "litellm_deployment_successful_fallbacks_total",
        &[
            ("requested_model", "down"),
            ("fallback_model", "cheap"),
            ("api_key_alias", "falls"),
            ("exception_class", "Openai.ServiceUnavailableError"),
        ],
    );
    assert_eq!(ok, Some(1.0), "{text}");
    let failed = sample(
        &text,
        "litellm_deployment_failed_fallbacks_total",
        &[("requested_model", "doomed"), ("fallback_model", "down")],
    );
    assert_eq!(failed, Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "litellm_deployment_successful_fallbacks_total",
            &[("requested_model", "doomed")]
        ),
        None
    );
    // Retries count by what the client asked for: `down` retried once; `doomed` once in its
    // own group and once more in `down`, its fallback.
    let retries = |model| sample(&text, "llmux_retries_total", &[("requested_model", model)]);
    assert_eq!(retries("down"), Some(1.0), "{text}");
    assert_eq!(retries("doomed"), Some(2.0), "{text}");

    // The mock reports 9999 requests and 999000 tokens left.
    let remaining = |name| {
        sample(
            &text,
            name,
            &[("model_group", "cheap"), ("api_key_alias", "falls")],
        )
    };
    assert_eq!(remaining("litellm_remaining_requests_metric"), Some(9999.0));
    assert_eq!(
        remaining("litellm_remaining_tokens_metric"),
        Some(999_000.0)
    );
    promtool_check(&text);
}
