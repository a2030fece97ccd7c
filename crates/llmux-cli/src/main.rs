//! The `llmux` binary: `serve` runs the gateway, `config check` validates a configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use llmux_config::{Diagnostic, ProcessEnv};
use llmux_governance::Governance;
use llmux_server::{build_router, AppState};

mod log_escape;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "llmux",
    version,
    about = "An LLM gateway: one OpenAI-compatible endpoint in front of many providers"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "LLMUX_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// LiteLLM-compatible config.yaml.
        #[arg(long, short, env = "LLMUX_CONFIG")]
        config: PathBuf,
        #[arg(long, default_value = "0.0.0.0", env = "LLMUX_HOST")]
        host: String,
        #[arg(long, short, default_value_t = 4000, env = "LLMUX_PORT")]
        port: u16,
        /// Worker threads (default: one per core).
        #[arg(long, env = "LLMUX_WORKERS")]
        workers: Option<usize>,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load a config the way `serve` would and list every problem with its YAML path.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Treat warnings (unknown or unsupported keys, unset variables) as errors.
        #[arg(long)]
        strict: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { config, strict },
        } => config_check(&config, strict),
        Command::Serve {
            config,
            host,
            port,
            workers,
        } => {
            let _guard = init_logging(cli.log_format);
            // One worker: a single-threaded scheduler, with no cross-thread handoffs to pay for.
            let mut builder = match workers {
                Some(1) => tokio::runtime::Builder::new_current_thread(),
                _ => tokio::runtime::Builder::new_multi_thread(),
            };
            builder.enable_all();
            if let Some(n) = workers.filter(|n| *n > 1) {
                builder.worker_threads(n);
            }
            let runtime = match builder.build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config, host, port)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    tracing::error!("{message}");
                    eprintln!("error: {message}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    // Logs go through a background writer so a slow stderr never stalls a request.
    // Control characters in logged fields are escaped: a client's text cannot forge a line.
    let (writer, guard) =
        tracing_appender::non_blocking(log_escape::EscapeControl(std::io::stderr()));
    let filter = EnvFilter::try_from_env("LLMUX_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
    guard
}

fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
}

fn config_check(path: &std::path::Path, strict: bool) -> ExitCode {
    let (config, mut diags) = llmux_config::load_file_lenient(path, &ProcessEnv);
    if let Some(config) = config {
        diags.extend(llmux::check_config(&config, &ProcessEnv));
    }
    if strict {
        llmux_config::strict(&mut diags);
    }
    print_diagnostics(&diags);
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    if errors > 0 {
        eprintln!(
            "{}: {errors} error(s), {warnings} warning(s)",
            path.display()
        );
        ExitCode::FAILURE
    } else {
        eprintln!("{}: ok ({warnings} warning(s))", path.display());
        ExitCode::SUCCESS
    }
}

async fn serve(config_path: PathBuf, host: String, port: u16) -> Result<(), String> {
    let loaded = llmux_config::load_file(&config_path, &ProcessEnv).map_err(|diags| {
        print_diagnostics(&diags);
        format!("{} is not a valid configuration", config_path.display())
    })?;
    for d in &loaded.diagnostics {
        tracing::warn!(path = %d.path, "{}", d.message);
    }
    let drain_timeout = loaded.config.drain_timeout;
    let header_timeout = loaded.config.client_header_timeout;
    let config = loaded.config.clone();
    let (client, diags) = llmux::Client::new(loaded.config).map_err(|e| {
        print_diagnostics(&e.0);
        e.to_string()
    })?;
    for d in &diags {
        tracing::warn!(path = %d.path, "{}", d.message);
    }
    if let Some(source) = config.model_cost_map.clone() {
        tokio::spawn(watch_prices(
            client.clone(),
            source,
            config.model_cost_map_reload_interval,
        ));
    }
    let mut state = AppState::new(client);
    // Traces and log sinks: a sink that cannot be set up stops the start, as a bad config does.
    let telemetry = llmux_telemetry::Telemetry::start(&config, &ProcessEnv)?;
    state.telemetry.store(telemetry);
    // Virtual keys, budgets and spend need the master key (as in LiteLLM) and the database.
    let governance = match &config.master_key {
        Some(_) => {
            let gov = Governance::start(&config, std::env::var("DATABASE_URL").ok()).await?;
            state = state.with_governance(Arc::clone(&gov)).await?;
            Some(gov)
        }
        None => {
            tracing::warn!(
                "authentication is OFF: no general_settings.master_key is configured, so every \
                 client may call every model and the management API is disabled"
            );
            None
        }
    };
    llmux_server::health::start_alerts(&state, &config)?;
    if config.background_health_checks {
        llmux_server::health::spawn_background_checks(&state, config.health_check_interval);
    }
    llmux_server::reload::started_from(&state, &config_path);
    tokio::spawn(watch_config(state.clone(), config_path.clone()));
    let draining = state.draining.clone();
    let live_state = state.clone();
    let app = build_router(state);
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .or_else(|_| format!("[{host}]:{port}").parse())
        .map_err(|_| format!("invalid listen address {host}:{port}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(address = %local, version = env!("CARGO_PKG_VERSION"), "llmux ready");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(
            drain_timeout_s = drain_timeout.as_secs_f64(),
            "shutting down: no new connections, draining in-flight requests"
        );
        draining.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
    });
    let server = llmux_server::serve(listener, app, header_timeout, shutdown);
    let mut stop_rx = stop_rx;
    let drain_deadline = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        () = server => {}
        () = drain_deadline => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
    // What the sinks still hold is sent before the process exits (the live ones: a reload may
    // have replaced those started here).
    if let Some(telemetry) = live_state.telemetry.load_full() {
        telemetry.shutdown(TELEMETRY_FLUSH).await;
    }
    if let Some(gov) = governance {
        gov.shutdown().await;
        let (written, aggregated) = gov.writer.counts();
        tracing::info!(written, aggregated, "spend records written");
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long a stopping process waits for each log sink to take what it still holds.
const TELEMETRY_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// How often the configuration file's modification time is looked at.
const CONFIG_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Reload the configuration file on SIGHUP, or when it changes on disk (its modification time,
/// looked at every second). A file that does not load is reported, problem by problem, and the
/// running configuration stays.
async fn watch_config(state: llmux_server::AppState, path: PathBuf) {
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    let mut wakes = Wakes::new();
    loop {
        if wakes.next(CONFIG_POLL).await == Wake::Tick {
            let now = modified(&path);
            if now == seen {
                continue;
            }
            seen = now;
        }
        match llmux_server::reload::reload(&state, &path).await {
            Ok(llmux_server::reload::Reloaded::Unchanged) => {
                tracing::debug!(config = %path.display(), "configuration unchanged");
            }
            Ok(llmux_server::reload::Reloaded::Applied(warnings)) => {
                for d in &warnings {
                    tracing::warn!(path = %d.path, "{}", d.message);
                }
                let source = state
                    .config_source
                    .lock()
                    .map(|s| s.clone())
                    .unwrap_or_default();
                tracing::info!(
                    config = %path.display(),
                    fingerprint = %source.fingerprint,
                    models = state.client.snapshot().router.deployments().len(),
                    "configuration reloaded"
                );
            }
            Err(problems) => {
                for d in &problems {
                    tracing::error!(path = %d.path, severity = ?d.severity, "{}", d.message);
                }
                tracing::error!(
                    config = %path.display(),
                    "the changed configuration does not load; keeping the running one"
                );
            }
        }
    }
}

/// Load the configured cost map, then reload it when the file changes or on SIGHUP (URLs are
/// fetched again on SIGHUP only). A bad map is reported and the previous prices stay.
async fn watch_prices(client: llmux::Client, source: String, interval: std::time::Duration) {
    let is_file = !(source.starts_with("http://") || source.starts_with("https://"));
    let modified = |path: &str| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen = if is_file { modified(&source) } else { None };
    let load = |client: &llmux::Client, source: &str| {
        let client = client.clone();
        let source = source.to_owned();
        async move {
            match llmux::pricing::fetch_table(&source).await {
                Ok(table) => {
                    tracing::info!(source = %source, models = table.len(), "prices loaded");
                    client.pricing().replace(table);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot load prices; keeping the previous ones")
                }
            }
        }
    };
    load(&client, &source).await;
    let mut wakes = Wakes::new();
    loop {
        match wakes.next(interval).await {
            Wake::Hangup => load(&client, &source).await,
            Wake::Tick if is_file => {
                let now = modified(&source);
                if now != seen {
                    seen = now;
                    load(&client, &source).await;
                }
            }
            Wake::Tick => {}
        }
    }
}

/// Why a watcher woke: a SIGHUP, or its polling interval passed.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    Hangup,
    Tick,
}

/// SIGHUP or a timer, whichever comes first (each watcher holds its own SIGHUP stream; every
/// stream hears every signal).
struct Wakes {
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Wakes {
    fn new() -> Self {
        Wakes {
            #[cfg(unix)]
            hangup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }

    async fn next(&mut self, interval: std::time::Duration) -> Wake {
        #[cfg(unix)]
        let signalled = async {
            match self.hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<()>();
        tokio::select! {
            () = signalled => Wake::Hangup,
            () = tokio::time::sleep(interval) => Wake::Tick,
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
