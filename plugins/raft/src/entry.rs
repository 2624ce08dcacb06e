//! Log entry layout.
//!
//! Every entry starts with a 9-byte header: the term as a little-endian
//! `u64`, then one kind byte. What follows depends on the kind:
//!
//! | kind | name    | body                                              |
//! |------|---------|---------------------------------------------------|
//! | 0    | command | request id (`u64` LE), then the client's command  |
//! | 1    | noop    | empty; a new leader's first entry (§5.4.2, §6.4)  |
//! | 2    | config  | postcard-encoded [`Config`] (takes effect when appended) |
//! | 3    | seal    | empty; nothing after it is ever applied           |
//!
//! The header is fixed-size so that a follower can learn an entry's term
//! and kind without decoding its body.

use synod_guest_sdk::{Batch, RequestId};

use crate::membership::Config;

/// Bytes before an entry's body: term (8) and kind (1).
pub const HEADER_BYTES: usize = 9;
/// Bytes of the request id at the start of a command's body.
const REQUEST_ID_BYTES: usize = 8;

pub const KIND_COMMAND: u8 = 0;
pub const KIND_NOOP: u8 = 1;
pub const KIND_CONFIG: u8 = 2;
pub const KIND_SEAL: u8 = 3;

/// A decoded entry body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    Command { id: RequestId, command: &'a [u8] },
    Noop,
    Config(Config),
    Seal,
}

/// Why bytes are not an entry (only possible for bytes that did not come
/// from this plugin).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MalformedEntry(pub String);

/// Appends a command entry to `out`.
pub fn push_command(out: &mut Batch, term: u64, id: RequestId, command: &[u8]) {
    let mut entry = Vec::with_capacity(HEADER_BYTES + REQUEST_ID_BYTES + command.len());
    entry.extend_from_slice(&term.to_le_bytes());
    entry.push(KIND_COMMAND);
    entry.extend_from_slice(&id.to_le_bytes());
    entry.extend_from_slice(command);
    out.push(&entry);
}

/// Appends a noop entry to `out`.
pub fn push_noop(out: &mut Batch, term: u64) {
    out.push(&header(term, KIND_NOOP));
}

/// Appends a seal entry to `out`.
pub fn push_seal(out: &mut Batch, term: u64) {
    out.push(&header(term, KIND_SEAL));
}

/// Appends a configuration entry to `out`.
pub fn push_config(out: &mut Batch, term: u64, config: &Config) {
    let mut entry = header(term, KIND_CONFIG).to_vec();
    let body = postcard::to_allocvec(config).expect("a configuration always encodes");
    entry.extend_from_slice(&body);
    out.push(&entry);
}

fn header(term: u64, kind: u8) -> [u8; HEADER_BYTES] {
    let mut bytes = [0u8; HEADER_BYTES];
    bytes[..8].copy_from_slice(&term.to_le_bytes());
    bytes[8] = kind;
    bytes
}

/// The term and kind byte of an entry.
pub fn check_header(entry: &[u8]) -> Result<(u64, u8), MalformedEntry> {
    if entry.len() < HEADER_BYTES {
        return Err(MalformedEntry(format!(
            "entry of {} bytes is shorter than its header",
            entry.len()
        )));
    }
    let mut term = [0u8; 8];
    term.copy_from_slice(&entry[..8]);
    let kind = entry[8];
    if kind > KIND_SEAL {
        return Err(MalformedEntry(format!("unknown entry kind {kind}")));
    }
    Ok((u64::from_le_bytes(term), kind))
}

/// The term of an entry of this plugin's own log. Panics on malformed bytes:
/// the log only ever holds entries this plugin wrote or validated.
pub fn term_of(entry: &[u8]) -> u64 {
    match check_header(entry) {
        Ok((term, _)) => term,
        Err(MalformedEntry(why)) => panic!("corrupt log entry: {why}"),
    }
}

/// Decodes an entry.
pub fn decode(entry: &[u8]) -> Result<(u64, Entry<'_>), MalformedEntry> {
    let (term, kind) = check_header(entry)?;
    let body = &entry[HEADER_BYTES..];
    let decoded = match kind {
        KIND_COMMAND => {
            if body.len() < REQUEST_ID_BYTES {
                return Err(MalformedEntry("command entry without a request id".into()));
            }
            let mut id = [0u8; REQUEST_ID_BYTES];
            id.copy_from_slice(&body[..REQUEST_ID_BYTES]);
            Entry::Command {
                id: u64::from_le_bytes(id),
                command: &body[REQUEST_ID_BYTES..],
            }
        }
        KIND_NOOP => Entry::Noop,
        KIND_CONFIG => Entry::Config(
            postcard::from_bytes(body)
                .map_err(|error| MalformedEntry(format!("config entry: {error}")))?,
        ),
        _ => Entry::Seal,
    };
    Ok((term, decoded))
}

/// Decodes an entry of this plugin's own log, panicking on malformed bytes.
pub fn decode_own(entry: &[u8]) -> (u64, Entry<'_>) {
    match decode(entry) {
        Ok(decoded) => decoded,
        Err(MalformedEntry(why)) => panic!("corrupt log entry: {why}"),
    }
}

/// Items `from..` of `batch` as a new batch.
pub fn batch_suffix(batch: &Batch, from: usize) -> Batch {
    if from == 0 {
        return batch.clone();
    }
    let start = batch.ends[from - 1];
    Batch {
        data: batch.data[start as usize..].to_vec(),
        ends: batch.ends[from..].iter().map(|end| end - start).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let mut batch = Batch::new();
        push_command(&mut batch, 7, 42, b"put x 1");
        push_noop(&mut batch, 7);
        let config = Config {
            voters: vec![1, 2, 3],
            learners: vec![4],
        };
        push_config(&mut batch, 8, &config);
        push_seal(&mut batch, 9);
        let decoded: Vec<_> = batch.iter().map(|e| decode(e).unwrap()).collect();
        assert_eq!(
            decoded,
            vec![
                (
                    7,
                    Entry::Command {
                        id: 42,
                        command: b"put x 1"
                    }
                ),
                (7, Entry::Noop),
                (8, Entry::Config(config)),
                (9, Entry::Seal),
            ]
        );
        assert_eq!(term_of(batch.get(2).unwrap()), 8);
        let suffix = batch_suffix(&batch, 2);
        assert_eq!(suffix.len(), 2);
        assert_eq!(suffix.get(1), batch.get(3));
    }

    #[test]
    fn malformed_entries_are_refused() {
        assert!(decode(b"short").is_err());
        let mut bad_kind = header(1, 9).to_vec();
        bad_kind.push(0);
        assert!(decode(&bad_kind).is_err());
        assert!(decode(&header(1, KIND_COMMAND)).is_err());
    }
}
