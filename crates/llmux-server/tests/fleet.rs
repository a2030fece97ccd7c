//! A fleet: three gateway instances on one PostgreSQL and one Redis (both real, started by
//! `scripts/test.sh`) count rate limits as one: rpm, tpm and parallel limits are exact across
//! instances, and Redis going away and coming back never fails a request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use llmux_governance::shared::SharedState;
use llmux_governance::Governance;
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

/// Wait out the last seconds of a wall-clock minute: rate windows are those minutes, and a
/// burst that straddles a boundary is counted in two windows.
async fn away_from_a_minute_boundary() {
    let into_minute = llmux_store::now_ms().rem_euclid(60_000);
    if into_minute > 55_000 {
        tokio::time::sleep(Duration::from_millis((60_100 - into_minute) as u64)).await;
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A Redis of the test's own (for what would disturb the other tests sharing the common one).
fn start_redis(port: u16) -> std::process::Child {
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
}

async fn wait_for_redis(port: u16) {
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

/// The deadline on Redis calls of fleets whose tests count exactly: a loaded test machine can
/// take longer than production's 50 ms, and the instance would then count locally.
const PATIENT: Duration = Duration::from_secs(1);

/// `n` instances of `models` (a model_list and router_settings), sharing `redis`.
async fn fleet_of(n: usize, redis: &str, models: &str) -> (Vec<Instance>, reqwest::Client) {
    fleet_on(n, Some((redis, PATIENT)), models).await
}

/// `n` instances of `models` on one PostgreSQL database, sharing `redis` if given.
async fn fleet_on(
    n: usize,
    redis: Option<(&str, Duration)>,
    models: &str,
) -> (Vec<Instance>, reqwest::Client) {
    let yaml = format!("{models}\ngeneral_settings: {{master_key: {MASTER}}}\n");
    let env = std::collections::HashMap::<String, String>::new();
    let db = llmux_store::testing::fresh_postgres_url().await;
    let mut instances = Vec::new();
    for _ in 0..n {
        let loaded = llmux_config::load_str(&yaml, &env).unwrap();
        let config = loaded.config.clone();
        let (client, _) = llmux::Client::with_env(loaded.config, &env).unwrap();
        let store = llmux_store::Store::open(&db).await.unwrap();
        let mut builder = Governance::builder(store, &config);
        if let Some((redis, deadline)) = redis {
            builder = builder.fleet(SharedState::connect(redis, deadline).await.unwrap());
        }
        let gov = builder.build();
        gov.follow_changes();
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
    away_from_a_minute_boundary().await;
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
    away_from_a_minute_boundary().await;
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
    let port = free_port();
    let start = || start_redis(port);
    let wait_up = || wait_for_redis(port);
    let mut redis = start();
    wait_up().await;
    let (mock_url, _mock) = upstream().await;
    let models = format!(
        "model_list: [{{model_name: m, litellm_params: {{model: openai/m, api_base: \"{mock_url}\", api_key: k}}}}]\nrouter_settings: {{num_retries: 0}}\n"
    );
    // Production's deadline: requests with Redis gone wait at most this.
    let redis_at = format!("redis://127.0.0.1:{port}");
    let (fleet, http) = fleet_on(2, Some((&redis_at, Duration::from_millis(50))), &models).await;
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
    let limiter = fleet[0].gov.shared_state().unwrap();
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
    // Changes still travel, through the database: a key blocked on one instance is refused by
    // the other within a second.
    let revoked = key(&http, &fleet[0], json!({})).await;
    assert_eq!(chat(&http, &fleet[1], &revoked).await, 200);
    let r = http
        .post(format!("{}/key/block", fleet[0].url))
        .bearer_auth(MASTER)
        .json(&json!({"key": revoked}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while chat(&http, &fleet[1], &revoked).await != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "the block did not reach instance 1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    // Exact again once Redis answers (production's 50 ms deadline here: a round that fell back
    // on local counting on a loaded machine is run again with a fresh key).
    let fallbacks = || limiter.fallbacks.load(std::sync::atomic::Ordering::Relaxed);
    let mut exact = false;
    for _ in 0..5 {
        away_from_a_minute_boundary().await;
        let before = fallbacks();
        let limited = key(&http, &fleet[0], json!({"rpm_limit": 2})).await;
        let answers =
            futures_util::future::join_all((0..6).map(|i| chat(&http, &fleet[i % 2], &limited)))
                .await;
        if fallbacks() != before {
            continue;
        }
        assert_eq!(
            answers.iter().filter(|s| **s == 200).count(),
            2,
            "{answers:?}"
        );
        exact = true;
        break;
    }
    assert!(exact, "every round fell back on local counting");
    let _ = redis.kill();
    let _ = redis.wait();
}

/// Issue 18: a revoked key kept working on the other instances for the cache's 5 s. Changes
/// made on one instance (a key blocked, a team blocked, a model added) hold on every other
/// within a second.
#[tokio::test]
async fn changes_on_one_instance_hold_on_the_others_within_a_second() {
    let (fleet, http) = fleet(3, &redis_url()).await;
    changes_hold_everywhere_within_a_second(&fleet, &http).await;
}

/// The same without Redis: a fleet on PostgreSQL alone hears of changes through the changes
/// every instance records there (and so does one whose Redis is down).
#[tokio::test]
async fn without_redis_changes_still_hold_everywhere_within_a_second() {
    let (mock_url, _mock) = upstream().await;
    let models = format!(
        "model_list: [{{model_name: m, litellm_params: {{model: openai/m, api_base: \"{mock_url}\", api_key: k}}}}]\nrouter_settings: {{num_retries: 0}}\n"
    );
    let (fleet, http) = fleet_on(3, None, &models).await;
    changes_hold_everywhere_within_a_second(&fleet, &http).await;
}

async fn changes_hold_everywhere_within_a_second(fleet: &[Instance], http: &reqwest::Client) {
    let within_a_second = |at: usize, sk: String, want: u16| async move {
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
    };
    let sk = key(http, &fleet[0], json!({})).await;
    for at in fleet {
        assert_eq!(chat(http, at, &sk).await, 200, "cached everywhere");
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
    let tk = key(http, &fleet[1], json!({"team_id": team})).await;
    assert_eq!(chat(http, &fleet[2], &tk).await, 200);
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
    let ok_key = key(http, &fleet[0], json!({})).await;
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
    // Deployment ids of this test alone: cooldowns travel on a channel every test's fleet hears.
    let unique = llmux::new_request_id();
    let models = format!(
        "model_list:\n  - {{model_name: m, litellm_params: {{model: openai/m, api_base: \"{failing_url}\", api_key: k}}, model_info: {{id: failing-{unique}}}}}\n  - {{model_name: m, litellm_params: {{model: openai/m, api_base: \"{healthy_url}\", api_key: k}}, model_info: {{id: healthy-{unique}}}}}\nrouter_settings: {{num_retries: 1, cooldown_time: 30}}\n"
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

/// A fleet whose model has a price (input $0.001, output $0.002 a token).
async fn priced_fleet(n: usize) -> (Vec<Instance>, reqwest::Client) {
    let (mock_url, _mock) = upstream().await;
    let models = format!(
        "model_list: [{{model_name: m, litellm_params: {{model: openai/m, api_base: \"{mock_url}\", api_key: k, input_cost_per_token: 0.001, output_cost_per_token: 0.002}}}}]\nrouter_settings: {{num_retries: 0}}\n"
    );
    fleet_of(n, &redis_url(), &models).await
}

/// A capped chat request: its status, what it cost (`x-litellm-response-cost`) and its body.
async fn priced_chat(http: &reqwest::Client, at: &Instance, key: &str) -> (u16, f64, Value) {
    let r = http
        .post(format!("{}/v1/chat/completions", at.url))
        .bearer_auth(key)
        .json(&json!({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let cost = r
        .headers()
        .get("x-litellm-response-cost")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    (status, cost, r.json().await.unwrap_or(Value::Null))
}

async fn key_spend(http: &reqwest::Client, at: &Instance, sk: &str) -> f64 {
    let info: Value = http
        .get(format!("{}/key/info", at.url))
        .bearer_auth(MASTER)
        .query(&[("key", sk)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    info["info"]["spend"].as_f64().unwrap_or(-1.0)
}

/// Issue 18: each instance kept its own budget reservations, so three instances could spend a
/// budget three times over. Spent through all three at once, a budget holds as it does on one
/// instance: admitted while spend plus reservations are below it, so the overspend is at most
/// one request's cost; then every instance refuses, stating the real spend, and `/key/info`
/// on any instance shows the fleet's exact spend.
#[tokio::test]
async fn a_budget_spent_through_three_instances_holds_as_on_one() {
    let (fleet, http) = priced_fleet(3).await;
    let probe = key(&http, &fleet[0], json!({})).await;
    let (status, one, _) = priced_chat(&http, &fleet[0], &probe).await;
    assert_eq!(status, 200);
    assert!(one > 0.0, "the model is priced");
    let max = one * 6.5;
    let sk = key(&http, &fleet[0], json!({"max_budget": max})).await;
    let answers =
        futures_util::future::join_all((0..30).map(|i| priced_chat(&http, &fleet[i % 3], &sk)))
            .await;
    let admitted: Vec<&(u16, f64, Value)> = answers.iter().filter(|a| a.0 == 200).collect();
    let spent: f64 = admitted.iter().map(|a| a.1).sum();
    assert!(
        spent <= max + one + 1e-9,
        "{} admitted, {spent} spent of {max} (one request costs {one}): one instance's overspend at most",
        admitted.len()
    );
    assert!(
        admitted.len() >= 2,
        "reservations of the estimate still let the budget be used: {answers:?}"
    );
    for a in answers.iter().filter(|a| a.0 != 200) {
        assert_eq!(a.0, 400, "{a:?}");
        assert_eq!(a.2["error"]["code"], "budget_exceeded", "{a:?}");
    }
    // Spend until the budget is gone, one request at a time around the fleet.
    let mut spent = spent;
    let mut refused = 0;
    for i in 0..40 {
        let (status, cost, body) = priced_chat(&http, &fleet[i % 3], &sk).await;
        if status != 200 {
            assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
            // The previous answer's settlement may still be on its way to Redis: a budget
            // refuses for good once it refuses twice, 100 ms apart.
            refused += 1;
            if refused == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        refused = 0;
        spent += cost;
    }
    assert!(
        spent >= max - 1e-9,
        "the whole budget was usable: {spent} of {max}"
    );
    assert!(spent <= max + one + 1e-9, "{spent} of {max}");
    for at in &fleet {
        let (status, _, body) = priced_chat(&http, at, &sk).await;
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains(&format!("current spend {spent:.6}"))
                && message.contains(&format!("max budget {max:.6}")),
            "the real spend and budget: {message} (spent {spent})"
        );
    }
    for at in &fleet {
        let seen = key_spend(&http, at, &sk).await;
        assert!(
            (seen - spent).abs() < 1e-9,
            "/key/info at {} says {seen}, the fleet spent {spent}",
            at.url
        );
    }
}

/// Issue 18: a fresh key with a budget smaller than one request's estimate refused its very
/// first request. Through a fleet it answers it (on any instance), the next is refused on
/// every instance, and an administrator setting the spend back on one instance reopens it on
/// the others at once.
#[tokio::test]
async fn a_small_budget_answers_its_first_request_and_a_reset_reaches_every_instance() {
    let (fleet, http) = priced_fleet(3).await;
    let sk = key(&http, &fleet[0], json!({"max_budget": 0.0005})).await;
    let (status, cost, body) = priced_chat(&http, &fleet[1], &sk).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        cost > 0.0005,
        "this request costs more than the whole budget: {cost}"
    );
    for at in &fleet {
        let (status, _, body) = priced_chat(&http, at, &sk).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(&format!("current spend {cost:.6}, max budget 0.000500")),
            "{body}"
        );
    }
    let r = http
        .post(format!("{}/key/update", fleet[2].url))
        .bearer_auth(MASTER)
        .json(&json!({"key": sk, "spend": 0.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _, body) = priced_chat(&http, &fleet[0], &sk).await;
    assert_eq!(
        status, 200,
        "the reset holds on another instance at once: {body}"
    );
}

/// A request that fails upstream, or whose client leaves mid-stream, gives its reservation
/// back fleet-wide: a budget with room for one request at a time serves the next one.
#[tokio::test]
async fn reservations_are_released_on_failure_and_on_client_disconnect() {
    let (fleet, http) = priced_fleet(2).await;
    let sk = key(&http, &fleet[0], json!({"max_budget": 1.0})).await;
    // Fails upstream: nothing spent, nothing left reserved.
    let failed = http
        .post(format!("{}/v1/chat/completions", fleet[0].url))
        .bearer_auth(&sk)
        .json(&json!({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], "mock_options": {"status": 500}}))
        .send()
        .await
        .unwrap();
    assert!(failed.status().is_server_error(), "{}", failed.status());
    // A stream the client leaves after its first chunk.
    let mut stream = http
        .post(format!("{}/v1/chat/completions", fleet[1].url))
        .bearer_auth(&sk)
        .json(&json!({"model": "m", "max_tokens": 16, "stream": true, "messages": [{"role": "user", "content": "hi"}], "mock_options": {"stall_after": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let _ = stream.chunk().await;
    // Read with a patient deadline (the instances' 50 ms can pass on a loaded test machine).
    let state = SharedState::connect(&redis_url(), Duration::from_secs(2))
        .await
        .unwrap();
    let owner = (
        llmux_store::Kind::Key,
        llmux_governance::keys::hash_key(&sk),
    );
    let reserved = || async {
        state.spend(std::slice::from_ref(&owner)).await.unwrap()[0].map_or(0.0, |(_, r)| r)
    };
    assert!(reserved().await > 0.0, "the stream holds a reservation");
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while reserved().await > 1e-12 {
        assert!(
            std::time::Instant::now() < deadline,
            "reservation still held: {}",
            reserved().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Admissions that arrive together share script calls (each call carries every admission
/// queued while the previous one was out), and each request still gets its own answer: of 600
/// concurrent requests (more than one call carries) against an rpm of 37 and a budget with room
/// for 50 of them, exactly 37
/// are admitted, every refusal names the limit, and the budget holds 37 reservations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admissions_share_calls_and_each_gets_its_own_answer() {
    use llmux_governance::budget::BudgetCheck;
    use llmux_governance::limits::Limits;
    use llmux_governance::shared::{Refusal, SharedState};
    use llmux_store::Kind;
    let state = SharedState::connect(&redis_url(), Duration::from_secs(2))
        .await
        .unwrap();
    let unique = llmux::new_request_id();
    let scopes = [Limits {
        scope: format!("test:{unique}"),
        rpm: Some(37),
        tpm: Some(1_000_000),
        max_parallel: None,
    }];
    let budgets = [BudgetCheck {
        kind: Kind::Team,
        id: unique.clone(),
        max_budget: 5.0,
        stored_spend: 0.0,
        reset_at: None,
    }];
    let now = llmux_store::now_ms();
    let answers = futures_util::future::join_all((0..600).map(|i| {
        let (state, scopes, budgets, unique) = (Arc::clone(&state), &scopes, &budgets, &unique);
        async move {
            state
                .acquire(scopes, budgets, 0.1, &format!("{unique}-{i}"), now)
                .await
        }
    }))
    .await;
    let admitted = answers.iter().filter(|a| matches!(a, Ok(Ok(_)))).count();
    assert_eq!(admitted, 37, "{answers:?}");
    let calls = state
        .admission_calls
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(calls < 40, "600 admissions in {calls} calls");
    assert!(answers.iter().all(|a| match a {
        Ok(Ok(ok)) => ok.remaining.requests.is_some_and(|(limit, _)| limit == 37),
        Ok(Err(Refusal::Limit(l))) => l.what == "requests" && l.limit == 37,
        _ => false,
    }));
    let owner = [(Kind::Team, unique.clone())];
    let (_, reserved) = state.spend(&owner).await.unwrap()[0].unwrap();
    assert!(
        (reserved - 3.7).abs() < 1e-9,
        "37 reservations of 0.1: {reserved}"
    );

    // Their settlements go together too, added up per counter: every reservation is given
    // back, every cost and every token counted.
    let budget_owners = [(Kind::Team, unique.clone())];
    for (i, answer) in answers.iter().enumerate() {
        if matches!(answer, Ok(Ok(_))) {
            state.release(llmux_governance::shared::Settlement {
                scopes: &scopes,
                budgets: &budget_owners,
                request_id: &format!("{unique}-{i}"),
                tokens: 10,
                cost: 0.05,
                started: now,
                urgent: false,
            });
        }
    }
    state.flush_now().await;
    let (spend, reserved) = state.spend(&owner).await.unwrap()[0].unwrap();
    assert!(reserved.abs() < 1e-9, "all given back: {reserved}");
    assert!(
        (spend - 37.0 * 0.05).abs() < 1e-9,
        "37 costs of 0.05: {spend}"
    );
    let next_minute = now - now.rem_euclid(60_000);
    match state
        .acquire(&scopes, &[], 0.0, &format!("{unique}-after"), next_minute)
        .await
    {
        Ok(Err(Refusal::Limit(l))) => assert_eq!(l.what, "requests"),
        other => panic!("the window is full: {other:?}"),
    }
    let tokens = [Limits {
        scope: scopes[0].scope.clone(),
        rpm: None,
        tpm: Some(1_000_000),
        max_parallel: None,
    }];
    match state
        .acquire(&tokens, &[], 0.0, &format!("{unique}-tokens"), now)
        .await
    {
        Ok(Ok(ok)) => assert_eq!(ok.remaining.tokens, Some((1_000_000, 1_000_000 - 370))),
        other => panic!("{other:?}"),
    }
}

/// An admission Redis answers after its caller stopped waiting (Redis paused past the
/// deadline; the request counted locally) leaves nothing held in Redis: not its parallel slot,
/// not its budget reservation, whether it was still queued or already sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_answered_too_late_gives_back_what_it_took() {
    use llmux_governance::budget::BudgetCheck;
    use llmux_governance::limits::Limits;
    use llmux_governance::shared::SharedState;
    use llmux_store::Kind;
    let state = SharedState::connect(&redis_url(), Duration::from_millis(50))
        .await
        .unwrap();
    let unique = llmux::new_request_id();
    let scopes = [Limits {
        scope: format!("test:{unique}"),
        rpm: None,
        tpm: None,
        max_parallel: Some(100),
    }];
    let budgets = [BudgetCheck {
        kind: Kind::Team,
        id: unique.clone(),
        max_budget: 100.0,
        stored_spend: 0.0,
        reset_at: None,
    }];
    let client = redis::Client::open(redis_url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(400)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let now = llmux_store::now_ms();
    let late = futures_util::future::join_all((0..20).map(|i| {
        let (state, scopes, budgets, unique) = (Arc::clone(&state), &scopes, &budgets, &unique);
        async move {
            state
                .acquire(scopes, budgets, 1.0, &format!("{unique}-{i}"), now)
                .await
        }
    }))
    .await;
    assert!(
        late.iter().all(Result::is_err),
        "past the deadline: {late:?}"
    );
    // Redis runs what was sent once the pause ends; what it gave is given back.
    tokio::time::sleep(Duration::from_millis(800)).await;
    state.flush_now().await;
    let slots: i64 = redis::cmd("ZCARD")
        .arg(format!("llmux:par:test:{unique}"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(slots, 0, "no parallel slot left held");
    let owner = [(Kind::Team, unique.clone())];
    if let Some((_, reserved)) = state.spend(&owner).await.unwrap()[0] {
        assert!(
            reserved.abs() < 1e-9,
            "no reservation left held: {reserved}"
        );
    }
}

/// The admission script's edges, against the real Redis: one-minute window boundaries, a
/// budget period that ended before the database was reset, a new period seeded from the
/// database, spend the database holds above Redis's count, and reservations of an instance
/// that died, which expire.
#[tokio::test]
async fn the_admission_script_handles_windows_periods_and_dead_instances() {
    use llmux_governance::budget::BudgetCheck;
    use llmux_governance::limits::Limits;
    use llmux_governance::shared::{Refusal, SharedState};
    use llmux_store::Kind;
    let state = SharedState::connect(&redis_url(), Duration::from_secs(2))
        .await
        .unwrap();
    let unique = llmux::new_request_id();
    let minute = 1_800_000_000_000_i64 - 1_800_000_000_000_i64.rem_euclid(60_000);
    let rpm = [Limits {
        scope: format!("test:{unique}"),
        rpm: Some(1),
        tpm: None,
        max_parallel: None,
    }];
    let admitted = |r: &Result<Result<_, Refusal>, _>| matches!(r, Ok(Ok(_)));
    let last_ms = minute + 59_999;
    assert!(admitted(&state.acquire(&rpm, &[], 0.0, "a", last_ms).await));
    let refused = state.acquire(&rpm, &[], 0.0, "b", last_ms).await;
    assert!(
        matches!(&refused, Ok(Err(Refusal::Limit(l))) if l.what == "requests" && l.reset_in_ms == 1),
        "{refused:?}"
    );
    assert!(
        admitted(&state.acquire(&rpm, &[], 0.0, "c", minute + 60_000).await),
        "a new window"
    );

    let budget = |id: &str, stored: f64, reset_at: Option<i64>| BudgetCheck {
        kind: Kind::Key,
        id: format!("{unique}-{id}"),
        max_budget: 1.0,
        stored_spend: stored,
        reset_at,
    };
    // Budgets at the real time: an instance's heartbeat (real time) says it is alive.
    let now = llmux_store::now_ms();
    // A period ending at now + 1000 with 0.9 spent: one request fits, its reservation fills it.
    let p = [budget("period", 0.9, Some(now + 1000))];
    assert!(admitted(&state.acquire(&[], &p, 0.5, "p1", now).await));
    match state.acquire(&[], &p, 0.5, "p2", now).await {
        Ok(Err(Refusal::Budget(e))) => assert!((e.current - 0.9).abs() < 1e-9, "{e:?}"),
        other => panic!("{other:?}"),
    }
    // The period is over, the database not reset yet: its spend no longer counts (p1's 0.5
    // reservation still does), and the stale database value does not come back.
    assert!(admitted(
        &state.acquire(&[], &p, 0.1, "p3", now + 1000).await
    ));
    assert!(admitted(
        &state.acquire(&[], &p, 0.1, "p4", now + 1001).await
    ));
    // The database reset it: the new period starts from what the database holds for it.
    let next = [budget("period", 0.95, Some(now + 90_000))];
    match state.acquire(&[], &next, 0.1, "p5", now + 1002).await {
        Ok(Err(Refusal::Budget(e))) => assert!((e.current - 0.95).abs() < 1e-9, "{e:?}"),
        other => panic!("0.95 + 0.7 reserved is over 1.0: {other:?}"),
    }

    // Spend the database holds above Redis's count (written by an instance whose increment
    // Redis lost) raises it.
    let low = [budget("raise", 0.2, None)];
    assert!(admitted(&state.acquire(&[], &low, 0.0, "r1", now).await));
    let high = [budget("raise", 1.0, None)];
    for (check, id) in [(&high, "r2"), (&low, "r3")] {
        match state.acquire(&[], check, 0.0, id, now).await {
            Ok(Err(Refusal::Budget(e))) => assert!((e.current - 1.0).abs() < 1e-9, "{e:?}"),
            other => panic!("{other:?}"),
        }
    }

    // An instance that stopped holding reservations: once its heartbeat is 10 s old (by the
    // time a heartbeat is given), any instance's heartbeat gives back what it held, once. On a
    // Redis of its own: reaping at a time 13 s ahead reaps every instance it knows.
    let port = free_port();
    let mut private = start_redis(port);
    wait_for_redis(port).await;
    let private_url = format!("redis://127.0.0.1:{port}");
    let state = SharedState::connect(&private_url, Duration::from_secs(2))
        .await
        .unwrap();
    let dead = [budget("dead", 0.0, None)];
    let owner = (Kind::Key, format!("{unique}-dead"));
    let ghost = SharedState::connect(&private_url, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(admitted(&ghost.acquire(&[], &dead, 0.6, "d1", now).await));
    assert!(admitted(&ghost.acquire(&[], &dead, 0.6, "d2", now).await));
    drop(ghost);
    assert!(
        !admitted(&state.acquire(&[], &dead, 0.6, "d3", now + 1).await),
        "the ghost's 1.2 reserved counts"
    );
    let reaped = state.reap_at(llmux_store::now_ms() + 13_000).await.unwrap();
    assert!(reaped >= 2, "the ghost's two reservations: {reaped}");
    let reserved = |state: Arc<SharedState>, owner: (Kind, String)| async move {
        state.spend(std::slice::from_ref(&owner)).await.unwrap()[0]
            .unwrap()
            .1
    };
    assert!(reserved(Arc::clone(&state), owner.clone()).await.abs() < 1e-9);
    assert!(admitted(&state.acquire(&[], &dead, 0.6, "d4", now).await));
    assert!((reserved(Arc::clone(&state), owner.clone()).await - 0.6).abs() < 1e-9);
    // Settling it: the reservation goes, the cost counts; settling it again gives nothing more.
    for _ in 0..2 {
        state.release(llmux_governance::shared::Settlement {
            scopes: &[],
            budgets: std::slice::from_ref(&owner),
            request_id: "d4",
            tokens: 0,
            cost: 0.25,
            started: now,
            urgent: true,
        });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let (spent, reserved) =
            state.spend(std::slice::from_ref(&owner)).await.unwrap()[0].unwrap();
        if (spent - 0.5).abs() < 1e-9 {
            assert!(reserved.abs() < 1e-9, "given back once: {reserved}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{spent} {reserved}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A settlement for a counter Redis lost and rebuilt (another generation) gives nothing back
    // to the new one.
    let lost = [budget("lost", 0.0, None)];
    let lost_owner = (Kind::Key, format!("{unique}-lost"));
    assert!(admitted(&state.acquire(&[], &lost, 0.5, "l1", now).await));
    state.forget(Kind::Key, &lost_owner.1).await; // Redis lost it
    assert!(admitted(&state.acquire(&[], &lost, 0.3, "l2", now).await));
    state.release(llmux_governance::shared::Settlement {
        scopes: &[],
        budgets: std::slice::from_ref(&lost_owner),
        request_id: "l1",
        tokens: 0,
        cost: 0.0,
        started: now,
        urgent: true,
    });
    state.flush_now().await;
    assert!(
        (reserved(Arc::clone(&state), lost_owner.clone()).await - 0.3).abs() < 1e-9,
        "l2's reservation stands"
    );

    // An admission whose answer this instance never saw (it came after the deadline): the
    // sweep gives back what it holds for requests it does not have, once they are old enough.
    let orphan = [budget("orphan", 0.0, None)];
    let orphan_owner = (Kind::Key, format!("{unique}-orphan"));
    let other = SharedState::connect(&redis_url(), Duration::from_secs(2))
        .await
        .unwrap();
    assert!(admitted(&other.acquire(&[], &orphan, 0.4, "o1", now).await));
    assert!(admitted(&other.acquire(&[], &orphan, 0.4, "o2", now).await));
    // o1 settles normally; o2 is still in flight.
    other.release(llmux_governance::shared::Settlement {
        scopes: &[],
        budgets: std::slice::from_ref(&orphan_owner),
        request_id: "o1",
        tokens: 0,
        cost: 0.0,
        started: now,
        urgent: true,
    });
    other.flush_now().await;
    assert_eq!(other.held_requests(), ["o2".to_owned()]);
    assert_eq!(
        other
            .sweep_before(now + 1, &other.held_requests())
            .await
            .unwrap(),
        0,
        "o2 is in flight"
    );
    assert!((reserved(Arc::clone(&other), orphan_owner.clone()).await - 0.4).abs() < 1e-9);
    assert_eq!(
        other.sweep_before(now, &[]).await.unwrap(),
        0,
        "admitted at `now`: not older than the cutoff"
    );
    // Had its answer never arrived, the instance would not have it: the sweep gives it back.
    assert_eq!(other.sweep_before(now + 1, &[]).await.unwrap(), 1);
    assert!(
        reserved(Arc::clone(&other), orphan_owner.clone())
            .await
            .abs()
            < 1e-9
    );
    // Its settlement, when it comes, gives nothing back twice.
    other.release(llmux_governance::shared::Settlement {
        scopes: &[],
        budgets: std::slice::from_ref(&orphan_owner),
        request_id: "o2",
        tokens: 0,
        cost: 0.1,
        started: now,
        urgent: true,
    });
    other.flush_now().await;
    let (spent, reserved) = other
        .spend(std::slice::from_ref(&orphan_owner))
        .await
        .unwrap()[0]
        .unwrap();
    assert!(
        (spent - 0.1).abs() < 1e-9 && reserved.abs() < 1e-9,
        "{spent} {reserved}"
    );
    let _ = private.kill();
    let _ = private.wait();
}

/// When a cooldown ends, one instance of the fleet probes the deployment (the one that cooled
/// it), not every instance: the others wait for its verdict. A failed probe cools it again
/// everywhere; a successful one brings it back everywhere at once.
#[tokio::test]
async fn one_probe_serves_the_whole_fleet_when_a_cooldown_ends() {
    let (failing_url, failing) = upstream().await;
    let (healthy_url, _healthy) = upstream().await;
    failing.set_defaults(json!({"status": 429}));
    // Deployment ids of this test alone: cooldowns travel on a channel every test's fleet hears.
    let unique = llmux::new_request_id();
    let models = format!(
        "model_list:\n  - {{model_name: m, litellm_params: {{model: openai/m, api_base: \"{failing_url}\", api_key: k}}, model_info: {{id: failing-{unique}}}}}\n  - {{model_name: m, litellm_params: {{model: openai/m, api_base: \"{healthy_url}\", api_key: k}}, model_info: {{id: healthy-{unique}}}}}\nrouter_settings: {{num_retries: 1, cooldown_time: 1}}\n"
    );
    let (fleet, http) = fleet_of(3, &redis_url(), &models).await;
    let sk = key(&http, &fleet[0], json!({})).await;
    let calls = || {
        failing
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // Instance 0 cools the deployment down; the cooldown reaches the others.
    while calls() == 0 {
        assert_eq!(chat(&http, &fleet[0], &sk).await, 200);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await; // instance 0's cooldown is over
    let before = calls();
    for i in 0..20 {
        assert_eq!(chat(&http, &fleet[1 + i % 2], &sk).await, 200);
    }
    assert_eq!(
        calls(),
        before,
        "instances 1 and 2 leave the probe to instance 0 (and wait for its verdict)"
    );
    // Instance 0 probes; the deployment still fails, so it cools again everywhere.
    for _ in 0..100 {
        assert_eq!(chat(&http, &fleet[0], &sk).await, 200);
        if calls() > before {
            break;
        }
    }
    assert_eq!(calls(), before + 1, "one probe");
    // Healthy again: instance 0's next probe succeeds, and every instance uses it at once.
    failing.set_defaults(json!({}));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = calls();
    for _ in 0..100 {
        assert_eq!(chat(&http, &fleet[0], &sk).await, 200);
        if calls() > before {
            break;
        }
    }
    assert!(calls() > before, "instance 0 probed the deployment");
    tokio::time::sleep(Duration::from_millis(300)).await; // the verdict travels
    let before = calls();
    for i in 0..30 {
        assert_eq!(chat(&http, &fleet[1 + i % 2], &sk).await, 200);
    }
    assert!(
        calls() > before,
        "instances 1 and 2 use the recovered deployment (their own cooldown has 10 s left)"
    );
}

/// Routing reads the fleet's numbers: a deployment that reached its `rpm` through one instance
/// is full for the others too (usage-based routing), and a deployment one instance measured as
/// slow is avoided by another that never called it (latency-based routing).
#[tokio::test]
async fn routing_reads_the_usage_and_latency_the_fleet_measured() {
    let unique = llmux::new_request_id();
    let (full_url, full) = upstream().await;
    let models = format!(
        "model_list:\n  - {{model_name: m, litellm_params: {{model: openai/m, api_base: \"{full_url}\", api_key: k, rpm: 4}}, model_info: {{id: full-{unique}}}}}\nrouter_settings: {{num_retries: 0, routing_strategy: usage-based-routing}}\n"
    );
    let (fleet, http) = fleet_of(2, &redis_url(), &models).await;
    let sk = key(&http, &fleet[0], json!({})).await;
    away_from_a_minute_boundary().await;
    for _ in 0..4 {
        assert_eq!(chat(&http, &fleet[0], &sk).await, 200);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await; // two exchanges with the fleet
    assert_eq!(
        chat(&http, &fleet[1], &sk).await,
        429,
        "the deployment's rpm of 4 is used up fleet-wide"
    );
    assert_eq!(
        full.stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );

    let (slow_url, slow) = upstream().await;
    let (fast_url, _fast) = upstream().await;
    slow.set_defaults(json!({"latency_ms": 150}));
    let models = format!(
        "model_list:\n  - {{model_name: m, litellm_params: {{model: openai/m, api_base: \"{slow_url}\", api_key: k}}, model_info: {{id: slow-{unique}}}}}\n  - {{model_name: m, litellm_params: {{model: openai/m, api_base: \"{fast_url}\", api_key: k}}, model_info: {{id: fast-{unique}}}}}\nrouter_settings: {{num_retries: 0, routing_strategy: latency-based-routing}}\n"
    );
    let (fleet, http) = fleet_of(2, &redis_url(), &models).await;
    let sk = key(&http, &fleet[0], json!({})).await;
    let slow_calls = || {
        slow.stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // Instance 0 measures both (no data counts as fastest, so each gets tried).
    for _ in 0..10 {
        assert_eq!(chat(&http, &fleet[0], &sk).await, 200);
    }
    assert!(slow_calls() > 0, "instance 0 measured the slow deployment");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = slow_calls();
    for _ in 0..10 {
        assert_eq!(chat(&http, &fleet[1], &sk).await, 200);
    }
    assert_eq!(
        slow_calls(),
        before,
        "instance 1 never called the slow deployment: it knows instance 0's measurements"
    );
}
