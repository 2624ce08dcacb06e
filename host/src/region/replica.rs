//! One region replica: a plugin instance, its core, and failure
//! containment.
//!
//! A failed call (trap, fuel, deadline, memory, contract violation) rolls
//! back the callback, drops the instance for good — wasmtime refuses to
//! re-enter a trapped component — and fences the replica. It is rebuilt
//! from storage after an exponential backoff; too many failures within a
//! window quarantine it until an operator restarts it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use synod_guest_sdk::{InitConfig, PluginInfo};

use crate::clock::Clock;
use crate::plugin::{Call, CallResult, PluginFailure, PluginInstance, PluginSource};
use crate::region::core::{Effects, RegionCore};
use crate::region::cpu::{CpuAccount, CpuPolicy, Lane, measure};
use crate::region::hibernate::{HibernatePolicy, Hibernation};

/// When to rebuild a failed replica and when to give up.
#[derive(Clone, Debug)]
pub struct FailurePolicy {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Failures within `window` that quarantine the replica.
    pub quarantine_after: usize,
    pub window: Duration,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            quarantine_after: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// Whether the replica can take events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Running,
    /// Failed; rebuilt at `retry_at` (clock time).
    Fenced {
        reason: String,
        retry_at: Duration,
    },
    /// Failed too often; waits for an operator.
    Quarantined {
        reason: String,
    },
}

impl Health {
    pub fn name(&self) -> &'static str {
        match self {
            Health::Running => "running",
            Health::Fenced { .. } => "restarting",
            Health::Quarantined { .. } => "quarantined",
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self, Health::Running)
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Health::Running => None,
            Health::Fenced { reason, .. } | Health::Quarantined { reason } => Some(reason),
        }
    }
}

/// The outcome of delivering one event.
#[derive(Debug)]
pub enum Delivery {
    Done(CallResult, Effects),
    /// The replica is fenced or quarantined; nothing was called.
    Refused(String),
    /// The call failed and was rolled back; the replica is now fenced.
    Failed(PluginFailure),
}

pub struct RegionReplica {
    source: PluginSource,
    info: PluginInfo,
    instance: Option<Box<dyn PluginInstance>>,
    core: RegionCore,
    init_template: InitConfig,
    health: Health,
    policy: FailurePolicy,
    clock: Arc<dyn Clock>,
    recent_failures: VecDeque<Duration>,
    failures_total: u64,
    restarts: u64,
    cpu: CpuAccount,
    /// Where the driver runs this replica now (it moves when `cpu.lane()`
    /// says otherwise).
    running_lane: Lane,
    hibernation: Hibernation,
    /// Wasm fuel every instance of this replica consumed.
    fuel_used: u64,
}

impl RegionReplica {
    /// A replica that has not started; call [`RegionReplica::start`].
    pub fn new(
        source: PluginSource,
        core: RegionCore,
        init_template: InitConfig,
        policy: FailurePolicy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            info: source.info(),
            source,
            instance: None,
            core,
            init_template,
            health: Health::Fenced {
                reason: "not started".into(),
                retry_at: Duration::ZERO,
            },
            policy,
            clock,
            recent_failures: VecDeque::new(),
            failures_total: 0,
            restarts: 0,
            cpu: CpuAccount::new(CpuPolicy::default()),
            running_lane: Lane::Inline,
            hibernation: Hibernation::default(),
            fuel_used: 0,
        }
    }

    /// When this replica drops its instance while idle (see
    /// `region::hibernate`).
    pub fn set_hibernate_policy(&mut self, policy: HibernatePolicy) {
        self.hibernation.policy = policy;
    }

    pub fn hibernation(&self) -> &Hibernation {
        &self.hibernation
    }

    /// Something other than a plain wake-up happened.
    pub fn note_activity(&mut self) {
        self.hibernation.active(self.clock.now());
    }

    /// Drops the instance if the replica is running and has been idle
    /// (`quiet`: the driver holds nothing for it) long enough. The next
    /// call re-instantiates it.
    pub fn maybe_hibernate(&mut self, quiet: bool) -> bool {
        if !self.health.is_running()
            || self.instance.is_none()
            || !self.hibernation.due(self.clock.now(), quiet)
        {
            return false;
        }
        self.instance = None;
        self.hibernation.hibernated();
        tracing::debug!(region = %self.core.name(), "replica hibernates");
        true
    }

    /// Re-instantiates a hibernated replica: a fresh instance and
    /// `init(recovering = true)`, whose effects join the current callback.
    fn wake(&mut self) -> Result<(), PluginFailure> {
        let started = std::time::Instant::now();
        let mut instance = self.source.instantiate()?;
        let mut config = self.init_template.clone();
        config.recovering = true;
        config.applied_position = self.core.state().applied_position();
        let core = &mut self.core;
        let (result, used) = measure(|| instance.call(core, Call::Init(config)));
        self.cpu.charge(used, self.running_lane);
        self.fuel_used += instance.take_fuel_used();
        result?;
        if let Some(why) = self.core.take_violation() {
            return Err(PluginFailure::Contract(why));
        }
        self.instance = Some(instance);
        self.hibernation.woke(started);
        tracing::debug!(region = %self.core.name(), "replica woke");
        Ok(())
    }

    /// Replaces the CPU fairness policy (node configuration).
    pub fn set_cpu_policy(&mut self, policy: CpuPolicy) {
        self.cpu = CpuAccount::new(policy);
    }

    /// Records where the driver now runs this replica.
    pub fn set_running_lane(&mut self, lane: Lane) {
        self.running_lane = lane;
    }

    pub fn running_lane(&self) -> Lane {
        self.running_lane
    }

    /// The replica's CPU account: its lane and the CPU its calls used.
    pub fn cpu(&self) -> &CpuAccount {
        &self.cpu
    }

    /// Wasm fuel this replica's calls consumed.
    pub fn fuel_used(&self) -> u64 {
        self.fuel_used
    }

    pub fn core(&self) -> &RegionCore {
        &self.core
    }

    pub fn core_mut(&mut self) -> &mut RegionCore {
        &mut self.core
    }

    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    pub fn source(&self) -> &PluginSource {
        &self.source
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    pub fn failures_total(&self) -> u64 {
        self.failures_total
    }

    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Instantiates the plugin and calls `init`. `recovering` is false only
    /// for the very first start of a new region replica.
    pub fn start(&mut self, recovering: bool) -> Result<Effects, PluginFailure> {
        self.instance = None;
        self.hibernation.reset();
        // A new instance has armed no timers (the driver drops its own).
        self.core.clear_timers();
        let instance = match self.source.instantiate() {
            Ok(instance) => instance,
            Err(failure) => {
                self.fail(&failure);
                return Err(failure);
            }
        };
        self.instance = Some(instance);
        self.health = Health::Running;
        let mut config = self.init_template.clone();
        config.recovering = recovering;
        config.applied_position = self.core.state().applied_position();
        match self.deliver(Call::Init(config)) {
            Delivery::Done(_, effects) => Ok(effects),
            Delivery::Failed(failure) => Err(failure),
            Delivery::Refused(reason) => Err(PluginFailure::Instantiate(reason)),
        }
    }

    /// Live swap: replaces the protocol by `source`, gives it empty storage
    /// (the state machine stays) and starts it with `init(recovering =
    /// false, applied-position = the state machine's position)`. The
    /// failure window starts over: the new protocol's failures are its own.
    pub fn switch_protocol(
        &mut self,
        source: PluginSource,
        init_template: InitConfig,
    ) -> Result<Effects, PluginFailure> {
        self.instance = None;
        self.info = source.info();
        self.source = source;
        self.init_template = init_template;
        self.core.reset_storage();
        self.recent_failures.clear();
        self.start(false)
    }

    /// Calls the plugin with one event.
    pub fn deliver(&mut self, call: Call) -> Delivery {
        if self.instance.is_none()
            && self.hibernation.is_hibernated()
            && self.health.is_running()
            && let Err(failure) = self.wake()
        {
            tracing::warn!(region = %self.core.name(), %failure, "hibernated replica failed to wake; replica fenced");
            self.fail(&failure);
            return Delivery::Failed(failure);
        }
        let Some(instance) = self.instance.as_mut() else {
            return Delivery::Refused(self.unavailable_reason());
        };
        let call_name = call.name();
        let core = &mut self.core;
        let (result, used) = measure(|| instance.call(core, call));
        self.cpu.charge(used, self.running_lane);
        self.fuel_used += instance.take_fuel_used();
        let result = result.and_then(|result| match self.core.take_violation() {
            Some(why) => Err(PluginFailure::Contract(why)),
            None => Ok(result),
        });
        match result {
            Ok(result) => Delivery::Done(result, self.core.commit_callback()),
            Err(failure) => {
                tracing::warn!(
                    region = %self.core.name(),
                    call = call_name,
                    %failure,
                    "plugin call failed; replica fenced"
                );
                self.fail(&failure);
                Delivery::Failed(failure)
            }
        }
    }

    /// Why events are refused right now.
    pub fn unavailable_reason(&self) -> String {
        match &self.health {
            Health::Running => "replica is running".into(),
            Health::Fenced { reason, .. } => {
                format!("region replica is restarting after a plugin failure: {reason}")
            }
            Health::Quarantined { reason } => format!(
                "region replica is quarantined after repeated plugin failures (last: {reason}); restart it with `synod region restart`"
            ),
        }
    }

    /// When a fenced replica is due for a rebuild.
    pub fn next_restart(&self) -> Option<Duration> {
        match &self.health {
            Health::Fenced { retry_at, .. } => Some(*retry_at),
            _ => None,
        }
    }

    /// Rebuilds a fenced replica if its backoff has passed.
    pub fn poll_restart(&mut self) -> Option<Result<Effects, PluginFailure>> {
        let due = self.next_restart()?;
        if self.clock.now() < due {
            return None;
        }
        self.restarts += 1;
        tracing::info!(region = %self.core.name(), restarts = self.restarts, "rebuilding replica from storage");
        Some(self.start(true))
    }

    /// Lifts a quarantine (operator action) and rebuilds at once.
    pub fn reset(&mut self) -> Result<Effects, PluginFailure> {
        self.recent_failures.clear();
        self.restarts += 1;
        self.start(true)
    }

    fn fail(&mut self, failure: &PluginFailure) {
        self.core.rollback_callback();
        self.core.clear_timers();
        self.instance = None;
        self.failures_total += 1;
        let now = self.clock.now();
        self.recent_failures.push_back(now);
        while let Some(oldest) = self.recent_failures.front() {
            if now.saturating_sub(*oldest) > self.policy.window {
                self.recent_failures.pop_front();
            } else {
                break;
            }
        }
        let reason = failure.to_string();
        let count = self.recent_failures.len();
        if count >= self.policy.quarantine_after {
            tracing::error!(region = %self.core.name(), %reason, failures = count, "replica quarantined");
            self.health = Health::Quarantined { reason };
        } else {
            let exponent = u32::try_from(count.saturating_sub(1))
                .unwrap_or(u32::MAX)
                .min(16);
            let backoff = self
                .policy
                .backoff_initial
                .saturating_mul(1 << exponent)
                .min(self.policy.backoff_max);
            self.health = Health::Fenced {
                reason,
                retry_at: now + backoff,
            };
        }
    }
}
