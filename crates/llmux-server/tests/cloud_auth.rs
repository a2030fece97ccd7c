//! Credentials that are minted or computed per request, end to end through the mock's token
//! endpoints: Vertex AI service-account tokens and Azure Entra ID tokens (minted once, shared by
//! concurrent requests, refreshed on expiry, failures reported as authentication errors), and
//! Bedrock's SigV4 signatures and event streams.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{sse_data, start, stream_text, vertex_credentials_yaml, Harness};
use serde_json::{json, Value};

fn header<'a>(r: &'a llmux_mock::RecordedRequest, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn chat(h: &Harness, model: &str) -> reqwest::Response {
    h.post(
        "/v1/chat/completions",
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
}

#[tokio::test]
async fn vertex_tokens_are_minted_once_shared_and_refreshed_on_expiry() {
    let yaml = format!(
        "model_list:\n  - model_name: v\n    litellm_params: {{model: vertex_ai/gemini-mock, api_base: \"{{mock_root}}\", vertex_project: proj-1, vertex_credentials: {}}}\n",
        vertex_credentials_yaml()
    );
    let h = start(&yaml).await;
    let answers = futures_util::future::join_all((0..16).map(|_| chat(&h, "v"))).await;
    assert!(answers.iter().all(|r| r.status() == 200));
    assert_eq!(
        h.stat("tokens_minted"),
        1,
        "16 concurrent requests, one token"
    );
    let last = h.recorded().pop().unwrap();
    assert!(last.path.starts_with("/v1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-mock:generateContent"));
    assert_eq!(header(&last, "authorization"), Some("Bearer mock-token-1"));

    // Tokens that live one second are refreshed before they expire.
    h.mock.set_defaults(json!({"token_expires_in": 1}));
    let h2 = start(&yaml).await;
    h2.mock.set_defaults(json!({"token_expires_in": 1}));
    assert_eq!(chat(&h2, "v").await.status(), 200);
    assert_eq!(chat(&h2, "v").await.status(), 200);
    assert_eq!(h2.stat("tokens_minted"), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(chat(&h2, "v").await.status(), 200);
    assert_eq!(h2.stat("tokens_minted"), 2, "an expired token is replaced");
    let last = h2.recorded().pop().unwrap();
    assert_eq!(header(&last, "authorization"), Some("Bearer mock-token-2"));
}

#[tokio::test]
async fn vertex_claude_streams_through_stream_raw_predict() {
    let yaml = format!(
        "model_list:\n  - model_name: c\n    litellm_params: {{model: \"vertex_ai/claude-mock@1\", api_base: \"{{mock_root}}\", vertex_project: p, vertex_location: us-east5, vertex_credentials: {}}}\n",
        vertex_credentials_yaml()
    );
    let h = start(&yaml).await;
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({"model": "c", "messages": [{"role": "user", "content": "hi"}], "stream": true}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let payloads = sse_data(&r.text().await.unwrap());
    assert!(stream_text(&payloads).starts_with("tok0 tok1"));
    let sent = h.recorded().pop().unwrap();
    assert!(
        sent.path
            .ends_with("/publishers/anthropic/models/claude-mock@1:streamRawPredict"),
        "{}",
        sent.path
    );
    // The mock answers 400 to a body with `model` or without `anthropic_version:
    // vertex-2023-10-16` (what Vertex does), so the 200 above already proves the body's shape.
    let body: Value = serde_json::from_str(&sent.body).unwrap();
    assert_eq!(body["anthropic_version"], "vertex-2023-10-16");
}

#[tokio::test]
async fn entra_id_tokens_replace_the_api_key_and_failures_are_auth_errors() {
    let yaml = "model_list:
  - model_name: az
    litellm_params: {model: azure/dep, api_base: \"{mock_root}\", api_version: \"2024-10-21\", tenant_id: t1, client_id: app, client_secret: s3cret}
  - model_name: revoked
    litellm_params: {model: azure/dep2, api_base: \"{mock_root}\", api_version: \"2024-10-21\", tenant_id: t1, client_id: app, client_secret: wrong}
  - model_name: static
    litellm_params: {model: azure/dep3, api_base: \"{mock_root}\", api_version: \"2024-10-21\", azure_ad_token: eyJ-static}
router_settings: {num_retries: 0}
environment_variables: {AZURE_AUTHORITY_HOST: \"{mock_root}\", AZURE_API_KEY: env-key-not-used}
";
    let h = start(yaml).await;
    let answers = futures_util::future::join_all((0..8).map(|_| chat(&h, "az"))).await;
    assert!(answers.iter().all(|r| r.status() == 200));
    assert_eq!(h.stat("tokens_minted"), 1);
    let sent = h.recorded().pop().unwrap();
    assert_eq!(
        sent.path,
        "/openai/deployments/dep/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(header(&sent, "authorization"), Some("Bearer mock-token-1"));
    assert_eq!(
        header(&sent, "api-key"),
        None,
        "no API key next to the token"
    );

    let r = chat(&h, "revoked").await;
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "authentication_error");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("/t1/oauth2/v2.0/token") && message.contains("AADSTS7000215"),
        "{message}"
    );
    assert!(
        !message.contains("wrong"),
        "the secret never reaches the client"
    );

    assert_eq!(chat(&h, "static").await.status(), 200);
    let sent = h.recorded().pop().unwrap();
    assert_eq!(header(&sent, "authorization"), Some("Bearer eyJ-static"));
    assert_eq!(h.stat("tokens_minted"), 1);
}

const BEDROCK: &str = "model_list:
  - model_name: b
    litellm_params: {model: \"bedrock/anthropic.claude-mock-v1:0\", api_base: \"{mock_root}\", aws_access_key_id: AKIDEXAMPLE, aws_secret_access_key: secret, aws_session_token: session-1, aws_region_name: eu-central-1}
  - model_name: unsigned
    litellm_params: {model: \"bedrock/anthropic.claude-mock-v1:0\", api_base: \"{mock_root}\", aws_region_name: eu-central-1}
  - model_name: titan
    litellm_params: {model: bedrock/amazon.titan-embed-text-v2:0, api_base: \"{mock_root}\", aws_access_key_id: AKIDEXAMPLE, aws_secret_access_key: secret}
  - model_name: throttled-stream
    litellm_params: {model: \"bedrock/converse/anthropic.claude-mock-v1:0\", api_base: \"{mock_root}\", aws_access_key_id: AKIDEXAMPLE, aws_secret_access_key: secret, extra_headers: {x-mock-error-event-after: \"5\"}}
router_settings: {num_retries: 0}
";

#[tokio::test]
async fn bedrock_requests_are_sigv4_signed_with_the_model_id_encoded() {
    let h = start(BEDROCK).await;
    assert_eq!(chat(&h, "b").await.status(), 200);
    let sent = h.recorded().pop().unwrap();
    assert_eq!(sent.path, "/model/anthropic.claude-mock-v1%3A0/converse");
    let auth = header(&sent, "authorization").unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
        "{auth}"
    );
    assert!(
        auth.contains("/eu-central-1/bedrock/aws4_request"),
        "{auth}"
    );
    assert!(
        auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token"),
        "{auth}"
    );
    assert_eq!(header(&sent, "x-amz-security-token"), Some("session-1"));
    assert!(header(&sent, "x-amz-date").is_some());

    let r = chat(&h, "unsigned").await;
    assert_eq!(r.status(), 403, "Bedrock refuses an unsigned request");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "UnrecognizedClientException");
}

#[tokio::test]
async fn bedrock_titan_embeds_one_text_per_request() {
    let h = start(BEDROCK).await;
    let r = h
        .post(
            "/v1/embeddings",
            &json!({"model": "titan", "input": "hello world", "dimensions": 4}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 4);
    assert_eq!(v["usage"]["prompt_tokens"], 2);
    let sent = h.recorded().pop().unwrap();
    assert_eq!(sent.path, "/model/amazon.titan-embed-text-v2%3A0/invoke");

    let r = h
        .post(
            "/v1/embeddings",
            &json!({"model": "titan", "input": ["a", "b"]}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "input");
}

#[tokio::test]
async fn a_bedrock_stream_exception_after_content_ends_the_stream_with_an_error_event() {
    let h = start(BEDROCK).await;
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({"model": "throttled-stream", "messages": [{"role": "user", "content": "hi"}], "stream": true}),
        )
        .await;
    assert_eq!(r.status(), 200, "the failure came after the first content");
    let payloads = sse_data(&r.text().await.unwrap());
    assert_eq!(stream_text(&payloads), "tok0 tok1 tok2 tok3 ");
    let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "ThrottlingException");
    assert!(last["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Too many requests"));
}

/// `/v1/messages` to Claude on Vertex AI and on Bedrock: the client's own Messages body goes
/// through as written (cache_control, thinking, betas, key order), placed as each cloud wants it
/// (Vertex: model in the URL, `anthropic_version` in the body, betas as a header; Bedrock:
/// InvokeModel with `anthropic_version` and `anthropic_beta` in the body, no `model` or
/// `stream`), and the answer and every stream event come back as the cloud sent them.
#[tokio::test]
async fn the_messages_api_passes_through_to_claude_on_vertex_and_bedrock() {
    let yaml = format!(
        "model_list:
  - model_name: vc
    litellm_params: {{model: \"vertex_ai/claude-mock@1\", api_base: \"{{mock_root}}\", vertex_project: p, vertex_location: us-east5, vertex_credentials: {}}}
  - model_name: bc
    litellm_params: {{model: \"bedrock/us.anthropic.claude-mock-v1:0\", api_base: \"{{mock_root}}\", aws_access_key_id: AKIDEXAMPLE, aws_secret_access_key: secret, aws_region_name: us-west-2}}
router_settings: {{num_retries: 0}}
",
        vertex_credentials_yaml()
    );
    let h = start(&yaml).await;
    let ordered = |model: &str, stream: bool| {
        format!(
            r#"{{"model":"{model}","max_tokens":64,"stream":{stream},"thinking":{{"type":"enabled","budget_tokens":1024}},"system":[{{"type":"text","text":"Be brief","cache_control":{{"type":"ephemeral"}}}}],"messages":[{{"role":"user","content":[{{"type":"text","text":"hi","cache_control":{{"type":"ephemeral","ttl":"1h"}}}}]}}],"tools":[{{"name":"answer","input_schema":{{"type":"object","properties":{{"zeta":{{"type":"string"}},"alpha":{{"type":"string"}}}}}}}}],"metadata":{{"user_id":"u-1","tags":["x"]}}}}"#
        )
    };
    let send = |body: String| {
        h.http
            .post(format!("{}/v1/messages", h.url))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .header(
                "anthropic-beta",
                "claude-code-20250219,interleaved-thinking-2025-05-14, context-1m-2025-08-07",
            )
            .body(body)
            .send()
    };

    // Vertex: the body minus `model`, plus Vertex's version; the betas in the header.
    let r = send(ordered("vc", false)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llmux-provider"], "vertex_ai");
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer["type"], "message",
        "Anthropic's own answer: {answer}"
    );
    assert!(answer["id"].as_str().unwrap().starts_with("msg_mock"));
    let sent = h.recorded().pop().unwrap();
    assert!(sent
        .path
        .ends_with("/publishers/anthropic/models/claude-mock@1:rawPredict"));
    let mut expected: Value = serde_json::from_str(&ordered("vc", false)).unwrap();
    let o = expected.as_object_mut().unwrap();
    o.remove("model");
    o.insert("anthropic_version".into(), json!("vertex-2023-10-16"));
    o.insert("metadata".into(), json!({"user_id": "u-1"}));
    assert_eq!(serde_json::from_str::<Value>(&sent.body).unwrap(), expected);
    assert!(sent.body.find("zeta").unwrap() < sent.body.find("alpha").unwrap());
    assert_eq!(
        header(&sent, "anthropic-beta"),
        Some("claude-code-20250219,interleaved-thinking-2025-05-14, context-1m-2025-08-07")
    );

    // Bedrock: InvokeModel, the version and the betas it offers (a list) in the body; Claude
    // Code's first-party beta is left out (Bedrock answers 400 to it, as the mock does).
    let r = send(ordered("bc", false)).await.unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["type"], "message", "{answer}");
    assert!(answer["content"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["type"] == "thinking" && b["signature"].is_string()));
    let sent = h.recorded().pop().unwrap();
    assert_eq!(sent.path, "/model/us.anthropic.claude-mock-v1%3A0/invoke");
    assert!(header(&sent, "authorization")
        .unwrap()
        .starts_with("AWS4-HMAC-SHA256"));
    let mut expected: Value = serde_json::from_str(&ordered("bc", false)).unwrap();
    let o = expected.as_object_mut().unwrap();
    o.remove("model");
    o.remove("stream");
    o.insert("anthropic_version".into(), json!("bedrock-2023-05-31"));
    o.insert(
        "anthropic_beta".into(),
        json!(["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"]),
    );
    o.insert("metadata".into(), json!({"user_id": "u-1"}));
    assert_eq!(serde_json::from_str::<Value>(&sent.body).unwrap(), expected);
    assert_eq!(header(&sent, "anthropic-beta"), None);

    // Streams: every Anthropic event as the cloud sent it, named, in order, with thinking
    // signatures; Bedrock's event-stream frames unwrapped.
    for (model, path_end) in [
        ("vc", ":streamRawPredict"),
        ("bc", "/invoke-with-response-stream"),
    ] {
        let r = send(ordered(model, true)).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let text = r.text().await.unwrap();
        let sent = h.recorded().pop().unwrap();
        assert!(sent.path.ends_with(path_end), "{}", sent.path);
        let events: Vec<(String, Value)> = text
            .split("\n\n")
            .filter(|e| e.contains("data: "))
            .map(|e| {
                let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
                let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                (name.to_owned(), serde_json::from_str(data).unwrap())
            })
            .collect();
        assert!(events.iter().all(|(name, v)| v["type"] == name.as_str()));
        let kinds: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(kinds.first(), Some(&"message_start"), "{model}: {text}");
        assert_eq!(kinds.last(), Some(&"message_stop"), "{model}: {text}");
        assert!(
            events
                .iter()
                .any(|(_, v)| v["delta"]["type"] == "signature_delta"),
            "{model}: thinking signatures come through: {text}"
        );
        let id = events[0].1["message"]["id"].as_str().unwrap();
        assert!(
            id.starts_with("msg_mock"),
            "the upstream's own message: {id}"
        );
    }
}

/// Claude on Vertex counts through `count-tokens:rawPredict`: the model and Vertex's
/// `anthropic_version` in the body, the minted token on the request.
#[tokio::test]
async fn count_tokens_asks_claude_on_vertex() {
    let yaml = format!(
        "model_list:\n  - model_name: vc\n    litellm_params: {{model: \"vertex_ai/claude-mock@1\", api_base: \"{{mock_root}}\", vertex_project: p, vertex_location: us-east5, vertex_credentials: {}}}\n",
        vertex_credentials_yaml()
    );
    let h = start(&yaml).await;
    let body = json!({"model": "vc", "messages": [{"role": "user", "content": "Count me, please."}], "system": "Be brief"});
    let r = h.post("/v1/messages/count_tokens", &body).await;
    assert_eq!(r.status(), 200);
    let counted = r.json::<Value>().await.unwrap()["input_tokens"]
        .as_u64()
        .unwrap();
    let sent = h.recorded().pop().unwrap();
    assert_eq!(
        sent.path,
        "/v1/projects/p/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict"
    );
    assert_eq!(header(&sent, "authorization"), Some("Bearer mock-token-1"));
    let mut sent_body: Value = serde_json::from_str(&sent.body).unwrap();
    assert_eq!(sent_body["model"], "claude-mock@1");
    assert_eq!(sent_body["anthropic_version"], "vertex-2023-10-16");
    sent_body
        .as_object_mut()
        .unwrap()
        .remove("anthropic_version");
    assert_eq!(counted, llmux_mock::mock_count_tokens(&sent_body));
}
