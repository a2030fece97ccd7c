//! A fleet: three gateway instances on one PostgreSQL and one Redis (both real, started by
//! `scripts/test.sh`) count rate limits as one: rpm, tpm and parallel limits are exact across
//! instances, and Redis going away and coming back never fails a request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use llmux_server::governance::shared::SharedLimiter;
use llmux_server::governance::Governance;
use llmux_server::{build_router, AppState};
use serde_json::{json, Value};

const MASTER: &str = "sk-fleet-master";

fn redis_url() -> String {
    std::env::var("LLMUX_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!("LLMUX_TEST_REDIS_URL is not set: run the tests through scripts/test.sh, which starts Redis")
    })
}

struct Instance {
    url: String,
    gov: Arc<Governance>,
}

/// A mock upstream; its state counts (and can steer) what it answers.
async fn upstream() -> (String, Arc<llmux_mock::MockState>) {
    let (mock_router, mock) = llmux_mock::app(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, mock_router).await.unwrap() });
    (format!("http://{addr}/v1"), mock)
}

/// `n` instances of one config, on one database, their limits shared through `redis`.
async fn fleet(n: usize, redis: &str) -> (Vec<Instance>, reqwest::Client) {
    let (mock_url, _mock) = upstream().await;
    let models = format!(
        "model_list: [{{model_name: m, litellm_params: {{model: openai/m, api_base: \"{mock_url}\", api_key: k}}}}]\nrouter_settings: {{num_retries: 0}}\n"
    );
    fleet_of(n, redis, &models).await
}

/// `n` instances of `models` (a model_list and router_settings).
async fn fleet_of(n: usize, redis: &str, models: &str) -> (Vec<Instance>, reqwest::Client) {
    let yaml = format!("{models}\ngeneral_settings: {{master_key: {MASTER}}}\n");
    let env = std::collections::HashMap::<String, String>::new();
    let db = llmux_store::testing::fresh_postgres_url().await;
    let mut instances = Vec::new();
    for _ in 0..n {
        let loaded = llmux_config::load_str(&yaml, &env).unwrap();
        let config = loaded.config.clone();
        let (client, _) = llmux::Client::with_env(loaded.config, &env).unwrap();
        let store = llmux_store::Store::open(&db).await.unwrap();
        let gov = Governance::with_store(store, &config, Arc::new(llmux_store::now_ms));
        gov.use_shared_limiter(
            SharedLimiter::connect(redis, Duration::from_millis(50))
                .await
                .unwrap(),
        );
        let state = AppState::new(client)
            .with_governance(Arc::clone(&gov))
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(llmux_server::serve(
            listener,
            build_router(state),
            Duration::from_secs(30),
            std::future::pending::<()>(),
        ));
        instances.push(Instance {
            url: format!("http://{addr}"),
            gov,
        });
    }
    (instances, reqwest::Client::new())
}

async fn key(http: &reqwest::Client, at: &Instance, body: Value) -> String {
    let r = http
        .post(format!("{}/key/generate", at.url))
        .bearer_auth(MASTER)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn chat(http: &reqwest::Client, at: &Instance, key: &str) -> u16 {
    chat_with(http, at, key, json!({})).await
}

async fn chat_with(http: &reqwest::Client, at: &Instance, key: &str, mock_options: Value) -> u16 {
    http.post(format!("{}/v1/chat/completions", at.url))
        .bearer_auth(key)
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "mock_options": mock_options}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Issue 18: a key with `rpm_limit: 6` got 18 of 18 requests through three instances.
#[tokio::test]
async fn rpm_is_exact_across_three_instances() {
    let (fleet, http) = fleet(3, &redis_url()).await;
    let sk = key(&http, &fleet[0], json!({"rpm_limit": 6})).await;
    let answers =
        futures_util::future::join_all((0..18).map(|i| chat(&http, &fleet[i % 3], &sk))).await;
    let ok = answers.iter().filter(|s| **s == 200).count();
    let limited = answers.iter().filter(|s| **s == 429).count();
    assert_eq!((ok, limited), (6, 12), "{answers:?}");
}

#[tokio::test]
async fn parallel_and_token_limits_are_exact_across_instances() {
    let (fleet, http) = fleet(3, &redis_url()).await;
    let sk = key(&http, &fleet[0], json!({"max_parallel_requests": 2})).await;
    let answers = futures_util::future::join_all(
        (0..9).map(|i| chat_with(&http, &fleet[i % 3], &sk, json!({"latency_ms": 1500}))),
    )
    .await;
    let ok = answers.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 2, "two in flight at once, fleet-wide: {answers:?}");
    // The slots are free again once those finished.
    assert_eq!(chat(&http, &fleet[2], &sk).await, 200);

    // Tokens: the first answer's usage fills a small tpm; every instance then refuses.
    let tk = key(&http, &fleet[0], json!({"tpm_limit": 5})).await;
    assert_eq!(chat(&http, &fleet[0], &tk).await, 200);
    tokio::time::sleep(Duration::from_millis(200)).await; // the release is sent off the path
    for at in &fleet {
        assert_eq!(chat(&http, at, &tk).await, 429);
    }
}

/// Redis stopped mid-traffic fails no request (each instance counts locally meanwhile), and
/// once it is back the limits are shared again.
#[tokio::test]
async fn redis_going_away_fails_no_request_and_sharing_resumes() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let start = || {
        std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)")
    };
    let wait_up = || async {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis did not start");
    };
    let mut redis = start();
    wait_up().await;
    let (fleet, http) = fleet(2, &format!("redis://127.0.0.1:{port}")).await;
    let sk = key(&http, &fleet[0], json!({"rpm_limit": 1000})).await;
    assert_eq!(chat(&http, &fleet[0], &sk).await, 200);
    let _ = redis.kill();
    let _ = redis.wait();
    let started = std::time::Instant::now();
    for i in 0..20 {
        assert_eq!(
            chat(&http, &fleet[i % 2], &sk).await,
            200,
            "request {i} with redis gone"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "each request waited at most the deadline: {:?}",
        started.elapsed()
    );
    let limiter = fleet[0].gov.shared_limiter().unwrap();
    assert!(limiter.degraded());
    assert!(limiter.fallbacks.load(std::sync::atomic::Ordering::Relaxed) > 0);
    let ready: Value = http
        .get(format!("{}/health/readiness", fleet[0].url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["redis"], "degraded", "{ready}");
    let metrics = http
        .get(format!("{}/metrics", fleet[0].url))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("llmux_redis_degraded 1"), "{metrics}");
    let mut redis = start();
    wait_up().await;
    // The connection manager reconnects on its own; sharing resumes.
    let mut back = false;
    for _ in 0..100 {
        assert_eq!(chat(&http, &fleet[0], &sk).await, 200);
        if !limiter.degraded() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "still counting locally after redis came back");
    let limited = key(&http, &fleet[0], json!({"rpm_limit": 2})).await;
    let answers =
        futures_util::future::join_all((0..6).map(|i| chat(&http, &fleet[i % 2], &limited))).await;
    assert_eq!(
        answers.iter().filter(|s| **s == 200).count(),
        2,
        "{answers:?}"
    );
    let _ = redis.kill();
    let _ = redis.wait();
}

/// Issue 18: a revoked key kept working on the other instances for the cache's 5 s. Changes
/// made on one instance (a key blocked, a team blocked, a model added) hold on every other
/// within a second.
#[tokio::test]
async fn changes_on_one_instance_hold_on_the_others_within_a_second() {
    let (fleet, http) = fleet(3, &redis_url()).await;
    let within_a_second = |at: usize, sk: String, want: u16| {
        let (http, fleet) = (&http, &fleet);
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            loop {
                let got = chat(http, &fleet[at], &sk).await;
                if got == want {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "instance {at}: still {got}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let sk = key(&http, &fleet[0], json!({})).await;
    for at in &fleet {
        assert_eq!(chat(&http, at, &sk).await, 200, "cached everywhere");
    }
    let r = http
        .post(format!("{}/key/block", fleet[0].url))
        .bearer_auth(MASTER)
        .json(&json!({"key": sk}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    within_a_second(1, sk.clone(), 401).await;
    within_a_second(2, sk.clone(), 401).await;

    let team = http
        .post(format!("{}/team/new", fleet[1].url))
        .bearer_auth(MASTER)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["team_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tk = key(&http, &fleet[1], json!({"team_id": team})).await;
    assert_eq!(chat(&http, &fleet[2], &tk).await, 200);
    let r = http
        .post(format!("{}/team/block", fleet[1].url))
        .bearer_auth(MASTER)
        .json(&json!({"team_id": team}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    within_a_second(2, tk.clone(), 401).await;

    // A model added on one instance is served by another.
    let ok_key = key(&http, &fleet[0], json!({})).await;
    let upstream = {
        let (mock_router, _) = llmux_mock::app(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, mock_router).await.unwrap() });
        format!("http://{addr}/v1")
    };
    let r = http
        .post(format!("{}/model/new", fleet[0].url))
        .bearer_auth(MASTER)
        .json(&json!({"model_name": "added", "litellm_params": {"model": "openai/added", "api_base": upstream, "api_key": "k"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let status = http
            .post(format!("{}/v1/chat/completions", fleet[2].url))
            .bearer_auth(&ok_key)
            .json(&json!({"model": "added", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "instance 2 does not serve the model: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 18: a deployment one instance cooled down was hammered by the others. A cooldown is
/// now taken by every instance.
#[tokio::test]
async fn a_cooldown_taken_by_one_instance_holds_on_the_others() {
    let (failing_url, failing) = upstream().await;
    let (healthy_url, healthy) = upstream().await;
    failing.set_defaults(json!({"status": 429}));
    let models = format!(
        "model_list:\n  - {{model_name: m, litellm_params: {{model: openai/m, api_base: \"{failing_url}\", api_key: k}}, model_info: {{id: failing}}}}\n  - {{model_name: m, litellm_params: {{model: openai/m, api_base: \"{healthy_url}\", api_key: k}}, model_info: {{id: healthy}}}}\nrouter_settings: {{num_retries: 1, cooldown_time: 30}}\n"
    );
    let (fleet, http) = fleet_of(3, &redis_url(), &models).await;
    let sk = key(&http, &fleet[0], json!({})).await;
    // Instance 0 meets the rate-limited deployment (retrying on the other) and cools it down.
    let calls = || {
        failing
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    for _ in 0..20 {
        assert_eq!(chat(&http, &fleet[0], &sk).await, 200);
        if calls() > 0 {
            break;
        }
    }
    assert!(calls() > 0, "the failing deployment was tried");
    tokio::time::sleep(Duration::from_millis(300)).await; // the cooldown travels
    let before = calls();
    for i in 0..30 {
        assert_eq!(chat(&http, &fleet[1 + i % 2], &sk).await, 200);
    }
    assert_eq!(
        calls(),
        before,
        "the other instances sent nothing to the deployment instance 0 cooled down"
    );
    assert!(
        healthy
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 30
    );
}
