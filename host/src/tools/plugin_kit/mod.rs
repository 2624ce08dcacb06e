//! `synod plugin new` and `synod plugin build`: the plugin author's kit.
//!
//! `new` writes a plugin crate from the templates next to this file: the
//! SDK as a path dependency, a working single-copy protocol skeleton with
//! `MemoryHost` unit tests, and a simulator test (`synod::sim::harness` and
//! the conformance suite) that runs in `cargo test`. The crate is its own
//! workspace, so it builds anywhere.
//!
//! `build` compiles it for `wasm32-unknown-unknown` (installing the target
//! with rustup when missing), turns the core module into a component with
//! `wit-component`, and loads it with the host's component loader before
//! writing it: what it prints is exactly what a node will accept.

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod cli;

use crate::engine::{PluginEngine, SandboxLimits};

const WASM_TARGET: &str = "wasm32-unknown-unknown";

const CARGO_TOML: &str = include_str!("template/Cargo.toml.tmpl");
const LIB_RS: &str = include_str!("template/lib.rs.tmpl");
const SIMULATOR_RS: &str = include_str!("template/simulator.rs.tmpl");
const README_MD: &str = include_str!("template/README.md.tmpl");
const GITIGNORE: &str = include_str!("template/gitignore.tmpl");

/// Crate names a plugin may not take (they clash with its dependencies).
const RESERVED: &[&str] = &[
    "synod",
    "synod-guest-sdk",
    "synod_guest_sdk",
    "std",
    "core",
    "alloc",
    "test",
    "proc_macro",
];

#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error(
        "invalid plugin name {name:?}: {why} (use lower-case letters, digits, '-' and '_', starting with a letter, e.g. my-protocol)"
    )]
    BadName { name: String, why: &'static str },
    #[error("{} exists and is not empty; choose another --dir or remove it", .0.display())]
    DirectoryNotEmpty(PathBuf),
    #[error("{} is not the Synod guest SDK (no Cargo.toml naming synod-guest-sdk); pass --sdk PATH", .0.display())]
    NoSdk(PathBuf),
    #[error("{} is not the Synod host crate (no Cargo.toml naming synod); pass --host-crate PATH", .0.display())]
    NoHostCrate(PathBuf),
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} has no [package] name", .0.display())]
    NoPackage(PathBuf),
    #[error("cannot parse {}: {reason}", .path.display())]
    BadManifest { path: PathBuf, reason: String },
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error(
        "the {WASM_TARGET} target is missing and `rustup target add {WASM_TARGET}` failed ({status}); install it and retry"
    )]
    TargetInstall { status: String },
    #[error("cargo build failed ({status}); the compiler's messages are above")]
    BuildFailed { status: String },
    #[error(
        "cargo built no .wasm library for {package}; is `crate-type = [\"cdylib\", \"rlib\"]` set in [lib]?"
    )]
    NoArtifact { package: String },
    #[error("{} is not a plugin module: {reason}", .path.display())]
    Componentize { path: PathBuf, reason: String },
    #[error("the built component does not load in the host: {0}")]
    Load(String),
}

/// Where `plugin new` writes and what it links against.
#[derive(Debug, Clone)]
pub struct NewOptions {
    pub name: String,
    /// The crate directory (default `./NAME`).
    pub dir: Option<PathBuf>,
    /// The guest SDK crate (default: this checkout's `guest-sdk`).
    pub sdk: Option<PathBuf>,
    /// The host crate the simulator test uses (default: this checkout's).
    pub host_crate: Option<PathBuf>,
}

/// This binary's source checkout, found from where it was built.
fn checkout() -> PathBuf {
    let host = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    host.parent().map(Path::to_path_buf).unwrap_or(host)
}

/// Checks a crate name; returns the Rust identifiers (crate, type) it gives.
pub fn check_name(name: &str) -> Result<(String, String), KitError> {
    let bad = |why| KitError::BadName {
        name: name.into(),
        why,
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return Err(bad("it is empty")),
        Some(first) if !first.is_ascii_lowercase() => {
            return Err(bad("it must start with a lower-case letter"));
        }
        Some(_) => {}
    }
    if name.len() > 64 {
        return Err(bad("it is longer than 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(bad("it contains a character other than a-z, 0-9, '-', '_'"));
    }
    if name.ends_with(['-', '_']) {
        return Err(bad("it ends with '-' or '_'"));
    }
    if RESERVED.contains(&name) {
        return Err(bad("it is the name of a crate the plugin depends on"));
    }
    let ident = name.replace('-', "_");
    let type_name: String = ident
        .split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or(String::new(), |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect();
    Ok((ident, type_name))
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KitError {
    let path = path.to_path_buf();
    move |source| KitError::Io { what, path, source }
}

fn names_package(dir: &Path, package: &str) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|table| {
            table
                .get("package")?
                .get("name")?
                .as_str()
                .map(|n| n == package)
        })
        .unwrap_or(false)
}

/// Writes a new plugin crate; returns its directory.
pub fn new_plugin(options: &NewOptions) -> Result<PathBuf, KitError> {
    let (ident, type_name) = check_name(&options.name)?;
    let dir = options
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&options.name));
    if dir.exists() {
        let mut entries = std::fs::read_dir(&dir).map_err(io("cannot read", &dir))?;
        if entries.next().is_some() {
            return Err(KitError::DirectoryNotEmpty(dir));
        }
    }
    let sdk = options
        .sdk
        .clone()
        .unwrap_or_else(|| checkout().join("guest-sdk"));
    if !names_package(&sdk, "synod-guest-sdk") {
        return Err(KitError::NoSdk(sdk));
    }
    let host = match &options.host_crate {
        Some(host) => host.clone(),
        // Next to the SDK when --sdk points into another checkout.
        None => match sdk.parent().map(|p| p.join("host")) {
            Some(sibling) if names_package(&sibling, "synod") => sibling,
            _ => checkout().join("host"),
        },
    };
    if !names_package(&host, "synod") {
        return Err(KitError::NoHostCrate(host));
    }
    let absolute = |path: &Path| std::path::absolute(path).map_err(io("cannot resolve", path));
    let (sdk, host) = (absolute(&sdk)?, absolute(&host)?);
    let fill = |template: &str| {
        template
            .replace("{{name}}", &options.name)
            .replace("{{crate}}", &ident)
            .replace("{{type}}", &type_name)
            .replace("{{sdk}}", &toml_path(&sdk))
            .replace("{{host}}", &toml_path(&host))
    };
    let files = [
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", fill(LIB_RS)),
        ("tests/simulator.rs", fill(SIMULATOR_RS)),
        ("README.md", fill(README_MD)),
        (".gitignore", GITIGNORE.to_string()),
    ];
    for (relative, text) in files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
        }
        std::fs::write(&path, text).map_err(io("cannot write", &path))?;
    }
    // The checkout's lock file and toolchain: the versions it was tested
    // with, and a build directory shared with it reuses its artifacts.
    let root = host.parent().map(Path::to_path_buf).unwrap_or_default();
    for file in ["Cargo.lock", "rust-toolchain.toml"] {
        let from = root.join(file);
        if from.is_file() {
            let to = dir.join(file);
            std::fs::copy(&from, &to).map_err(io("cannot copy", &from))?;
        }
    }
    Ok(dir)
}

/// A path as a TOML basic-string body.
fn toml_path(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The plugin crate (default: the current directory).
    pub path: Option<PathBuf>,
    /// Where the component goes (default `<crate>/target/<name>.wasm`).
    pub out: Option<PathBuf>,
    /// Cargo's build directory (default: cargo's own choice).
    pub target_dir: Option<PathBuf>,
}

/// What `plugin build` produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub path: PathBuf,
    pub digest: String,
    pub info: synod_guest_sdk::PluginInfo,
    pub size_bytes: usize,
}

/// Compiles, componentizes and validates a plugin crate.
pub fn build_plugin(options: &BuildOptions) -> Result<Built, KitError> {
    let dir = options.path.clone().unwrap_or_else(|| PathBuf::from("."));
    let manifest_path = dir.join("Cargo.toml");
    let text =
        std::fs::read_to_string(&manifest_path).map_err(io("cannot read", &manifest_path))?;
    let manifest: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| KitError::BadManifest {
                path: manifest_path.clone(),
                reason: e.to_string(),
            })?;
    let package = manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .ok_or_else(|| KitError::NoPackage(manifest_path.clone()))?
        .to_string();
    let profile = if manifest
        .get("profile")
        .and_then(|p| p.get("plugin"))
        .is_some()
    {
        "plugin"
    } else {
        "release"
    };
    ensure_target(&dir)?;
    let module = cargo_build(&dir, &package, profile, options.target_dir.as_deref())?;
    let bytes = std::fs::read(&module).map_err(io("cannot read", &module))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&bytes)
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(|e| KitError::Componentize {
            path: module.clone(),
            reason: format!("{e:#}"),
        })?;
    let engine = PluginEngine::new(SandboxLimits::default(), None)
        .map_err(|e| KitError::Load(e.to_string()))?;
    let loaded = engine
        .load(&component)
        .map_err(|e| KitError::Load(e.to_string()))?;
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| dir.join("target").join(format!("{package}.wasm")));
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
    }
    std::fs::write(&out, &component).map_err(io("cannot write", &out))?;
    Ok(Built {
        path: out,
        digest: loaded.digest.clone(),
        info: loaded.info.clone(),
        size_bytes: loaded.size_bytes,
    })
}

/// A cargo or rustc command for the plugin crate: run in its directory
/// (its toolchain file applies), without the calling build's flags.
fn tool(program: &str, dir: &Path) -> Command {
    let mut command = Command::new(program);
    command.current_dir(dir);
    for variable in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "CARGO_MANIFEST_DIR",
    ] {
        command.env_remove(variable);
    }
    command
}

/// Installs the Wasm target with rustup when the crate's toolchain lacks it.
fn ensure_target(dir: &Path) -> Result<(), KitError> {
    let spawn = |program: &str| {
        let program = program.to_string();
        move |source| KitError::Spawn { program, source }
    };
    let sysroot = tool("rustc", dir)
        .args(["--print", "sysroot"])
        .output()
        .map_err(spawn("rustc"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(WASM_TARGET).exists() {
        return Ok(());
    }
    tracing::info!("installing the {WASM_TARGET} target with rustup");
    eprintln!("installing the {WASM_TARGET} target with rustup (one time)");
    let status = tool("rustup", dir)
        .args(["target", "add", WASM_TARGET])
        .status()
        .map_err(spawn("rustup"))?;
    if !status.success() {
        return Err(KitError::TargetInstall {
            status: status.to_string(),
        });
    }
    Ok(())
}

/// `cargo build --lib` for the Wasm target; returns the core module.
fn cargo_build(
    dir: &Path,
    package: &str,
    profile: &str,
    target_dir: Option<&Path>,
) -> Result<PathBuf, KitError> {
    let mut command = tool("cargo", dir);
    command.args([
        "build",
        "--lib",
        "--target",
        WASM_TARGET,
        "--profile",
        profile,
        "--message-format",
        "json-render-diagnostics",
    ]);
    if let Some(target_dir) = target_dir {
        command.arg("--target-dir").arg(target_dir);
    }
    command.stderr(std::process::Stdio::inherit());
    let output = command.output().map_err(|source| KitError::Spawn {
        program: "cargo".into(),
        source,
    })?;
    if !output.status.success() {
        return Err(KitError::BuildFailed {
            status: output.status.to_string(),
        });
    }
    let ident = package.replace('-', "_");
    let mut module = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" || message["target"]["name"] != ident.as_str() {
            continue;
        }
        if let Some(files) = message["filenames"].as_array() {
            module = files
                .iter()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"))
                .map(PathBuf::from)
                .or(module);
        }
    }
    module.ok_or_else(|| KitError::NoArtifact {
        package: package.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(
            check_name("primary-backup").expect("valid"),
            ("primary_backup".into(), "PrimaryBackup".into())
        );
        assert_eq!(check_name("pb2").expect("valid").1, "Pb2");
        for bad in [
            "",
            "Caps",
            "1st",
            "has space",
            "dot.ted",
            "trailing-",
            "synod",
            "std",
        ] {
            assert!(
                matches!(check_name(bad), Err(KitError::BadName { .. })),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn refuses_a_non_empty_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("keep.txt"), b"mine").expect("write");
        let result = new_plugin(&NewOptions {
            name: "demo-proto".into(),
            dir: Some(dir.path().to_path_buf()),
            sdk: None,
            host_crate: None,
        });
        assert!(
            matches!(result, Err(KitError::DirectoryNotEmpty(_))),
            "{result:?}"
        );
        assert_eq!(
            std::fs::read(dir.path().join("keep.txt")).expect("untouched"),
            b"mine"
        );
    }

    #[test]
    fn refuses_a_wrong_sdk_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let result = new_plugin(&NewOptions {
            name: "demo-proto".into(),
            dir: Some(dir.path().join("p")),
            sdk: Some(dir.path().to_path_buf()),
            host_crate: None,
        });
        assert!(matches!(result, Err(KitError::NoSdk(_))), "{result:?}");
    }

    #[test]
    fn writes_a_standalone_crate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let crate_dir = new_plugin(&NewOptions {
            name: "demo-proto".into(),
            dir: Some(dir.path().join("demo-proto")),
            sdk: None,
            host_crate: None,
        })
        .expect("created");
        let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).expect("manifest");
        let table: toml::Table = manifest.parse().expect("valid TOML");
        assert!(table.contains_key("workspace"), "its own workspace root");
        let sdk = table["dependencies"]["synod-guest-sdk"]["path"]
            .as_str()
            .expect("sdk path");
        assert!(Path::new(sdk).join("Cargo.toml").is_file(), "{sdk}");
        let lib = std::fs::read_to_string(crate_dir.join("src/lib.rs")).expect("lib");
        assert!(lib.contains("pub struct DemoProto"));
        assert!(lib.contains("export_protocol!(DemoProto);"));
        assert!(!lib.contains("{{"), "every placeholder filled");
        let sim = std::fs::read_to_string(crate_dir.join("tests/simulator.rs")).expect("sim");
        assert!(sim.contains("use demo_proto::DemoProto;"));
        assert!(crate_dir.join("Cargo.lock").is_file());
    }
}
