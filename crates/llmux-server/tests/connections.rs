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
