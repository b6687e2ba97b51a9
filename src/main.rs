//! Entry point: parse the command line, run, map the outcome to an exit code; and the
//! signals (SIGTERM/SIGINT stop, SIGHUP reloads).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use mqtt_responder::cli::{Cli, Command, DemoArgs};
use mqtt_responder::config::{self, Config};
use mqtt_responder::peer::{demo, examine};
use mqtt_responder::transport::Endpoint;
use mqtt_responder::{daemon, logging};
use tokio_util::sync::CancellationToken;

/// SPEC §4: configuration error (missing or unreadable file included).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Demo(args)) => {
            let started = Instant::now();
            logging::init_transcript(logging::DEMO_FILTER, started);
            return ExitCode::from(demo::run(&demo_options(args), started));
        }
        Some(Command::Examine(args)) => {
            logging::init_console(logging::EXAMINE_FILTER);
            return ExitCode::from(examine::run(args));
        }
        _ => {}
    }
    let logging = logging::init();
    let path = config::resolve_path(cli.config.as_deref());
    let (config, warnings) = match config::load(&path) {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    // Everything `run` checks before it connects, `check-config` checks too (the TLS files:
    // a CA file without a certificate parses as a path but cannot build a TLS client).
    let endpoint = match Endpoint::new(&config.broker) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            tracing::error!("config error in {}: {e}", config.source.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            print!("{}", config.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Command::Run => {
            logging.configure(config.log.format, &config.log.level);
            run(&config, &endpoint, logging)
        }
        Command::Demo(_) | Command::Examine(_) => unreachable!("handled before the config"),
    }
}

fn demo_options(args: &DemoArgs) -> demo::DemoOptions {
    demo::DemoOptions {
        commands: args.commands,
        qos: args.qos,
        delay: Duration::from_millis(args.delay_ms),
        protocol: args.protocol.into(),
    }
}

fn run(config: &Config, endpoint: &Endpoint, logging: logging::Logging) -> ExitCode {
    match serve(config, endpoint, logging) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            tracing::error!("{e:#}; exiting");
            ExitCode::FAILURE
        }
    }
}

/// Starts the async runtime and the signal handlers, then runs the daemon to its outcome;
/// an error is a failure to start (exit 1).
fn serve(
    config: &Config,
    endpoint: &Endpoint,
    logging: logging::Logging,
) -> anyhow::Result<daemon::Outcome> {
    // One thread is plenty for one connection and keeps the footprint small on a Pi.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let ops = Arc::new(daemon::Ops {
            reload: Default::default(),
            logging: Some(logging),
        });
        watch_signals(shutdown.clone(), ops.clone()).context("cannot install signal handlers")?;
        Ok(daemon::run(config, endpoint, &shutdown, &ops).await)
    })
}

/// SIGTERM and SIGINT cancel `shutdown`; the daemon then drains and disconnects. SIGHUP
/// notifies `ops.reload`, which the daemon's event loop picks up (several SIGHUPs before it
/// does make one reload). A second SIGTERM/SIGINT changes nothing: the drain is bounded.
fn watch_signals(shutdown: CancellationToken, ops: Arc<daemon::Ops>) -> std::io::Result<()> {
    use futures_util::StreamExt;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    tokio::spawn(async move {
        while let Some(signal) = signals.next().await {
            match signal {
                SIGHUP => {
                    tracing::info!("SIGHUP received; reloading the configuration");
                    ops.reload.notify_one();
                }
                _ if shutdown.is_cancelled() => {}
                SIGTERM => {
                    tracing::info!("SIGTERM received; stopping");
                    shutdown.cancel();
                }
                _ => {
                    tracing::info!("SIGINT received; stopping");
                    shutdown.cancel();
                }
            }
        }
    });
    Ok(())
}
