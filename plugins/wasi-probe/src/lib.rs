//! Test fixture built for `wasm32-wasip2`, so its standard library imports
//! WASI. At `init` it tries everything ambient — environment, arguments,
//! files, sockets, clocks, randomness, stdout — and reports what it saw as
//! status counters; otherwise it applies writes at once. The host must
//! satisfy WASI with virtual, deterministic versions.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use synod_guest_sdk::*;

pub struct WasiProbe {
    position: u64,
    observations: Vec<(String, u64)>,
}

fn observe() -> Vec<(String, u64)> {
    let env_vars = std::env::vars().count() as u64;
    let args = std::env::args().count() as u64;
    let file_readable = std::fs::read("/etc/hostname").is_ok() as u64;
    let dir_listable = std::fs::read_dir(".").is_ok() as u64;
    let tcp_connected = std::net::TcpStream::connect("127.0.0.1:1").is_ok() as u64;
    let wall_seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let started = std::time::Instant::now();
    let elapsed_nanos = started.elapsed().as_nanos() as u64;
    let random = RandomState::new().hash_one(42u64);
    println!("wasi probe: stdout goes nowhere");
    eprintln!("wasi probe: stderr goes nowhere");
    vec![
        ("env-vars".into(), env_vars),
        ("args".into(), args),
        ("file-readable".into(), file_readable),
        ("dir-listable".into(), dir_listable),
        ("tcp-connected".into(), tcp_connected),
        ("wall-seconds".into(), wall_seconds),
        ("elapsed-nanos".into(), elapsed_nanos),
        ("random".into(), random),
    ]
}

impl Protocol for WasiProbe {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "wasi-probe".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            consistency: Consistency::Linearizable,
            capabilities: Capabilities::default(),
        }
    }

    fn init<H: Host>(_host: &mut H, config: InitConfig) -> Self {
        WasiProbe {
            position: config.applied_position,
            observations: observe(),
        }
    }

    fn on_commands<H: Host>(&mut self, host: &mut H, commands: Commands) {
        self.position += commands.len() as u64;
        let applies = Applies {
            ids: commands.ids,
            payloads: commands.payloads,
        };
        host.apply(&applies, self.position);
    }

    fn on_reads<H: Host>(&mut self, host: &mut H, reads: Reads) {
        host.complete_reads(&reads.ids);
    }

    fn seal<H: Host>(&mut self, _host: &mut H) -> SealProgress {
        SealProgress::Sealed(self.position)
    }

    fn status<H: Host>(&mut self, _host: &mut H) -> Status {
        Status {
            role: Role::Leader,
            leader: None,
            term: 0,
            commit_position: self.position,
            applied_position: self.position,
            peers: Vec::new(),
            counters: self.observations.clone(),
        }
    }
}

export_protocol!(WasiProbe);
