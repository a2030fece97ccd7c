//! End-to-end tests of the gateway against the real mock upstream over TCP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{sse_data, start, stream_text, BASIC};
use serde_json::{json, Value};

#[tokio::test]
async fn chat_passthrough_rewrites_only_the_model() {
    let h = start(BASIC).await;
    // Unknown fields, odd number spellings and key order must reach the upstream untouched.
    let raw = r#"{"model":"gpt-test","messages":[{"role":"user","content":[{"type":"text","text":"hi é \ud83d\ude00"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]}],"temperature":0.70,"x_vendor":{"nested":[1,2.50,null,true]},"n":1,"logprobs":true,"top_logprobs":2,"response_format":{"type":"json_object"},"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}"#;
    let response = h
        .post_raw("/v1/chat/completions", raw.as_bytes().to_vec())
        .await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["x_mock_extra"]["kept"], true,
        "unknown response fields reach the client"
    );
    assert_eq!(body["system_fingerprint"], "fp_mock");

    let sent = h.recorded().pop().unwrap();
    let expected = raw.replacen(r#""model":"gpt-test""#, r#""model":"mock-gpt""#, 1);
    assert_eq!(
        sent.body, expected,
        "the body is forwarded byte for byte except `model`"
    );
    assert!(sent
        .headers
        .iter()
        .any(|(k, v)| k == "authorization" && v == "Bearer sk-upstream"));
    let mock_authority = h
        .mock_url
        .trim_start_matches("http://")
        .trim_end_matches("/v1");
    assert!(
        sent.headers
            .iter()
            .any(|(k, v)| k == "host" && v == mock_authority),
        "the upstream's Host header names its authority: {:?}",
        sent.headers
    );

    assert_eq!(
        headers["x-ratelimit-remaining-requests"], "9999",
        "upstream rate-limit headers reach the client"
    );
    assert_eq!(headers["x-llmux-model-group"], "gpt-test");
    assert_eq!(headers["x-litellm-model-group"], "gpt-test");
    assert_eq!(headers["x-llmux-provider"], "openai");
    assert!(headers.contains_key("x-llmux-deployment"));
    let overhead: f64 = headers["x-llmux-overhead-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.0..1000.0).contains(&overhead));
    assert!(headers["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req-"));
}

#[tokio::test]
async fn litellm_params_are_request_defaults_and_never_override() {
    let h = start(BASIC).await;
    let r = h.post("/v1/chat/completions", &json!({"model": "with-defaults", "messages": [{"role": "user", "content": "x"}], "temperature": 1.0})).await;
    assert_eq!(r.status(), 200);
    let sent = h.last_upstream_body();
    assert_eq!(sent["temperature"], 1.0);
    assert_eq!(sent["max_tokens"], 99);
}

#[tokio::test]
async fn wildcard_groups_substitute_the_model() {
    let h = start(BASIC).await;
    let r = h.post("/v1/chat/completions", &json!({"model": "mockp/some-model-7b", "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llmux-model-group"], "mockp/*");
    assert_eq!(h.last_upstream_body()["model"], "some-model-7b");
}

#[tokio::test]
async fn unsupported_params_are_refused_or_dropped() {
    let h = start(BASIC).await;
    let body = json!({"model": "groq-strict", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 2}});
    let r = h.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "logit_bias");

    let dropping = start(&format!(
        "{BASIC}\nlitellm_settings: {{drop_params: true}}\n"
    ))
    .await;
    let r = dropping.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    assert!(dropping.last_upstream_body().get("logit_bias").is_none());
}

#[tokio::test]
async fn streams_are_relayed_in_order_with_usage() {
    let h = start(BASIC).await;
    let mut logs = h.client.subscribe();
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({
                "model": "gpt-test", "stream": true, "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "x"}], "mock_options": {"chunks": 1500}
            }),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["x-ratelimit-limit-requests"], "10000");
    let text = r.text().await.unwrap();
    let payloads = sse_data(&text);
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let expected: String = (0..1500).map(|i| format!("tok{i} ")).collect();
    assert_eq!(stream_text(&payloads), expected);
    let usage_chunk: Value = serde_json::from_str(&payloads[payloads.len() - 2]).unwrap();
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 1500);

    let log = tokio::time::timeout(Duration::from_secs(5), logs.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(log.outcome, llmux::Outcome::Success);
    assert!(log.stream);
    assert_eq!(
        log.usage.unwrap().completion_tokens,
        1500,
        "usage is captured from the stream"
    );
    assert!(log.chunks >= 1500);
}

#[tokio::test]
async fn error_event_inside_a_stream_is_relayed_as_an_error_event() {
    let h = start(BASIC).await;
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({
                "model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "x"}],
                "mock_options": {"chunks": 10, "error_event_after": 3}
            }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let payloads = sse_data(&r.text().await.unwrap());
    let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
    assert_eq!(last["error"]["message"], "mock error inside the stream");
    assert_eq!(last["error"]["code"], "mock_stream_error");
    assert_eq!(stream_text(&payloads), "tok0 tok1 tok2 ");
    assert!(!payloads.iter().any(|p| p == "[DONE]"));
}

#[tokio::test]
async fn a_cut_connection_mid_stream_ends_with_an_error_event() {
    let h = start(BASIC).await;
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({
                "model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "x"}],
                "mock_options": {"chunks": 10, "cut_after": 5}
            }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let payloads = sse_data(&r.text().await.unwrap());
    assert_eq!(stream_text(&payloads), "tok0 tok1 tok2 tok3 tok4 ");
    let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "api_error");
    assert_eq!(last["error"]["code"], "upstream_unavailable");
}

#[tokio::test]
async fn a_stalled_stream_times_out_with_an_error_event() {
    let h = start(BASIC).await;
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({
                "model": "slow", "stream": true, "messages": [{"role": "user", "content": "x"}],
                "mock_options": {"chunks": 10, "stall_after": 2}
            }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let payloads = sse_data(&r.text().await.unwrap());
    assert_eq!(stream_text(&payloads), "tok0 tok1 ");
    let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "timeout");
}

#[tokio::test]
async fn failures_before_the_first_chunk_are_ordinary_error_responses() {
    let h = start(BASIC).await;
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({
                "model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "x"}],
                "mock_options": {"status": 503}
            }),
        )
        .await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/json");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "overloaded");

    let r = h
        .post(
            "/v1/chat/completions",
            &json!({
                "model": "slow", "stream": true, "messages": [{"role": "user", "content": "x"}],
                "mock_options": {"ttfb_ms": 2000}
            }),
        )
        .await;
    assert_eq!(r.status(), 504);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "timeout");
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_stream() {
    let h = start(BASIC).await;
    let mut r = h
        .post(
            "/v1/chat/completions",
            &json!({
                "model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "x"}],
                "mock_options": {"chunks": 200, "chunk_delay_ms": 20}
            }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(r);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while h.stat("streams_cancelled") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream stream was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.stat("streams_completed"), 0);
}

#[tokio::test]
async fn upstream_errors_keep_status_code_and_rate_limit_headers() {
    let h = start(BASIC).await;
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({
                "model": "gpt-test", "messages": [{"role": "user", "content": "x"}],
                "mock_options": {"status": 429, "retry_after": "7"}
            }),
        )
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "9999");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    assert_eq!(e["error"]["message"], "Rate limit reached for requests");

    let body = r#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({
                "model": "gpt-test", "messages": [{"role": "user", "content": "x"}],
                "mock_options": {"status": 400, "error_body": body}
            }),
        )
        .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "context_length_exceeded");
    assert_eq!(e["error"]["param"], "messages");
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_upstream_is_504() {
    let h = start(BASIC).await;
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({"model": "dead", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(r.status(), 502);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "upstream_unavailable");

    let r = h
        .post("/v1/chat/completions", &json!({"model": "slow", "messages": [{"role": "user", "content": "x"}], "mock_options": {"latency_ms": 2000}}))
        .await;
    assert_eq!(r.status(), 504);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "timeout_error");
}

#[tokio::test]
async fn bad_requests_get_clear_400s_and_unknown_models_404() {
    let h = start(BASIC).await;
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"{not json", 400, "invalid_json"),
        (b"[1,2]", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (
            br#"{"messages":[{"role":"user","content":"x"}]}"#,
            400,
            "missing_required_parameter",
        ),
        (
            br#"{"model":"gpt-test"}"#,
            400,
            "missing_required_parameter",
        ),
        (
            br#"{"model":"gpt-test","messages":"hi"}"#,
            400,
            "invalid_request",
        ),
        (br#"{"model":"gpt-test","messages":[]}"#, 400, "empty_array"),
        (br#"{"model":7,"messages":[]}"#, 400, "invalid_request"),
        (
            br#"{"model":"gpt-test","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
            400,
            "invalid_value",
        ),
        (
            br#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
            404,
            "model_not_found",
        ),
    ];
    for (body, status, code) in cases {
        let r = h.post_raw("/v1/chat/completions", body.to_vec()).await;
        assert_eq!(r.status(), status, "{}", String::from_utf8_lossy(body));
        let e: Value = r.json().await.unwrap();
        assert_eq!(
            e["error"]["code"],
            code,
            "{}",
            String::from_utf8_lossy(body)
        );
        for field in ["message", "type", "param", "code"] {
            assert!(e["error"].get(field).is_some(), "missing {field}");
        }
    }
    assert_eq!(
        h.stat("requests"),
        0,
        "nothing invalid reached the upstream"
    );
}

#[tokio::test]
async fn body_limit_is_413_and_one_mebibyte_bodies_work() {
    let h = start(&format!(
        "{BASIC}\ngeneral_settings: {{max_request_size_mb: 2}}\n"
    ))
    .await;
    let big = "x".repeat(1024 * 1024);
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({"model": "gpt-test", "messages": [{"role": "user", "content": big}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let sent = h.last_upstream_body();
    assert_eq!(
        sent["messages"][0]["content"].as_str().unwrap().len(),
        1024 * 1024
    );

    let huge = "x".repeat(3 * 1024 * 1024);
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({"model": "gpt-test", "messages": [{"role": "user", "content": huge}]}),
        )
        .await;
    assert_eq!(r.status(), 413);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "request_too_large");

    // Without a content-length (chunked), the limit still holds.
    let stream = futures_util::stream::iter(
        (0..40).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 100 * 1024]))),
    );
    let r = h
        .http
        .post(format!("{}/v1/chat/completions", h.url))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn completions_and_embeddings_pass_through() {
    let h = start(BASIC).await;
    let r = h
        .post(
            "/completions",
            &json!({"model": "gpt-test", "prompt": "Say hi", "max_tokens": 5}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(h.recorded().pop().unwrap().path, "/v1/completions");

    let r = h
        .post(
            "/v1/completions",
            &json!({"model": "gpt-test", "prompt": "Say hi", "stream": true}),
        )
        .await;
    let payloads = sse_data(&r.text().await.unwrap());
    assert_eq!(payloads.last().unwrap(), "[DONE]");

    for input in [
        json!("a"),
        json!(["a", "b", "c"]),
        json!([1, 2, 3]),
        json!([[1, 2], [3, 4]]),
    ] {
        let r = h
            .post(
                "/v1/embeddings",
                &json!({"model": "gpt-test", "input": input, "encoding_format": "float"}),
            )
            .await;
        assert_eq!(r.status(), 200, "{input}");
        let v: Value = r.json().await.unwrap();
        let expected = match &input {
            Value::String(_) => 1,
            Value::Array(a) if a[0].is_number() => 1,
            Value::Array(a) => a.len(),
            _ => unreachable!(),
        };
        assert_eq!(v["data"].as_array().unwrap().len(), expected, "{input}");
        assert_eq!(h.last_upstream_body()["input"], input);
    }
    let r = h
        .post(
            "/embeddings",
            &json!({"model": "gpt-test", "input": "a", "encoding_format": "base64"}),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert!(v["data"][0]["embedding"].is_string());
    let r = h
        .post("/v1/embeddings", &json!({"model": "gpt-test", "input": 5}))
        .await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn models_are_listed_and_looked_up() {
    let h = start(BASIC).await;
    for path in ["/v1/models", "/models"] {
        let v: Value = h
            .http
            .get(format!("{}{path}", h.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert!(
            ids.contains(&"gpt-test") && ids.contains(&"demo"),
            "{ids:?}"
        );
        assert_eq!(v["object"], "list");
    }
    let r = h
        .http
        .get(format!("{}/v1/models/gpt-test", h.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["id"].as_str(), v["object"].as_str()),
        (Some("gpt-test"), Some("model"))
    );
    let r = h
        .http
        .get(format!("{}/v1/models/mockp/a-b", h.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "ids with slashes resolve through wildcards"
    );
    let r = h
        .http
        .get(format!("{}/v1/models/none", h.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn master_key_guards_model_routes_but_not_health() {
    let h = start(&format!(
        "{BASIC}\ngeneral_settings: {{master_key: sk-master}}\n"
    ))
    .await;
    let body = json!({"model": "demo", "messages": [{"role": "user", "content": "x"}]});
    let url = format!("{}/v1/chat/completions", h.url);
    let r = h.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "authentication_error");
    let r = h
        .http
        .post(&url)
        .bearer_auth("sk-wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = h
        .http
        .post(&url)
        .bearer_auth("sk-master")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .http
        .post(&url)
        .header("x-api-key", "sk-master")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .http
        .get(format!("{}/v1/models", h.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for path in [
        "/health/liveliness",
        "/health/readiness",
        "/health/live",
        "/health/ready",
    ] {
        let r = h.http.get(format!("{}{path}", h.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let h = start(BASIC).await;
    let body = json!({"model": "demo", "messages": [{"role": "user", "content": "x"}]});
    let r = h
        .http
        .post(format!("{}/v1/chat/completions", h.url))
        .header("x-request-id", "trace-123")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-123");
    let own = r.headers()["x-litellm-call-id"].to_str().unwrap();
    assert_ne!(own, "trace-123", "llmux keys requests by its own id");
    let r = h
        .http
        .post(format!("{}/v1/chat/completions", h.url))
        .header("x-request-id", "bad id with spaces")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "bad id with spaces");
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert!(
        r.headers().contains_key("x-request-id"),
        "errors carry the id too"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_openai_shape() {
    let h = start(BASIC).await;
    let r = h
        .http
        .get(format!("{}/v1/nothing-here", h.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "unknown_route");
    let r = h
        .http
        .get(format!("{}/v1/chat/completions", h.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn in_process_mock_model_streams_and_answers() {
    let h = start(BASIC).await;
    let r = h.post("/chat/completions", &json!({"model": "demo", "messages": [{"role": "user", "content": "ping"}], "stream": true})).await;
    assert_eq!(r.status(), 200);
    let payloads = sse_data(&r.text().await.unwrap());
    assert!(stream_text(&payloads).ends_with("You said: ping"));
    assert_eq!(
        h.stat("requests"),
        0,
        "the mock/ provider never leaves the process"
    );
}

#[tokio::test]
async fn concurrent_requests_all_succeed() {
    let h = start(BASIC).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let http = h.http.clone();
        let url = format!("{}/v1/chat/completions", h.url);
        tasks.push(tokio::spawn(async move {
            let stream = i % 2 == 0;
            let r = http
                .post(url)
                .json(&json!({"model": "gpt-test", "stream": stream, "messages": [{"role": "user", "content": format!("{i}")}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let text = r.text().await.unwrap();
            if stream {
                assert!(text.ends_with("data: [DONE]\n\n"));
            } else {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["choices"][0]["finish_reason"], "stop");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(h.stat("requests"), 200);
}

#[tokio::test]
async fn a_slow_reader_applies_backpressure_to_the_upstream() {
    let h = start(BASIC).await;
    // ~25 MB of events: far more than socket buffers hold, so if the gateway buffered the stream
    // instead of pulling it at the client's pace, the mock would finish while we sit idle.
    let mut r = h
        .post(
            "/v1/chat/completions",
            &json!({
                "model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "x"}],
                "mock_options": {"chunks": 120000}
            }),
        )
        .await;
    assert_eq!(r.status(), 200);
    r.chunk().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        h.stat("streams_completed"),
        0,
        "the upstream ran ahead of the client"
    );
    drop(r);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while h.stat("streams_cancelled") == 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const ANTHROPIC: &str = r#"
model_list:
  - model_name: claude
    litellm_params: {model: anthropic/claude-mock, api_base: "{mock}", api_key: sk-ant-test, extra_headers: {anthropic-beta: "prompt-caching-2024-07-31"}}
router_settings: {num_retries: 0}
"#;

#[tokio::test]
async fn anthropic_deployments_answer_in_openai_shape() {
    let h = start(ANTHROPIC).await;
    let r = h.post("/v1/chat/completions", &json!({"model": "claude", "messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "hi"}]})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llmux-provider"], "anthropic");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("tok0 tok1"));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
    let sent = h.recorded().pop().unwrap();
    assert_eq!(sent.path, "/v1/messages");
    assert!(sent
        .headers
        .iter()
        .any(|(k, v)| k == "x-api-key" && v == "sk-ant-test"));
    assert!(sent
        .headers
        .iter()
        .any(|(k, v)| k == "anthropic-beta" && v == "prompt-caching-2024-07-31"));
    let upstream: Value = serde_json::from_str(&sent.body).unwrap();
    assert_eq!(upstream["system"], "Be brief");
    assert_eq!(upstream["model"], "claude-mock");

    let r = h.post("/v1/chat/completions", &json!({"model": "claude", "stream": true, "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(r.status(), 200);
    let payloads = sse_data(&r.text().await.unwrap());
    assert_eq!(
        stream_text(&payloads),
        (0..20).map(|i| format!("tok{i} ")).collect::<String>()
    );
    assert_eq!(payloads.last().unwrap(), "[DONE]");

    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let r = h.post("/v1/chat/completions", &json!({"model": "claude", "messages": [{"role": "user", "content": "weather?"}], "tools": tools, "tool_choice": "required"})).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );

    let r = h.post("/v1/chat/completions", &json!({"model": "claude", "stream": true, "messages": [{"role": "user", "content": "weather?"}], "tools": tools, "tool_choice": "required"})).await;
    let payloads = sse_data(&r.text().await.unwrap());
    let args: String = payloads
        .iter()
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"location": "Paris"})
    );

    let r = h.post("/v1/chat/completions", &json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}], "mock_options": {"status": 429}})).await;
    assert_eq!(r.status(), 429);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn gemini_deployments_answer_in_openai_shape() {
    let yaml = r#"
model_list:
  - model_name: gem
    litellm_params: {model: gemini/gemini-mock, api_base: "{mock}/..", api_key: g-key}
  - model_name: gem-limited
    litellm_params: {model: gemini/gemini-mock, api_base: "{mock}/..", api_key: g-key, extra_headers: {x-mock-status: "429"}}
router_settings: {num_retries: 0}
"#;
    // The harness gives the mock's `/v1` URL; Gemini lives under the server root.
    let h = start(yaml).await;
    let r = h.post("/v1/chat/completions", &json!({"model": "gem", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]})).await;
    let v: Value = r.json().await.unwrap();
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("tok0"));
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        3
    );
    let sent = h.recorded().pop().unwrap();
    assert_eq!(sent.path, "/v1beta/models/gemini-mock:generateContent");
    assert!(sent
        .headers
        .iter()
        .any(|(k, v)| k == "x-goog-api-key" && v == "g-key"));

    let r = h.post("/v1/chat/completions", &json!({"model": "gem", "stream": true, "messages": [{"role": "user", "content": "hi"}]})).await;
    let payloads = sse_data(&r.text().await.unwrap());
    assert_eq!(
        stream_text(&payloads),
        (0..20).map(|i| format!("tok{i} ")).collect::<String>()
    );
    assert_eq!(payloads.last().unwrap(), "[DONE]");

    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let r = h.post("/v1/chat/completions", &json!({"model": "gem", "messages": [{"role": "user", "content": "w?"}], "tools": tools, "tool_choice": "required"})).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let id = v["choices"][0]["message"]["tool_calls"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The next turn sends the thought signature back inside the functionCall part.
    let r = h.post("/v1/chat/completions", &json!({"model": "gem", "messages": [
        {"role": "user", "content": "w?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": id, "content": "sunny"}]})).await;
    assert_eq!(r.status(), 200);
    let sent: Value = serde_json::from_str(&h.recorded().pop().unwrap().body).unwrap();
    assert_eq!(sent["contents"][1]["parts"][0]["thoughtSignature"], "c2ln");
    assert_eq!(
        sent["contents"][2]["parts"][0]["functionResponse"]["name"],
        "get_weather"
    );

    let r = h
        .post(
            "/v1/embeddings",
            &json!({"model": "gem", "input": ["a", "b"]}),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);

    let r = h
        .post(
            "/v1/chat/completions",
            &json!({"model": "gem-limited", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 429);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "RESOURCE_EXHAUSTED");
}

#[tokio::test]
async fn cohere_deployments_answer_in_openai_shape() {
    let h = start(
        r#"
model_list:
  - model_name: co
    litellm_params: {model: cohere/command-a, api_base: "{mock}/..", api_key: co-key}
router_settings: {num_retries: 0}
"#,
    )
    .await;
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({"model": "co", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("tok0"));
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    let sent = h.recorded().pop().unwrap();
    assert_eq!(sent.path, "/v2/chat");
    assert!(sent
        .headers
        .iter()
        .any(|(k, v)| k == "authorization" && v == "Bearer co-key"));

    let r = h.post("/v1/chat/completions", &json!({"model": "co", "stream": true, "messages": [{"role": "user", "content": "hi"}]})).await;
    let payloads = sse_data(&r.text().await.unwrap());
    assert_eq!(
        stream_text(&payloads),
        (0..20).map(|i| format!("tok{i} ")).collect::<String>()
    );
    assert_eq!(payloads.last().unwrap(), "[DONE]");

    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let r = h.post("/v1/chat/completions", &json!({"model": "co", "stream": true, "messages": [{"role": "user", "content": "w?"}], "tools": tools, "tool_choice": "required"})).await;
    let payloads = sse_data(&r.text().await.unwrap());
    let args: String = payloads
        .iter()
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"location": "Paris"})
    );

    let r = h
        .post(
            "/v1/embeddings",
            &json!({"model": "co", "input": ["a", "b", "c"]}),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
    assert_eq!(v["usage"]["prompt_tokens"], 6);
}

#[tokio::test]
async fn rerank_goes_to_cohere_and_the_demo_model_in_cohere_shape() {
    let h = start(
        r#"
model_list:
  - model_name: rr
    litellm_params: {model: cohere/rerank-v3.5, api_base: "{mock}/..", api_key: co-key}
  - model_name: demo-rerank
    litellm_params: {model: mock/rerank}
  - model_name: oai
    litellm_params: {model: openai/x, api_base: "{mock}", api_key: k}
router_settings: {num_retries: 0}
"#,
    )
    .await;
    for path in ["/v1/rerank", "/rerank", "/v2/rerank"] {
        let r = h.post(path, &json!({"model": "rr", "query": "capital", "documents": ["a", "b", "c"], "top_n": 2})).await;
        assert_eq!(r.status(), 200, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["results"],
            json!([{"index": 2, "relevance_score": 1.0}, {"index": 1, "relevance_score": 2.0 / 3.0}])
        );
    }
    let sent: Value = serde_json::from_str(&h.recorded().pop().unwrap().body).unwrap();
    assert_eq!(sent["model"], "rerank-v3.5");
    assert_eq!(sent["query"], "capital");

    let r = h.post("/v1/rerank", &json!({"model": "demo-rerank", "query": "paris france", "documents": ["berlin", "paris is in france", {"text": "france"}]})).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["results"][0]["index"], 1);
    assert_eq!(v["results"][1]["index"], 2);

    let r = h
        .post("/v1/rerank", &json!({"model": "rr", "documents": ["a"]}))
        .await;
    assert_eq!(r.status(), 400);
    let r = h
        .post(
            "/v1/rerank",
            &json!({"model": "oai", "query": "q", "documents": ["a"]}),
        )
        .await;
    assert_eq!(
        r.status(),
        400,
        "openai-compatible deployments do not rerank"
    );
}

#[tokio::test]
async fn azure_openai_deployments_use_deployment_urls_and_api_key() {
    let h = start(
        r#"
model_list:
  - model_name: az
    litellm_params: {model: azure/my-gpt4o, api_base: "{mock}/..", api_key: az-key, api_version: "2024-06-01"}
  - model_name: az-default-version
    litellm_params: {model: azure/other, api_base: "{mock}/..", api_key: az-key}
router_settings: {num_retries: 0}
"#,
    )
    .await;
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({"model": "az", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llmux-provider"], "azure");
    let sent = h.recorded().pop().unwrap();
    assert_eq!(
        sent.path,
        "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-06-01"
    );
    assert!(sent
        .headers
        .iter()
        .any(|(k, v)| k == "api-key" && v == "az-key"));
    assert!(!sent.headers.iter().any(|(k, _)| k == "authorization"));

    let r = h
        .post(
            "/v1/embeddings",
            &json!({"model": "az-default-version", "input": "x"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let sent = h.recorded().pop().unwrap();
    assert_eq!(
        sent.path,
        format!(
            "/openai/deployments/other/embeddings?api-version={}",
            llmux_providers_default_azure_version()
        )
    );

    let body = r#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400}}"#;
    let r = h.post("/v1/chat/completions", &json!({"model": "az", "messages": [{"role": "user", "content": "x"}], "mock_options": {"status": 400, "error_body": body}})).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "content_filter");
}

fn llmux_providers_default_azure_version() -> &'static str {
    "2024-10-21"
}

#[tokio::test]
async fn streams_are_always_metered_and_the_usage_chunk_shows_only_when_asked() {
    let h = start(BASIC).await;
    let mut logs = h.client.subscribe();
    let body = json!({"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let r = h.post("/v1/chat/completions", &body).await;
    let text = r.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(!text.contains("\"usage\""), "not asked for: {text}");
    let sent = h.last_upstream_body();
    assert_eq!(
        sent["stream_options"],
        json!({"include_usage": true}),
        "llmux asks for it"
    );
    let log = logs.recv().await.unwrap();
    assert!(
        log.usage.unwrap().completion_tokens > 0,
        "the usage was counted"
    );

    let mut asked = body.clone();
    asked["stream_options"] = json!({"include_usage": true});
    let text = h
        .post("/v1/chat/completions", &asked)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"usage\""), "asked for: {text}");
    let mut declined = body.clone();
    declined["stream_options"] = json!({"include_usage": false});
    let text = h
        .post("/v1/chat/completions", &declined)
        .await
        .text()
        .await
        .unwrap();
    assert!(!text.contains("\"usage\""));
    assert_eq!(
        h.last_upstream_body()["stream_options"],
        json!({"include_usage": true})
    );
}

/// Issue 17, finding 9: `max_tokens` of -1, "10", 1.5 and 1e30 reached the upstream.
#[tokio::test]
async fn invalid_typed_parameters_are_refused_before_the_upstream() {
    let h = start(BASIC).await;
    let cases: Vec<(&str, Value)> = vec![
        ("max_tokens", json!(-1)),
        ("max_tokens", json!("10")),
        ("max_tokens", json!(1.5)),
        ("max_tokens", json!(1e30)),
        ("max_completion_tokens", json!(-5)),
        ("n", json!(0)),
        ("n", json!(1000)),
        ("temperature", json!(-1)),
        ("temperature", json!("0.5")),
        ("top_p", json!(-0.1)),
        ("presence_penalty", json!(9)),
        ("frequency_penalty", json!(-2.5)),
        ("logprobs", json!(1)),
        ("top_logprobs", json!(-1)),
        ("seed", json!(1.5)),
        ("stream", json!("yes")),
        ("stop", json!(5)),
        ("stop", json!([1, 2])),
        ("user", json!(5)),
        ("tools", json!({"a": 1})),
        ("tool_choice", json!(3)),
        ("response_format", json!("json")),
        ("logit_bias", json!([1])),
    ];
    for (param, value) in &cases {
        let mut body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "x"}]});
        body[*param] = value.clone();
        let r = h.post("/v1/chat/completions", &body).await;
        assert_eq!(r.status(), 400, "{param}: {value}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["param"], *param, "{v}");
        assert_eq!(v["error"]["code"], "invalid_value", "{v}");
    }
    assert!(h.recorded().is_empty(), "nothing reached the upstream");
    // Completions take an integer logprobs; valid values pass, nulls too.
    let r = h
        .post(
            "/v1/completions",
            &json!({"model": "gpt-test", "prompt": "x", "logprobs": true}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let ok = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 10, "temperature": 0, "top_p": 1, "n": 1, "seed": -3, "stop": ["a", "b"],
        "logprobs": true, "top_logprobs": 2, "presence_penalty": -2, "user": "u", "tool_choice": "auto",
        "frequency_penalty": null, "max_completion_tokens": null});
    assert_eq!(h.post("/v1/chat/completions", &ok).await.status(), 200);
}

/// `/v1/messages` to an Anthropic deployment sends the client's body on as it is, with only the
/// model changed (fields the internal request does not model, cache_control on any block, the
/// client's `anthropic-beta` beside the deployment's), and answers with what Anthropic sent:
/// every event of the stream, in order, as it came.
#[tokio::test]
async fn the_messages_api_passes_through_to_anthropic_deployments() {
    let h = start(ANTHROPIC).await;
    let body = json!({
        "model": "claude", "max_tokens": 64, "service_tier": "auto", "container": "c-1",
        "system": [{"type": "text", "text": "Be brief", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Doc."}, "citations": {"enabled": true}, "title": "t"},
            {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
        "metadata": {"user_id": "u-1", "tags": ["team-a"]},
        "fallbacks": ["other"]
    });
    let r = h
        .http
        .post(format!("{}/v1/messages", h.url))
        .header("anthropic-beta", "context-1m-2025-08-07")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let sent = h.recorded().pop().unwrap();
    let mut expected = body.clone();
    expected["model"] = json!("claude-mock");
    expected.as_object_mut().unwrap().remove("fallbacks");
    expected["metadata"] = json!({"user_id": "u-1"});
    assert_eq!(
        serde_json::from_str::<Value>(&sent.body).unwrap(),
        expected,
        "the body as sent, but for the model and the gateway's own controls"
    );
    assert!(sent
        .headers
        .iter()
        .any(|(k, v)| k == "anthropic-beta"
            && v == "prompt-caching-2024-07-31,context-1m-2025-08-07"));

    // Keys keep the client's order (a schema's property order steers what a model writes).
    let ordered = r#"{"model":"claude","max_tokens":16,"messages":[{"role":"user","content":"hi"}],"tools":[{"name":"answer","input_schema":{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"string"}}}}]}"#;
    let r = h
        .http
        .post(format!("{}/v1/messages", h.url))
        .header("content-type", "application/json")
        .body(ordered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent = h.recorded().pop().unwrap().body;
    assert!(
        sent.find("zeta").unwrap() < sent.find("alpha").unwrap(),
        "{sent}"
    );
    assert!(
        sent.find("\"messages\"").unwrap() < sent.find("\"tools\"").unwrap(),
        "{sent}"
    );

    // The answer is the upstream's, as it sent it (asked again directly: the same but its id).
    let ours: Value = h.post("/v1/messages", &body).await.json().await.unwrap();
    let sent = h.recorded().pop().unwrap();
    let direct: Value = h
        .http
        .post(format!("{}/messages", h.mock_url))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(sent.body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let without_id = |mut v: Value| {
        v["id"] = json!("");
        v
    };
    assert_eq!(without_id(ours), without_id(direct));

    // A stream comes back event for event: the upstream's own events, names and payloads.
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let ours = h.post("/v1/messages", &stream).await.text().await.unwrap();
    let sent = h.recorded().pop().unwrap();
    let upstream = h
        .http
        .post(format!("{}/messages", h.mock_url))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01")
        .body(sent.body)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let payloads = |text: &str| -> Vec<Value> {
        text.split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| {
                let mut v: Value = serde_json::from_str(d).unwrap();
                if let Some(m) = v.get_mut("message") {
                    m["id"] = json!("");
                }
                v
            })
            .collect()
    };
    assert!(!payloads(&upstream).is_empty(), "{upstream}");
    assert_eq!(payloads(&ours), payloads(&upstream));
}

/// `/v1/messages/count_tokens` for a model group with an Anthropic deployment asks Anthropic
/// (its count knows Claude's tokenizer, images, tools and thinking): the counted fields as the
/// client sent them, with the deployment's model and the betas joined. A deployment that
/// cannot answer leaves the count to the gateway; a request Anthropic finds invalid is the
/// client's 400; a group with no Anthropic deployment is counted locally.
#[tokio::test]
async fn count_tokens_asks_anthropic_deployments() {
    let h = start(
        r#"
model_list:
  - model_name: claude
    litellm_params: {model: anthropic/claude-mock, api_base: "{mock}", api_key: sk-ant-test, extra_headers: {anthropic-beta: "prompt-caching-2024-07-31"}}
  - model_name: claude-down
    litellm_params: {model: anthropic/claude-mock, api_base: "{mock}", api_key: sk-ant-test, extra_headers: {x-mock-status: "503"}}
  - model_name: claude-strict
    litellm_params: {model: anthropic/claude-mock, api_base: "{mock}", api_key: sk-ant-test, extra_headers: {x-mock-status: "400"}}
  - model_name: gpt
    litellm_params: {model: openai/gpt-mock, api_base: "{mock}", api_key: sk-test}
  - model_name: mixed
    litellm_params: {model: "bedrock/us.anthropic.claude-mock-v1:0", api_base: "{mock_root}", aws_access_key_id: AK, aws_secret_access_key: s, aws_region_name: us-east-1}
  - model_name: bedrock-claude
    litellm_params: {model: "bedrock/anthropic.claude-mock-v1:0", api_base: "{mock_root}", aws_access_key_id: AK, aws_secret_access_key: s, aws_region_name: us-east-1}
  - model_name: bedrock-old
    litellm_params: {model: "bedrock/anthropic.claude-v2", api_base: "{mock_root}", aws_access_key_id: AK, aws_secret_access_key: s, aws_region_name: us-east-1}
  - model_name: mixed
    litellm_params: {model: anthropic/claude-mock, api_base: "{mock}", api_key: sk-ant-test}
router_settings: {num_retries: 0}
"#,
    )
    .await;
    let request = |model: &str| {
        json!({
            "model": model, "max_tokens": 1024, "stream": true, "temperature": 0.2,
            "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "How many tokens is this sentence, roughly?"}],
            "tools": [{"name": "lookup", "description": "Look a word up", "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}}}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "metadata": {"user_id": "u-1"}
        })
    };
    let count = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["input_tokens"]
            .as_u64()
            .unwrap()
    };
    let before = h.recorded().len();
    let r = h
        .http
        .post(format!("{}/v1/messages/count_tokens", h.url))
        .header("anthropic-beta", "token-counting-2024-11-01")
        .json(&request("claude"))
        .send()
        .await
        .unwrap();
    let upstream_count = count(r).await;
    let sent = h.recorded().pop().unwrap();
    assert_eq!(h.recorded().len(), before + 1, "one upstream call");
    assert_eq!(sent.path, "/v1/messages/count_tokens");
    let sent_body: Value = serde_json::from_str(&sent.body).unwrap();
    let mut expected = request("claude");
    let o = expected.as_object_mut().unwrap();
    for field in ["max_tokens", "stream", "temperature", "metadata"] {
        o.remove(field);
    }
    o.insert("model".into(), json!("claude-mock"));
    assert_eq!(sent_body, expected, "only the fields count_tokens takes");
    assert!(sent.headers.iter().any(|(k, v)| k == "anthropic-beta"
        && v == "prompt-caching-2024-07-31,token-counting-2024-11-01"));
    assert_eq!(upstream_count, llmux_mock::mock_count_tokens(&sent_body));
    // A group whose first deployment (a Bedrock cross-region profile) cannot count asks the
    // one that can.
    let r = h.post("/v1/messages/count_tokens", &request("mixed")).await;
    assert_eq!(count(r).await, upstream_count);
    assert_eq!(
        h.recorded().pop().unwrap().path,
        "/v1/messages/count_tokens"
    );
    // Claude on Bedrock counts through CountTokens, over the InvokeModel body it would send.
    let r = h
        .post("/v1/messages/count_tokens", &request("bedrock-claude"))
        .await;
    assert_eq!(
        count(r).await,
        upstream_count,
        "the same fields, the same count"
    );
    let sent = h.recorded().pop().unwrap();
    assert_eq!(
        sent.path,
        "/model/anthropic.claude-mock-v1%3A0/count-tokens"
    );
    assert!(sent
        .headers
        .iter()
        .any(|(k, v)| k == "authorization" && v.starts_with("AWS4-HMAC-SHA256")));
    // A Claude model Bedrock cannot count answers 400: the gateway counts instead.
    let r = h
        .post("/v1/messages/count_tokens", &request("bedrock-old"))
        .await;
    let old_model = count(r).await;
    assert!(old_model > 0 && old_model != upstream_count);

    // Unreachable or overloaded: the gateway's own count answers.
    let r = h
        .post("/v1/messages/count_tokens", &request("claude-down"))
        .await;
    let local = count(r).await;
    assert!(local > 0);
    assert_ne!(
        local, upstream_count,
        "the local estimate, not the mock's count"
    );
    // Anthropic found the request invalid: the client hears it, in Anthropic's shape.
    let r = h
        .post("/v1/messages/count_tokens", &request("claude-strict"))
        .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    // No Anthropic deployment: counted locally, nothing sent upstream.
    let before = h.recorded().len();
    let r = h.post("/v1/messages/count_tokens", &request("gpt")).await;
    assert_eq!(
        count(r).await,
        local,
        "the same local count for the same request"
    );
    assert_eq!(h.recorded().len(), before);
}
