//! `driftkv dev`: the embedded server, everything in one process.

use std::io::Write as _;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use driftkv_engine::{spawn_sweeper, Engine, RateLimiter, SystemClock, WallClock};
use driftkv_http::Auth;
use driftkv_store::{SledStore, Store};

use crate::config::DevConfig;

/// Runs the dev server until SIGINT or SIGTERM, then drains requests and flushes storage.
pub async fn run(config: DevConfig) -> anyhow::Result<()> {
    let auth = if config.api_tokens.is_empty() {
        anyhow::ensure!(
            config.listen.ip().is_loopback(),
            "refusing to serve on {} without API tokens: set DRIFTKV_API_TOKENS (or api_tokens in the config file), \
             or listen on a loopback address",
            config.listen
        );
        Auth::open()
    } else {
        Auth::tokens(&config.api_tokens)
    };
    let store_dir = config.data_dir.join("central");
    std::fs::create_dir_all(&store_dir)
        .with_context(|| format!("cannot create {}", store_dir.display()))?;
    let store: Arc<dyn Store> = Arc::new(
        SledStore::open(&store_dir)
            .with_context(|| format!("cannot open the database in {}", store_dir.display()))?,
    );
    let wall: Arc<dyn WallClock> = Arc::new(SystemClock);
    let node_id = NonZeroU64::new(config.node_id).context("node_id must not be 0")?;
    let engine = Arc::new(Engine::new(
        store.clone(),
        node_id,
        wall.clone(),
        RateLimiter::per_second(0),
    )?);
    let sweeper = spawn_sweeper(
        &store,
        wall,
        Duration::from_millis(config.sweep_interval_ms),
    );

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), auth = if auth.required() { "tokens" } else { "open (loopback)" }, "driftkv dev started");
    // A plain line on stdout that scripts and tests can wait for to learn the bound port.
    println!("driftkv dev listening on http://{addr}");
    std::io::stdout().flush()?;

    axum::serve(listener, driftkv_http::router(engine, auth))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server failed")?;
    sweeper.abort();
    store.sync().await.context("final flush failed")?;
    tracing::info!("driftkv dev stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}
