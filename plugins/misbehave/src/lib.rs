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
//! - `fill-log`: appends `entries` (default 16) entries of `entry-bytes`
//!   (default 65536) per batch of writes; when the host refuses, it
//!   compacts its whole log, rejects the writes with the host's error and
//!   goes on (so quota refusals, and compaction freeing quota, are visible);
//! - `fill-kv`: puts `entries` values of `entry-bytes` (at most 1 MiB)
//!   under new keys per batch; on a refusal it deletes its keys and rejects;
//! - `many-keys`: puts `entries` (default 1024) tiny values under new keys
//!   per batch; on a refusal it rejects the writes;
//! - `timers`: arms `entries` (default 1024) new timer ids per batch;
//! - `edge-apply-max`: applies at position `u64::MAX`;
//! - `edge-compact-max`: calls `log.compact-prefix(u64::MAX)`;
//! - `edge-append-zero`: appends the writes at log position 0;
//! - `edge-complete-write`: answers writes with `client.complete-reads`;
//! - `silent`: never answers writes or reads;
//! - `flood-replies`: rejects the writes `entries` times over (host memory
//!   for outputs held until output commit);
//! - `flood`: from a self-rearming timer, sends `flood-count` messages of
//!   `flood-bytes` each (default 4 × 1 MiB) to every other member every
//!   `flood-interval-ms` (default 5 ms): a region that tries to take the
//!   whole transport;
//! - anything else: behaves, applying writes at once without a log.
//!
//! Reads behave in every mode but `silent`, so a test can see the replica
//! come back. Timers call one import each (used by `synod bench` to time
//! imports).

use synod_guest_sdk::*;

pub struct Misbehave {
    mode: String,
    position: u64,
    entries: usize,
    entry_bytes: usize,
    /// The next fresh key or timer id.
    next: u64,
    burn_nanos: u64,
    params: Vec<(String, String)>,
    flood: Option<Flood>,
}

/// What `mode=flood` sends, to whom, how often.
struct Flood {
    peers: Vec<NodeId>,
    message: Vec<u8>,
    count: usize,
    interval_nanos: u64,
}

const FLOOD_TIMER: TimerId = u64::MAX - 0xF1;

impl Flood {
    fn from_config(config: &InitConfig) -> Self {
        let number = |name: &str, default: u64| {
            config
                .param(name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(default)
        };
        let mut peers: Vec<NodeId> = config
            .membership
            .voters
            .iter()
            .chain(config.membership.learners.iter())
            .copied()
            .filter(|id| *id != config.self_id)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        Flood {
            peers,
            message: vec![0x5a; number("flood-bytes", 1 << 20) as usize],
            count: number("flood-count", 4) as usize,
            interval_nanos: number("flood-interval-ms", 5) * 1_000_000,
        }
    }

    fn send<H: Host>(&self, host: &mut H) {
        let mut batch = Batch::default();
        batch.push(&self.message);
        for peer in &self.peers {
            for _ in 0..self.count {
                host.send(*peer, &batch);
            }
        }
        host.set_timer(FLOOD_TIMER, self.interval_nanos);
    }
}

/// The timer a `burn` replica keeps armed.
const BURN_TIMER: TimerId = u64::MAX - 0xB0;

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

    /// Applies the writes (the default behaviour).
    fn apply<H: Host>(&mut self, host: &mut H, commands: Commands) {
        self.position += commands.len() as u64;
        let applies = Applies {
            ids: commands.ids,
            payloads: commands.payloads,
        };
        host.apply(&applies, self.position);
    }

    fn fill_log<H: Host>(&mut self, host: &mut H, commands: Commands) {
        let entry = vec![0xABu8; self.entry_bytes];
        let batch = Batch::from_items(std::iter::repeat_n(entry.as_slice(), self.entries));
        let first = host.log_bounds().last + 1;
        match host.log_append(first, &batch) {
            Ok(()) => self.apply(host, commands),
            Err(error) => {
                let last = host.log_bounds().last;
                let _ = host.log_compact_prefix(last);
                host.reject(&commands.ids, &Rejection::Unavailable(error.to_string()));
            }
        }
    }

    fn fill_kv<H: Host>(&mut self, host: &mut H, commands: Commands, value_bytes: usize) {
        let value = vec![0xCDu8; value_bytes];
        let start = self.next;
        for _ in 0..self.entries {
            let key = format!("fill-{}", self.next);
            self.next += 1;
            if let Err(error) = host.kv_put(key.as_bytes(), &value) {
                if self.mode == "fill-kv" {
                    for n in 0..self.next {
                        host.kv_delete(format!("fill-{n}").as_bytes());
                    }
                    self.next = 0;
                } else {
                    self.next = start;
                }
                host.reject(&commands.ids, &Rejection::Unavailable(error.to_string()));
                return;
            }
        }
        self.apply(host, commands);
    }
}

impl Protocol for Misbehave {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "misbehave".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            consistency: Consistency::Linearizable,
            // Replicated so that `flood` can span nodes; the other modes
            // are used with one replica.
            capabilities: Capabilities {
                replication: true,
                ..Capabilities::default()
            },
        }
    }

    fn init<H: Host>(host: &mut H, config: InitConfig) -> Self {
        let number = |name: &str, default: usize| {
            config
                .param(name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let mode = config.param("mode").unwrap_or("none").to_string();
        let entries = number("entries", if mode == "fill-log" { 16 } else { 1024 });
        if mode == "burn" {
            host.set_timer(BURN_TIMER, 1_000_000);
        }
        let flood = (mode == "flood").then(|| Flood::from_config(&config));
        if let Some(flood) = &flood {
            host.set_timer(FLOOD_TIMER, flood.interval_nanos);
        }
        let burn_ms = number("burn-ms", 200) as u64;
        Misbehave {
            burn_nanos: burn_ms.saturating_mul(1_000_000),
            params: config.params.clone(),
            flood,
            entries,
            entry_bytes: number("entry-bytes", 65_536),
            next: 0,
            mode,
            position: config.applied_position,
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
            "panic" => panic!(
                "misbehave fixture asked to panic on {} writes",
                commands.len()
            ),
            "burn" => {
                burn(host, self.burn_nanos);
                self.apply(host, commands);
            }
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
                self.apply(host, commands);
            }
            "fill-log" => self.fill_log(host, commands),
            "fill-kv" => {
                let bytes = self.entry_bytes.min(1 << 20);
                self.fill_kv(host, commands, bytes)
            }
            "many-keys" => self.fill_kv(host, commands, 1),
            "timers" => {
                for _ in 0..self.entries {
                    host.set_timer(self.next, 3_600_000_000_000);
                    self.next += 1;
                }
                self.apply(host, commands);
            }
            "edge-apply-max" => {
                let applies = Applies {
                    ids: commands.ids,
                    payloads: commands.payloads,
                };
                host.apply(&applies, u64::MAX);
            }
            "edge-compact-max" => {
                if let Err(error) = host.log_compact_prefix(u64::MAX) {
                    host.reject(&commands.ids, &Rejection::Unavailable(error.to_string()));
                    return;
                }
                self.apply(host, commands);
            }
            "edge-append-zero" => {
                if let Err(error) = host.log_append(0, &commands.payloads) {
                    host.reject(&commands.ids, &Rejection::Unavailable(error.to_string()));
                    return;
                }
                self.apply(host, commands);
            }
            "edge-complete-write" => host.complete_reads(&commands.ids),
            "silent" => {}
            "flood-replies" => {
                for _ in 0..self.entries {
                    host.reject(&commands.ids, &Rejection::Overloaded);
                }
            }
            _ => self.apply(host, commands),
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
        if let Some(flood) = &self.flood
            && timers.contains(&FLOOD_TIMER)
        {
            flood.send(host);
            return;
        }
        let mut sum = 0u64;
        for _ in &timers {
            sum = sum.wrapping_add(host.now());
        }
        std::hint::black_box(sum);
    }

    fn on_reads<H: Host>(&mut self, host: &mut H, reads: Reads) {
        if self.mode != "silent" {
            host.complete_reads(&reads.ids);
        }
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
