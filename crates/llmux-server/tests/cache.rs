//! The response cache, with upstream calls counted at the mock: a repeat is answered from the
//! cache (one call), what changes the answer misses, the per-request controls (`no-cache`,
//! `no-store`, `ttl`, `s-maxage`, `namespace`, `use-cache`), streams replayed and JSON answers
//! serving streams, embeddings cached per input, tenancy scopes, hits in the spend log and the
//! metrics; and with a real Redis (started by `scripts/test.sh`), a cache shared by two
//! instances that survives a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{sse_data, start_governed, stream_text, Db, Harness, MASTER};
use serde_json::{json, Value};

const MODELS: &str = r#"
model_list:
  - model_name: gpt
    litellm_params: {model: openai/mock-gpt, api_base: "{mock}", api_key: k, input_cost_per_token: 0.001, output_cost_per_token: 0.002}
  - model_name: other
    litellm_params: {model: openai/mock-other, api_base: "{mock}", api_key: k}
  - model_name: embed
    litellm_params: {model: openai/mock-embed, api_base: "{mock}", api_key: k}
    model_info: {mode: embedding}
  - model_name: text
    litellm_params: {model: text-completion-openai/mock-text, api_base: "{mock}", api_key: k}
  - model_name: rr
    litellm_params: {model: cohere/rerank-v3.5, api_base: "{mock}/..", api_key: co-key}
  - model_name: down
    litellm_params: {model: openai/down, api_base: "http://127.0.0.1:9/v1", api_key: k}
router_settings: {num_retries: 0, fallbacks: [{down: [gpt]}]}
"#;

fn config(cache_params: &str) -> String {
    format!("{MODELS}litellm_settings:\n  cache: true\n  cache_params: {cache_params}\n")
}

async fn chat(h: &Harness, key: &str, body: Value) -> reqwest::Response {
    h.post_as(key, "/v1/chat/completions", &body).await
}

fn ask(content: &str) -> Value {
    json!({"model": "gpt", "messages": [{"role": "user", "content": content}]})
}

/// The mock's count of requests it received.
fn calls(h: &Harness) -> u64 {
    h.stat("requests")
}

#[tokio::test]
async fn a_repeat_is_answered_from_the_cache_and_costs_nothing() {
    let h = start_governed(&config("{type: local}"), Db::Sqlite).await;
    let key = h.new_key(json!({"key_alias": "cached"})).await;
    let first = chat(&h, &key, ask("what is a cache?")).await;
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("x-litellm-cache-key").is_none());
    let first_body: Value = first.json().await.unwrap();
    assert_eq!(calls(&h), 1);
    // The store happens just after the answer.
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Key order and spacing do not matter; the answer is the one stored.
    let repeat = h
        .http
        .post(format!("{}/v1/chat/completions", h.url))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(r#"{ "messages" : [ { "content": "what is a cache?", "role": "user" } ], "model": "gpt" }"#)
        .send()
        .await
        .unwrap();
    assert_eq!(repeat.status(), 200);
    assert_eq!(calls(&h), 1, "no upstream call for a repeat");
    let cache_key = repeat.headers()["x-litellm-cache-key"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(cache_key.len(), 64);
    assert_eq!(repeat.headers()["x-litellm-response-cost"], "0");
    let repeat_body: Value = repeat.json().await.unwrap();
    assert_eq!(repeat_body, first_body);

    // What changes the answer misses: the prompt, a parameter, the model group.
    for (i, body) in [
        ask("what is a cache??"),
        json!({"model": "gpt", "messages": [{"role": "user", "content": "what is a cache?"}], "temperature": 0.1}),
        json!({"model": "other", "messages": [{"role": "user", "content": "what is a cache?"}]}),
    ]
    .into_iter()
    .enumerate()
    {
        let r = chat(&h, &key, body).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-litellm-cache-key").is_none());
        assert_eq!(calls(&h), 2 + i as u64);
    }

    // The spend log: the hit is a row of its own, free, with the tokens it saved.
    h.flush_spend().await;
    let logs: Value = h
        .get_json(MASTER, &format!("/spend/logs?api_key={key}"))
        .await;
    let logs = logs.as_array().unwrap();
    assert_eq!(logs.len(), 5, "{logs:?}");
    let hits: Vec<&Value> = logs.iter().filter(|l| l["cache_hit"] == "true").collect();
    assert_eq!(hits.len(), 1, "{logs:?}");
    assert_eq!(hits[0]["spend"].as_f64(), Some(0.0));
    assert_eq!(
        hits[0]["total_tokens"], first_body["usage"]["total_tokens"],
        "{:?}",
        hits[0]
    );
    let first_spend = logs
        .iter()
        .filter(|l| l["cache_hit"] == "false")
        .map(|l| l["spend"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(first_spend > 0.0);

    // The metrics: one hit, four misses, the hit's tokens saved.
    let text = h.get_as(MASTER, "/metrics").await.text().await.unwrap();
    let total = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(total("litellm_cache_hits_metric_total"), 1.0, "{text}");
    assert_eq!(total("litellm_cache_misses_metric_total"), 4.0);
    assert_eq!(
        total("litellm_cached_tokens_metric_total"),
        first_body["usage"]["total_tokens"].as_f64().unwrap()
    );

    // An admin removes the entry by the key the header named.
    let r = h
        .post_as(MASTER, "/cache/delete", &json!({"keys": [cache_key]}))
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(chat(&h, &key, ask("what is a cache?")).await.status(), 200);
    assert_eq!(calls(&h), 5, "deleted: answered upstream again");
}

#[tokio::test]
async fn the_per_request_controls_work_as_litellm_defines_them() {
    let h = start_governed(&config("{type: local}"), Db::Sqlite).await;
    let settle = || tokio::time::sleep(Duration::from_millis(50));
    let with = |cache: Value| {
        let mut body = ask("controls");
        body["cache"] = cache;
        body
    };
    chat(&h, MASTER, ask("controls")).await;
    settle().await;
    assert_eq!(calls(&h), 1);
    // no-cache: answered upstream although cached.
    let r = chat(&h, MASTER, with(json!({"no-cache": true}))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(calls(&h), 2);
    // The `cache` member never reaches the upstream.
    assert!(h.last_upstream_body().get("cache").is_none());

    // no-store: a fresh prompt answered and not kept.
    let mut fresh = ask("not kept");
    fresh["cache"] = json!({"no-store": true});
    chat(&h, MASTER, fresh).await;
    settle().await;
    chat(&h, MASTER, ask("not kept")).await;
    assert_eq!(calls(&h), 4, "no-store kept nothing");

    // ttl: kept one second.
    let mut short = ask("short-lived");
    short["cache"] = json!({"ttl": 1});
    chat(&h, MASTER, short.clone()).await;
    settle().await;
    chat(&h, MASTER, ask("short-lived")).await;
    assert_eq!(calls(&h), 5, "within its ttl: a hit");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    chat(&h, MASTER, ask("short-lived")).await;
    assert_eq!(calls(&h), 6, "past its ttl: a miss");

    // s-maxage: an answer older than asked for is not taken.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = chat(&h, MASTER, with(json!({"s-maxage": 1}))).await;
    assert!(r.headers().get("x-litellm-cache-key").is_none());
    assert_eq!(calls(&h), 7);
    let r = chat(&h, MASTER, with(json!({"s-maxage": 600}))).await;
    assert!(r.headers().get("x-litellm-cache-key").is_some());
    assert_eq!(calls(&h), 7);

    // namespace: entries of another namespace are not shared.
    let r = chat(&h, MASTER, with(json!({"namespace": "elsewhere"}))).await;
    assert!(r.headers().get("x-litellm-cache-key").is_none());
    assert_eq!(calls(&h), 8);

    // A malformed control is the client's error.
    let r = chat(&h, MASTER, with(json!({"ttl": "forever"}))).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "cache");
    assert_eq!(calls(&h), 8);
}

#[tokio::test]
async fn streams_are_replayed_and_json_answers_serve_streams() {
    let h = start_governed(&config("{type: local}"), Db::Sqlite).await;
    let stream = |content: &str, include_usage: bool| {
        let mut body = ask(content);
        body["stream"] = json!(true);
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    };
    // A stream, then the same as JSON and as a stream again: one upstream call.
    let r = chat(&h, MASTER, stream("stream me", false)).await;
    let streamed = stream_text(&sse_data(&r.text().await.unwrap()));
    assert!(!streamed.is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = chat(&h, MASTER, ask("stream me")).await;
    assert!(r.headers().get("x-litellm-cache-key").is_some());
    let json_answer: Value = r.json().await.unwrap();
    assert_eq!(
        json_answer["choices"][0]["message"]["content"],
        streamed.as_str()
    );
    assert_eq!(json_answer["object"], "chat.completion");
    assert!(
        json_answer["usage"]["total_tokens"].as_u64().unwrap() > 0,
        "the relay's usage kept"
    );
    let r = chat(&h, MASTER, stream("stream me", true)).await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = sse_data(&r.text().await.unwrap());
    assert_eq!(stream_text(&events), streamed);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(
        usage["usage"], json_answer["usage"],
        "the usage chunk, as asked"
    );
    assert_eq!(calls(&h), 1);

    // A JSON answer serves a later stream request.
    let r = chat(&h, MASTER, ask("json first")).await;
    let answer: Value = r.json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = chat(&h, MASTER, stream("json first", false)).await;
    assert!(r.headers().get("x-litellm-cache-key").is_some());
    let events = sse_data(&r.text().await.unwrap());
    assert_eq!(
        stream_text(&events),
        answer["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(
        events.iter().all(|e| !e.contains("\"usage\"")),
        "no usage chunk unless asked"
    );
    assert_eq!(calls(&h), 2);
}

#[tokio::test]
async fn embeddings_are_cached_per_input_and_other_calls_too() {
    let h = start_governed(&config("{type: local}"), Db::Sqlite).await;
    let embed = |input: Value| json!({"model": "embed", "input": input});
    let vectors = |v: &Value| -> Vec<Value> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["embedding"].clone())
            .collect()
    };
    let r = h
        .post_as(MASTER, "/v1/embeddings", &embed(json!(["a", "b"])))
        .await;
    let ab: Value = r.json().await.unwrap();
    assert_eq!(calls(&h), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // "b" is cached, "c" is not: only "c" goes upstream; the answer holds both, in order.
    let r = h
        .post_as(MASTER, "/v1/embeddings", &embed(json!(["b", "c"])))
        .await;
    assert_eq!(r.status(), 200);
    let bc: Value = r.json().await.unwrap();
    assert_eq!(calls(&h), 2);
    assert_eq!(h.last_upstream_body()["input"], json!(["c"]));
    assert_eq!(vectors(&bc)[0], vectors(&ab)[1], "b from the cache");
    assert_eq!(bc["data"][1]["index"], 1);
    assert_eq!(bc["data"].as_array().unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Every input seen: no upstream call, a single input too.
    let r = h
        .post_as(MASTER, "/v1/embeddings", &embed(json!(["c", "a", "b"])))
        .await;
    assert!(r.headers().get("x-litellm-cache-key").is_some());
    let cab: Value = r.json().await.unwrap();
    assert_eq!(vectors(&cab)[0], vectors(&bc)[1]);
    assert_eq!(vectors(&cab)[1], vectors(&ab)[0]);
    let r = h
        .post_as(MASTER, "/v1/embeddings", &embed(json!("a")))
        .await;
    assert!(r.headers().get("x-litellm-cache-key").is_some());
    assert_eq!(calls(&h), 2);

    // Text completions and rerank are cached too.
    let completion = json!({"model": "text", "prompt": "once upon"});
    h.post_as(MASTER, "/v1/completions", &completion).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = h.post_as(MASTER, "/v1/completions", &completion).await;
    assert!(r.headers().get("x-litellm-cache-key").is_some());
    let rerank =
        json!({"model": "rr", "query": "capital", "documents": ["a", "b"], "cache": {"ttl": 60}});
    let first: Value = h
        .post_as(MASTER, "/v1/rerank", &rerank)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        h.last_upstream_body().get("cache").is_none(),
        "controls stay home"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = h.post_as(MASTER, "/v1/rerank", &rerank).await;
    assert!(r.headers().get("x-litellm-cache-key").is_some());
    assert_eq!(r.json::<Value>().await.unwrap(), first);
    assert_eq!(calls(&h), 4);
}

#[tokio::test]
async fn default_off_caches_only_what_asks_and_scopes_keep_tenants_apart() {
    let h = start_governed(&config("{type: local, mode: default_off}"), Db::Sqlite).await;
    chat(&h, MASTER, ask("opt in")).await;
    chat(&h, MASTER, ask("opt in")).await;
    assert_eq!(calls(&h), 2, "default_off: nothing cached unasked");
    let mut opted = ask("opt in");
    opted["cache"] = json!({"use-cache": true});
    chat(&h, MASTER, opted.clone()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = chat(&h, MASTER, opted).await;
    assert!(r.headers().get("x-litellm-cache-key").is_some());
    assert_eq!(calls(&h), 3);

    // scope: team. Two teams never share; two keys of one team do.
    let h = start_governed(&config("{type: local, scope: team}"), Db::Sqlite).await;
    let team = |alias: &str| {
        let h = &h;
        let alias = alias.to_owned();
        async move {
            h.admin("/team/new", json!({"team_alias": alias})).await["team_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (red, blue) = (team("red").await, team("blue").await);
    let red1 = h.new_key(json!({"team_id": red})).await;
    let red2 = h.new_key(json!({"team_id": red})).await;
    let blue1 = h.new_key(json!({"team_id": blue})).await;
    chat(&h, &red1, ask("tenant")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = chat(&h, &blue1, ask("tenant")).await;
    assert!(
        r.headers().get("x-litellm-cache-key").is_none(),
        "another team's answer"
    );
    assert_eq!(calls(&h), 2);
    let r = chat(&h, &red2, ask("tenant")).await;
    assert!(
        r.headers().get("x-litellm-cache-key").is_some(),
        "the same team's"
    );
    assert_eq!(calls(&h), 2);
    // Keys in no team are each their own tenant (and the master key is another).
    let loner1 = h.new_key(json!({})).await;
    let loner2 = h.new_key(json!({})).await;
    for (i, key) in [&loner1, &loner2, &MASTER.to_owned()]
        .into_iter()
        .enumerate()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = chat(&h, key, ask("teamless")).await;
        assert!(r.headers().get("x-litellm-cache-key").is_none(), "key {i}");
    }
    assert_eq!(calls(&h), 5);
    let r = chat(&h, &loner1, ask("teamless")).await;
    assert!(
        r.headers().get("x-litellm-cache-key").is_some(),
        "its own answer"
    );
}

/// A fallback group's answer is not the requested group's: it is not kept under its key.
#[tokio::test]
async fn answers_from_a_fallback_group_are_not_kept() {
    let h = start_governed(&config("{type: local}"), Db::Sqlite).await;
    let down = json!({"model": "down", "messages": [{"role": "user", "content": "fall"}]});
    for round in 1..=2u64 {
        let r = chat(&h, MASTER, down.clone()).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-litellm-attempted-fallbacks"], "1");
        assert!(r.headers().get("x-litellm-cache-key").is_none());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(calls(&h), round, "answered by the fallback each time");
    }
}

/// A Redis nobody listens on: every request is answered (a miss), none waits long for it.
#[tokio::test]
async fn a_dead_redis_costs_misses_not_errors() {
    let h = start_governed(
        &config("{type: redis, url: \"redis://127.0.0.1:9\"}"),
        Db::Sqlite,
    )
    .await;
    let started = std::time::Instant::now();
    let answers =
        futures_util::future::join_all((0..20).map(|_| chat(&h, MASTER, ask("no redis")))).await;
    assert!(answers.iter().all(|r| r.status() == 200));
    assert!(answers
        .iter()
        .all(|r| r.headers().get("x-litellm-cache-key").is_none()));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "each waits at most the lookup deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(calls(&h), 20);
    let r = h.get_as(MASTER, "/cache/ping").await;
    assert_eq!(r.status(), 503, "{}", r.text().await.unwrap());
}

fn redis_url() -> String {
    std::env::var("LLMUX_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!("LLMUX_TEST_REDIS_URL is not set: run the tests through scripts/test.sh, which starts Redis")
    })
}

#[tokio::test]
async fn a_redis_cache_is_shared_by_instances_and_survives_a_restart() {
    // A namespace of this run's own: other tests share the Redis.
    let namespace = format!("test-{}", llmux::new_request_id());
    let params = format!(
        "{{type: redis, url: \"{}\", namespace: \"{namespace}\"}}",
        redis_url()
    );
    let first = start_governed(&config(&params), Db::Sqlite).await;
    let second = start_governed(&config(&params), Db::Sqlite).await;
    let r = chat(&first, MASTER, ask("shared")).await;
    let answer: Value = r.json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = chat(&second, MASTER, ask("shared")).await;
    assert!(r.headers().get("x-litellm-cache-key").is_some());
    assert_eq!(r.json::<Value>().await.unwrap(), answer);
    assert_eq!(
        (calls(&first), calls(&second)),
        (1, 0),
        "the other instance's answer"
    );

    // A gateway started afresh (nothing in its memory) finds it in Redis.
    drop(first);
    let restarted = start_governed(&config(&params), Db::Sqlite).await;
    let r = chat(&restarted, MASTER, ask("shared")).await;
    assert!(r.headers().get("x-litellm-cache-key").is_some());
    assert_eq!(calls(&restarted), 0);

    // The entry is in Redis under the namespace, with a lifetime.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 600_000, "{ttl}");
}

/// The semantic configuration: prompts embedded by the mock's word vectors (similar wording,
/// close vectors), a threshold of 0.8.
fn semantic(cache_type: &str, extra: &str) -> String {
    let embedder = r#"  - model_name: embedder
    litellm_params: {model: openai/mock-embed, api_base: "{mock}", api_key: k, extra_headers: {x-mock-embedding: words}}
    model_info: {mode: embedding}
router_settings:"#;
    format!(
        "{}litellm_settings:\n  cache: true\n  cache_params: {{type: {cache_type}, similarity_threshold: 0.8, redis_semantic_cache_embedding_model: embedder{extra}}}\n",
        MODELS.replace("router_settings:", embedder)
    )
}

/// Chat requests the mock answered (embedding calls aside).
fn chats(h: &Harness) -> usize {
    h.recorded()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .count()
}

#[tokio::test]
async fn a_similar_question_is_answered_from_the_semantic_cache_and_only_then() {
    let h = start_governed(&semantic("local-semantic", ""), Db::Sqlite).await;
    let first = chat(&h, MASTER, ask("what is the capital city of france")).await;
    assert_eq!(first.status(), 200);
    let answer: Value = first.json().await.unwrap();
    assert_eq!(chats(&h), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Close enough: the cached answer, with its similarity.
    let r = chat(&h, MASTER, ask("What is the capital of France?")).await;
    assert_eq!(r.status(), 200);
    let similarity: f32 = r.headers()["x-litellm-semantic-similarity"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.8..1.0).contains(&similarity), "{similarity}");
    assert!(r.headers().get("x-litellm-cache-key").is_some());
    assert_eq!(
        r.json::<Value>().await.unwrap()["choices"],
        answer["choices"]
    );
    assert_eq!(chats(&h), 1, "no chat call for a similar question");

    // What must not hit: another question; the same question with another system prompt, tool
    // set, earlier turn or parameter; another model group.
    let question = "what is the capital of france";
    let system = json!({"model": "gpt", "messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": question}]});
    let tools = json!({"model": "gpt", "messages": [{"role": "user", "content": question}], "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]});
    let earlier = json!({"model": "gpt", "messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}, {"role": "user", "content": question}]});
    let hotter = json!({"model": "gpt", "messages": [{"role": "user", "content": question}], "temperature": 1.5});
    let other = json!({"model": "other", "messages": [{"role": "user", "content": question}]});
    for (i, body) in [
        ask("how do I bake sourdough bread at home"),
        system,
        tools,
        earlier,
        hotter,
        other,
    ]
    .into_iter()
    .enumerate()
    {
        let r = chat(&h, MASTER, body).await;
        assert_eq!(r.status(), 200);
        assert!(
            r.headers().get("x-litellm-semantic-similarity").is_none(),
            "case {i}"
        );
        assert_eq!(chats(&h), 2 + i, "case {i} went upstream");
    }
    // The exact repeat is found without an embedding call.
    let embeddings = h
        .recorded()
        .iter()
        .filter(|r| r.path.ends_with("/embeddings"))
        .count();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = chat(&h, MASTER, ask("what is the capital city of france")).await;
    assert!(r.headers().get("x-litellm-cache-key").is_some());
    assert!(r.headers().get("x-litellm-semantic-similarity").is_none());
    let after = h
        .recorded()
        .iter()
        .filter(|r| r.path.ends_with("/embeddings"))
        .count();
    assert_eq!(after, embeddings, "an exact hit embeds nothing");
}

#[tokio::test]
async fn a_redis_semantic_cache_is_shared_by_instances() {
    let namespace = format!("test-{}", llmux::new_request_id());
    let extra = format!(", url: \"{}\", namespace: \"{namespace}\"", redis_url());
    let first = start_governed(&semantic("redis-semantic", &extra), Db::Sqlite).await;
    let second = start_governed(&semantic("redis-semantic", &extra), Db::Sqlite).await;
    let r = chat(
        &first,
        MASTER,
        ask("which planet is the largest in the solar system"),
    )
    .await;
    let answer: Value = r.json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = chat(
        &second,
        MASTER,
        ask("Which planet is the largest in our solar system?"),
    )
    .await;
    assert!(
        r.headers().get("x-litellm-semantic-similarity").is_some(),
        "{:?}",
        r.headers()
    );
    assert_eq!(
        r.json::<Value>().await.unwrap()["choices"],
        answer["choices"]
    );
    assert_eq!(
        chats(&second),
        0,
        "answered from the other instance's entry"
    );
    // A question nobody asked still goes upstream.
    let r = chat(&second, MASTER, ask("how tall is mount everest")).await;
    assert!(r.headers().get("x-litellm-semantic-similarity").is_none());
    assert_eq!(chats(&second), 1);
}
