//! Names for the messages a plugin sends, for the trace page's arrows and
//! its kind filter. Message bytes are the plugin's own; the host knows the
//! wire format of the protocols built into it (Raft, and variants of it
//! named `raft-*`, such as test fixtures wrapping it), and names any other
//! message by its leading byte, which for a postcard- or bincode-encoded
//! enum is the variant's tag (`tag 3`).

use std::collections::BTreeSet;

use synod_guest_sdk::Batch;

/// The distinct kinds in `batch`, `+`-joined in first-seen order.
pub fn batch_kinds(protocol: &str, batch: &Batch) -> String {
    let mut seen = BTreeSet::new();
    let mut kinds: Vec<String> = Vec::new();
    for index in 0..batch.len() {
        let Some(bytes) = batch.get(index) else {
            continue;
        };
        let kind = message_kind(protocol, bytes);
        if seen.insert(kind.clone()) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        return "empty".into();
    }
    kinds.join("+")
}

/// One message's kind.
pub fn message_kind(protocol: &str, bytes: &[u8]) -> String {
    if (protocol == "raft" || protocol.starts_with("raft-"))
        && let Ok(message) = synod_plugin_raft::message::Message::decode(bytes)
    {
        return raft_kind(&message).into();
    }
    match bytes.first() {
        Some(tag) => format!("tag {tag}"),
        None => "empty".into(),
    }
}

fn raft_kind(message: &synod_plugin_raft::message::Message) -> &'static str {
    use synod_plugin_raft::message::Message;
    match message {
        Message::PreVote { .. } => "PreVote",
        Message::PreVoteResponse { .. } => "PreVoteResponse",
        Message::Vote { .. } => "Vote",
        Message::VoteResponse { .. } => "VoteResponse",
        Message::Append { .. } => "Append",
        Message::AppendResponse { .. } => "AppendResponse",
        Message::Heartbeat { .. } => "Heartbeat",
        Message::HeartbeatResponse { .. } => "HeartbeatResponse",
        Message::TimeoutNow { .. } => "TimeoutNow",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synod_plugin_raft::message::Message;

    #[test]
    fn raft_messages_are_named_and_others_tagged() {
        let vote = Message::Vote {
            term: 3,
            last_index: 1,
            last_term: 1,
            transfer: false,
        }
        .encode();
        let beat = Message::Heartbeat {
            term: 3,
            commit: 1,
            round: 0,
        }
        .encode();
        let batch = Batch::from_items([vote.clone(), beat.clone(), vote.clone()]);
        assert_eq!(batch_kinds("raft", &batch), "Vote+Heartbeat");
        assert_eq!(message_kind("other", &[7, 1, 2]), "tag 7");
        assert_eq!(batch_kinds("raft", &Batch::new()), "empty");
        // Bytes Raft cannot decode fall back to the tag.
        assert_eq!(message_kind("raft", &[200]), "tag 200");
    }
}
