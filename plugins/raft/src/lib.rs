//! Raft (being written).
