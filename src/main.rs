//! Entry point: parse the configuration, start logging, run the exporter until a signal arrives.

use std::process::ExitCode;

use anthropic_keys_exporter::app::App;
use anthropic_keys_exporter::config::{Config, Invocation};
use anthropic_keys_exporter::telemetry;

/// Exit code for a configuration the exporter cannot start with, as for any command-line usage error.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let config = match Config::from_env_and_args() {
        Ok(Invocation::Run(config)) => *config,
        Ok(Invocation::PrintAndExit(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("anthropic-keys-exporter: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if config.check_only {
        // NB: parsing already read the config file and every key it names; say what was checked.
        let organizations = match config.organizations(&|name| std::env::var(name).ok()) {
            Ok(organizations) => organizations.len(),
            Err(_) if config.demo => 1,
            Err(error) => {
                eprintln!("anthropic-keys-exporter: {error}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        println!(
            "anthropic-keys-exporter: configuration is valid ({organizations} organization(s))"
        );
        return ExitCode::SUCCESS;
    }
    if let Err(error) = telemetry::init(&config.log) {
        eprintln!("anthropic-keys-exporter: invalid RUST_LOG: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("anthropic-keys-exporter: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "Exiting on an error.");
            eprintln!("anthropic-keys-exporter: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let app = App::build(config).await?;
    let shutdown = app.shutdown_token();
    #[cfg(unix)]
    {
        let reload = app.reload_handle();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hangups) => {
                tokio::spawn(async move {
                    while hangups.recv().await.is_some() {
                        tracing::info!("Received SIGHUP; reloading the configuration.");
                        reload.reload();
                    }
                });
            }
            Err(error) => {
                tracing::warn!(error = %error, "Cannot listen for SIGHUP; reloads only follow file changes.")
            }
        }
    }
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("Received a shutdown signal; stopping.");
        shutdown.cancel();
    });
    app.run_until_stopped().await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes and Docker send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
