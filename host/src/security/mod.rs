//! Who may talk to a node and what they may do: TLS material
//! ([`tls`]), bearer tokens and roles ([`tokens`]), and the generator of
//! a cluster's secrets ([`init`]).

pub mod http;
pub mod init;
pub mod tls;
pub mod tokens;

use std::sync::Arc;

pub use tls::{NodeTls, TlsError};
pub use tokens::{AuthError, Permission, Principal, Role, TokenStore};

/// A node's security: TLS on both ports and the tokens it accepts. `None`
/// in [`crate::node::NodeConfig`] runs the node in the clear without
/// authentication (loopback only).
#[derive(Clone, Debug)]
pub struct Security {
    pub tls: Arc<NodeTls>,
    pub tokens: Arc<TokenStore>,
}

/// Whether every address is a loopback one (where running without
/// security is allowed).
pub fn all_loopback<'a>(addresses: impl IntoIterator<Item = &'a std::net::SocketAddr>) -> bool {
    addresses.into_iter().all(|a| a.ip().is_loopback())
}
