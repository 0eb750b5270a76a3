//! `citd`: the cit server. `citd` serves on its configuration; `citd demo` serves and plays a
//! real-road escort run through the API so there is something to see.

use clap::{Parser, Subcommand};

use citd::config::{Config, Overrides};

/// mimalloc instead of glibc's malloc: ingest allocates and frees a request, its events and
/// their encodings per batch from many threads, and glibc's arenas spent a fifth of citd's CPU
/// in malloc, free and consolidation under the dispatch benchmark (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "citd",
    version,
    about = "cit: cash-in-transit tracking server (all gRPC services on one port)"
)]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve and play a demo escort run through the public API (scenario clock, fresh store).
    Demo(citd::demo::DemoArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo brings its own throwaway TLS and tokens unless configured (demo.rs): its
    // configuration is validated with them, at the server's start.
    let loaded = match cli.command {
        Some(Cmd::Demo(_)) => Config::merge(&cli.overrides),
        None => Config::load(&cli.overrides),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("citd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let level = match (&cli.command, cli.overrides.log_level.is_some()) {
        (Some(Cmd::Demo(_)), false) => "warn,citd::engine_worker=off".to_string(),
        _ => config.log_level.clone(),
    };
    citd::init_tracing(&level, config.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("citd: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Some(Cmd::Demo(args)) => citd::demo::run(config, args).await,
            None => serve(config).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("citd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let server = citd::server::start(config)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(addr = %server.addr, metrics = ?server.metrics_addr, "ready");
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.stop().await.map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
