//! Log sinks from LiteLLM's callbacks, each against a receiver speaking its API: Langfuse's
//! ingestion payloads validated against the schemas of Langfuse's published OpenAPI spec,
//! `generic_api`, `datadog` and `jsonl` carrying LiteLLM's standard payload (success and failure
//! callbacks told only their requests), `s3` writing JSON Lines objects to an S3-compatible server
//! (moto, started by scripts/test.sh), message logging off per key and PII masking.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{start_governed, Db, Harness};
use serde_json::{json, Value};

/// What a receiver got: each request's path, headers and body.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Call>>>);

#[derive(Clone, Debug)]
struct Call {
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Call {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Received {
    /// Wait until `count` calls to `path` arrived.
    async fn calls(&self, path: &str, count: usize) -> Vec<Call> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let calls: Vec<Call> = self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.path == path)
                .cloned()
                .collect();
            if calls.len() >= count {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} calls to {path}",
                calls.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn paths(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.path.clone())
            .collect()
    }
}

/// A receiver answering every POST with `status` and `answer`: its base URL.
async fn receiver(status: u16, answer: Value) -> (String, Received) {
    let received = Received::default();
    let state = received.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            let answer = answer.clone();
            async move {
                state.0.lock().unwrap().push(Call {
                    path: uri.path().to_owned(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect(),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                });
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    axum::Json(answer),
                )
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

/// A priced model that answers, and one whose upstream refuses every request.
fn config(callbacks: &str, env: &str, extra: &str) -> String {
    format!(
        r#"
model_list:
  - model_name: gpt
    litellm_params: {{model: openai/mock-gpt, api_base: "{{mock}}", api_key: k, input_cost_per_token: 0.001, output_cost_per_token: 0.002}}
  - model_name: broken
    litellm_params: {{model: openai/mock-gpt, api_base: "{{mock}}", api_key: k, extra_headers: {{x-mock-status: "400"}}}}
router_settings: {{num_retries: 0}}
litellm_settings:
{callbacks}
{extra}
environment_variables:
{env}
"#
    )
}

/// A chat request; the response's status, llmux's request id, its cost header and body.
async fn chat(h: &Harness, key: &str, model: &str, prompt: &str) -> (u16, String, f64, Value) {
    chat_answered(h, key, model, prompt, "mock answer").await
}

/// `chat`, with the mock told what to answer.
async fn chat_answered(
    h: &Harness,
    key: &str,
    model: &str,
    prompt: &str,
    answer: &str,
) -> (u16, String, f64, Value) {
    let response = h
        .http
        .post(format!("{}/v1/chat/completions", h.url))
        .bearer_auth(key)
        .json(&json!({"model": model, "temperature": 0.25, "messages": [{"role": "user", "content": prompt}],
                      "mock_options": {"text": answer}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("x-litellm-call-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let cost = response
        .headers()
        .get("x-litellm-response-cost")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0.0);
    (
        status,
        id,
        cost,
        response.json().await.unwrap_or(Value::Null),
    )
}

fn flush(h: &Harness) -> impl std::future::Future<Output = ()> + '_ {
    h.telemetry.as_ref().unwrap().flush(Duration::from_secs(5))
}

/// The ingestion request schema of Langfuse's published OpenAPI spec (tests/fixtures/langfuse),
/// with OpenAPI's `nullable` and `oneOf` read as JSON Schema.
fn langfuse_schema() -> jsonschema::Validator {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/langfuse/openapi-ingestion.json"
    );
    let mut spec: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    fn json_schema(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for child in map.values_mut() {
                    json_schema(child);
                }
                if map.remove("nullable") == Some(Value::Bool(true)) {
                    if let Some(Value::String(t)) = map.get("type").cloned() {
                        map.insert("type".into(), json!([t, "null"]));
                    } else {
                        let inner = Value::Object(std::mem::take(map));
                        map.insert("anyOf".into(), json!([inner, {"type": "null"}]));
                    }
                }
                // The spec's unions are unions, not JSON Schema's "exactly one": an integer is
                // both of MapValue's integer and number, a Usage also an (all-optional)
                // OpenAIUsage, as the generated clients read them.
                if let Some(options) = map.remove("oneOf") {
                    map.insert("anyOf".into(), options);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(json_schema),
            _ => {}
        }
    }
    json_schema(&mut spec);
    let schema = json!({
        "$ref": "#/components/schemas/IngestionBatchRequest",
        "components": spec["components"],
    });
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

#[tokio::test]
async fn langfuse_gets_a_trace_and_a_generation_per_request_as_its_api_defines_them() {
    let (host, received) = receiver(
        207,
        json!({"successes": [{"id": "x", "status": 201}], "errors": []}),
    )
    .await;
    let env = format!(
        "  LANGFUSE_HOST: \"{host}\"\n  LANGFUSE_PUBLIC_KEY: pk-lf-test\n  LANGFUSE_SECRET_KEY: sk-lf-test\n"
    );
    let h = start_governed(
        &config(
            "  success_callback: [\"langfuse\"]\n  failure_callback: [\"langfuse\"]",
            &env,
            "",
        ),
        Db::Sqlite,
    )
    .await;
    let key = h
        .new_key(json!({"key_alias": "lf-key", "user_id": "user-1", "models": ["gpt", "broken"]}))
        .await;
    let (status, id, cost, answer) = chat(&h, &key, "gpt", "what is langfuse").await;
    assert_eq!(status, 200);
    assert!(cost > 0.0);
    let (status, failed_id, _, _) = chat(&h, &key, "broken", "this one fails").await;
    assert_eq!(status, 400);
    flush(&h).await;

    let calls = received.calls("/api/public/ingestion", 1).await;
    let schema = langfuse_schema();
    let mut events = Vec::new();
    for call in &calls {
        let errors: Vec<String> = schema
            .iter_errors(&call.body)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "not Langfuse's ingestion request: {errors:?}\n{}",
            call.body
        );
        // Basic auth with the project's keys.
        assert_eq!(
            call.header("authorization"),
            Some("Basic cGstbGYtdGVzdDpzay1sZi10ZXN0")
        );
        events.extend(call.body["batch"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(events.len(), 4, "a trace and a generation per request");
    let generation = |id: &str| {
        events
            .iter()
            .find(|e| e["type"] == "generation-create" && e["body"]["id"] == id)
            .unwrap_or_else(|| panic!("no generation {id}"))["body"]
            .clone()
    };
    let served = generation(&id);
    let trace = events
        .iter()
        .find(|e| e["type"] == "trace-create" && e["body"]["id"] == served["traceId"])
        .expect("the generation's trace")["body"]
        .clone();
    assert_eq!(trace["userId"], "user-1");
    assert_eq!(served["name"], "litellm-acompletion");
    assert_eq!(served["model"], "mock-gpt");
    assert_eq!(served["level"], "DEFAULT");
    assert_eq!(served["modelParameters"]["temperature"], 0.25);
    assert_eq!(served["usage"]["input"], answer["usage"]["prompt_tokens"]);
    assert_eq!(
        served["usage"]["output"],
        answer["usage"]["completion_tokens"]
    );
    assert_eq!(served["usage"]["unit"], "TOKENS");
    let logged_cost = served["costDetails"]["total"].as_f64().unwrap();
    assert!((logged_cost - cost).abs() < 1e-9, "{logged_cost} vs {cost}");
    assert!(served["input"].to_string().contains("what is langfuse"));
    let said = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(served["output"].to_string().contains(said));
    assert_eq!(served["metadata"]["user_api_key_alias"], "lf-key");
    assert!(served["startTime"].as_str().unwrap() <= served["endTime"].as_str().unwrap());

    let failed = generation(&failed_id);
    assert_eq!(failed["level"], "ERROR");
    assert!(!failed["statusMessage"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn generic_api_datadog_and_jsonl_get_the_standard_payload_of_their_requests() {
    let (generic, generic_got) = receiver(200, json!({"ok": true})).await;
    let (datadog, datadog_got) = receiver(202, json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("requests.jsonl");
    let env = format!(
        "  GENERIC_LOGGER_ENDPOINT: \"{generic}/ingest\"\n  GENERIC_LOGGER_HEADERS: \"x-sink-token=abc\"\n  \
         DD_API_KEY: dd-key\n  DD_BASE_URL: \"{datadog}\"\n"
    );
    let h = start_governed(
        &config(
            "  success_callback: [\"generic_api\", \"jsonl\"]\n  failure_callback: [\"datadog\"]",
            &env,
            &format!(
                "llmux_settings: {{jsonl_log_path: \"{}\", mask_pii_in_logs: true}}",
                jsonl.display()
            ),
        ),
        Db::Sqlite,
    )
    .await;
    let key = h
        .new_key(json!({"key_alias": "sinks", "models": ["gpt", "broken"]}))
        .await;
    let quiet = h
        .new_key(json!({"models": ["gpt"], "metadata": {"turn_off_message_logging": true}}))
        .await;
    let (status, id, cost, _) = chat(
        &h,
        &key,
        "gpt",
        "call me at +1 415-555-0132 or mail bob@example.com",
    )
    .await;
    assert_eq!(status, 200);
    let (status, quiet_id, _, quiet_answer) =
        chat_answered(&h, &quiet, "gpt", "quiet-prompt-9913", "quiet-answer-5150").await;
    assert_eq!(status, 200);
    let (status, failed_id, _, _) = chat(&h, &key, "broken", "failing-prompt").await;
    assert_eq!(status, 400);
    flush(&h).await;

    // generic_api: the successes, as a JSON array of standard payloads, with its headers.
    let calls = generic_got.calls("/ingest", 1).await;
    assert!(calls
        .iter()
        .all(|c| c.header("x-sink-token") == Some("abc")));
    let payloads: Vec<Value> = calls
        .iter()
        .flat_map(|c| c.body.as_array().unwrap().clone())
        .collect();
    let ids: Vec<&str> = payloads.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&id.as_str()) && ids.contains(&quiet_id.as_str()));
    let payload = payloads.iter().find(|p| p["id"] == id).unwrap();
    assert_eq!(payload["call_type"], "acompletion");
    assert_eq!(payload["status"], "success");
    assert_eq!(payload["model_group"], "gpt");
    assert_eq!(payload["custom_llm_provider"], "openai");
    assert!((payload["response_cost"].as_f64().unwrap() - cost).abs() < 1e-9);
    assert!(payload["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(payload["metadata"]["user_api_key_alias"], "sinks");
    assert_eq!(payload["model_parameters"]["temperature"], 0.25);
    // Masked: the prompt is logged without the phone number and the address.
    let messages = payload["messages"].to_string();
    assert!(
        messages.contains("[PHONE]") && messages.contains("[EMAIL]"),
        "{messages}"
    );
    assert!(!messages.contains("bob@example.com") && !messages.contains("555-0132"));
    // The quiet key's request: counted, its words nowhere.
    let quiet_payload = payloads.iter().find(|p| p["id"] == quiet_id).unwrap();
    assert_eq!(quiet_payload["messages"], "redacted-by-llmux");
    assert_eq!(quiet_payload["response"], "redacted-by-llmux");

    // datadog: the failure only, its entry marked as an error, the payload as its message.
    let calls = datadog_got.calls("/api/v2/logs", 1).await;
    assert!(calls
        .iter()
        .all(|c| c.header("dd-api-key") == Some("dd-key")));
    let entries: Vec<Value> = calls
        .iter()
        .flat_map(|c| c.body.as_array().unwrap().clone())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["status"], "error");
    assert_eq!(entries[0]["ddsource"], "litellm");
    let message: Value = serde_json::from_str(entries[0]["message"].as_str().unwrap()).unwrap();
    assert_eq!(message["id"], failed_id);
    assert_eq!(message["status"], "failure");
    assert_eq!(message["error_information"]["error_code"], "400");

    // jsonl: the successes, a line each.
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().any(|l| l["id"] == id));
    assert!(!text.contains("bob@example.com"));

    // Nothing the quiet key sent or got is in any sink.
    let said = quiet_answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert_eq!(said, "quiet-answer-5150");
    let everything = format!(
        "{text}{:?}{:?}",
        generic_got.0.lock().unwrap(),
        datadog_got.0.lock().unwrap()
    );
    assert!(!everything.contains("quiet-prompt-9913"));
    assert!(!everything.contains(said));
    assert!(generic_got.paths().iter().all(|p| p == "/ingest"));
}

fn s3_url() -> String {
    std::env::var("LLMUX_TEST_S3_URL").unwrap_or_else(|_| {
        panic!("LLMUX_TEST_S3_URL is not set: run the tests through scripts/test.sh, which starts an S3-compatible server")
    })
}

#[tokio::test]
async fn s3_gets_a_json_lines_object_per_batch() {
    let s3 = s3_url();
    let http = reqwest::Client::new();
    let bucket = format!("llmux-logs-{}", uuid_suffix());
    assert!(http
        .put(format!("{s3}/{bucket}"))
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    let extra = format!(
        "  s3_callback_params:\n    s3_bucket_name: {bucket}\n    s3_region_name: us-east-1\n    \
         s3_endpoint_url: \"{s3}\"\n    s3_aws_access_key_id: AKIDEXAMPLE\n    \
         s3_aws_secret_access_key: os.environ/TEST_S3_SECRET\n    s3_path: gateway/logs"
    );
    let h = start_governed(
        &config(
            "  callbacks: [\"s3\"]",
            "  TEST_S3_SECRET: s3-secret\n",
            &extra,
        ),
        Db::Sqlite,
    )
    .await;
    let key = h.new_key(json!({"models": ["gpt"]})).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (status, id, _, _) = chat(&h, &key, "gpt", &format!("to s3 {n}")).await;
        assert_eq!(status, 200);
        ids.push(id);
    }
    flush(&h).await;

    let listing = http
        .get(format!("{s3}/{bucket}?list-type=2&prefix=gateway/logs/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let keys: Vec<&str> = listing
        .split("<Key>")
        .skip(1)
        .filter_map(|rest| rest.split("</Key>").next())
        .collect();
    assert!(!keys.is_empty(), "{listing}");
    let mut logged = Vec::new();
    for key in keys {
        assert!(
            key.starts_with("gateway/logs/") && key.ends_with(".jsonl"),
            "{key}"
        );
        let object = signed_get(&http, &format!("{s3}/{bucket}/{key}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in object.lines() {
            let payload: Value = serde_json::from_str(line).unwrap();
            logged.push(payload["id"].as_str().unwrap().to_owned());
        }
    }
    logged.sort();
    ids.sort();
    assert_eq!(logged, ids);
    let status = &h.telemetry.as_ref().unwrap().status()[0];
    assert_eq!((status.name, status.exported, status.failed), ("s3", 3, 0));
}

/// A GET signed (SigV4) with the credentials the sink wrote with: objects are private.
fn signed_get(http: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    use aws_sigv4::http_request::{
        sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
    };
    let identity =
        aws_credential_types::Credentials::new("AKIDEXAMPLE", "s3-secret", None, None, "test")
            .into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(std::time::SystemTime::now())
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let signable =
        SignableRequest::new("GET", url, std::iter::empty(), SignableBody::Bytes(&[])).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let (headers, _) = instructions.into_parts();
    let mut request = http.get(url);
    for h in headers {
        request = request.header(h.name(), h.value());
    }
    request
}

/// A short unique suffix (bucket names are shared by every run against one server).
fn uuid_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
