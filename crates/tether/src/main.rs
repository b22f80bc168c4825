//! The `tether` command: parses the command line, sets up logging, and hands over to the
//! library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tether::bridge::BridgeArgs;
use tether::config::{Config, ServeArgs};

/// jemalloc instead of glibc's malloc, for idle memory: opening many sessions at once keeps
/// hundreds of upstream children alive until they are reaped, and what they free is left by glibc
/// as holes between the sessions' long-lived allocations (7.3–7.7 KiB of RSS per idle session
/// against ~2 KiB with jemalloc, BENCHMARKS.md). Its options (`.cargo/config.toml`) give freed
/// pages back after a second, from a background thread; `MALLOC_CONF` overrides them at run time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status for usage and configuration errors (EX_USAGE).
const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(name = "tether", version, about = "The reliability layer for MCP sessions")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP clients in front of an MCP server (a stdio command after `--`, or --upstream URL,
    /// or --upstream-sse URL). Sessions survive the server restarting.
    Serve(ServeArgs),
    /// Validate the configuration and print it as it would be used.
    CheckConfig(ServeArgs),
    /// Be a local stdio MCP server for a stdio-only client (a desktop app), in front of a remote
    /// MCP server over Streamable HTTP or legacy SSE; never drops the pipe while the remote is
    /// away, and heals the remote session when it is lost.
    Bridge(BridgeArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage { ExitCode::from(EX_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::CheckConfig(args) => check_config(&args),
        Command::Bridge(args) => bridge(&args),
    }
}

fn load(args: &ServeArgs) -> Result<Config, ExitCode> {
    Config::load(args).map_err(|e| {
        eprintln!("tether: {e}");
        ExitCode::from(EX_USAGE)
    })
}

/// Prints the effective configuration (TOML, secrets redacted) on stdout, so it can be saved
/// as a config file.
fn check_config(args: &ServeArgs) -> ExitCode {
    use std::io::Write;
    match load(args) {
        Ok(c) => {
            let mut out = std::io::stdout().lock();
            if out.write_all(c.to_redacted_toml().as_bytes()).and_then(|()| out.flush()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match load(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let log = tether::telemetry::init(&config.log_level, config.log_format);
    tether::fdlimit::raise_nofile(config.session.max_sessions);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tether: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let mcp = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let admin = tokio::net::TcpListener::bind(config.admin.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {} (admin_listen): {e}", config.admin.listen))?;
        let listeners = tether::Listeners { mcp, admin: Some(admin) };
        tether::run(config, listeners, Some(log), shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("tether: second signal, exiting now");
        std::process::exit(130);
    });
}

fn bridge(args: &BridgeArgs) -> ExitCode {
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tether bridge: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let log_file = match &args.log_file {
        Some(path) => match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("tether bridge: --log-file {}: {e}", path.display());
                return ExitCode::from(EX_USAGE);
            }
        },
        None => None,
    };
    tether::telemetry::init_bridge(&args.log_level, log_file);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tether bridge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tether::bridge::run(config, tokio::io::stdin(), tokio::io::stdout())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether bridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}
