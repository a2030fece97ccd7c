//! Router resilience end to end: several mock upstreams with injected faults behind one gateway;
//! each test checks what the client received, which upstreams were called, and the attempt headers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmux_mock::MockState;
use llmux_server::{build_router, AppState};
use serde_json::{json, Value};

struct Fleet {
    client: llmux::Client,
    url: String,
    mocks: Vec<(String, Arc<MockState>)>,
    http: reqwest::Client,
}

async fn spawn(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// `mocks` upstreams; `{m0}`, `{m1}`, ... in `yaml` become their `/v1` base URLs.
async fn fleet(mocks: usize, yaml: &str) -> Fleet {
    let mut started = Vec::new();
    let mut yaml = yaml.to_owned();
    for i in 0..mocks {
        let (router, state) = llmux_mock::app(true);
        let url = format!("{}/v1", spawn(router).await);
        yaml = yaml.replace(&format!("{{m{i}}}"), &url);
        started.push((url, state));
    }
    let env: HashMap<String, String> = HashMap::new();
    let loaded = llmux_config::load_str(&yaml, &env).unwrap_or_else(|d| panic!("{d:?}"));
    let (client, diags) =
        llmux::Client::with_env(loaded.config, &env).unwrap_or_else(|e| panic!("{e}"));
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    let url = spawn(build_router(AppState::new(client.clone()))).await;
    Fleet {
        url,
        client,
        mocks: started,
        http: reqwest::Client::new(),
    }
}

impl Fleet {
    fn calls(&self, i: usize) -> u64 {
        self.mocks[i].1.stats.requests.load(Ordering::Relaxed)
    }

    fn fail(&self, i: usize, knobs: Value) {
        self.mocks[i].1.set_defaults(knobs);
    }

    async fn chat(&self, body: Value) -> (u16, reqwest::header::HeaderMap, String) {
        self.chat_with(body, &[]).await
    }

    async fn chat_with(
        &self,
        mut body: Value,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, String) {
        if body.get("messages").is_none() {
            body["messages"] = json!([{"role": "user", "content": "hi"}]);
        }
        let mut request = self
            .http
            .post(format!("{}/v1/chat/completions", self.url))
            .json(&body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.text().await.unwrap())
    }

    async fn deployments(&self) -> Value {
        self.http
            .get(format!("{}/router/deployments", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn header(h: &reqwest::header::HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_429_storm_on_one_of_three_shifts_traffic_and_it_returns_after_cooldown() {
    let f = fleet(
        3,
        r#"
model_list:
  - {model_name: g, litellm_params: {model: openai/a, api_base: "{m0}", api_key: k}, model_info: {id: dep-a}}
  - {model_name: g, litellm_params: {model: openai/b, api_base: "{m1}", api_key: k}, model_info: {id: dep-b}}
  - {model_name: g, litellm_params: {model: openai/c, api_base: "{m2}", api_key: k}, model_info: {id: dep-c}}
router_settings: {cooldown_time: 1, num_retries: 2}
"#,
    )
    .await;
    f.fail(0, json!({"status": 429}));
    for _ in 0..30 {
        let (status, _, _) = f.chat(json!({"model": "g"})).await;
        assert_eq!(status, 200, "a healthy deployment always answers");
    }
    assert!(
        f.calls(0) <= 2,
        "the rate-limited deployment is cooled at once: {} calls",
        f.calls(0)
    );
    assert_eq!(f.calls(1) + f.calls(2), 30);
    let state = f.deployments().await;
    let a = state["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "dep-a")
        .unwrap();
    assert_eq!(a["healthy"], false);
    assert_eq!(a["last_failure"], "rate_limited");
    assert!(a["cooling_for_seconds"].as_f64().unwrap() > 0.0);

    // It recovers; after the cooldown a probe succeeds and traffic returns.
    f.fail(0, json!({}));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = f.calls(0);
    for _ in 0..30 {
        let (status, _, _) = f.chat(json!({"model": "g"})).await;
        assert_eq!(status, 200);
    }
    assert!(
        f.calls(0) - before >= 3,
        "traffic returned to the recovered deployment: {}",
        f.calls(0) - before
    );
    let state = f.deployments().await;
    assert!(state["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["healthy"] == true));
}

#[tokio::test]
async fn server_errors_retry_on_another_deployment_and_report_it() {
    let f = fleet(
        2,
        r#"
model_list:
  - {model_name: g, litellm_params: {model: openai/a, api_base: "{m0}", api_key: k, order: 1}}
  - {model_name: g, litellm_params: {model: openai/b, api_base: "{m1}", api_key: k, order: 2}}
router_settings: {num_retries: 1}
"#,
    )
    .await;
    f.fail(0, json!({"status": 500}));
    let (status, headers, _) = f.chat(json!({"model": "g"})).await;
    assert_eq!(status, 200);
    assert_eq!((f.calls(0), f.calls(1)), (1, 1));
    assert_eq!(header(&headers, "x-litellm-attempted-retries"), "1");
    assert_eq!(header(&headers, "x-llmux-attempted-retries"), "1");
    assert_eq!(header(&headers, "x-litellm-attempted-fallbacks"), "0");

    // Per-request override: no retries.
    // One 500 is within allowed_fails, so the order-1 deployment is still first in line.
    let (status, headers, body) = f
        .chat_with(json!({"model": "g"}), &[("x-litellm-num-retries", "0")])
        .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!((f.calls(0), f.calls(1)), (2, 1));
    assert_eq!(header(&headers, "x-litellm-attempted-retries"), "0");
}

#[tokio::test]
async fn connection_refused_fails_over_without_waiting() {
    let f = fleet(
        1,
        r#"
model_list:
  - {model_name: g, litellm_params: {model: openai/dead, api_base: "http://127.0.0.1:9/v1", api_key: k, order: 1}}
  - {model_name: g, litellm_params: {model: openai/ok, api_base: "{m0}", api_key: k, order: 2}}
"#,
    )
    .await;
    let started = Instant::now();
    let (status, headers, _) = f.chat(json!({"model": "g"})).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-litellm-attempted-retries"), "1");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "another healthy deployment is tried before any backoff"
    );
}

#[tokio::test]
async fn a_slow_first_byte_times_out_and_the_stream_comes_from_elsewhere() {
    let f = fleet(
        2,
        r#"
model_list:
  - {model_name: g, litellm_params: {model: openai/slow, api_base: "{m0}", api_key: k, order: 1, stream_timeout: 0.3}}
  - {model_name: g, litellm_params: {model: openai/fast, api_base: "{m1}", api_key: k, order: 2}}
router_settings: {num_retries: 1}
"#,
    )
    .await;
    f.fail(0, json!({"ttfb_ms": 3000}));
    let started = Instant::now();
    let (status, headers, body) = f.chat(json!({"model": "g", "stream": true})).await;
    assert_eq!(status, 200);
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert!(body.contains("tok19"));
    assert_eq!(header(&headers, "x-litellm-attempted-retries"), "1");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn context_window_fallback_happens_before_any_upstream_call() {
    let f = fleet(
        2,
        r#"
model_list:
  - {model_name: small, litellm_params: {model: openai/small, api_base: "{m0}", api_key: k}, model_info: {max_input_tokens: 50}}
  - {model_name: big, litellm_params: {model: openai/big, api_base: "{m1}", api_key: k}, model_info: {max_input_tokens: 100000}}
  - {model_name: alone, litellm_params: {model: openai/small, api_base: "{m0}", api_key: k}, model_info: {max_input_tokens: 50}}
router_settings:
  enable_pre_call_checks: true
  context_window_fallbacks: [{small: [big]}]
"#,
    )
    .await;
    let long = "lorem ipsum dolor sit amet ".repeat(100);
    let (status, headers, _) = f
        .chat(json!({"model": "small", "messages": [{"role": "user", "content": long}]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(f.calls(0), 0, "the small model was never called");
    assert_eq!(f.calls(1), 1);
    assert_eq!(header(&headers, "x-llmux-model-group"), "big");
    assert_eq!(header(&headers, "x-litellm-attempted-fallbacks"), "1");

    let (status, _, body) = f
        .chat(json!({"model": "alone", "messages": [{"role": "user", "content": long}]}))
        .await;
    assert_eq!(status, 400);
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["code"], "context_length_exceeded");
    assert_eq!(f.calls(0), 0);

    let (status, _, _) = f
        .chat(json!({"model": "small", "messages": [{"role": "user", "content": "short"}]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(f.calls(0), 1, "a prompt that fits goes to the small model");
}

#[tokio::test]
async fn an_upstream_context_error_uses_the_context_window_fallbacks() {
    let f = fleet(
        2,
        r#"
model_list:
  - {model_name: small, litellm_params: {model: openai/small, api_base: "{m0}", api_key: k}}
  - {model_name: big, litellm_params: {model: openai/big, api_base: "{m1}", api_key: k}}
router_settings:
  context_window_fallbacks: [{small: [big]}]
"#,
    )
    .await;
    let body = r#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    f.fail(0, json!({"status": 400, "error_body": body}));
    let (status, headers, _) = f.chat(json!({"model": "small"})).await;
    assert_eq!(status, 200);
    assert_eq!(
        (f.calls(0), f.calls(1)),
        (1, 1),
        "context errors are not retried on the same group"
    );
    assert_eq!(header(&headers, "x-llmux-model-group"), "big");
}

#[tokio::test]
async fn fallbacks_per_config_per_request_and_disabled() {
    let f = fleet(
        3,
        r#"
model_list:
  - {model_name: a, litellm_params: {model: openai/a, api_base: "{m0}", api_key: k}}
  - {model_name: b, litellm_params: {model: openai/b, api_base: "{m1}", api_key: k}}
  - {model_name: c, litellm_params: {model: openai/c, api_base: "{m2}", api_key: k}}
router_settings:
  num_retries: 0
  disable_cooldowns: true
  fallbacks: [{a: [b]}]
"#,
    )
    .await;
    f.fail(0, json!({"status": 503}));
    let (status, headers, _) = f.chat(json!({"model": "a"})).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-llmux-model-group"), "b");
    assert_eq!(header(&headers, "x-litellm-attempted-fallbacks"), "1");
    assert_eq!(f.calls(1), 1);

    let (status, _, _) = f.chat(json!({"model": "a", "fallbacks": ["c"]})).await;
    assert_eq!(status, 200);
    assert_eq!(
        f.calls(2),
        1,
        "per-request fallbacks replace the configured ones"
    );
    let sent: Value =
        serde_json::from_str(&f.mocks[2].1.recorded.lock().unwrap().back().unwrap().body).unwrap();
    assert!(
        sent.get("fallbacks").is_none(),
        "gateway controls are not forwarded upstream"
    );

    let (status, headers, body) = f
        .chat(json!({"model": "a", "disable_fallbacks": true}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(header(&headers, "x-litellm-attempted-fallbacks"), "0");

    // A bad request is the client's to fix: no fallback.
    f.fail(0, json!({"status": 400}));
    let before = f.calls(1);
    let (status, _, _) = f.chat(json!({"model": "a"})).await;
    assert_eq!(status, 400);
    assert_eq!(f.calls(1), before);
}

#[tokio::test]
async fn default_fallbacks_catch_groups_without_their_own() {
    let f = fleet(
        2,
        r#"
model_list:
  - {model_name: a, litellm_params: {model: openai/a, api_base: "{m0}", api_key: k}}
  - {model_name: safe, litellm_params: {model: openai/s, api_base: "{m1}", api_key: k}}
router_settings: {num_retries: 0, default_fallbacks: [safe]}
"#,
    )
    .await;
    f.fail(0, json!({"status": 500}));
    let (status, headers, _) = f.chat(json!({"model": "a"})).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-llmux-model-group"), "safe");
}

#[tokio::test]
async fn a_dead_single_deployment_is_not_hammered() {
    let f = fleet(
        1,
        r#"
model_list:
  - {model_name: g, litellm_params: {model: openai/a, api_base: "{m0}", api_key: k}}
router_settings: {num_retries: 0, allowed_fails: 2, cooldown_time: 30}
"#,
    )
    .await;
    f.fail(0, json!({"status": 503}));
    let mut statuses = Vec::new();
    let mut last_headers = None;
    for _ in 0..10 {
        let (status, headers, _) = f.chat(json!({"model": "g"})).await;
        statuses.push(status);
        last_headers = Some(headers);
    }
    assert_eq!(
        f.calls(0),
        3,
        "allowed_fails + 1 calls, then the deployment cools"
    );
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    let h = last_headers.unwrap();
    let retry_after: u64 = header(&h, "retry-after").parse().unwrap();
    assert!((1..=30).contains(&retry_after));
}

#[tokio::test]
async fn retry_after_is_honored_when_no_other_deployment_can_serve() {
    let f = fleet(
        1,
        r#"
model_list:
  - {model_name: g, litellm_params: {model: openai/a, api_base: "{m0}", api_key: k}}
router_settings: {num_retries: 1, disable_cooldowns: true}
"#,
    )
    .await;
    f.fail(0, json!({"status": 429, "retry_after": "1"}));
    let started = Instant::now();
    let (status, headers, _) = f.chat(json!({"model": "g"})).await;
    assert_eq!(status, 429);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited for Retry-After"
    );
    assert_eq!(f.calls(0), 2);
    assert_eq!(header(&headers, "x-litellm-attempted-retries"), "1");
}

#[tokio::test]
async fn tags_route_requests() {
    let f = fleet(
        2,
        r#"
model_list:
  - {model_name: g, litellm_params: {model: openai/a, api_base: "{m0}", api_key: k, tags: [teamA]}}
  - {model_name: g, litellm_params: {model: openai/b, api_base: "{m1}", api_key: k, tags: [default]}}
router_settings: {enable_tag_filtering: true}
"#,
    )
    .await;
    for _ in 0..5 {
        assert_eq!(
            f.chat(json!({"model": "g", "metadata": {"tags": ["teamA"]}}))
                .await
                .0,
            200
        );
        assert_eq!(
            f.chat_with(json!({"model": "g"}), &[("x-litellm-tags", "teamA")])
                .await
                .0,
            200
        );
        assert_eq!(f.chat(json!({"model": "g"})).await.0, 200);
    }
    assert_eq!((f.calls(0), f.calls(1)), (10, 5));
}

#[tokio::test]
async fn least_busy_spreads_concurrent_streams() {
    let f = fleet(
        2,
        r#"
model_list:
  - {model_name: g, litellm_params: {model: openai/a, api_base: "{m0}", api_key: k}}
  - {model_name: g, litellm_params: {model: openai/b, api_base: "{m1}", api_key: k}}
router_settings: {routing_strategy: least-busy}
"#,
    )
    .await;
    let mut streams = Vec::new();
    for _ in 0..10 {
        let r = f
            .http
            .post(format!("{}/v1/chat/completions", f.url))
            .json(&json!({"model": "g", "stream": true, "messages": [{"role": "user", "content": "x"}], "mock_options": {"chunks": 20, "chunk_delay_ms": 50}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    assert_eq!(
        (f.calls(0), f.calls(1)),
        (5, 5),
        "in-flight streams balance exactly"
    );
    let state = f.deployments().await;
    let in_flight: u64 = state["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["in_flight"].as_u64().unwrap())
        .sum();
    assert_eq!(in_flight, 10);
    drop(streams);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let state = f.deployments().await;
    assert!(
        state["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["in_flight"] == 0),
        "slots are released when streams end"
    );
}

const RECOVERY: &str = r#"
model_list:
  - {model_name: g, litellm_params: {model: openai/a, api_base: "{m0}", api_key: k, order: 1, stream_timeout: 0.5}}
  - {model_name: g, litellm_params: {model: openai/b, api_base: "{m1}", api_key: k, order: 2}}
router_settings: {stream_recovery: continue, num_retries: 0}
"#;

fn expected_text(n: usize) -> String {
    (0..n).map(|i| format!("tok{i} ")).collect()
}

/// (joined content, ids seen, last data payload before [DONE], saw [DONE], all payloads)
fn read_stream(body: &str) -> (String, Vec<String>, Vec<Value>, bool) {
    let mut text = String::new();
    let mut ids = Vec::new();
    let mut chunks = Vec::new();
    let mut done = false;
    for event in body.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let data = event
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not a data event: {event:?}"));
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(id) = v["id"].as_str() {
            if !ids.contains(&id.to_owned()) {
                ids.push(id.to_owned());
            }
        }
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
        chunks.push(v);
    }
    (text, ids, chunks, done)
}

#[tokio::test]
async fn a_stream_cut_at_chunk_1_5_or_50_continues_seamlessly() {
    for cut in [1usize, 5, 50] {
        let f = fleet(2, RECOVERY).await;
        f.fail(0, json!({"cut_after": cut, "chunks": 60}));
        f.fail(1, json!({"chunks": 60}));
        let (status, _, body) = f
            .chat(json!({"model": "g", "stream": true, "stream_options": {"include_usage": true}}))
            .await;
        assert_eq!(status, 200);
        let (text, ids, chunks, done) = read_stream(&body);
        assert_eq!(
            text,
            expected_text(60),
            "cut at {cut}: no text lost or repeated"
        );
        assert_eq!(ids.len(), 1, "cut at {cut}: one stream id, got {ids:?}");
        assert!(done, "cut at {cut}");
        assert!(!body.contains("\"error\""), "cut at {cut}: no error event");
        let usage_chunks: Vec<&Value> = chunks.iter().filter(|c| !c["usage"].is_null()).collect();
        assert_eq!(usage_chunks.len(), 1, "cut at {cut}: one final usage");
        assert_eq!(
            usage_chunks[0]["usage"]["completion_tokens"],
            60 - cut as u64,
            "the continuation reported its own tokens"
        );
        assert!(
            chunks
                .iter()
                .any(|c| c["llmux_recovery"]["recoveries"] == 1),
            "cut at {cut}: marked as recovered"
        );
        assert_eq!((f.calls(0), f.calls(1)), (1, 1));
        // The continuation request carried what the client already had.
        let sent: Value =
            serde_json::from_str(&f.mocks[1].1.recorded.lock().unwrap().back().unwrap().body)
                .unwrap();
        let last = sent["messages"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["role"], "assistant");
        assert_eq!(last["content"], expected_text(cut));
    }
}

#[tokio::test]
async fn an_error_event_or_a_stall_mid_stream_is_recovered() {
    for fault in [
        json!({"error_event_after": 7, "chunks": 30}),
        json!({"stall_after": 4, "chunks": 30}),
    ] {
        let f = fleet(2, RECOVERY).await;
        f.fail(0, fault.clone());
        f.fail(1, json!({"chunks": 30}));
        let (status, _, body) = f.chat(json!({"model": "g", "stream": true})).await;
        assert_eq!(status, 200);
        let (text, ids, _, done) = read_stream(&body);
        assert_eq!(text, expected_text(30), "{fault}");
        assert_eq!(ids.len(), 1);
        assert!(done);
    }
}

#[tokio::test]
async fn a_continuation_that_restarts_is_not_shown_twice() {
    let f = fleet(2, RECOVERY).await;
    f.fail(0, json!({"cut_after": 10, "chunks": 25}));
    f.fail(1, json!({"chunks": 25, "continue_mode": "restart"}));
    let (_, _, body) = f.chat(json!({"model": "g", "stream": true})).await;
    let (text, ids, _, done) = read_stream(&body);
    assert_eq!(text, expected_text(25));
    assert_eq!(ids.len(), 1);
    assert!(done);
}

#[tokio::test]
async fn a_stream_that_began_a_tool_call_is_not_spliced() {
    let f = fleet(2, RECOVERY).await;
    f.fail(0, json!({"cut_after": 2}));
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let (status, _, body) = f
        .chat(json!({"model": "g", "stream": true, "tools": tools, "tool_choice": "required"}))
        .await;
    assert_eq!(status, 200);
    let last = body
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .last()
        .unwrap();
    let v: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(
        v["error"]["code"], "upstream_unavailable",
        "ends with a clear error event"
    );
    assert_eq!(f.calls(1), 0, "no continuation was attempted");
}

#[tokio::test]
async fn without_recovery_a_cut_stream_ends_with_an_error_event() {
    let f = fleet(
        2,
        &RECOVERY.replace("stream_recovery: continue", "stream_recovery: off"),
    )
    .await;
    f.fail(0, json!({"cut_after": 5, "chunks": 60}));
    let (_, _, body) = f.chat(json!({"model": "g", "stream": true})).await;
    let (text, _, chunks, done) = read_stream(&body);
    assert_eq!(text, expected_text(5));
    assert!(!done);
    assert_eq!(
        chunks.last().unwrap()["error"]["code"],
        "upstream_unavailable"
    );
    assert_eq!(f.calls(1), 0);
}

#[tokio::test]
async fn the_timeout_header_bounds_each_attempt() {
    let f = fleet(
        1,
        r#"
model_list:
  - {model_name: g, litellm_params: {model: openai/a, api_base: "{m0}", api_key: k}}
router_settings: {num_retries: 0}
"#,
    )
    .await;
    f.fail(0, json!({"latency_ms": 2000}));
    let started = Instant::now();
    let (status, _, body) = f
        .chat_with(json!({"model": "g"}), &[("x-litellm-timeout", "0.2")])
        .await;
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() < Duration::from_secs(1));
    let (status, _, _) = f.chat(json!({"model": "g", "timeout": 0.2})).await;
    assert_eq!(status, 504, "the body field works too");
}

/// A deployment that breaks off mid-stream is cooled down like one that fails before its first
/// byte: the recovery reports the failure through the same path, so the cooldown is announced
/// (to the fleet, through the observer) and the deployment is skipped afterwards.
#[tokio::test]
async fn a_mid_stream_failure_cools_the_deployment_and_is_announced() {
    let f = fleet(
        2,
        &RECOVERY.replace(
            "{stream_recovery: continue, num_retries: 0}",
            "{stream_recovery: continue, num_retries: 0, allowed_fails: 0, cooldown_time: 30}",
        ),
    )
    .await;
    let announced = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&announced);
    f.client.on_cooldown(move |id, duration| {
        seen.lock().unwrap().push((id.to_owned(), duration));
    });
    f.fail(0, json!({"cut_after": 5, "chunks": 20}));
    f.fail(1, json!({"chunks": 20}));
    let (status, _, body) = f.chat(json!({"model": "g", "stream": true})).await;
    assert_eq!(status, 200);
    assert_eq!(
        read_stream(&body).0,
        expected_text(20),
        "recovered seamlessly"
    );
    let first = f
        .client
        .snapshot()
        .router
        .deployments()
        .iter()
        .find(|d| d.config.model == "openai/a")
        .unwrap()
        .id
        .clone();
    let announced = announced.lock().unwrap().clone();
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert_eq!(announced[0].0, first);
    assert_eq!(announced[0].1, Duration::from_secs(30));
    // The cooled deployment is skipped: the next stream starts on the other one.
    let before = f.calls(0);
    let (status, _, _) = f.chat(json!({"model": "g", "stream": true})).await;
    assert_eq!(status, 200);
    assert_eq!(f.calls(0), before);
}

/// When every deployment of a group is cooling down, the 503 says why the last one failed (a
/// connection refused here), so an operator need not find it in the log.
#[tokio::test]
async fn the_all_cooling_error_names_the_last_failure() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let f = fleet(
        0,
        &format!(
            "model_list:\n  - {{model_name: g, litellm_params: {{model: openai/a, api_base: \"http://127.0.0.1:{closed}/v1\", api_key: k}}}}\n  - {{model_name: g, litellm_params: {{model: openai/b, api_base: \"http://127.0.0.1:{closed}/v1\", api_key: k}}}}\nrouter_settings: {{num_retries: 1, allowed_fails: 0, cooldown_time: 30}}\n"
        ),
    )
    .await;
    let (status, _, body) = f.chat(json!({"model": "g"})).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("cannot connect to upstream"), "{body}");
    let (status, _, body) = f.chat(json!({"model": "g"})).await;
    assert_eq!(status, 503);
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["code"], "no_healthy_deployments", "{body}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("cooling down")
            && message.contains("the last: cannot connect to upstream"),
        "{message}"
    );
}
