//! Peer messages (postcard-encoded).

use serde::{Deserialize, Serialize};

use crate::types::{Attributes, Ballot, Command, InstanceId, Status};

/// A replica's answer to a TryPreAccept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TryOutcome {
    /// Pre-accepted with the proposed attributes.
    Ok,
    /// An interfering instance that is not among the deps and does not
    /// depend on this one; `committed` says whether it is committed, and
    /// `initial` whether this replica's attributes for it are from its
    /// initial ballot (so they include its leader's proposal).
    Conflict {
        with: InstanceId,
        committed: bool,
        initial: bool,
    },
    /// This replica already holds the instance committed.
    Committed {
        command: Command,
        attributes: Attributes,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    PreAccept {
        instance: InstanceId,
        ballot: Ballot,
        command: Command,
        attributes: Attributes,
    },
    PreAcceptOk {
        instance: InstanceId,
        ballot: Ballot,
        attributes: Attributes,
    },
    Accept {
        instance: InstanceId,
        ballot: Ballot,
        command: Command,
        attributes: Attributes,
    },
    AcceptOk {
        instance: InstanceId,
        ballot: Ballot,
    },
    Commit {
        instance: InstanceId,
        command: Command,
        attributes: Attributes,
    },
    Prepare {
        instance: InstanceId,
        ballot: Ballot,
    },
    PrepareOk {
        instance: InstanceId,
        ballot: Ballot,
        status: Status,
        command: Option<Command>,
        attributes: Attributes,
        voted: Ballot,
        unchanged: bool,
    },
    TryPreAccept {
        instance: InstanceId,
        ballot: Ballot,
        command: Command,
        attributes: Attributes,
    },
    TryPreAcceptReply {
        instance: InstanceId,
        ballot: Ballot,
        outcome: TryOutcome,
    },
    /// Refusal of any ballot-carrying request: `promised` is higher.
    Nack {
        instance: InstanceId,
        ballot: Ballot,
        promised: Ballot,
    },
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("messages always encode")
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}
