//! Builds the workspace's plugin crates to Wasm components, in the spirit of
//! wasmtime's `test-programs/artifacts`: a nested `cargo build` for
//! `wasm32-unknown-unknown` (installing that target with rustup when it is
//! missing), then `wit-component` turns each core module into a component.
//! Fixtures for `wasm32-wasip2` come out of the linker as components.
//!
//! It also writes two deliberately wrong components used by the tests: one
//! built against an incompatible major version of the contract and one that
//! implements a different world.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const TARGET: &str = "wasm32-unknown-unknown";
/// Fixtures built with std for WASI, which produces components directly.
const WASI_TARGET: &str = "wasm32-wasip2";

/// (crate name, constant prefix) of every plugin built for [`TARGET`].
const PLUGINS: &[(&str, &str)] = &[
    ("synod-plugin-standalone", "STANDALONE"),
    ("synod-plugin-misbehave", "MISBEHAVE"),
    ("synod-plugin-raft", "RAFT"),
    ("synod-plugin-multi-master", "MULTI_MASTER"),
    ("synod-plugin-epaxos", "EPAXOS"),
];
/// Test fixtures: (crate, cargo feature, constant prefix). Each is the
/// crate built again with one deliberate defect switched on by a feature,
/// in its own nested build so the feature never reaches the shipped one.
const FEATURE_FIXTURES: &[(&str, &str, &str)] = &[
    (
        "synod-plugin-epaxos",
        "fixture-majority-fast-quorum",
        "EPAXOS_MAJORITY_FAST_QUORUM",
    ),
    (
        "synod-plugin-epaxos",
        "fixture-no-last-voted-ballot",
        "EPAXOS_NO_LAST_VOTED_BALLOT",
    ),
];
/// The same for [`WASI_TARGET`].
const WASI_PLUGINS: &[(&str, &str)] = &[("synod-plugin-wasi-probe", "WASI_PROBE")];

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .context("plugins/artifacts must sit two levels below the workspace root")?
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    for watched in [
        "wit",
        "guest-sdk",
        "plugins/standalone",
        "plugins/misbehave",
        "plugins/wasi-probe",
        "plugins/raft",
        "plugins/multi-master",
        "plugins/epaxos",
        "Cargo.toml",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }

    ensure_target(TARGET)?;
    ensure_target(WASI_TARGET)?;
    let mut generated = String::new();

    let modules = build_plugins(&workspace, &out_dir, TARGET, PLUGINS, None)?;
    for ((_, prefix), module) in PLUGINS.iter().zip(modules) {
        encode_component(&mut generated, &out_dir, prefix, &module)?;
    }
    // One build per fixture, each encoded before the next overwrites the
    // module (only the fixture crate itself recompiles).
    for (package, feature, prefix) in FEATURE_FIXTURES {
        let modules = build_plugins(
            &workspace,
            &out_dir,
            TARGET,
            &[(*package, *prefix)],
            Some(feature),
        )?;
        for module in modules {
            encode_component(&mut generated, &out_dir, prefix, &module)?;
        }
    }

    let components = build_plugins(&workspace, &out_dir, WASI_TARGET, WASI_PLUGINS, None)?;
    for ((_, prefix), component) in WASI_PLUGINS.iter().zip(components) {
        let path = out_dir.join(format!("{}.wasm", prefix.to_lowercase()));
        fs::copy(&component, &path).with_context(|| format!("copying {}", component.display()))?;
        emit_constants(&mut generated, prefix, &path);
    }

    let wit = fs::read_to_string(workspace.join("wit/synod.wit"))?;
    // Whatever the current version, the package line becomes 9.0.0.
    let future_major = wit
        .lines()
        .map(|line| {
            if line.starts_with("package synod:protocol@") {
                "package synod:protocol@9.0.0;"
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = out_dir.join("future_major.wasm");
    fs::write(&path, dummy_component(&future_major, "plugin")?)?;
    emit_constants(&mut generated, "FUTURE_MAJOR", &path);

    let other_world = "package other:thing@1.0.0;\nworld service { export run: func(input: string) -> string; }\n";
    let path = out_dir.join("other_world.wasm");
    fs::write(&path, dummy_component(other_world, "service")?)?;
    emit_constants(&mut generated, "OTHER_WORLD", &path);

    fs::write(out_dir.join("artifacts.rs"), generated)?;
    Ok(())
}

/// Encodes the core module at `module` as a component named after `prefix`.
fn encode_component(
    generated: &mut String,
    out_dir: &Path,
    prefix: &str,
    module: &Path,
) -> Result<()> {
    let bytes = fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&bytes)
        .with_context(|| format!("{} is not a valid plugin module", module.display()))?
        .validate(true)
        .encode()
        .with_context(|| format!("encoding {} as a component", module.display()))?;
    let path = out_dir.join(format!("{}.wasm", prefix.to_lowercase()));
    fs::write(&path, component)?;
    emit_constants(generated, prefix, &path);
    Ok(())
}

fn emit_constants(generated: &mut String, prefix: &str, path: &Path) {
    let path = path.display().to_string();
    let _ = writeln!(generated, "/// Path of the `{prefix}` component.");
    let _ = writeln!(generated, "pub const {prefix}_PATH: &str = {path:?};");
    let _ = writeln!(generated, "/// Bytes of the `{prefix}` component.");
    let _ = writeln!(
        generated,
        "pub const {prefix}_WASM: &[u8] = include_bytes!({path:?});"
    );
}

/// Installs `target` through rustup if this toolchain lacks it.
fn ensure_target(target: &str) -> Result<()> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(target).exists() {
        return Ok(());
    }
    println!("cargo:warning=installing the {target} target with rustup (one time)");
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", target]);
    if let Ok(toolchain) = env::var("RUSTUP_TOOLCHAIN") {
        rustup.args(["--toolchain", &toolchain]);
    }
    let status = rustup.status().with_context(|| {
        format!("the {target} target is missing and rustup could not be run to install it")
    })?;
    if !status.success() {
        bail!("`rustup target add {target}` failed ({status}); install the target and retry");
    }
    Ok(())
}

/// Runs the nested cargo build for `target`; returns each plugin's output
/// (a core module, or a component for WASI targets). `feature`, if given,
/// is enabled on every listed package.
fn build_plugins(
    workspace: &Path,
    out_dir: &Path,
    target: &str,
    plugins: &[(&str, &str)],
    feature: Option<&str>,
) -> Result<Vec<PathBuf>> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = out_dir.join("wasm-target");
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args([
            "build",
            "--profile",
            "plugin",
            "--target",
            target,
            "--target-dir",
        ])
        .arg(&target_dir);
    for (package, _) in plugins {
        command.args(["-p", package]);
    }
    if let Some(feature) = feature {
        command.args(["--features", feature]);
    }
    // The outer build's flags are for the host, not for wasm.
    for variable in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
    ] {
        command.env_remove(variable);
    }
    let status = command
        .status()
        .context("running the nested plugin build")?;
    if !status.success() {
        bail!("building the plugins for {target} failed ({status})");
    }
    Ok(plugins
        .iter()
        .map(|(package, _)| {
            target_dir
                .join(target)
                .join("plugin")
                .join(format!("{}.wasm", package.replace('-', "_")))
        })
        .collect())
}

/// A component whose functions all trap, implementing `world` of `wit`.
fn dummy_component(wit: &str, world: &str) -> Result<Vec<u8>> {
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve.push_str("fixture.wit", wit)?;
    let world = resolve.select_world(&[package], Some(world))?;
    let mut module =
        wit_component::dummy_module(&resolve, world, wit_parser::ManglingAndAbi::Standard32);
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )?;
    wit_component::ComponentEncoder::default()
        .module(&module)?
        .validate(true)
        .encode()
}
