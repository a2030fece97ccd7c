//! The library API (`llmux::Client`) in-process: typed chat, streaming, embeddings, errors and
//! reload, against the in-process mock provider and the real mock upstream over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use llmux::types::openai::{
    ChatCompletionRequest, ChatMessage, EmbeddingInput, EmbeddingRequest, EmbeddingVector,
};
use llmux::{Client, ErrorKind, Outcome};

async fn mock_upstream() -> String {
    let (router, _) = llmux_mock::app(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/v1")
}

async fn client() -> Client {
    let upstream = mock_upstream().await;
    let yaml = format!(
        r#"
model_list:
  - model_name: local
    litellm_params: {{model: mock/local, mock_response: "the answer is 42"}}
  - model_name: remote
    litellm_params: {{model: openai/remote-model, api_base: "{upstream}", api_key: k}}
"#
    );
    let env: HashMap<String, String> = HashMap::new();
    let loaded = llmux::config::load_str(&yaml, &env).unwrap();
    Client::with_env(loaded.config, &env).unwrap().0
}

#[tokio::test]
async fn typed_chat_in_process_and_over_http() {
    let client = client().await;
    let local = client
        .chat(&ChatCompletionRequest::new(
            "local",
            vec![ChatMessage::user("q")],
        ))
        .await
        .unwrap();
    assert_eq!(local.text(), "the answer is 42");
    assert_eq!(local.choices[0].finish_reason.as_deref(), Some("stop"));
    let remote = client
        .chat(&ChatCompletionRequest::new(
            "remote",
            vec![ChatMessage::user("q")],
        ))
        .await
        .unwrap();
    assert_eq!(remote.model, "remote-model");
    assert!(remote.text().starts_with("tok0 tok1"));
    assert!(remote.usage.unwrap().total_tokens > 0);
    assert_eq!(
        remote.extra["x_mock_extra"]["kept"], true,
        "unknown response fields are kept"
    );
}

#[tokio::test]
async fn typed_streams_yield_chunks_in_order() {
    let client = client().await;
    for model in ["local", "remote"] {
        let mut stream = client
            .chat_stream(&ChatCompletionRequest::new(
                model,
                vec![ChatMessage::user("q")],
            ))
            .await
            .unwrap();
        let mut text = String::new();
        let mut finish = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            if let Some(choice) = chunk.choices.first() {
                text.push_str(choice.delta.content.as_deref().unwrap_or(""));
                finish = finish.or(choice.finish_reason.clone());
            }
        }
        assert!(!text.is_empty(), "{model}");
        assert_eq!(finish.as_deref(), Some("stop"), "{model}");
    }
}

#[tokio::test]
async fn stream_error_events_surface_as_errors() {
    let client = client().await;
    let mut request = ChatCompletionRequest::new("remote", vec![ChatMessage::user("q")]);
    request.extra.insert(
        "mock_options".into(),
        serde_json::json!({"error_event_after": 2}),
    );
    let mut stream = client.chat_stream(&request).await.unwrap();
    let mut results = Vec::new();
    while let Some(item) = stream.next().await {
        results.push(item);
    }
    let last = results.pop().unwrap();
    let error = last.unwrap_err();
    assert_eq!(error.message(), "mock error inside the stream");
    assert!(results.iter().all(Result::is_ok));
}

#[tokio::test]
async fn embeddings_in_every_input_shape() {
    let client = client().await;
    for input in [
        EmbeddingInput::Text("a".into()),
        EmbeddingInput::Texts(vec!["a".into(), "b".into()]),
        EmbeddingInput::Tokens(vec![1, 2]),
        EmbeddingInput::TokenArrays(vec![vec![1], vec![2], vec![3]]),
    ] {
        for model in ["local", "remote"] {
            let response = client
                .embeddings(&EmbeddingRequest::new(model, input.clone()))
                .await
                .unwrap();
            let expected = match &input {
                EmbeddingInput::Texts(v) => v.len(),
                EmbeddingInput::TokenArrays(v) => v.len(),
                _ => 1,
            };
            assert_eq!(response.data.len(), expected, "{model} {input:?}");
            assert!(
                matches!(response.data[0].embedding, EmbeddingVector::Float(ref v) if !v.is_empty())
            );
        }
    }
}

#[tokio::test]
async fn errors_are_typed_and_logged() {
    let client = client().await;
    let mut logs = client.subscribe();
    let error = client
        .chat(&ChatCompletionRequest::new(
            "missing",
            vec![ChatMessage::user("q")],
        ))
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::NotFound);
    assert_eq!(error.status, 404);
    assert_eq!(error.body.code.as_deref(), Some("model_not_found"));
    let log = tokio::time::timeout(Duration::from_secs(2), logs.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(log.outcome, Outcome::Failed(ErrorKind::NotFound));
    assert_eq!(log.requested_model, "missing");

    let mut request = ChatCompletionRequest::new("remote", vec![ChatMessage::user("q")]);
    request
        .extra
        .insert("mock_options".into(), serde_json::json!({"status": 429}));
    let error = client.chat(&request).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::RateLimited);
    assert_eq!(error.status, 429);
}

#[tokio::test]
async fn reload_swaps_the_model_list_and_in_flight_streams_finish() {
    let client = client().await;
    let mut request = ChatCompletionRequest::new("remote", vec![ChatMessage::user("q")]);
    request.extra.insert(
        "mock_options".into(),
        serde_json::json!({"chunks": 30, "chunk_delay_ms": 5}),
    );
    let mut stream = client.chat_stream(&request).await.unwrap();

    let env: HashMap<String, String> = HashMap::new();
    let loaded = llmux::config::load_str(
        "model_list: [{model_name: fresh, litellm_params: {model: mock/fresh}}]",
        &env,
    )
    .unwrap();
    client.reload(loaded.config).unwrap();
    assert_eq!(
        client
            .models()
            .data
            .iter()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>(),
        vec!["fresh"]
    );
    assert!(client
        .chat(&ChatCompletionRequest::new(
            "remote",
            vec![ChatMessage::user("q")]
        ))
        .await
        .is_err());

    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
        chunks += 1;
    }
    assert!(
        chunks >= 30,
        "the stream that started before the reload completed"
    );
}

/// Cost-based routing ranks by the price registry when deployments set no price themselves.
#[tokio::test]
async fn cost_based_routing_uses_registry_prices() {
    let yaml = r#"
model_list:
  - model_name: g
    litellm_params: {model: mock/gpt-4o}
    model_info: {id: dear}
  - model_name: g
    litellm_params: {model: mock/gpt-4o-mini}
    model_info: {id: cheap}
router_settings: {routing_strategy: cost-based-routing}
"#;
    let env: HashMap<String, String> = HashMap::new();
    let loaded = llmux::config::load_str(yaml, &env).unwrap();
    let client = Client::with_env(loaded.config, &env).unwrap().0;
    for _ in 0..5 {
        let r = client
            .execute(
                llmux::Operation::Chat,
                bytes::Bytes::from_static(
                    br#"{"model": "g", "messages": [{"role": "user", "content": "hi"}]}"#,
                ),
                llmux::RequestOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(r.meta.deployment_id, "cheap");
        assert!(
            r.meta.cost.unwrap() > 0.0,
            "gpt-4o-mini is priced by the built-in table"
        );
    }
}

/// A body the caller parsed runs like the raw bytes; the parse error is the same `invalid_json`.
#[tokio::test]
async fn a_parsed_body_runs_like_the_raw_one() {
    let client = Client::from_yaml(
        "model_list: [{model_name: m, litellm_params: {model: mock/m, mock_response: pong}}]",
    )
    .unwrap();
    let bytes = bytes::Bytes::from_static(
        br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}"#,
    );
    let parsed = llmux::ParsedBody::parse(&bytes).unwrap();
    assert_eq!(
        parsed.object().decode::<u64>("max_tokens").unwrap(),
        Some(3)
    );
    let from_parsed = client
        .execute_parsed(
            llmux::Operation::Chat,
            &parsed,
            llmux::RequestOptions::default(),
        )
        .await
        .unwrap();
    let from_raw = client
        .execute(
            llmux::Operation::Chat,
            bytes.clone(),
            llmux::RequestOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(from_parsed.meta.model_group, "m");
    assert_eq!(from_parsed.meta.model_group, from_raw.meta.model_group);
    let text = |r: llmux::GatewayResponse| match r.body {
        llmux::ResponseBody::Json(b) => serde_json::from_slice::<serde_json::Value>(&b).unwrap()
            ["choices"][0]["message"]["content"]
            .clone(),
        llmux::ResponseBody::Stream(_) => panic!("asked for JSON"),
    };
    assert_eq!(text(from_parsed), "pong");
    assert_eq!(text(from_raw), "pong");
    let bad = bytes::Bytes::from_static(b"[1]");
    let e = llmux::ParsedBody::parse(&bad).unwrap_err();
    assert_eq!(e.status, 400);
    assert_eq!(e.envelope().error.code.as_deref(), Some("invalid_json"));
}

/// A backend of the caller's, counting what it is asked to keep.
#[derive(Debug)]
struct Counting(llmux::cache::LocalCache, std::sync::atomic::AtomicUsize);

#[async_trait::async_trait]
impl llmux::CacheBackend for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }
    async fn get(&self, key: &str) -> Result<Option<bytes::Bytes>, llmux::CacheError> {
        self.0.get(key).await
    }
    async fn put(
        &self,
        key: &str,
        value: bytes::Bytes,
        ttl: Duration,
    ) -> Result<(), llmux::CacheError> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.put(key, value, ttl).await
    }
    async fn delete(&self, keys: &[String]) -> Result<u64, llmux::CacheError> {
        self.0.delete(keys).await
    }
    async fn ping(&self) -> Result<(), llmux::CacheError> {
        Ok(())
    }
}

/// The response cache answers library calls as it does the server's: built from the
/// configuration's `litellm_settings.cache`, or around a backend of the caller's.
#[tokio::test]
async fn the_response_cache_answers_library_calls() {
    let upstream = mock_upstream().await;
    let yaml = format!(
        "model_list: [{{model_name: remote, litellm_params: {{model: openai/remote-model, api_base: \"{upstream}\", api_key: k}}}}]\nlitellm_settings: {{cache: true}}\n"
    );
    let env: HashMap<String, String> = HashMap::new();
    let loaded = llmux::config::load_str(&yaml, &env).unwrap();
    let config = loaded.config.clone();
    let (client, _) = Client::with_env(loaded.config, &env).unwrap();
    let body = bytes::Bytes::from_static(
        br#"{"model":"remote","messages":[{"role":"user","content":"cache me"}]}"#,
    );
    let run = |client: Client| {
        let body = body.clone();
        async move {
            client
                .execute(llmux::Operation::Chat, body, Default::default())
                .await
                .unwrap()
        }
    };
    let first = run(client.clone()).await;
    assert!(first.meta.cache_key.is_none());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = run(client.clone()).await;
    assert!(second.meta.cache_key.is_some());
    assert_eq!(second.meta.provider, "cache");
    assert_eq!(second.meta.cost, Some(0.0));

    let backend = std::sync::Arc::new(Counting(
        llmux::cache::LocalCache::new(1 << 20),
        Default::default(),
    ));
    let cache = llmux::ResponseCache::with_backend(
        llmux::config::CacheSettings::default(),
        backend.clone(),
    );
    let (own, _) = Client::builder(config)
        .env(&env)
        .cache(Some(std::sync::Arc::new(cache)))
        .build()
        .unwrap();
    run(own.clone()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(run(own.clone()).await.meta.cache_key.is_some());
    assert_eq!(
        backend.1.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one answer kept"
    );
    // And none at all when the caller says so.
    let (none, _) = Client::builder(client.snapshot().config.clone())
        .env(&env)
        .cache(None)
        .build()
        .unwrap();
    run(none.clone()).await;
    assert!(run(none).await.meta.cache_key.is_none());
}
