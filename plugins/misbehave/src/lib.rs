//! Test fixture: a protocol that misbehaves on demand, to prove that a bad
//! plugin fences only its own region replica.
//!
//! Parameter `mode` chooses what happens when writes arrive:
//! - `loop`: spins forever (caught by fuel or the epoch deadline);
//! - `alloc`: allocates without bound (caught by the memory limit);
//! - `panic`: panics (a trap; the message reaches the host log);
//! - `flood`: from a self-rearming timer, sends `flood-count` messages of
//!   `flood-bytes` each (default 4 × 1 MiB) to every other member every
//!   `flood-interval-ms` (default 5 ms): a region that tries to take the
//!   whole transport;
//! - anything else: behaves, applying writes at once without a log.
//!
//! Reads always behave, so a test can see the replica come back. Timers
//! call one import each (used by `synod bench` to time imports).

use synod_guest_sdk::*;

pub struct Misbehave {
    mode: String,
    position: u64,
    flood: Option<Flood>,
}

/// What `mode=flood` sends, to whom, how often.
struct Flood {
    peers: Vec<NodeId>,
    message: Vec<u8>,
    count: usize,
    interval_nanos: u64,
}

const FLOOD_TIMER: TimerId = 1;

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
        let mode = config.param("mode").unwrap_or("none").to_string();
        let flood = (mode == "flood").then(|| Flood::from_config(&config));
        if let Some(flood) = &flood {
            host.set_timer(FLOOD_TIMER, flood.interval_nanos);
        }
        Misbehave {
            mode,
            position: config.applied_position,
            flood,
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
