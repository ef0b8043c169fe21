//! `myelin-server`: parses arguments and configuration, then runs the homeserver.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use myelin_homeserver::Config;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than the system allocator: password hashing briefly needs 19 MiB per hash, and
/// glibc keeps such freed blocks in its arenas (its mmap threshold rises after the first), so a
/// burst of registrations left the server at ten times its idle memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Matrix homeserver. With no arguments it serves `localhost:8008` from `./data`.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML configuration file; `MYELIN_*` environment variables override it.
    #[arg(long, env = "MYELIN_CONFIG_FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the OpenAPI document (what `openapi/myelin.json` holds) and exit.
    Openapi,
    /// Check the configuration and exit.
    CheckConfig,
    /// Exit 0 if the server configured here answers `GET /_matrix/client/versions` on its client
    /// listener, 1 if not: the container image's HEALTHCHECK (so the image needs no curl).
    Health,
    /// Replace the server's signing key with a new one (run while the server is stopped). The
    /// old key stays published as an `old_verify_keys` entry, so what it signed still verifies.
    RotateSigningKey,
}

fn main() -> std::process::ExitCode {
    match start(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("myelin-server: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Openapi) = cli.command {
        print!("{}", myelin_homeserver::api::openapi_json());
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref()).context("configuration")?;
    if let Some(Command::CheckConfig) = cli.command {
        println!("configuration is valid");
        return Ok(());
    }
    if let Some(Command::Health) = cli.command {
        return health(config.listen.client);
    }
    if let Some(Command::RotateSigningKey) = cli.command {
        let path = config.data_dir.join("signing.key");
        let old_path = config.data_dir.join(myelin_homeserver::crypto::OLD_KEYS_FILE);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let new = myelin_homeserver::crypto::SigningKey::rotate(&path, &old_path, now)?;
        println!("new signing key {}; the old one is kept in {}", new.key_id(), old_path.display());
        return Ok(());
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    if rustls::crypto::aws_lc_rs::default_provider().install_default().is_err() {
        tracing::debug!("a TLS crypto provider was already installed");
    }
    if config.registration.enabled && config.registration.token.is_none() && !config.listen.client.ip().is_loopback() {
        tracing::warn!(
            "registration is open to anyone who can reach {}: set registration.token or registration.enabled = false",
            config.listen.client
        );
    }

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = tokio::net::TcpListener::bind(config.listen.client)
            .await
            .with_context(|| format!("cannot listen on {} (listen.client)", config.listen.client))?;
        let federation = if config.federation.enabled {
            let address = config.listen.federation;
            Some(
                tokio::net::TcpListener::bind(address)
                    .await
                    .with_context(|| format!("cannot listen on {address} (listen.federation)"))?,
            )
        } else {
            None
        };
        let listeners = myelin_homeserver::Listeners { client, federation };
        myelin_homeserver::serve(config, listeners, shutdown_signal()).await?;
        anyhow::Ok(())
    })
}

/// Asks the client listener at `address` (its loopback twin when it listens on all
/// addresses) for the supported versions.
fn health(mut address: std::net::SocketAddr) -> anyhow::Result<()> {
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{address}/_matrix/client/versions");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        // No proxy: HTTP(S)_PROXY in the container's environment is for outbound traffic.
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5)).no_proxy().build()?;
        let response = http.get(&url).send().await.with_context(|| format!("GET {url}"))?;
        anyhow::ensure!(response.status().is_success(), "GET {url}: {}", response.status());
        let versions: serde_json::Value = response.json().await.with_context(|| format!("GET {url}"))?;
        anyhow::ensure!(versions["versions"].is_array(), "GET {url}: not a versions answer");
        println!("healthy: {url}");
        Ok(())
    })
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutting down");
}
