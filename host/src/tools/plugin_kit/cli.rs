//! The `synod plugin` subcommands.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::{BuildOptions, NewOptions, build_plugin, new_plugin};

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Create a plugin crate: a working protocol skeleton, unit tests and
    /// a simulator test that `cargo test` runs.
    New {
        /// Crate and protocol name, e.g. primary-backup.
        name: String,
        /// The crate directory to create (default ./NAME); must be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The Synod guest SDK crate (default: the checkout this binary
        /// was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
        /// The Synod host crate the simulator test links (default: next to
        /// the SDK).
        #[arg(long)]
        host_crate: Option<PathBuf>,
    },
    /// Build a plugin crate into a validated Wasm component.
    Build {
        /// The plugin crate (default: the current directory).
        #[arg(long)]
        path: Option<PathBuf>,
        /// The component file (default <crate>/target/<name>.wasm).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Cargo's build directory (default: cargo's own, or CARGO_TARGET_DIR).
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
}

pub fn run(command: PluginCommand) -> Result<()> {
    match command {
        PluginCommand::New {
            name,
            dir,
            sdk,
            host_crate,
        } => {
            let dir = new_plugin(&NewOptions {
                name: name.clone(),
                dir,
                sdk,
                host_crate,
            })?;
            let shown = dir.display();
            println!("created the plugin crate {name} in {shown}");
            println!("  cd {shown}");
            println!("  cargo test            # unit tests, then the simulator with faults");
            println!("  synod plugin build    # → target/{name}.wasm");
            println!(
                "  synod sim --plugin target/{name}.wasm --nodes 1 --faults crashes --seeds 200"
            );
            println!("  synod dev --plugin target/{name}.wasm --nodes 1");
            Ok(())
        }
        PluginCommand::Build {
            path,
            out,
            target_dir,
        } => {
            let built = build_plugin(&BuildOptions {
                path,
                out,
                target_dir,
            })?;
            println!(
                "built {} {} ({}; {}) — {} bytes, loads in the host",
                built.info.name,
                built.info.version,
                built.info.consistency.as_str(),
                built.info.capabilities.names().join(", "),
                built.size_bytes
            );
            println!("  component  {}", built.path.display());
            println!("  digest     sha256:{}", built.digest);
            Ok(())
        }
    }
}
