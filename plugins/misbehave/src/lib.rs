//! Test fixture: a protocol that misbehaves on demand, to prove that a bad
//! plugin fences only its own region replica.
//!
//! Parameter `mode` chooses what happens when writes arrive:
//! - `loop`: spins forever (caught by fuel or the epoch deadline);
//! - `alloc`: allocates without bound (caught by the memory limit);
//! - `panic`: panics (a trap; the message reaches the host log);
//! - `burn`: burns `burn-ms` (default 200) of CPU in every write and every
//!   timer call, and keeps a timer armed so it burns with no clients (a CPU
//!   hog within its fuel and deadline; writes are then applied);
//! - `hoard-kv`: behaves, and also keeps a value of `kv-value-bytes` (default
//!   65536) per write in its kv area, under one of `kv-slots` keys (default
//!   16) chosen by position, so the kv area grows to slots × value bytes
//!   while the WAL keeps growing (exercises bounded checkpoints);
//! - anything else: behaves, applying writes at once without a log.
//!
//! Reads always behave, so a test can see the replica come back. Timers
//! call one import each (used by `synod bench` to time imports).

use synod_guest_sdk::*;

pub struct Misbehave {
    mode: String,
    position: u64,
    burn_nanos: u64,
    params: Vec<(String, String)>,
}

/// The timer a `burn` replica keeps armed.
const BURN_TIMER: TimerId = 0xB0;

/// Spins for `nanos` of host clock time, mostly inside the `now` import,
/// so a long burn stays well within the fuel of one call.
fn burn<H: Host>(host: &mut H, nanos: u64) {
    let started = host.now();
    while host.now().saturating_sub(started) < nanos {}
}

impl Misbehave {
    fn param_or(&self, name: &str, default: usize) -> usize {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(default)
    }
}

impl Protocol for Misbehave {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "misbehave".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            consistency: Consistency::Linearizable,
            capabilities: Capabilities::default(),
        }
    }

    fn init<H: Host>(host: &mut H, config: InitConfig) -> Self {
        let mode = config.param("mode").unwrap_or("none").to_string();
        let burn_ms: u64 = config
            .param("burn-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        if mode == "burn" {
            host.set_timer(BURN_TIMER, 1_000_000);
        }
        Misbehave {
            mode,
            position: config.applied_position,
            burn_nanos: burn_ms.saturating_mul(1_000_000),
            params: config.params.clone(),
        }
    }

    fn on_commands<H: Host>(&mut self, host: &mut H, commands: Commands) {
        match self.mode.as_str() {
            "loop" => {
                let mut counter: u64 = 0;
                loop {
                    counter = std::hint::black_box(counter.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "burn" => {
                burn(host, self.burn_nanos);
                self.position += commands.len() as u64;
                let applies = Applies {
                    ids: commands.ids,
                    payloads: commands.payloads,
                };
                host.apply(&applies, self.position);
            }
            "panic" => panic!(
                "misbehave fixture asked to panic on {} writes",
                commands.len()
            ),
            "hoard-kv" => {
                let bytes = self.param_or("kv-value-bytes", 65536).max(8);
                let slots = self.param_or("kv-slots", 16).max(1) as u64;
                for i in 0..commands.len() as u64 {
                    let position = self.position + i + 1;
                    let key = format!("hoard-{}", position % slots);
                    let mut value = vec![(position % 251) as u8; bytes];
                    value[..8].copy_from_slice(&position.to_le_bytes());
                    if host.kv_put(key.as_bytes(), &value).is_err() {
                        host.log(Level::Warn, "kv put refused");
                    }
                }
                self.position += commands.len() as u64;
                let applies = Applies {
                    ids: commands.ids,
                    payloads: commands.payloads,
                };
                host.apply(&applies, self.position);
            }
            _ => {
                self.position += commands.len() as u64;
                let applies = Applies {
                    ids: commands.ids,
                    payloads: commands.payloads,
                };
                host.apply(&applies, self.position);
            }
        }
    }

    /// Calls the `now` import once per timer: lets `synod bench` measure
    /// the cost of an import call.
    fn on_timers<H: Host>(&mut self, host: &mut H, timers: Vec<TimerId>) {
        if self.mode == "burn" && timers.contains(&BURN_TIMER) {
            burn(host, self.burn_nanos);
            host.set_timer(BURN_TIMER, 1_000_000);
            return;
        }
        let mut sum = 0u64;
        for _ in &timers {
            sum = sum.wrapping_add(host.now());
        }
        std::hint::black_box(sum);
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
            counters: Vec::new(),
        }
    }
}

export_protocol!(Misbehave);
