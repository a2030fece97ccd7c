//! `llmux-bare-proxy`: the floor of the Rust stack llmux is built on, as a benchmark contender. A
//! reverse proxy with nothing but hyper's HTTP/1.1 server, hyper-util's pooled client and one
//! current-thread tokio runtime (llmux's own shape with `--workers 1`): request and response
//! bodies pass through untouched, no routing, auth, accounting or logging. What llmux costs on
//! top of this is llmux's own; what this costs over nginx is the stack's.

use std::convert::Infallible;
use std::net::SocketAddr;

use clap::Parser;
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "llmux-bare-proxy",
    version,
    about = "Bare hyper reverse proxy (benchmark floor)"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8091")]
    listen: SocketAddr,
    /// Where every request goes, `host:port` (plain HTTP).
    #[arg(long)]
    upstream: String,
}

type Upstream = Client<HttpConnector, Incoming>;
type Body = http_body_util::Either<Incoming, String>;

async fn forward(
    client: Upstream,
    upstream: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = match Uri::try_from(format!("http://{upstream}{path}")) {
        Ok(uri) => uri,
        Err(e) => return Ok(status(StatusCode::BAD_REQUEST, e.to_string())),
    };
    parts.uri = uri;
    parts.headers.remove(http::header::HOST);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => Ok(response.map(http_body_util::Either::Left)),
        Err(e) => Ok(status(StatusCode::BAD_GATEWAY, e.to_string())),
    }
}

fn status(code: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(http_body_util::Either::Right(message));
    *response.status_mut() = code;
    response
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let upstream: &'static str = Box::leak(args.upstream.into_boxed_str());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let client: Upstream = Client::builder(TokioExecutor::new()).build(connector);
            let listener = tokio::net::TcpListener::bind(args.listen).await?;
            eprintln!("llmux-bare-proxy listening on {}", listener.local_addr()?);
            loop {
                let (socket, _) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        eprintln!("accept: {e}");
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let client = client.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let client = client.clone();
                        async move { forward(client, upstream, req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        })
}
