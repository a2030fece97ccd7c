//! One conformance suite every provider adapter runs end to end (OpenAI-shaped request in, the
//! provider's wire format to `llmux-mock`, OpenAI-shaped answer out): text, streamed text, tool
//! calls, streamed tool calls, vision, JSON schema output, reasoning, embeddings where the
//! provider has them, and every upstream error kind with its status kept. Adding a provider
//! means adding a row here and passing it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{sse_data, start, stream_text, vertex_credentials_yaml, Harness};
use llmux::Outcome;
use llmux_types::ErrorKind;
use serde_json::{json, Value};

enum Embed {
    No,
    /// The chat deployment also embeds.
    Same,
    /// Embeddings go to a deployment with these `litellm_params`.
    Params(&'static str),
}

struct Row {
    /// The provider the gateway reports (`x-llmux-provider`).
    provider: &'static str,
    /// `litellm_params` for the deployment; `{mock}` is the mock's `/v1` base URL, `{mock_root}`
    /// its root, `{sa}` the test service account with the mock as its token endpoint.
    params: &'static str,
    embed: Embed,
}

const ROWS: &[Row] = &[
    Row {
        provider: "openai",
        params: r#"{model: openai/gpt-mock, api_base: "{mock}", api_key: k}"#,
        embed: Embed::Same,
    },
    Row {
        provider: "groq",
        params: r#"{model: groq/llama-mock, api_base: "{mock}", api_key: k}"#,
        embed: Embed::No,
    },
    Row {
        provider: "azure",
        params: r#"{model: azure/dep, api_base: "{mock}/..", api_key: k, api_version: "2024-10-21"}"#,
        embed: Embed::Same,
    },
    Row {
        provider: "azure",
        params: r#"{model: azure/dep, api_base: "{mock_root}", api_version: "2024-10-21", tenant_id: tenant-1, client_id: app-1, client_secret: s3cret}"#,
        embed: Embed::Same,
    },
    Row {
        provider: "anthropic",
        params: r#"{model: anthropic/claude-mock, api_base: "{mock}", api_key: k}"#,
        embed: Embed::No,
    },
    Row {
        provider: "gemini",
        params: r#"{model: gemini/gemini-mock, api_base: "{mock}/..", api_key: k}"#,
        embed: Embed::Same,
    },
    Row {
        provider: "vertex_ai",
        params: r#"{model: vertex_ai/gemini-mock, api_base: "{mock_root}", vertex_project: proj-1, vertex_location: europe-west4, vertex_credentials: {sa}}"#,
        embed: Embed::Params(
            r#"{model: vertex_ai/text-embedding-005, api_base: "{mock_root}", vertex_project: proj-1, vertex_credentials: {sa}}"#,
        ),
    },
    Row {
        provider: "vertex_ai",
        params: r#"{model: "vertex_ai/claude-mock@20250514", api_base: "{mock_root}", vertex_project: proj-1, vertex_location: us-east5, vertex_credentials: {sa}}"#,
        embed: Embed::No,
    },
    Row {
        provider: "bedrock",
        params: r#"{model: "bedrock/anthropic.claude-mock-v1:0", api_base: "{mock_root}", aws_access_key_id: AKIDEXAMPLE, aws_secret_access_key: secret, aws_region_name: us-west-2}"#,
        embed: Embed::Params(
            r#"{model: bedrock/cohere.embed-english-v3, api_base: "{mock_root}", aws_access_key_id: AKIDEXAMPLE, aws_secret_access_key: secret, aws_region_name: us-west-2}"#,
        ),
    },
    Row {
        provider: "cohere",
        params: r#"{model: cohere/command-mock, api_base: "{mock}/..", api_key: k}"#,
        embed: Embed::Same,
    },
];

const TOOLS: &str = r#"[{"type": "function", "function": {"name": "get_weather", "description": "weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]"#;
/// A 1x1 PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

fn expected_text() -> String {
    (0..20).map(|i| format!("tok{i} ")).collect()
}

fn tool_args(payloads: &[String]) -> String {
    payloads
        .iter()
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .flat_map(|v| {
            v["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|c| c["function"]["arguments"].as_str().map(str::to_owned))
        .collect()
}

/// Each upstream failure the mock can produce (status, message) and the kind it must map to.
/// The client sees the upstream's status.
const ERRORS: &[(u16, &str, ErrorKind)] = &[
    (400, "messages: field required", ErrorKind::InvalidRequest),
    (
        400,
        "prompt is too long: 208310 tokens > 200000 maximum",
        ErrorKind::ContextLengthExceeded,
    ),
    (401, "invalid credentials", ErrorKind::Authentication),
    (
        403,
        "not allowed to use this model",
        ErrorKind::PermissionDenied,
    ),
    (429, "slow down", ErrorKind::RateLimited),
    (500, "internal failure", ErrorKind::UpstreamError),
    (503, "overloaded, try later", ErrorKind::UpstreamUnavailable),
];

async fn check_errors(h: &Harness, p: &str, messages: &Value) {
    let mut logs = h.client.subscribe();
    for (status, message, kind) in ERRORS {
        let body = json!({"error": {"message": message, "type": "x", "param": null, "code": null}});
        h.mock
            .set_defaults(json!({"status": status, "error_body": body.to_string()}));
        let r = h
            .post(
                "/v1/chat/completions",
                &json!({"model": "m", "messages": messages}),
            )
            .await;
        assert_eq!(r.status(), *status, "{p}: {message}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["message"], *message, "{p}: message kept");
        let log = logs.recv().await.unwrap();
        assert_eq!(log.outcome, Outcome::Failed(*kind), "{p}: {message}");
        if *kind == ErrorKind::ContextLengthExceeded {
            assert_eq!(e["error"]["code"], "context_length_exceeded", "{p}");
        }
    }
    h.mock.set_defaults(json!({}));
}

#[tokio::test]
async fn every_provider_passes_the_conformance_suite() {
    let sa = vertex_credentials_yaml();
    for row in ROWS {
        let p = row.provider;
        let params = row.params.replace("{sa}", &sa);
        let embed_params = match row.embed {
            Embed::Params(e) => e.replace("{sa}", &sa),
            _ => params.clone(),
        };
        let yaml = format!(
            "model_list:\n  - model_name: m\n    litellm_params: {params}\n  - model_name: e\n    litellm_params: {embed_params}\n  - model_name: limited\n    litellm_params: {}\nrouter_settings: {{num_retries: 0, disable_cooldowns: true}}\nenvironment_variables: {{AZURE_AUTHORITY_HOST: \"{{mock_root}}\"}}\n",
            params.replacen('{', "{extra_headers: {x-mock-status: \"429\"}, ", 1)
        );
        let h = start(&yaml).await;
        let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]);
        let tools: Value = serde_json::from_str(TOOLS).unwrap();

        let r = h
            .post(
                "/v1/chat/completions",
                &json!({"model": "m", "messages": messages}),
            )
            .await;
        assert_eq!(r.status(), 200, "{p}: text");
        assert_eq!(r.headers()["x-llmux-provider"], p, "{p}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "chat.completion", "{p}");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant", "{p}");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            expected_text(),
            "{p}: text"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{p}");
        assert!(
            v["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
            "{p}: usage"
        );

        let r = h.post("/v1/chat/completions", &json!({"model": "m", "messages": messages, "stream": true, "stream_options": {"include_usage": true}})).await;
        assert_eq!(r.status(), 200, "{p}: stream");
        let payloads = sse_data(&r.text().await.unwrap());
        assert_eq!(
            stream_text(&payloads),
            expected_text(),
            "{p}: streamed text"
        );
        assert_eq!(
            payloads.last().map(String::as_str),
            Some("[DONE]"),
            "{p}: [DONE]"
        );
        assert!(
            payloads
                .iter()
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .any(|v| v["usage"]["completion_tokens"]
                    .as_u64()
                    .is_some_and(|n| n > 0)),
            "{p}: streamed usage"
        );

        let r = h.post("/v1/chat/completions", &json!({"model": "m", "messages": messages, "tools": tools, "tool_choice": "required"})).await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{p}: tools");
        let call = &v["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather", "{p}");
        assert_eq!(
            serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
            json!({"location": "Paris"}),
            "{p}"
        );

        let r = h.post("/v1/chat/completions", &json!({"model": "m", "messages": messages, "tools": tools, "tool_choice": "required", "stream": true})).await;
        let payloads = sse_data(&r.text().await.unwrap());
        assert_eq!(
            serde_json::from_str::<Value>(&tool_args(&payloads)).unwrap(),
            json!({"location": "Paris"}),
            "{p}: streamed tools"
        );

        let image = json!([{"role": "user", "content": [{"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG}")}}]}]);
        let r = h
            .post(
                "/v1/chat/completions",
                &json!({"model": "m", "messages": image}),
            )
            .await;
        assert_eq!(r.status(), 200, "{p}: vision");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            expected_text(),
            "{p}: vision"
        );
        let sent = h.recorded().pop().unwrap().body;
        assert!(sent.contains(PNG), "{p}: the image reached the upstream");

        let schema = json!({"type": "json_schema", "json_schema": {"name": "place", "strict": true,
            "schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}});
        let r = h
            .post(
                "/v1/chat/completions",
                &json!({"model": "m", "messages": messages, "response_format": schema}),
            )
            .await;
        assert_eq!(r.status(), 200, "{p}: json schema");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{p}: json schema");
        assert_eq!(
            serde_json::from_str::<Value>(v["choices"][0]["message"]["content"].as_str().unwrap())
                .unwrap(),
            json!({"location": "Paris"}),
            "{p}: json schema answer is the content"
        );

        let r = h
            .post(
                "/v1/chat/completions",
                &json!({"model": "m", "messages": messages, "reasoning_effort": "low"}),
            )
            .await;
        assert_eq!(r.status(), 200, "{p}: reasoning");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["choices"][0]["message"]["reasoning_content"], "Thinking it over.",
            "{p}: reasoning"
        );
        assert_eq!(
            v["choices"][0]["message"]["content"],
            expected_text(),
            "{p}: reasoning"
        );

        if !matches!(row.embed, Embed::No) {
            let r = h
                .post(
                    "/v1/embeddings",
                    &json!({"model": "e", "input": ["a", "b"]}),
                )
                .await;
            assert_eq!(r.status(), 200, "{p}: embeddings");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["data"].as_array().unwrap().len(), 2, "{p}: embeddings");
            assert!(
                v["data"][1]["embedding"].as_array().unwrap().len() > 1,
                "{p}"
            );
        }

        let r = h
            .post(
                "/v1/chat/completions",
                &json!({"model": "limited", "messages": messages}),
            )
            .await;
        assert_eq!(r.status(), 429, "{p}: rate limit keeps its status");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"]["message"].is_string(), "{p}: OpenAI error shape");

        check_errors(&h, p, &messages).await;
    }
}

/// An Anthropic event stream's events (the `data:` payloads, each naming its `type`, which the
/// SSE `event:` line repeats).
fn anthropic_events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let name = event
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .expect("every event is named");
            let data: Value = serde_json::from_str(
                event
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("every event has data"),
            )
            .unwrap();
            assert_eq!(data["type"], name);
            data
        })
        .collect()
}

/// The Anthropic Messages API (`/v1/messages`) in front of every provider: text, streams (the
/// documented event order), tool use (forced, streamed), images, thinking, count_tokens, and
/// each upstream failure as the Anthropic error type its status means.
#[tokio::test]
async fn every_provider_answers_the_messages_api() {
    let sa = vertex_credentials_yaml();
    let tools = json!([{"name": "get_weather", "description": "weather", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}]);
    for row in ROWS {
        let p = row.provider;
        let params = row.params.replace("{sa}", &sa);
        let yaml = format!(
            "model_list:\n  - model_name: m\n    litellm_params: {params}\nrouter_settings: {{num_retries: 0, disable_cooldowns: true}}\nenvironment_variables: {{AZURE_AUTHORITY_HOST: \"{{mock_root}}\"}}\n"
        );
        let h = start(&yaml).await;
        let base = json!({"model": "m", "max_tokens": 256, "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "Hello"}]});

        let r = h.post("/v1/messages", &base).await;
        assert_eq!(r.status(), 200, "{p}: text");
        assert_eq!(r.headers()["x-llmux-provider"], p, "{p}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "message", "{p}");
        assert_eq!(v["role"], "assistant", "{p}");
        assert!(v["id"].as_str().unwrap().starts_with("msg_"), "{p}: {v}");
        assert_eq!(v["content"][0]["type"], "text", "{p}");
        assert_eq!(v["content"][0]["text"], expected_text(), "{p}");
        assert_eq!(v["stop_reason"], "end_turn", "{p}");
        assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0, "{p}: {v}");
        assert!(
            v["usage"]["output_tokens"].as_u64().unwrap() > 0,
            "{p}: {v}"
        );

        let mut stream = base.clone();
        stream["stream"] = json!(true);
        let r = h.post("/v1/messages", &stream).await;
        assert_eq!(r.status(), 200, "{p}: stream");
        assert_eq!(r.headers()["content-type"], "text/event-stream", "{p}");
        let events = anthropic_events(&r.text().await.unwrap());
        let names: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(names[..2], ["message_start", "ping"], "{p}: {names:?}");
        assert_eq!(
            names[names.len() - 2..],
            ["message_delta", "message_stop"],
            "{p}"
        );
        let text: String = events
            .iter()
            .filter_map(|e| e["delta"]["text"].as_str())
            .collect();
        assert_eq!(text, expected_text(), "{p}: streamed text");
        let end = &events[events.len() - 2];
        assert_eq!(end["delta"]["stop_reason"], "end_turn", "{p}");
        assert!(
            end["usage"]["output_tokens"].as_u64().unwrap() > 0,
            "{p}: {end}"
        );

        let mut forced = base.clone();
        forced["tools"] = tools.clone();
        forced["tool_choice"] = json!({"type": "any"});
        let r = h.post("/v1/messages", &forced).await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["stop_reason"], "tool_use", "{p}: {v}");
        let call = v["content"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "tool_use")
            .unwrap_or_else(|| panic!("{p}: {v}"));
        assert_eq!(call["name"], "get_weather", "{p}");
        assert_eq!(call["input"], json!({"location": "Paris"}), "{p}");
        // The answer goes back with the result, as the SDKs send it.
        let mut turn = base.clone();
        turn["tools"] = tools.clone();
        turn["messages"] = json!([
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "Sunny"}]}
        ]);
        let r = h.post("/v1/messages", &turn).await;
        assert_eq!(r.status(), 200, "{p}: tool result turn");
        assert!(
            h.recorded().pop().unwrap().body.contains("Sunny"),
            "{p}: the result reached the upstream"
        );

        forced["stream"] = json!(true);
        let r = h.post("/v1/messages", &forced).await;
        let events = anthropic_events(&r.text().await.unwrap());
        let start = events
            .iter()
            .find(|e| {
                e["type"] == "content_block_start" && e["content_block"]["type"] == "tool_use"
            })
            .unwrap_or_else(|| panic!("{p}: {events:?}"));
        assert_eq!(start["content_block"]["name"], "get_weather", "{p}");
        let json: String = events
            .iter()
            .filter_map(|e| e["delta"]["partial_json"].as_str())
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&json).unwrap(),
            json!({"location": "Paris"}),
            "{p}"
        );
        assert_eq!(
            events[events.len() - 2]["delta"]["stop_reason"],
            "tool_use",
            "{p}"
        );

        let mut image = base.clone();
        image["messages"] = json!([{"role": "user", "content": [{"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}]);
        let r = h.post("/v1/messages", &image).await;
        assert_eq!(r.status(), 200, "{p}: vision");
        assert!(
            h.recorded().pop().unwrap().body.contains(PNG),
            "{p}: the image reached the upstream"
        );

        let mut thinking = base.clone();
        thinking["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
        let r = h.post("/v1/messages", &thinking).await;
        assert_eq!(r.status(), 200, "{p}: thinking");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["content"][0]["type"], "thinking", "{p}: {v}");
        assert_eq!(v["content"][0]["thinking"], "Thinking it over.", "{p}");
        assert_eq!(v["content"][1]["text"], expected_text(), "{p}");

        let r = h
            .post(
                "/v1/messages/count_tokens",
                &json!({"model": "m", "messages": [{"role": "user", "content": "Hello there"}]}),
            )
            .await;
        assert_eq!(r.status(), 200, "{p}: count_tokens");
        let v: Value = r.json().await.unwrap();
        assert!(v["input_tokens"].as_u64().unwrap() > 0, "{p}: {v}");

        for (status, expected) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (503, "overloaded_error"),
        ] {
            let body = json!({"error": {"message": "upstream says no", "type": "x", "param": null, "code": null}});
            h.mock
                .set_defaults(json!({"status": status, "error_body": body.to_string()}));
            let r = h.post("/v1/messages", &base).await;
            assert_eq!(r.status(), status, "{p}: {expected}");
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["type"], "error", "{p}");
            assert_eq!(e["error"]["type"], expected, "{p}: {status}");
            assert!(e["error"]["message"].is_string(), "{p}");
        }
        h.mock.set_defaults(json!({}));
    }
}
