//! The plugin's imports: thin adapters from the generated traits into the
//! region core. An import that detects a contract violation traps the
//! plugin with [`ContractViolation`].

use synod_guest_sdk::Host as _;
use wasmtime::ResourceLimiter;

use super::bindings::synod::protocol::{
    client, clock, kv, log, logging, network, state_machine, types,
};
use super::convert::*;
use crate::region::core::RegionCore;

/// The error an import returns to trap a plugin that broke the contract.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ContractViolation(pub String);

/// Per-instance store data: the region core (lent for each call), the
/// memory limiter and the virtual WASI context.
pub struct StoreData {
    pub core: RegionCore,
    pub limiter: MemoryLimiter,
    pub wasi: wasmtime_wasi::WasiCtx,
    pub table: wasmtime::component::ResourceTable,
}

impl wasmtime_wasi::WasiView for StoreData {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl StoreData {
    fn check(&mut self) -> wasmtime::Result<()> {
        match self.core.take_violation() {
            Some(why) => Err(wasmtime::Error::new(ContractViolation(why))),
            None => Ok(()),
        }
    }
}

/// Refuses memory growth past `limit_bytes` and remembers that it did, so
/// the resulting trap is reported as a memory-limit failure.
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    pub limit_bytes: usize,
    pub hit: bool,
}

/// Tables only hold function references; this bounds a hostile component.
const TABLE_ELEMENTS_MAX: usize = 100_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }
}

type Trappable<T> = wasmtime::Result<T>;

impl types::Host for StoreData {}

impl log::Host for StoreData {
    fn append(
        &mut self,
        first: u64,
        entries: types::Batch,
    ) -> Trappable<Result<(), types::StorageError>> {
        let result = self.core.log_append(first, &batch_from_wit(entries));
        self.check()?;
        Ok(result.map_err(storage_error_to_wit))
    }

    fn read(
        &mut self,
        first: u64,
        last: u64,
        max_bytes: u32,
    ) -> Trappable<Result<types::Batch, types::StorageError>> {
        Ok(self
            .core
            .log_read(first, last, max_bytes)
            .map(batch_to_wit)
            .map_err(storage_error_to_wit))
    }

    fn bounds(&mut self) -> Trappable<types::LogBounds> {
        let bounds = self.core.log_bounds();
        Ok(types::LogBounds {
            first: bounds.first,
            last: bounds.last,
        })
    }

    fn truncate_suffix(&mut self, start: u64) -> Trappable<Result<(), types::StorageError>> {
        Ok(self
            .core
            .log_truncate_suffix(start)
            .map_err(storage_error_to_wit))
    }

    fn compact_prefix(&mut self, through: u64) -> Trappable<Result<(), types::StorageError>> {
        let result = self.core.log_compact_prefix(through);
        self.check()?;
        Ok(result.map_err(storage_error_to_wit))
    }
}

impl kv::Host for StoreData {
    fn get(&mut self, key: Vec<u8>) -> Trappable<Option<Vec<u8>>> {
        Ok(self.core.kv_get(&key))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Trappable<Result<(), types::StorageError>> {
        Ok(self.core.kv_put(&key, &value).map_err(storage_error_to_wit))
    }

    fn delete(&mut self, key: Vec<u8>) -> Trappable<()> {
        self.core.kv_delete(&key);
        Ok(())
    }
}

impl network::Host for StoreData {
    fn send(&mut self, to: u64, messages: types::Batch) -> Trappable<()> {
        self.core.send(to, &batch_from_wit(messages));
        self.check()
    }

    fn send_eager(&mut self, to: u64, messages: types::Batch) -> Trappable<()> {
        self.core.send_eager(to, &batch_from_wit(messages));
        self.check()
    }
}

impl clock::Host for StoreData {
    fn now(&mut self) -> Trappable<u64> {
        Ok(self.core.now())
    }

    fn set_timer(&mut self, id: u64, after_nanos: u64) -> Trappable<()> {
        self.core.set_timer(id, after_nanos);
        self.check()
    }

    fn cancel_timer(&mut self, id: u64) -> Trappable<()> {
        self.core.cancel_timer(id);
        Ok(())
    }

    fn random(&mut self) -> Trappable<u64> {
        Ok(self.core.random())
    }
}

impl state_machine::Host for StoreData {
    fn apply(&mut self, commands: types::Applies, position: u64) -> Trappable<()> {
        let applies = synod_guest_sdk::Applies {
            ids: commands.ids,
            payloads: batch_from_wit(commands.payloads),
        };
        self.core.apply(&applies, position);
        self.check()
    }

    fn apply_stamped(
        &mut self,
        commands: types::Applies,
        stamps: Vec<types::Stamp>,
        position: u64,
    ) -> Trappable<()> {
        let applies = synod_guest_sdk::Applies {
            ids: commands.ids,
            payloads: batch_from_wit(commands.payloads),
        };
        let stamps: Vec<synod_guest_sdk::Stamp> = stamps
            .into_iter()
            .map(|s| synod_guest_sdk::Stamp {
                time: s.time,
                origin: s.origin,
            })
            .collect();
        self.core.apply_stamped(&applies, &stamps, position);
        self.check()
    }

    fn compact_tombstones(&mut self, below: u64) -> Trappable<()> {
        self.core.compact_tombstones(below);
        Ok(())
    }

    fn query(&mut self, query: Vec<u8>) -> Trappable<Vec<u8>> {
        Ok(self.core.query(&query))
    }

    fn snapshot(&mut self) -> Trappable<Result<u64, types::StorageError>> {
        Ok(self.core.snapshot().map_err(storage_error_to_wit))
    }

    fn snapshot_async(&mut self, notify: u64) -> Trappable<Result<u64, types::StorageError>> {
        Ok(self
            .core
            .snapshot_async(notify)
            .map_err(storage_error_to_wit))
    }

    fn send_snapshot(&mut self, to: u64, metadata: Vec<u8>) -> Trappable<()> {
        self.core.send_snapshot(to, &metadata);
        Ok(())
    }

    fn digest(&mut self) -> Trappable<Vec<u8>> {
        Ok(self.core.digest())
    }
}

impl client::Host for StoreData {
    fn complete_reads(&mut self, ids: Vec<u64>) -> Trappable<()> {
        self.core.complete_reads(&ids);
        self.check()
    }

    fn reject(&mut self, ids: Vec<u64>, reason: types::Rejection) -> Trappable<()> {
        self.core.reject(&ids, &rejection_from_wit(reason));
        Ok(())
    }
}

impl logging::Host for StoreData {
    fn log(&mut self, level: types::Level, message: String) -> Trappable<()> {
        self.core.log(level_from_wit(level), &message);
        Ok(())
    }
}
