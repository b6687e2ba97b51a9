//! Entry point: parse the command line, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use std::time::{Duration, Instant};

use mqtt_responder::cli::{Cli, Command, DemoArgs, ProtocolArg};
use mqtt_responder::config::{self, Config};
use mqtt_responder::mqtt::{Protocol, QoS};
use mqtt_responder::transport::Endpoint;
use mqtt_responder::{daemon, demo, examine_command, logging};
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
            return ExitCode::from(examine_command::run(args));
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
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            print!("{}", config.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Command::Run => {
            logging.set_level(&config.log.level);
            run(&config)
        }
        Command::Demo(_) | Command::Examine(_) => unreachable!("handled before the config"),
    }
}

fn demo_options(args: &DemoArgs) -> demo::DemoOptions {
    demo::DemoOptions {
        commands: args.commands,
        qos: QoS::try_from(args.qos).unwrap_or(QoS::ExactlyOnce),
        delay: Duration::from_millis(args.delay_ms),
        protocol: match args.protocol {
            ProtocolArg::V311 => Protocol::V311,
            ProtocolArg::V5 => Protocol::V5,
        },
    }
}

fn run(config: &Config) -> ExitCode {
    let endpoint = match Endpoint::new(&config.broker) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            tracing::error!("config error in {}: {e}", config.source.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // One thread is plenty for one connection and keeps the footprint small on a Pi.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}; exiting");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        if let Err(e) = watch_signals(shutdown.clone()) {
            tracing::error!("cannot install signal handlers: {e}; exiting");
            return daemon::Outcome::Failed;
        }
        daemon::run(config, &endpoint, &shutdown).await
    });
    ExitCode::from(outcome.exit_code())
}

/// SIGTERM and SIGINT cancel `shutdown`; the daemon then drains and disconnects.
fn watch_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; stopping"),
            _ = int.recv() => tracing::info!("SIGINT received; stopping"),
        }
        shutdown.cancel();
    });
    Ok(())
}
