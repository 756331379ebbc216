//! The `aggregate-host` binary: parses the command line and calls the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "aggregate-host", version, about = "Runs event-sourced aggregates shipped as WebAssembly components")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Deploy a bank-account component and run a short story through the runtime.
    Demo {
        /// The bank-account component (.wasm).
        #[arg(long)]
        component: PathBuf,
        /// Where the registry keeps blobs, artifacts and the manifest (default: a temp dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Demo { component, data_dir } => {
            let tmp;
            let dir = match data_dir {
                Some(d) => d,
                None => {
                    tmp = tempfile::tempdir()?;
                    tmp.path().to_path_buf()
                }
            };
            aggregate_host::demo::run(&component, &dir, &mut std::io::stdout().lock())
        }
    }
}
