//! Client requests handed to a region and not answered yet, each with the
//! deadline its client gave up at.
//!
//! The protocol may never answer some requests (writes a deposed leader
//! appended and a new leader overwrote, reads an instance held when it
//! trapped). Their reply channels and stored read queries would grow with
//! every leader change, so the driver expires them at their deadline. The
//! deadline index is ordered, so expiry touches only overdue requests.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use synod_guest_sdk::RequestId;
use tokio::sync::oneshot;

use crate::region::driver::ClientReply;

/// The lowest bit of a request id's counter tells reads from writes, so an
/// import can tell a write id from a read id without any bookkeeping.
pub const READ_ID_BIT: u64 = 1;

/// Whether the host allocated `id` for a read.
pub fn is_read_id(id: RequestId) -> bool {
    id & READ_ID_BIT != 0
}

struct Pending {
    reply: oneshot::Sender<ClientReply>,
    /// Clock nanoseconds; `u64::MAX` never expires.
    deadline: u64,
    timeout: Duration,
}

/// Pending requests by id, with an index by deadline.
#[derive(Default)]
pub struct PendingRequests {
    by_id: HashMap<RequestId, Pending>,
    by_deadline: BTreeSet<(u64, RequestId)>,
    reads: usize,
}

impl PendingRequests {
    /// Registers a request the client waits `timeout` for, from `now`.
    pub fn insert(
        &mut self,
        id: RequestId,
        reply: oneshot::Sender<ClientReply>,
        now_nanos: u64,
        timeout: Duration,
    ) {
        let deadline =
            now_nanos.saturating_add(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX));
        if deadline != u64::MAX {
            self.by_deadline.insert((deadline, id));
        }
        if is_read_id(id) {
            self.reads += 1;
        }
        if let Some(old) = self.by_id.insert(
            id,
            Pending {
                reply,
                deadline,
                timeout,
            },
        ) {
            self.unindex(id, &old);
        }
    }

    /// Whether `id` still waits for an answer (it has not expired).
    pub fn contains(&self, id: RequestId) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Removes a request to answer it.
    pub fn take(&mut self, id: RequestId) -> Option<oneshot::Sender<ClientReply>> {
        let pending = self.by_id.remove(&id)?;
        self.unindex(id, &pending);
        Some(pending.reply)
    }

    fn unindex(&mut self, id: RequestId, pending: &Pending) {
        self.by_deadline.remove(&(pending.deadline, id));
        if is_read_id(id) {
            self.reads -= 1;
        }
    }

    /// Removes every request.
    pub fn drain(&mut self) -> Vec<oneshot::Sender<ClientReply>> {
        self.by_deadline.clear();
        self.reads = 0;
        self.by_id.drain().map(|(_, p)| p.reply).collect()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn reads(&self) -> usize {
        self.reads
    }

    pub fn writes(&self) -> usize {
        self.by_id.len() - self.reads
    }

    /// The earliest deadline, if any request can expire.
    pub fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.first().map(|(deadline, _)| *deadline)
    }

    /// Removes every request whose deadline is at or before `now`, with
    /// the timeout its client gave.
    pub fn expire(
        &mut self,
        now_nanos: u64,
    ) -> Vec<(RequestId, oneshot::Sender<ClientReply>, Duration)> {
        let mut expired = Vec::new();
        while let Some(&(deadline, id)) = self.by_deadline.first() {
            if deadline > now_nanos {
                break;
            }
            self.by_deadline.pop_first();
            if let Some(pending) = self.by_id.remove(&id) {
                if is_read_id(id) {
                    self.reads -= 1;
                }
                expired.push((id, pending.reply, pending.timeout));
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_expire_in_deadline_order_and_answered_ones_leave_no_trace() {
        let mut pending = PendingRequests::default();
        let mut receivers = Vec::new();
        for (id, timeout_ms) in [(2u64, 30u64), (3, 10), (4, 20), (5, 1000)] {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            pending.insert(id, tx, 0, Duration::from_millis(timeout_ms));
        }
        let (tx, _rx) = oneshot::channel();
        pending.insert(6, tx, 0, Duration::MAX);
        assert_eq!(pending.reads(), 2);
        assert!(pending.take(4).is_some());
        assert_eq!(pending.next_deadline(), Some(10_000_000));
        let expired: Vec<RequestId> = pending
            .expire(30_000_000)
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        assert_eq!(expired, vec![3, 2]);
        assert_eq!(pending.len(), 2, "5 and the one without a deadline");
        assert_eq!(pending.reads(), 1);
        assert_eq!(pending.writes(), 1);
        assert_eq!(pending.drain().len(), 2);
        assert!(pending.is_empty() && pending.next_deadline().is_none());
    }
}
