//! Bearer tokens and what they may do.
//!
//! A node keeps only each token's SHA-256 (hex) in its tokens file, with
//! a name (shown in audit records), a role and an optional expiry:
//!
//! ```toml
//! [[token]]
//! name = "admin"
//! sha256 = "…"            # sha256 of the token, hex
//! role = "admin"          # read | write | admin
//! regions = ["orders-"]   # read/write: region name prefixes (default: all)
//! expires_at = 1798761600 # optional, unix seconds
//! ```
//!
//! `admin` may do everything; `write` may read and write the regions its
//! prefixes match; `read` may read them. Cluster-wide reads (status,
//! region list, cluster, components) need any valid token.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

/// What a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Any valid token (cluster-wide listings and status).
    Any,
    Read(String),
    Write(String),
    Admin,
}

/// One entry of the tokens file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub sha256: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    #[serde(default)]
    pub token: Vec<TokenEntry>,
}

/// Who made a request (a valid, unexpired token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    regions: Option<Vec<String>>,
    /// Unix seconds after which the token is refused; a long-lived
    /// connection (the wire protocol) checks it on every request.
    expires_at: Option<u64>,
}

impl Principal {
    /// Whether the token has expired since it was authenticated.
    pub fn is_expired(&self) -> bool {
        self.expires_at.is_some_and(|at| now_seconds() >= at)
    }

    fn covers(&self, region: &str) -> bool {
        self.regions
            .as_ref()
            .is_none_or(|prefixes| prefixes.iter().any(|p| region.starts_with(p.as_str())))
    }

    /// Whether this principal holds `permission`.
    pub fn may(&self, permission: &Permission) -> bool {
        match permission {
            Permission::Any => true,
            Permission::Admin => self.role == Role::Admin,
            Permission::Read(region) => self.role == Role::Admin || self.covers(region),
            Permission::Write(region) => {
                self.role == Role::Admin || (self.role == Role::Write && self.covers(region))
            }
        }
    }
}

/// Why a request was refused; `code` is stable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the token is not known to this node")]
    Unknown,
    #[error("the token {0:?} has expired")]
    Expired(String),
    #[error("the token {name:?} ({role:?}) may not do this: it needs {needs}")]
    Forbidden {
        name: String,
        role: Role,
        needs: String,
    },
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "unauthenticated",
            AuthError::Unknown => "invalid_token",
            AuthError::Expired(_) => "token_expired",
            AuthError::Forbidden { .. } => "forbidden",
        }
    }

    /// 401 for who-are-you failures, 403 for may-not.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthError::Forbidden { .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The SHA-256 of a token, hex: what the tokens file stores.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh random token (256 bits, hex).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("synod_{}", hex::encode(bytes))
}

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The tokens a node accepts, keyed by hash.
#[derive(Clone, Debug, Default)]
pub struct TokenStore {
    by_hash: HashMap<String, TokenEntry>,
}

impl TokenStore {
    pub fn load(path: &Path) -> Result<Self, TokensFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| TokensFileError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let file: TokensFile = toml::from_str(&text).map_err(|e| TokensFileError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_file(file).map_err(|message| TokensFileError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn from_file(file: TokensFile) -> Result<Self, String> {
        let mut by_hash = HashMap::new();
        for entry in file.token {
            let hash = entry.sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "token {:?}: sha256 must be 64 hex digits",
                    entry.name
                ));
            }
            if by_hash.insert(hash, entry.clone()).is_some() {
                return Err(format!("token {:?} appears twice", entry.name));
            }
        }
        Ok(Self { by_hash })
    }

    /// Who holds `token`, if it is known and unexpired.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        let entry = self
            .by_hash
            .get(&hash_token(token))
            .ok_or(AuthError::Unknown)?;
        if entry.expires_at.is_some_and(|at| now_seconds() >= at) {
            return Err(AuthError::Expired(entry.name.clone()));
        }
        Ok(Principal {
            name: entry.name.clone(),
            role: entry.role,
            regions: entry.regions.clone(),
            expires_at: entry.expires_at,
        })
    }

    /// Authenticates `token` and checks it holds `permission`.
    pub fn authorize(
        &self,
        token: Option<&str>,
        permission: &Permission,
    ) -> Result<Principal, AuthError> {
        let principal = self.authenticate(token)?;
        if principal.may(permission) {
            return Ok(principal);
        }
        let needs = match permission {
            Permission::Any => "a valid token".to_string(),
            Permission::Admin => "role admin".to_string(),
            Permission::Read(region) => format!("read on region {region}"),
            Permission::Write(region) => format!("write on region {region}"),
        };
        Err(AuthError::Forbidden {
            name: principal.name,
            role: principal.role,
            needs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(entries: Vec<TokenEntry>) -> TokenStore {
        TokenStore::from_file(TokensFile { token: entries }).expect("valid")
    }

    fn entry(name: &str, token: &str, role: Role, regions: Option<Vec<&str>>) -> TokenEntry {
        TokenEntry {
            name: name.into(),
            sha256: hash_token(token),
            role,
            regions: regions.map(|r| r.into_iter().map(String::from).collect()),
            expires_at: None,
        }
    }

    #[test]
    fn roles_and_prefixes_decide() {
        let tokens = store(vec![
            entry("root", "a", Role::Admin, None),
            entry("app", "w", Role::Write, Some(vec!["orders-"])),
            entry("viewer", "r", Role::Read, None),
        ]);
        let write = Permission::Write("orders-eu".into());
        assert!(tokens.authorize(Some("a"), &Permission::Admin).is_ok());
        assert!(tokens.authorize(Some("w"), &write).is_ok());
        let other = Permission::Write("users".into());
        assert_eq!(
            tokens.authorize(Some("w"), &other).map_err(|e| e.code()),
            Err("forbidden")
        );
        assert_eq!(
            tokens.authorize(Some("r"), &write).map_err(|e| e.code()),
            Err("forbidden")
        );
        assert!(
            tokens
                .authorize(Some("r"), &Permission::Read("users".into()))
                .is_ok()
        );
        assert_eq!(
            tokens
                .authorize(Some("w"), &Permission::Admin)
                .map_err(|e| e.code()),
            Err("forbidden")
        );
        assert_eq!(
            tokens
                .authorize(None, &Permission::Any)
                .map_err(|e| e.code()),
            Err("unauthenticated")
        );
        assert_eq!(
            tokens
                .authorize(Some("nope"), &Permission::Any)
                .map_err(|e| e.code()),
            Err("invalid_token")
        );
    }

    #[test]
    fn an_expired_token_is_refused() {
        let mut expired = entry("old", "o", Role::Admin, None);
        expired.expires_at = Some(now_seconds() - 1);
        let mut fresh = entry("new", "n", Role::Admin, None);
        fresh.expires_at = Some(now_seconds() + 3600);
        let tokens = store(vec![expired, fresh]);
        assert_eq!(
            tokens
                .authorize(Some("o"), &Permission::Any)
                .map_err(|e| e.code()),
            Err("token_expired")
        );
        assert!(tokens.authorize(Some("n"), &Permission::Admin).is_ok());
    }
}
