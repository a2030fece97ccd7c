//! Client connections as `llmux_server::serve` handles them: a client that sends nothing, sends
//! its headers too slowly, or keeps a connection idle, is disconnected; a slow one within the
//! limit is served; shutdown closes idle connections and stops accepting.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MODELS: &str =
    "model_list: [{model_name: m, litellm_params: {model: mock/m, mock_response: pong}}]";

/// A gateway (no upstream needed: mock deployments) served with `header_timeout`; the sender
/// stops it.
async fn gateway(
    header_timeout: Duration,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let client = llmux::Client::from_yaml(MODELS).unwrap();
    let app = llmux_server::build_router(llmux_server::AppState::new(client));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(llmux_server::serve(listener, app, header_timeout, async {
        let _ = stopped.await;
    }));
    (addr, stop, server)
}

/// Read until the server closes the connection (or `limit` passes); what it sent, and when.
async fn read_to_close(tcp: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Instant>) {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(Instant::now())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, None),
        }
    }
}

/// One whole response (its head, then `content-length` bytes of body), within 5 s.
async fn read_response(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length = text[..head_end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .expect("a content-length");
                if got.len() >= head_end + 4 + length {
                    return text;
                }
            }
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed mid-response: {text}");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response within 5 s")
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

fn chat_request() -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    )
}

#[tokio::test]
async fn headers_that_never_finish_are_cut_off_at_the_timeout() {
    let (addr, _stop, _server) = gateway(Duration::from_millis(300)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    // A slowloris client: a request line and one header, then a byte now and then.
    tcp.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let dribble = async {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tcp.write_all(b"x").await.is_err() {
                return;
            }
        }
    };
    dribble.await;
    let (_, closed) = read_to_close(&mut tcp, Duration::from_secs(5)).await;
    let closed = closed.expect("the gateway closed the connection");
    let after = closed - started;
    assert!(
        after >= Duration::from_millis(250),
        "closed after {after:?}"
    );
    assert!(after < Duration::from_secs(5), "closed after {after:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not() {
    let (addr, _stop, _server) = gateway(Duration::from_millis(400)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // Requests 250 ms apart (each under the limit) are all served on one connection.
    for _ in 0..3 {
        tcp.write_all(chat_request().as_bytes()).await.unwrap();
        let response = read_response(&mut tcp).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("pong"), "{response}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let idle_from = Instant::now();
    let (sent, closed) = read_to_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(sent.is_empty(), "{}", String::from_utf8_lossy(&sent));
    let closed = closed.expect("the idle connection was closed");
    assert!(
        closed - idle_from < Duration::from_secs(2),
        "{:?}",
        closed - idle_from
    );
}

#[tokio::test]
async fn headers_sent_slowly_within_the_limit_are_served() {
    let (addr, _stop, _server) = gateway(Duration::from_secs(2)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = chat_request();
    let (first, rest) = request.split_at(20);
    tcp.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tcp.write_all(rest.as_bytes()).await.unwrap();
    let response = read_response(&mut tcp).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_returns_once_connections_close() {
    let (addr, stop, server) = gateway(Duration::from_secs(30)).await;
    // An idle keep-alive connection does not hold the shutdown up.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(chat_request().as_bytes()).await.unwrap();
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returned")
        .unwrap();
    let (_, closed) = read_to_close(&mut idle, Duration::from_secs(2)).await;
    assert!(closed.is_some(), "the idle connection was closed");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_cut_off_at_the_timeout() {
    let (addr, _stop, _server) = gateway(Duration::from_millis(300)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_to_close(&mut tcp, Duration::from_secs(5)).await;
    let closed = closed.expect("the gateway closed the silent connection");
    assert!(closed - started >= Duration::from_millis(250));
}

/// A gateway whose clients get `body_timeout` to send a body.
async fn gateway_with_body_timeout(
    body_timeout: f64,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let yaml = format!("{MODELS}\nllmux_settings: {{client_body_timeout: {body_timeout}}}\n");
    let client = llmux::Client::from_yaml(&yaml).unwrap();
    let app = llmux_server::build_router(llmux_server::AppState::new(client));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(llmux_server::serve(
        listener,
        app,
        Duration::from_secs(30),
        async {
            let _ = stopped.await;
        },
    ));
    (addr, stop)
}

fn json_body(response: &str) -> serde_json::Value {
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

/// Issue 17, finding 8: `Content-Length: 1000` and 4 bytes held a connection (and a file
/// descriptor) forever, on the model routes and the management API alike.
#[tokio::test]
async fn a_body_that_never_arrives_is_answered_408_and_closed() {
    let (addr, _stop) = gateway_with_body_timeout(0.3).await;
    let mut stalled = Vec::new();
    for i in 0..60 {
        let path = if i % 2 == 0 {
            "/v1/chat/completions"
        } else {
            "/key/generate"
        };
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"a\"")
                .as_bytes(),
        )
        .await
        .unwrap();
        stalled.push((path, tcp));
    }
    let started = Instant::now();
    for (path, mut tcp) in stalled {
        let (got, closed) = read_to_close(&mut tcp, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(closed.is_some(), "{path}: the connection stays open");
        let v = json_body(&text);
        if path == "/key/generate" {
            // Without governance the management API reads no body at all: refused at once.
            assert!(text.starts_with("HTTP/1.1 404"), "{path}: {text}");
            assert_eq!(v["error"]["code"], "governance_disabled", "{path}: {text}");
            continue;
        }
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
        assert_eq!(v["error"]["code"], "request_body_timeout", "{path}: {text}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A slow body within the limit is served.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            CHAT.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tcp.write_all(CHAT.as_bytes()).await.unwrap();
    let text = read_response(&mut tcp).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// Issue 17, finding 12: every refusal in the OpenAI shape: 413 on management routes, 431 for
/// header floods, and the rejections axum's extractors make themselves.
#[tokio::test]
async fn http_level_refusals_have_the_openai_shape() {
    let (addr, _stop) = gateway_with_body_timeout(5.0).await;
    let send = |request: Vec<u8>| async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&request).await.unwrap();
        let (got, _) = read_to_close(&mut tcp, Duration::from_secs(5)).await;
        String::from_utf8_lossy(&got).into_owned()
    };
    // (413 on the management API, which reads bodies only for an authenticated caller, is in
    // tests/governance.rs.)
    // 150 headers, on a model route and a management route.
    for path in ["/v1/chat/completions", "/key/info"] {
        let method = if path == "/key/info" { "GET" } else { "POST" };
        let mut request = format!("{method} {path} HTTP/1.1\r\nhost: x\r\n");
        for i in 0..150 {
            request.push_str(&format!("x-filler-{i}: {i}\r\n"));
        }
        request.push_str("content-length: 0\r\n\r\n");
        let text = send(request.into_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 431"), "{path}: {text}");
        assert_eq!(
            json_body(&text)["error"]["code"],
            "request_header_fields_too_large"
        );
    }
    // A query string axum cannot decode.
    let text =
        send(b"GET /key/info?key=%ff%fe HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec())
            .await;
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");
    let v = json_body(&text);
    assert!(v["error"]["message"].as_str().is_some(), "{text}");
}

/// Issue 17, finding 12: what hyper answers by itself (a message that is not HTTP) has the
/// OpenAI error body too (it had none).
#[tokio::test]
async fn malformed_http_is_answered_in_the_openai_shape() {
    let (addr, _stop) = gateway_with_body_timeout(5.0).await;
    for request in [
        &b"GET /v1/models HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n"[..],
        b"BAD\x01 / HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET / HTTP/9.9\r\nhost: x\r\n\r\n",
    ] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let (got, closed) = read_to_close(&mut tcp, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(closed.is_some());
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        let v = json_body(&text);
        assert_eq!(v["error"]["code"], "malformed_request", "{text}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    // Well-formed requests on the same server are untouched.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /v1/nope HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let text = read_response(&mut tcp).await;
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert_eq!(json_body(&text)["error"]["code"], "unknown_route");
}
