//! The binary client protocol: the same operations as the HTTP API's
//! key-value routes, for clients that keep thousands of requests in flight.
//!
//! It shares the API port (inside TLS on a secured node). A connection
//! that opens with [`MAGIC`] speaks this protocol; any other connection
//! is HTTP. The client's first frame is a [`Hello`] carrying its bearer
//! token: the connection is authenticated once, each request authorized
//! against the token's role (`forbidden` otherwise). After the magic, both
//! directions carry frames: a 4-byte big-endian length, then a
//! [postcard](https://docs.rs/postcard)-encoded [`Request`] (client to node)
//! or [`Response`] (node to client). A client may send many requests
//! without waiting; responses come back in completion order, matched by
//! `id`. HTTP costs a syscall pair and a header parse per request; here
//! one read and one write carry as many requests as are ready.
//!
//! Id 0 is the node's: a [`Response`] with id 0 reports a connection-level
//! error (a frame that does not decode, or is too large), after which the
//! node closes the connection. Clients number their requests from 1.

mod client;
mod server;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use synod_guest_sdk::ReadLevel;

use crate::state_machine::{KvCommand, KvOutcome, KvQuery};

pub use client::{WireClient, WireClientError};
pub use server::{
    ApiIo, ApiStream, ConnectionPlace, HttpConnection, Prefixed, SharedPortListener,
    request_frame_bytes_max, serve_connection,
};

/// First bytes a client sends. No HTTP request starts like this.
/// (W2: a [`Hello`] frame follows.)
pub const MAGIC: &[u8; 8] = b"SYNOD/W2";

/// The first frame of a connection: the client's bearer token (`None`
/// only for a node running without security). A refusal is a
/// connection-level error (`unauthenticated`, `invalid_token`,
/// `token_expired`), after which the node closes the connection.
#[derive(Clone, Serialize, Deserialize)]
pub struct Hello {
    pub token: Option<String>,
}

/// Largest frame either side accepts; larger ones end the connection. A
/// node accepts request frames only up to what its key and value limits
/// allow ([`request_frame_bytes_max`], about 2 MiB by default).
pub const FRAME_BYTES_MAX: usize = 8 << 20;

/// Requests a connection may have in flight; the node stops reading
/// from a connection that reaches it until some complete.
pub const IN_FLIGHT_MAX: usize = 4096;

/// The id of connection-level error responses.
pub const CONNECTION_ERROR_ID: u64 = 0;

/// One client operation on a region's key-value state machine.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client, unique among its requests in flight, not 0.
    pub id: u64,
    pub region: String,
    pub op: Op,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Op {
    /// A put, delete or compare-and-swap, ordered by the region's protocol.
    Write(KvCommand),
    /// A read at the given consistency level.
    Read {
        query: KvQuery,
        consistency: Consistency,
    },
}

impl Op {
    pub fn put(key: &[u8], value: &[u8]) -> Self {
        Op::Write(KvCommand::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        })
    }

    pub fn delete(key: &[u8]) -> Self {
        Op::Write(KvCommand::Delete { key: key.to_vec() })
    }

    pub fn cas(key: &[u8], expected: Option<&[u8]>, new: Option<&[u8]>) -> Self {
        Op::Write(KvCommand::Cas {
            key: key.to_vec(),
            expected: expected.map(|v| ByteBuf::from(v.to_vec())),
            new: new.map(|v| ByteBuf::from(v.to_vec())),
        })
    }

    pub fn get(key: &[u8], consistency: Consistency) -> Self {
        Op::Read {
            query: KvQuery::Get { key: key.to_vec() },
            consistency,
        }
    }

    fn key(&self) -> &[u8] {
        match self {
            Op::Write(command) => command.key(),
            Op::Read {
                query: KvQuery::Get { key },
                ..
            } => key,
        }
    }

    fn values(&self) -> impl Iterator<Item = &[u8]> {
        let (a, b): (Option<&[u8]>, Option<&[u8]>) = match self {
            Op::Write(KvCommand::Put { value, .. }) => (Some(value), None),
            Op::Write(KvCommand::Cas { expected, new, .. }) => (
                expected.as_deref().map(|v| &v[..]),
                new.as_deref().map(|v| &v[..]),
            ),
            Op::Write(KvCommand::Delete { .. }) | Op::Read { .. } => (None, None),
        };
        a.into_iter().chain(b)
    }
}

/// Read consistency, as in the HTTP API's `?consistency=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    Linearizable,
    Lease,
    Local,
}

impl From<Consistency> for ReadLevel {
    fn from(consistency: Consistency) -> Self {
        match consistency {
            Consistency::Linearizable => ReadLevel::Linearizable,
            Consistency::Lease => ReadLevel::Lease,
            Consistency::Local => ReadLevel::Local,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    /// Never `KvOutcome::Invalid`: that arrives as an `invalid_request`
    /// failure.
    pub result: Result<KvOutcome, Failure>,
}

/// A refused or failed request. `code` is one of the HTTP API's error
/// codes (`not_leader`, `overloaded`, `timeout`, `value_too_large`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Failure {
    pub code: String,
    pub message: String,
    /// API address of a node that can serve the request (the leader, or a
    /// node hosting the region) when this node knows one.
    pub redirect: Option<String>,
}

impl Failure {
    fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            message: message.into(),
            redirect: None,
        }
    }

    /// Whether the failure proves the request was never ordered, so it can
    /// never take effect. Timeouts and unavailability leave it unknown.
    pub fn never_applied(&self) -> bool {
        !matches!(
            self.code.as_str(),
            "timeout" | "unavailable" | "internal" | "connection_lost"
        )
    }
}

/// What a client sends first: [`MAGIC`], then its [`Hello`] frame.
pub fn opening(token: Option<&str>) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    let hello = Hello {
        token: token.map(str::to_string),
    };
    // A hello of a string is always encodable.
    let _ = encode_frame(&hello, &mut bytes);
    bytes
}

/// Appends one frame (length prefix, then `value` in postcard) to `buffer`.
fn encode_frame<T: Serialize>(value: &T, buffer: &mut Vec<u8>) -> Result<(), postcard::Error> {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; 4]);
    if let Err(error) = postcard::to_io(value, &mut *buffer) {
        buffer.truncate(start);
        return Err(error);
    }
    let Ok(length) = u32::try_from(buffer.len() - start - 4) else {
        buffer.truncate(start);
        return Err(postcard::Error::SerializeBufferFull);
    };
    buffer[start..start + 4].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

/// The frame codec both sides use after the magic.
fn codec() -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(FRAME_BYTES_MAX)
        .new_codec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let request = Request {
            id: 7,
            region: "r".into(),
            op: Op::cas(b"k", None, Some(b"v")),
        };
        let mut buffer = Vec::new();
        encode_frame(&request, &mut buffer).unwrap();
        encode_frame(&request, &mut buffer).unwrap();
        let length = u32::from_be_bytes(buffer[..4].try_into().unwrap()) as usize;
        assert_eq!(buffer.len(), 2 * (4 + length));
        let decoded: Request = postcard::from_bytes(&buffer[4..4 + length]).unwrap();
        assert_eq!(decoded.id, 7);
        assert_eq!(decoded.op.key(), b"k");
        assert_eq!(decoded.op.values().collect::<Vec<_>>(), vec![&b"v"[..]]);
    }

    #[test]
    fn only_unknown_outcomes_may_have_applied() {
        assert!(Failure::new("not_leader", "").never_applied());
        assert!(Failure::new("value_too_large", "").never_applied());
        assert!(!Failure::new("timeout", "").never_applied());
        assert!(!Failure::new("connection_lost", "").never_applied());
    }
}
