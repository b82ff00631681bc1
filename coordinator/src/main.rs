//! `pgtrickle-coordinator`: run a node (`serve`) or talk to a running cluster (every other subcommand).

use std::io::IsTerminal;

use clap::Parser;
use coordinator::cli::{self, Cli, Command, Exit};

fn main() {
    let cli = Cli::parse();
    // PGTRICKLE_WORKER_THREADS: tokio worker threads of a node (default: the number of CPUs, at most 4).
    let workers = std::env::var("PGTRICKLE_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()).min(4));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Serve(args) => serve(&cli, args).await,
            _ => cli::run_client(&cli).await,
        }
    });
    if let Err(Exit { status, message }) = result {
        eprintln!("pgtrickle-coordinator: {message}");
        std::process::exit(status);
    }
}

async fn serve(cli: &Cli, args: &cli::ServeArgs) -> Result<(), Exit> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let log = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        // Colour codes only where a terminal renders them; files and journald get plain text.
        cli::LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).init(),
        cli::LogFormat::Json => log.json().with_current_span(false).init(),
    }
    let config = cli::serve_config(args, cli.token.clone(), cli.ca_file.clone())?;
    let server = coordinator::server::start(config).await.map_err(|e| Exit { status: 2, message: e.to_string() })?;
    let coordinator = server.coordinator.clone();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate() => {}
    }
    tracing::info!(id = coordinator.id, "shutting down");
    drop(coordinator);
    server.shutdown().await;
    Ok(())
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}
