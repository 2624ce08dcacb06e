//! The `synod` command line: run a node, administer regions, read and write
//! keys, and run the demo and benchmarks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::client::{ApiClient, Credentials};
use crate::node::{Node, NodeConfig};
use crate::tools::region_admin;

#[derive(Parser, Debug)]
#[command(
    name = "synod",
    version,
    about = "Consensus runtime whose protocols are sandboxed Wasm plugins"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct Target {
    /// Base URL of a node's HTTP API (`https://` for a secured node).
    #[arg(
        long,
        global = true,
        env = "SYNOD_NODE",
        default_value = "http://127.0.0.1:7070"
    )]
    node: String,
    /// A client profile written by `synod cluster init` (CA and token).
    #[arg(long, global = true, env = "SYNOD_PROFILE")]
    profile: Option<PathBuf>,
    /// Bearer token (overrides the profile's).
    #[arg(long, global = true, env = "SYNOD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA bundle to trust (overrides the profile's).
    #[arg(long, global = true, env = "SYNOD_CA")]
    ca: Option<PathBuf>,
}

impl Target {
    /// The client these flags describe.
    fn client(&self) -> Result<ApiClient> {
        let mut credentials = match &self.profile {
            Some(path) => Credentials::from_profile(path)?,
            None => Credentials::none(),
        };
        if let Some(token) = &self.token {
            credentials.token = Some(token.clone());
        }
        if let Some(ca) = &self.ca {
            credentials.ca_pem =
                Some(std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?);
        }
        let mut node = self.node.clone();
        // A profile means TLS: accept the default's http:// scheme for it.
        if credentials.ca_pem.is_some()
            && let Some(rest) = node.strip_prefix("http://")
        {
            node = format!("https://{rest}");
        }
        Ok(ApiClient::secure(&node, &credentials)?)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: storage in --data-dir, HTTP API on --listen.
    Serve(ServeArgs),
    /// Start a local node, run a workload, restart it and verify every
    /// acknowledged write survived.
    Demo(crate::tools::demo::DemoArgs),
    /// Run a plugin component on a local cluster: publish it, create a
    /// region, run a workload with a kill -9 and restart, print the verdict.
    Dev(crate::tools::dev::DevArgs),
    /// Create a plugin crate from the template, or build one into a
    /// validated component.
    Plugin {
        #[command(subcommand)]
        command: crate::tools::plugin_kit::cli::PluginCommand,
    },
    /// Measure Wasm call costs and group commit; prints figures and ratios.
    Bench(crate::tools::bench::BenchArgs),
    /// Run a plugin in the deterministic simulator over many seeds with
    /// faults, checking linearizability or convergence.
    Sim(crate::tools::sim_cli::SimArgs),
    /// Create, delete, swap, list, inspect and restart regions.
    Region {
        #[command(subcommand)]
        command: RegionCommand,
        #[command(flatten)]
        target: Target,
    },
    /// Publish and list plugin components.
    Component {
        #[command(subcommand)]
        command: ComponentCommand,
        #[command(flatten)]
        target: Target,
    },
    /// Write KEY=VALUE in REGION.
    Put {
        region: String,
        key: String,
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// Read KEY from REGION.
    Get {
        region: String,
        key: String,
        /// linearizable, lease or local.
        #[arg(long, default_value = "linearizable")]
        consistency: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete KEY from REGION.
    Delete {
        region: String,
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Compare-and-swap: set KEY to --new (or delete with --delete) only if
    /// it holds --expected (or is absent with --expect-absent).
    Cas(CasArgs),
    /// Show the cluster's nodes and regions, or add a node.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
        #[command(flatten)]
        target: Target,
    },
    /// Node status.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Inspect a stopped node's WAL for damage and report what a cut would
    /// lose; with --cut --yes, cut at the damage point.
    Repair(RepairArgs),
}

#[derive(Args, Debug)]
struct RepairArgs {
    /// The stopped node's data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// Cut the WAL at the first damage (needs --yes): everything after it is lost.
    #[arg(long)]
    cut: bool,
    /// Confirm --cut.
    #[arg(long, requires = "cut")]
    yes: bool,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// A cluster node's TOML configuration (see docs/OPERATIONS.md); then
    /// --data-dir, --listen and --node-id do not apply.
    #[arg(long, conflicts_with_all = ["data_dir", "listen", "node_id"])]
    config: Option<PathBuf>,
    /// Where the WAL, snapshots, components and compile cache live
    /// (single node without peers).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP API address (single node without peers).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// This node's id (single node without peers).
    #[arg(long)]
    node_id: Option<u64>,
    /// Rewrite the WAL as a checkpoint once it exceeds this many bytes (and
    /// 4x the live state).
    #[arg(long)]
    wal_checkpoint_bytes: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum RegionCommand {
    /// Create a region running PROTOCOL (standalone, a published
    /// component's name, sha256:<digest> or native:<name>).
    Create {
        name: String,
        #[arg(long, default_value = "standalone")]
        protocol: String,
        /// Protocol parameter, repeatable: --param snapshot-interval=1000
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// Nodes holding replicas, comma-separated (default: every node).
        #[arg(long, value_delimiter = ',', conflicts_with = "replica_count")]
        replicas: Option<Vec<u64>>,
        /// How many replicas, placed by the control plane on the least
        /// loaded nodes (instead of --replicas).
        #[arg(long)]
        replica_count: Option<usize>,
    },
    /// Delete a region on every host; waits up to --wait-secs for the hosts
    /// to confirm and names the ones that have not (they delete their data
    /// when they come back).
    Delete {
        name: String,
        #[arg(long, default_value_t = 10)]
        wait_secs: u64,
    },
    /// Swap a live region to another protocol (state and client sessions
    /// carry over); prints each step while it waits, then the outcome.
    Swap {
        name: String,
        /// Target: a published component's name, NAME@VERSION,
        /// sha256:<digest> or native:<name>.
        #[arg(long)]
        to: String,
        /// The new protocol's parameter, repeatable (default: the region's
        /// quota.* parameters carry over).
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// Members of the new epoch, comma-separated (default: the current ones).
        #[arg(long, value_delimiter = ',')]
        replicas: Option<Vec<u64>>,
        /// Proceed without every replica of an eventually consistent region.
        /// Risk: writes only an unreachable replica holds are lost.
        #[arg(long)]
        force: bool,
        /// How long to wait for the outcome.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
    },
    /// Epochs and audit lines of a region.
    History {
        name: String,
    },
    /// Move the region to a new membership (one change at a time inside
    /// the protocol): --voters 1,2,4 [--learners 5]
    Membership {
        name: String,
        #[arg(long, value_delimiter = ',', required = true)]
        voters: Vec<u64>,
        #[arg(long, value_delimiter = ',')]
        learners: Vec<u64>,
    },
    /// Move one replica from node --from to node --to: --to joins, catches
    /// up and becomes a voter, then --from leaves and deletes its data.
    Move {
        name: String,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
    },
    /// Hand the region's leadership to --to (or the best peer).
    TransferLeader {
        name: String,
        #[arg(long)]
        to: Option<u64>,
    },
    List,
    /// The region's epoch, protocol, phase and any swap in progress, and
    /// each replica's role, term, positions, lag and held requests.
    Status {
        name: String,
        /// Print this node's raw status document instead.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a fenced or quarantined replica now.
    Restart {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    Show,
    /// Generate a cluster's secrets into DIR (0700): a CA, a certificate
    /// per node (node-<id>.pem/.key), tokens.toml (hashed tokens) and
    /// profile.toml (CA path and the admin token, for the CLI).
    Init {
        dir: PathBuf,
        /// Nodes 1..=N get a certificate.
        #[arg(long)]
        nodes: u64,
        /// Names or IP addresses clients dial, put in every certificate
        /// (repeatable; default 127.0.0.1 and localhost).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Issue (or re-issue, to rotate) node ID's certificate with DIR's CA.
    Cert {
        dir: PathBuf,
        #[arg(long)]
        node: u64,
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Add a token to DIR/tokens.toml and print it (nodes read the file
    /// at start).
    Token {
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// read, write or admin.
        #[arg(long)]
        role: String,
        /// Region name prefixes it covers (read/write; default all).
        #[arg(long, value_delimiter = ',')]
        regions: Option<Vec<String>>,
        /// Expire after this many seconds.
        #[arg(long)]
        expires_in_secs: Option<u64>,
    },
    /// Announce a new node (start it with a config listing the cluster).
    AddNode {
        id: u64,
        #[arg(long)]
        api: String,
        #[arg(long)]
        peer: String,
    },
}

#[derive(Subcommand, Debug)]
enum ComponentCommand {
    /// Validate and publish a .wasm component.
    Publish {
        file: PathBuf,
    },
    List,
}

#[derive(Args, Debug)]
struct CasArgs {
    region: String,
    key: String,
    #[arg(long, conflicts_with = "expect_absent")]
    expected: Option<String>,
    #[arg(long)]
    expect_absent: bool,
    #[arg(long, conflicts_with = "delete")]
    new: Option<String>,
    #[arg(long)]
    delete: bool,
    #[command(flatten)]
    target: Target,
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {text:?}"))
}

/// Entry point of the `synod` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        // Simulated crashes make the WAL warn about torn tails by design.
        Command::Sim(_) => "error",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Demo(args) => crate::tools::demo::run(args).await,
        Command::Dev(args) => crate::tools::dev::run(args).await,
        Command::Plugin { command } => {
            tokio::task::spawn_blocking(move || crate::tools::plugin_kit::cli::run(command)).await?
        }
        Command::Bench(args) => crate::tools::bench::run(args).await,
        Command::Sim(args) => {
            tokio::task::spawn_blocking(move || crate::tools::sim_cli::run(args)).await?
        }
        Command::Region { command, target } => region(command, &target.client()?).await,
        Command::Component { command, target } => component(command, &target.client()?).await,
        Command::Put {
            region,
            key,
            value,
            target,
        } => {
            target.client()?.put(&region, &key, &value).await?;
            println!("ok");
            Ok(())
        }
        Command::Get {
            region,
            key,
            consistency,
            target,
        } => {
            match target.client()?.get(&region, &key, &consistency).await? {
                Some(value) => println!("{value}"),
                None => bail!("key {key:?} is not set in region {region}"),
            }
            Ok(())
        }
        Command::Delete {
            region,
            key,
            target,
        } => {
            let existed = target.client()?.delete(&region, &key).await?;
            println!("{}", if existed { "deleted" } else { "absent" });
            Ok(())
        }
        Command::Cas(args) => cas(args).await,
        Command::Cluster { command, target } => cluster(command, &target).await,
        Command::Status { target } => print_json(&target.client()?.status().await?),
        Command::Repair(args) => repair(args),
    }
}

async fn cluster(command: ClusterCommand, target: &Target) -> Result<()> {
    use crate::security::init;
    let default_hosts = || vec!["127.0.0.1".to_string(), "localhost".to_string()];
    match command {
        ClusterCommand::Show => print_json(&target.client()?.cluster().await?),
        ClusterCommand::AddNode { id, api, peer } => {
            print_json(&target.client()?.add_node(id, &api, &peer).await?)
        }
        ClusterCommand::Init { dir, nodes, hosts } => {
            if nodes == 0 {
                bail!("--nodes must be at least 1");
            }
            let hosts = if hosts.is_empty() {
                default_hosts()
            } else {
                hosts
            };
            let ids: Vec<u64> = (1..=nodes).collect();
            let made = init::init(&dir, &ids, &hosts)?;
            println!("cluster secrets in {} (mode 0700):", made.dir.display());
            println!("  CA            {}", made.ca.display());
            for id in ids {
                let (cert, key) = init::node_files(&made.dir, id);
                println!("  node {id}        {} {}", cert.display(), key.display());
            }
            println!("  tokens        {} (hashes only)", made.tokens.display());
            println!(
                "  client profile {} (holds the admin token: keep it private)",
                made.profile.display()
            );
            println!("Point each node's [security] section at these files (docs/OPERATIONS.md),");
            println!(
                "then: synod --profile {} --node https://HOST:PORT status",
                made.profile.display()
            );
            Ok(())
        }
        ClusterCommand::Cert { dir, node, hosts } => {
            let hosts = if hosts.is_empty() {
                default_hosts()
            } else {
                hosts
            };
            init::issue_node_certificate(&dir, node, &hosts)?;
            let (cert, key) = init::node_files(&dir, node);
            println!("issued {} and {}", cert.display(), key.display());
            Ok(())
        }
        ClusterCommand::Token {
            dir,
            name,
            role,
            regions,
            expires_in_secs,
        } => {
            let role = match role.as_str() {
                "read" => crate::security::Role::Read,
                "write" => crate::security::Role::Write,
                "admin" => crate::security::Role::Admin,
                other => bail!("unknown role {other:?}: use read, write or admin"),
            };
            let expires_at = expires_in_secs.map(|secs| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
                    + secs
            });
            let token = init::add_token(&dir, &name, role, regions, expires_at)?;
            println!("{token}");
            eprintln!(
                "added token {name:?} to {}; restart the nodes to load it",
                dir.join(init::TOKENS).display()
            );
            Ok(())
        }
    }
}

fn repair(args: RepairArgs) -> Result<()> {
    let report = crate::storage::repair::repair(&args.data_dir, args.cut && args.yes)
        .with_context(|| format!("inspecting {}", args.data_dir.display()))?;
    print!("{report}");
    if args.cut && !args.yes {
        println!("--cut needs --yes to confirm.");
    }
    let control = crate::storage::repair::repair_control(&args.data_dir, args.cut && args.yes)
        .with_context(|| format!("inspecting {}/control", args.data_dir.display()))?;
    println!("Control-plane WAL (control/):");
    print!("{control}");
    if report.blocks_start() || control.blocks_start() {
        bail!("a WAL is damaged and the node will not start; nothing was changed");
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    let (config, listen) = match &args.config {
        Some(path) => {
            let file = crate::config::ConfigFile::load(path)?;
            let mut config = file.node_config();
            config.security = file
                .load_security()
                .with_context(|| format!("loading the [security] files of {}", path.display()))?;
            (config, file.api)
        }
        None => {
            let data_dir = args
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("./synod-data"));
            let listen = args
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7070)));
            if !listen.ip().is_loopback() {
                bail!(
                    "refusing to serve on {listen} without TLS and authentication: a non-loopback address needs --config with a [security] section (see `synod cluster init`)"
                );
            }
            let mut config = NodeConfig::new(args.node_id.unwrap_or(1), data_dir);
            config.api_address = listen.to_string();
            (config, listen)
        }
    };
    if config.security.is_none() {
        tracing::warn!(
            %listen,
            "SECURITY: this node runs WITHOUT TLS OR AUTHENTICATION; anyone who can reach its loopback ports may read, write, publish and administer. Use `synod cluster init` and a [security] section for anything but local experiments."
        );
    }
    let mut config = config;
    if let Some(bytes) = args.wal_checkpoint_bytes {
        config.wal_checkpoint_min_bytes = bytes;
    }
    let data_dir = config.data_dir.clone();
    let node_id = config.node_id;
    let node = Node::open(config)
        .await
        .with_context(|| format!("opening node data in {}", data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the API to {listen}"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, data_dir = %data_dir.display(), "serving the HTTP API");
    let scheme = if node.config().security.is_some() {
        "https"
    } else {
        "http"
    };
    println!("synod node {node_id} listening on {scheme}://{address}");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    crate::api::serve(node.clone(), listener, shutdown).await?;
    node.shutdown().await;
    Ok(())
}

async fn region(command: RegionCommand, client: &ApiClient) -> Result<()> {
    match command {
        RegionCommand::Create {
            name,
            protocol,
            params,
            replicas,
            replica_count,
        } => match replica_count {
            Some(count) => print_json(
                &client
                    .create_region_counted(&name, &protocol, &params, count)
                    .await?,
            ),
            None => print_json(
                &client
                    .create_region_on(&name, &protocol, &params, replicas.as_deref())
                    .await?,
            ),
        },
        RegionCommand::Delete { name, wait_secs } => {
            region_admin::delete(client, &name, Duration::from_secs(wait_secs)).await
        }
        RegionCommand::Swap {
            name,
            to,
            params,
            replicas,
            force,
            wait_secs,
        } => {
            let params = (!params.is_empty()).then_some(params);
            let wait = Duration::from_secs(wait_secs);
            region_admin::swap(client, &name, &to, params, replicas, force, wait).await
        }
        RegionCommand::History { name } => region_admin::history(client, &name).await,
        RegionCommand::Membership {
            name,
            voters,
            learners,
        } => print_json(&client.change_membership(&name, &voters, &learners).await?),
        RegionCommand::Move { name, from, to } => {
            print_json(&client.move_replica(&name, from, to).await?)
        }
        RegionCommand::TransferLeader { name, to } => {
            print_json(&client.transfer_leader(&name, to).await?)
        }
        RegionCommand::List => {
            let listing = client.regions().await?;
            let regions = listing["regions"].as_array().cloned().unwrap_or_default();
            if regions.is_empty() {
                println!("no regions");
            }
            for region in regions {
                println!(
                    "{:<20} {:<12} {:<12} applied={:<8} keys={:<8} {}",
                    region["name"].as_str().unwrap_or("?"),
                    region["protocol"]["name"].as_str().unwrap_or("?"),
                    region["health"]["state"].as_str().unwrap_or("?"),
                    region["state_machine"]["applied_position"],
                    region["state_machine"]["keys"],
                    region["health"]["reason"].as_str().unwrap_or(""),
                );
            }
            Ok(())
        }
        RegionCommand::Status { name, json: true } => {
            print_json(&client.region_status(&name).await?)
        }
        RegionCommand::Status { name, json: false } => region_admin::status(client, &name).await,
        RegionCommand::Restart { name } => print_json(&client.restart_region(&name).await?),
    }
}

async fn component(command: ComponentCommand, client: &ApiClient) -> Result<()> {
    match command {
        ComponentCommand::Publish { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            print_json(&client.publish_component(bytes).await?)
        }
        ComponentCommand::List => print_json(&client.components().await?),
    }
}

async fn cas(args: CasArgs) -> Result<()> {
    if args.expected.is_none() && !args.expect_absent {
        bail!("say what the key must hold: --expected VALUE or --expect-absent");
    }
    if args.new.is_none() && !args.delete {
        bail!("say what to write: --new VALUE or --delete");
    }
    let outcome = args
        .target
        .client()?
        .cas(
            &args.region,
            &args.key,
            args.expected.as_deref(),
            args.new.as_deref(),
        )
        .await?;
    if outcome.succeeded {
        println!("swapped");
        Ok(())
    } else {
        bail!(
            "not swapped: {:?} currently holds {}",
            args.key,
            outcome
                .current
                .as_deref()
                .map_or("nothing".to_string(), |v| format!("{v:?}"))
        )
    }
}

fn print_json(value: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// How long CLI helpers wait for a node to come up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
