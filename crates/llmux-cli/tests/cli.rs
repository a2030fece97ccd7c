//! The `llmux` binary: version, `config check`, and `serve` with graceful shutdown on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_llmux");

fn shared(path: &str) -> String {
    format!(
        "{}/../../tests/fixtures/configs/{path}",
        std::env::var("CARGO_MANIFEST_DIR").unwrap()
    )
}

/// The spend-log rows of `key`, read through the management API as the master key.
async fn spend_logs(http: &reqwest::Client, url: &str, key: &str, limit: u32) -> serde_json::Value {
    http.get(format!("{url}/spend/logs?api_key={key}&limit={limit}"))
        .bearer_auth("sk-master")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn version_is_printed() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("llmux {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn config_check_accepts_the_litellm_fixtures() {
    for name in [
        "litellm-azure_config.yaml",
        "litellm-docs-example.yaml",
        "litellm-load_balancer.yaml",
    ] {
        let out = Command::new(BIN)
            .args(["config", "check", "--config", &shared(name)])
            .env("LITELLM_MASTER_KEY", "sk-master")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(stderr.contains(": ok ("), "{stderr}");
    }
    let quickstart = format!(
        "{}/../../examples/quickstart.yaml",
        std::env::var("CARGO_MANIFEST_DIR").unwrap()
    );
    let out = Command::new(BIN)
        .args(["config", "check", "--config", &quickstart])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn the_fleet_example_passes_a_strict_check() {
    let fleet = format!(
        "{}/../../examples/fleet/config.yaml",
        std::env::var("CARGO_MANIFEST_DIR").unwrap()
    );
    let out = Command::new(BIN)
        .args(["config", "check", "--strict", "--config", &fleet])
        .env("OPENAI_API_KEY", "sk-x")
        .env("LLMUX_MASTER_KEY", "sk-m")
        .env("DATABASE_URL", "postgres://llmux@db/llmux")
        .env("REDIS_HOST", "redis")
        .env("REDIS_PORT", "6379")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(": ok (0 warning(s))"), "{stderr}");
}

#[test]
fn a_master_key_that_resolves_to_nothing_stops_the_start() {
    for value in ["os.environ/LLMUX_TEST_UNSET_MASTER_KEY", "\"\"", "\"  \""] {
        let file = write_config(&format!(
            "model_list: [{{model_name: m, litellm_params: {{model: mock/m}}}}]\ngeneral_settings: {{master_key: {value}}}\n"
        ));
        let out = Command::new(BIN)
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--config"])
            .arg(file.path())
            .env_remove("LLMUX_TEST_UNSET_MASTER_KEY")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{value}: llmux started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("general_settings.master_key: is configured but empty"),
            "{value}: {stderr}"
        );
    }
}

#[tokio::test]
async fn without_a_master_key_the_start_says_authentication_is_off() {
    let file = write_config("model_list: [{model_name: m, litellm_params: {model: mock/m}}]\n");
    let mut server = start_server(file.path(), &[]).await;
    sigterm(&server.child);
    wait_exit(&mut server.child, Duration::from_secs(10));
    let mut stderr = String::new();
    std::io::Read::read_to_string(server.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("authentication is OFF"), "{stderr}");
}

/// Issue 17, finding 10: a model name with a newline wrote a line that looked like an entry.
#[tokio::test]
async fn a_client_cannot_forge_a_log_line() {
    let file = write_config("model_list: [{model_name: m, litellm_params: {model: mock/m}}]\n");
    let mut server = start_server(file.path(), &[]).await;
    let forged = "nope\n2020-01-01T00:00:00.000000Z  INFO llmux: admin login ok\r\u{1b}[2K";
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&serde_json::json!({"model": forged, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    sigterm(&server.child);
    wait_exit(&mut server.child, Duration::from_secs(10));
    let mut stderr = String::new();
    std::io::Read::read_to_string(server.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("admin login ok"),
        "the rejection is logged: {stderr}"
    );
    for line in stderr.lines() {
        assert!(!line.starts_with("2020-01-01"), "forged line: {line}");
        assert!(!line.contains('\r') && !line.contains('\u{1b}'), "{line:?}");
    }
}

#[test]
fn config_check_lists_every_problem_with_its_path_and_fails() {
    let file = write_config(
        "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x, api_base: nope}\n  - model_name: b\n    litellm_params: {model: y, custom_llm_provider: frobnicator}\n",
    );
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: model_list[0].litellm_params.api_base"),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("error: model_list[1].litellm_params.model: unknown provider `frobnicator`"),
        "{stderr}"
    );
    assert!(stderr.contains("2 error(s)"), "{stderr}");

    let out = Command::new(BIN)
        .args(["config", "check", "--config", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn strict_turns_warnings_into_errors() {
    let file = write_config(
        "model_list: [{model_name: a, litellm_params: {model: mock/a}}]\nsurprise: 1\n",
    );
    let ok = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stderr).contains("warning: surprise"));
    let strict = Command::new(BIN)
        .args(["config", "check", "--strict", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&strict.stderr).contains("error: surprise"));
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_server(config: &std::path::Path, extra: &[&str]) -> Server {
    let port = free_port();
    let child = Command::new(BIN)
        .args(extra)
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--config",
        ])
        .arg(config)
        .env("LLMUX_LOG", "info,llmux::access=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/health/readiness")).await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "llmux did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Server { child, url }
}

async fn mock_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(llmux_mock::serve(listener, false));
    format!("http://{addr}/v1")
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "llmux did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_streams_then_exits() {
    let upstream = mock_upstream().await;
    let config = write_config(&format!(
        "model_list: [{{model_name: m, litellm_params: {{model: openai/m, api_base: \"{upstream}\", api_key: k}}}}]\n"
    ));
    let mut server = start_server(config.path(), &["--log-format", "json"]).await;
    let body = serde_json::json!({
        "model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}],
        "mock_options": {"chunks": 40, "chunk_delay_ms": 25}
    });
    let http = reqwest::Client::new();
    let mut response = http
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));

    sigterm(&server.child);
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(
        rest.ends_with("data: [DONE]\n\n"),
        "the in-flight stream finished: {rest:?}"
    );
    let status = wait_exit(&mut server.child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");

    let mut stderr = String::new();
    std::io::Read::read_to_string(server.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("message").is_some(),
            "{line}"
        );
    }
    assert!(stderr.contains("request finished"), "{stderr}");
    assert!(!stderr.contains("\"k\""), "secrets stay out of logs");
}

#[tokio::test]
async fn drain_timeout_bounds_the_shutdown() {
    let upstream = mock_upstream().await;
    let config = write_config(&format!(
        "model_list: [{{model_name: m, litellm_params: {{model: openai/m, api_base: \"{upstream}\", api_key: k}}}}]\nllmux_settings: {{drain_timeout: 0.5}}\n"
    ));
    let mut server = start_server(config.path(), &[]).await;
    let body = serde_json::json!({
        "model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}],
        "mock_options": {"chunks": 10, "stall_after": 1}
    });
    let mut response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    response.chunk().await.unwrap().unwrap();
    let started = Instant::now();
    sigterm(&server.child);
    let status = wait_exit(&mut server.child, Duration::from_secs(10));
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exited after the drain timeout, not the stream"
    );
    // New connections are refused once the server has stopped.
    assert!(reqwest::get(format!("{}/health/liveliness", server.url))
        .await
        .is_err());
}

/// Spend survives a graceful stop under load: every request that was answered is in the spend
/// logs after a restart, and the key's spend counter equals the sum of its rows.
#[tokio::test]
async fn no_spend_is_lost_across_a_graceful_restart_under_load() {
    let postgres = llmux_store::testing::fresh_postgres_url().await;
    for database in ["sqlite", "postgres"] {
        let upstream = mock_upstream().await;
        let dir = tempfile::tempdir().unwrap();
        let db_setting = match database {
            "sqlite" => format!(
                "llmux_settings: {{database_path: \"{}/llmux.db\"}}",
                dir.path().display()
            ),
            _ => {
                format!("general_settings: {{master_key: sk-master, database_url: \"{postgres}\"}}")
            }
        };
        let master = if database == "sqlite" {
            "general_settings: {master_key: sk-master}\n"
        } else {
            ""
        };
        let config = write_config(&format!(
            "model_list: [{{model_name: m, litellm_params: {{model: openai/m, api_base: \"{upstream}\", api_key: k, input_cost_per_token: 0.001, output_cost_per_token: 0.002}}}}]\n{master}{db_setting}\n"
        ));
        let mut server = start_server(config.path(), &[]).await;
        let http = reqwest::Client::new();
        let key: serde_json::Value = http
            .post(format!("{}/key/generate", server.url))
            .bearer_auth("sk-master")
            .json(&serde_json::json!({"key_alias": "load"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let key = key["key"].as_str().unwrap().to_owned();

        let url = server.url.clone();
        let run = |stream: bool| {
            let (http, url, key) = (http.clone(), url.clone(), key.clone());
            async move {
                let body = serde_json::json!({
                    "model": "m", "stream": stream, "messages": [{"role": "user", "content": "x"}],
                    "mock_options": {"chunks": 10, "chunk_delay_ms": 30, "latency_ms": 100}
                });
                let Ok(r) = http
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                else {
                    return false;
                };
                if r.status() != 200 {
                    return false;
                }
                match r.text().await {
                    Ok(t) => !stream || t.ends_with("data: [DONE]\n\n"),
                    Err(_) => false,
                }
            }
        };
        let load = futures_util::future::join_all((0..80).map(|i| run(i % 2 == 0)));
        let stop = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            sigterm(&server.child);
        };
        let (answered, ()) = tokio::join!(load, stop);
        let answered = answered.iter().filter(|ok| **ok).count();
        let status = wait_exit(&mut server.child, Duration::from_secs(20));
        assert!(status.success(), "{database}: {status:?}");
        assert!(
            answered > 0,
            "{database}: some requests were in flight at the stop"
        );

        let server = start_server(config.path(), &[]).await;
        let logs: serde_json::Value = spend_logs(&http, &server.url, &key, 1000).await;
        let logs = logs.as_array().unwrap();
        let succeeded = logs.iter().filter(|l| l["status"] == "success").count();
        assert_eq!(
            succeeded, answered,
            "{database}: every answered request is logged"
        );
        let total: f64 = logs.iter().map(|l| l["spend"].as_f64().unwrap()).sum();
        assert!(total > 0.0);
        let info: serde_json::Value = http
            .get(format!("{}/key/info?key={key}", server.url))
            .bearer_auth("sk-master")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let counted = info["info"]["spend"].as_f64().unwrap();
        assert!(
            (counted - total).abs() < 1e-9,
            "{database}: counter {counted} vs rows {total}"
        );
    }
}

fn prices(input: f64, output: f64) -> String {
    format!("{{\"m\": {{\"input_cost_per_token\": {input}, \"output_cost_per_token\": {output}, \"mode\": \"chat\"}}, \"sample_spec\": {{\"mode\": \"chat\"}}}}")
}

async fn cost(http: &reqwest::Client, url: &str) -> f64 {
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["x-litellm-response-cost"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The cost map is read at start, re-read when the file changes, and on SIGHUP.
#[tokio::test]
async fn prices_reload_when_the_cost_map_changes_or_on_sighup() {
    let upstream = mock_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("prices.json");
    std::fs::write(&map, prices(0.001, 0.002)).unwrap();
    for (interval, signal) in [(0.1, false), (3600.0, true)] {
        std::fs::write(&map, prices(0.001, 0.002)).unwrap();
        let config = write_config(&format!(
            "model_list: [{{model_name: m, litellm_params: {{model: openai/m, api_base: \"{upstream}\", api_key: k}}}}]\nllmux_settings: {{model_cost_map: \"{}\", model_cost_map_reload_interval: {interval}}}\n",
            map.display()
        ));
        let server = start_server(config.path(), &[]).await;
        let http = reqwest::Client::new();
        let first = cost(&http, &server.url).await;
        assert!(first > 0.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::write(&map, prices(0.002, 0.004)).unwrap();
        if signal {
            let status = Command::new("kill")
                .args(["-HUP", &server.child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = cost(&http, &server.url).await;
            if (now - 2.0 * first).abs() < 1e-12 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prices did not reload (signal: {signal}): {now} vs {first}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One `kill -9` under load: the request ids the clients got complete answers for, the ids
/// of the spend rows after a restart, and how long the load ran.
async fn crash_under_load(
    database: &str,
    durability: &str,
    postgres: &str,
) -> (
    std::collections::HashSet<String>,
    std::collections::HashSet<String>,
    Duration,
) {
    let upstream = mock_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let general = match database {
        "sqlite" => "general_settings: {master_key: sk-master}".to_owned(),
        _ => format!("general_settings: {{master_key: sk-master, database_url: \"{postgres}\"}}"),
    };
    let config = write_config(&format!(
        "model_list: [{{model_name: m, litellm_params: {{model: openai/m, api_base: \"{upstream}\", api_key: k, input_cost_per_token: 0.001, output_cost_per_token: 0.002}}}}]\n{general}\nllmux_settings: {{database_path: \"{}/llmux.db\", spend_log_durability: {durability}}}\n",
        dir.path().display()
    ));
    let mut server = start_server(config.path(), &[]).await;
    let http = reqwest::Client::new();
    let key: serde_json::Value = http
        .post(format!("{}/key/generate", server.url))
        .bearer_auth("sk-master")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let stop_at = started + Duration::from_millis(1200);
    let worker = |n: usize| {
        let (http, url, key) = (http.clone(), server.url.clone(), key.clone());
        async move {
            let mut answered = Vec::new();
            let stream = n.is_multiple_of(2);
            let body = serde_json::json!({"model": "m", "stream": stream,
                "messages": [{"role": "user", "content": "x"}], "mock_options": {"chunks": 3}});
            loop {
                let Ok(r) = http
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                else {
                    return answered;
                };
                let id = r.headers()["x-litellm-call-id"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let ok = r.status() == 200;
                match r.text().await {
                    // A whole answer: the JSON, or the stream to its end.
                    Ok(t) if ok && (!stream || t.ends_with("data: [DONE]\n\n")) => {
                        answered.push(id)
                    }
                    _ => return answered,
                }
            }
        }
    };
    let load = futures_util::future::join_all((0..32).map(worker));
    let kill = async {
        tokio::time::sleep_until(stop_at.into()).await;
        server.child.kill().unwrap();
    };
    let (answered, ()) = tokio::join!(load, kill);
    let ran = started.elapsed().min(Duration::from_millis(1200));
    server.child.wait().unwrap();
    let answered: std::collections::HashSet<String> = answered.into_iter().flatten().collect();
    let server = start_server(config.path(), &[]).await;
    let logs: serde_json::Value = spend_logs(&http, &server.url, &key, 100000).await;
    let rows = logs
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["request_id"].as_str().unwrap().to_owned())
        .collect();
    (answered, rows, ran)
}

/// Issue 17, finding 6: after 600 answered requests and a `kill -9`, 97 spend rows were
/// missing. With `spend_log_durability: sync` none is; `batched` loses under 250 ms of traffic.
#[tokio::test]
async fn a_kill_9_under_load_loses_no_spend_in_sync_mode_and_under_250_ms_batched() {
    let postgres = llmux_store::testing::fresh_postgres_url().await;
    for database in ["sqlite", "postgres"] {
        for durability in ["sync", "batched"] {
            let (answered, rows, ran) = crash_under_load(database, durability, &postgres).await;
            let missing = answered.difference(&rows).count();
            let rate = answered.len() as f64 / ran.as_secs_f64();
            eprintln!(
                "{database} {durability}: {} answered in {ran:?} ({rate:.0}/s), {} rows, {missing} answered without a row",
                answered.len(),
                rows.len()
            );
            assert!(answered.len() > 100, "{database} {durability}: load ran");
            match durability {
                "sync" => assert_eq!(missing, 0, "{database}: sync loses nothing"),
                _ => assert!(
                    (missing as f64) <= rate * 0.25 + 1.0,
                    "{database}: {missing} lost at {rate:.0}/s exceeds 250 ms of traffic"
                ),
            }
        }
    }
}

/// An upstream answering every chat request with the same `size`-byte completion (with a
/// `content-length`, or chunked without one).
async fn big_answer_upstream(size: usize, chunked: bool) -> String {
    let mut body = br#"{"id":"big","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":""#.to_vec();
    body.resize(size - 100, b'a');
    body.extend_from_slice(br#""},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#);
    let body = axum::body::Bytes::from(body);
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let body = body.clone();
            async move {
                let out = if chunked {
                    let pieces: Vec<Result<axum::body::Bytes, std::io::Error>> = body
                        .chunks(1 << 20)
                        .map(|c| Ok(axum::body::Bytes::copy_from_slice(c)))
                        .collect();
                    axum::body::Body::from_stream(futures_util::stream::iter(pieces))
                } else {
                    axum::body::Body::from(body)
                };
                axum::response::Response::builder()
                    .header("content-type", "application/json")
                    .body(out)
                    .unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

/// (current, peak) resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap()
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Issue 17, finding 14: one 300 MB answer peaked at 770 MB; five concurrent 100 MB answers at
/// 821 MB, kept after they finished. A body's peak stays near its size, the bytes held across
/// requests are bounded (503 past it), and memory is given back after a burst.
#[tokio::test]
async fn large_upstream_answers_cost_about_their_size_and_are_given_back() {
    const MIB: usize = 1 << 20;
    for chunked in [false, true] {
        let upstream = big_answer_upstream(100 * MIB, chunked).await;
        let config = write_config(&format!(
            "model_list: [{{model_name: m, litellm_params: {{model: openai/m, api_base: \"{upstream}\", api_key: k}}}}]\nllmux_settings: {{max_buffered_response_mb: 250}}\nrouter_settings: {{num_retries: 0}}\n"
        ));
        let server = start_server(config.path(), &[]).await;
        let pid = server.child.id();
        let http = reqwest::Client::new();
        let ask = || async {
            let r = http
                .post(format!("{}/v1/chat/completions", server.url))
                .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body = r.bytes().await.unwrap();
            (status, body)
        };
        let (baseline, _) = rss_mib(pid);
        let (status, body) = ask().await;
        assert_eq!(status, 200, "chunked {chunked}");
        assert!(body.len() > 99 * MIB);
        drop(body);
        let (_, peak) = rss_mib(pid);
        eprintln!("chunked {chunked}: baseline {baseline:.0} MiB, one 100 MiB answer peaks at {peak:.0} MiB");
        let one_answer_limit = if chunked { 2.3 } else { 1.4 };
        assert!(
            peak - baseline < one_answer_limit * 100.0,
            "chunked {chunked}: peak {peak:.0} MiB from {baseline:.0}"
        );
        // Five at once against a 250 MiB bound: at most two are held, the rest are 503s.
        let answers = futures_util::future::join_all((0..5).map(|_| ask())).await;
        let ok = answers.iter().filter(|(s, _)| *s == 200).count();
        let refused: Vec<&axum::body::Bytes> = answers
            .iter()
            .filter(|(s, _)| *s == 503)
            .map(|(_, b)| b)
            .collect();
        assert!(
            ok >= 1 && ok + refused.len() == 5,
            "chunked {chunked}: {ok} ok"
        );
        assert!(
            !refused.is_empty(),
            "chunked {chunked}: the bound held none back"
        );
        let e: serde_json::Value = serde_json::from_slice(refused[0]).unwrap();
        assert_eq!(e["error"]["code"], "response_buffer_full");
        drop(answers);
        let (_, burst_peak) = rss_mib(pid);
        eprintln!("chunked {chunked}: five at once ({ok} served) peak {burst_peak:.0} MiB");
        assert!(
            burst_peak - baseline < 250.0 * if chunked { 2.3 } else { 1.4 },
            "chunked {chunked}: burst peak {burst_peak:.0} MiB"
        );
        // Given back once the burst is over.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut after = rss_mib(pid).0;
        while after - baseline > 40.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            after = rss_mib(pid).0;
        }
        eprintln!("chunked {chunked}: after the burst {after:.0} MiB");
        assert!(
            after - baseline < 40.0,
            "chunked {chunked}: {after:.0} MiB kept after the burst"
        );
    }
}

/// Issue 18: three `llmux` processes on one PostgreSQL and one Redis act as one gateway: an
/// rpm limit holds across them exactly, a budget spent through all three stops all three
/// within one request's cost, a key blocked on one is refused by the others within a second,
/// and each reports the same spend and the same spend log.
#[tokio::test]
async fn three_processes_on_one_postgres_and_one_redis_act_as_one_gateway() {
    let postgres = llmux_store::testing::fresh_postgres_url().await;
    let redis = std::env::var("LLMUX_TEST_REDIS_URL")
        .expect("LLMUX_TEST_REDIS_URL (scripts/test.sh starts Redis)");
    let upstream = mock_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&format!(
        "model_list: [{{model_name: m, litellm_params: {{model: openai/m, api_base: \"{upstream}\", api_key: k, input_cost_per_token: 0.001, output_cost_per_token: 0.002}}}}]\nrouter_settings: {{num_retries: 0, redis_url: \"{redis}\"}}\ngeneral_settings: {{master_key: sk-master, database_url: \"{postgres}\"}}\nllmux_settings: {{database_path: \"{}/unused.db\", redis_deadline_ms: 1000}}\n",
        dir.path().display()
    ));
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(start_server(config.path(), &[]).await);
    }
    let http = reqwest::Client::new();
    let new_key = |body: serde_json::Value| {
        let (http, url) = (&http, &fleet[0].url);
        async move {
            let r: serde_json::Value = http
                .post(format!("{url}/key/generate"))
                .bearer_auth("sk-master")
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["key"].as_str().unwrap().to_owned()
        }
    };
    let chat = |at: usize, key: String| {
        let (http, url) = (&http, fleet[at].url.clone());
        async move {
            let r = http
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&serde_json::json!({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            let cost: f64 = r
                .headers()
                .get("x-litellm-response-cost")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            (r.status().as_u16(), cost)
        }
    };

    let limited = new_key(serde_json::json!({"rpm_limit": 5})).await;
    // A burst must not straddle a wall-clock minute (rate windows are those minutes).
    let into_minute = llmux_store::now_ms().rem_euclid(60_000);
    if into_minute > 55_000 {
        tokio::time::sleep(Duration::from_millis((60_100 - into_minute) as u64)).await;
    }
    let answers =
        futures_util::future::join_all((0..15).map(|i| chat(i % 3, limited.clone()))).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(
        (
            statuses.iter().filter(|s| **s == 200).count(),
            statuses.iter().filter(|s| **s == 429).count()
        ),
        (5, 10),
        "{statuses:?}"
    );

    let (status, one) = chat(0, new_key(serde_json::json!({})).await).await;
    assert_eq!(status, 200);
    let max = one * 3.5;
    let budgeted = new_key(serde_json::json!({"max_budget": max})).await;
    let answers =
        futures_util::future::join_all((0..15).map(|i| chat(i % 3, budgeted.clone()))).await;
    let mut spent: f64 = answers.iter().filter(|a| a.0 == 200).map(|a| a.1).sum();
    let mut admitted = answers.iter().filter(|a| a.0 == 200).count();
    let mut refused = 0;
    for i in 0..20 {
        let (status, cost) = chat(i % 3, budgeted.clone()).await;
        if status != 200 {
            // The last answer's settlement may still be on its way from another process.
            refused += 1;
            if refused == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        refused = 0;
        spent += cost;
        admitted += 1;
    }
    assert!(
        spent >= max - 1e-9 && spent <= max + one + 1e-9,
        "{admitted} admitted, {spent} spent of {max} (one request: {one})"
    );
    for at in 0..3 {
        assert_eq!(chat(at, budgeted.clone()).await.0, 400, "instance {at}");
    }
    // Every instance reports the fleet's spend, and the same rows.
    for server in &fleet {
        let info: serde_json::Value = http
            .get(format!("{}/key/info?key={budgeted}", server.url))
            .bearer_auth("sk-master")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let seen = info["info"]["spend"].as_f64().unwrap();
        assert!(
            (seen - spent).abs() < 1e-9,
            "{} says {seen}, spent {spent}",
            server.url
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let rows = spend_logs(&http, &server.url, &budgeted, 100).await;
            let rows = rows.as_array().map_or(0, Vec::len);
            if rows == admitted {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {rows} spend rows, {admitted} answered",
                server.url
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let revoked = new_key(serde_json::json!({})).await;
    for at in 0..3 {
        assert_eq!(chat(at, revoked.clone()).await.0, 200);
    }
    let r = http
        .post(format!("{}/key/block", fleet[0].url))
        .bearer_auth("sk-master")
        .json(&serde_json::json!({"key": revoked}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for at in 1..3 {
        assert_eq!(chat(at, revoked.clone()).await.0, 401, "instance {at}");
    }
}

/// A changed configuration applies without a restart while traffic flows: on SIGHUP, and when
/// the file changes on disk with no signal. A file that does not load is refused and the
/// running configuration kept. Readiness says which configuration is live (fingerprint,
/// reloads), and not one request fails throughout.
#[tokio::test]
async fn the_configuration_reloads_under_load_without_a_failed_request() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let upstream = mock_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let models = |names: &[&str]| {
        let mut text = String::from("model_list:\n");
        for n in names {
            text.push_str(&format!(
                "  - {{model_name: {n}, litellm_params: {{model: openai/{n}, api_base: \"{upstream}\", api_key: k}}}}\n"
            ));
        }
        text
    };
    std::fs::write(&path, models(&["alpha"])).unwrap();
    let server = start_server(&path, &[]).await;
    let http = reqwest::Client::new();
    let live = |http: reqwest::Client, url: String| async move {
        let v: serde_json::Value = http
            .get(format!("{url}/health/readiness"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["config"].clone()
    };
    let chat = |http: reqwest::Client, url: String, model: &'static str| async move {
        http.post(format!("{url}/v1/chat/completions"))
            .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let first = live(http.clone(), server.url.clone()).await;
    assert_eq!(first["reloads"], 0);
    assert_eq!(first["path"], path.display().to_string());

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (http, url) = (http.clone(), server.url.clone());
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if chat(http.clone(), url.clone(), "alpha").await != 200 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    // Steady traffic, not a saturating one: tests beside this one measure
                    // timings.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    let until_answers = |model: &'static str, status: u16| {
        let (http, url) = (http.clone(), server.url.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while chat(http.clone(), url.clone(), model).await != status {
                assert!(Instant::now() < deadline, "{model} never answered {status}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(chat(http.clone(), server.url.clone(), "beta").await, 404);

    // SIGHUP applies a model added to the file.
    std::fs::write(&path, models(&["alpha", "beta"])).unwrap();
    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hup();
    until_answers("beta", 200).await;
    let second = live(http.clone(), server.url.clone()).await;
    assert_eq!(second["reloads"], 1);
    assert_ne!(second["fingerprint"], first["fingerprint"]);

    // A file that does not load is refused: the running configuration stays.
    std::fs::write(&path, "model_list:\n  - {model_name: broken}\n").unwrap();
    hup();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(live(http.clone(), server.url.clone()).await, second);
    assert_eq!(chat(http.clone(), server.url.clone(), "beta").await, 200);

    // No signal: the file changing on disk is enough.
    std::fs::write(&path, models(&["alpha", "gamma"])).unwrap();
    until_answers("gamma", 200).await;
    until_answers("beta", 404).await;
    assert_eq!(live(http.clone(), server.url.clone()).await["reloads"], 2);

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(sent.load(Ordering::Relaxed) > 50, "the load ran");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
}
