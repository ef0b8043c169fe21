//! `myelin`: a Matrix command-line client. Every command has `--json` output; errors are one
//! line on stderr and a non-zero exit status.

mod discovery;

use clap::{Parser, Subcommand};

/// A Matrix client for the terminal.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Find a homeserver's client API (via .well-known) and the spec versions it speaks.
    Discover {
        /// A server name (`example.org`) or a base URL (`http://localhost:8008`).
        server: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if rustls::crypto::aws_lc_rs::default_provider().install_default().is_err() {
        // Already installed: nothing to do.
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("myelin: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("myelin: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Discover { server } => {
            let found = discovery::discover(&discovery::http_client()?, &server).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                println!("homeserver: {}", found.base_url);
                println!("versions:   {}", found.versions.join(", "));
            }
        }
    }
    Ok(())
}
