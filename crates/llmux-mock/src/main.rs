//! The `llmux-mock` binary: serves the provider emulator on a port.

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "llmux-mock",
    version,
    about = "Provider emulator for llmux tests and benchmarks"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8090)]
    port: u16,
    /// Keep the last requests for GET /mock/requests (off for benchmarks).
    #[arg(long)]
    record: bool,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = args.threads {
        builder.worker_threads(n.max(1));
    }
    builder.build()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
        eprintln!("llmux-mock listening on {}", listener.local_addr()?);
        llmux_mock::serve(listener, args.record).await
    })
}
