//! `synod cluster init`: a directory with everything a secure cluster
//! needs: a CA, one certificate per node (DNS name `node-<id>.synod`,
//! plus the hosts clients dial), an admin token (only its hash goes to
//! the nodes) and a client profile. The directory is 0700, secrets 0600.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};
use synod_guest_sdk::NodeId;

use super::tls::node_name;
use super::tokens::{Role, TokenEntry, TokensFile, hash_token, new_token};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
const CA_NAME: &str = "ca.name";
pub const TOKENS: &str = "tokens.toml";
pub const PROFILE: &str = "profile.toml";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` readable by the owner only (0600).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), InitError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    // An existing file keeps its old mode through open(2): tighten it
    // before the secret is written into it.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))
}

/// A node's certificate and key paths in a cluster directory.
pub fn node_files(dir: &Path, id: NodeId) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("node-{id}.pem")),
        dir.join(format!("node-{id}.key")),
    )
}

/// What a client needs: the CA bundle and a token. `cluster init` writes
/// one with the admin token; the CLI reads it (`--profile`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub ca: PathBuf,
    pub token: String,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Self, InitError> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        toml::from_str(&text).map_err(|e| InitError::Invalid(format!("{}: {e}", path.display())))
    }
}

/// What `init` made.
#[derive(Clone, Debug)]
pub struct Initialized {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub tokens: PathBuf,
    pub profile: PathBuf,
    /// The admin token itself (the nodes only know its hash).
    pub admin_token: String,
}

fn ca_params(name: &str) -> Result<CertificateParams, InitError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Creates `dir` (0700) with a new CA, certificates for `nodes`, and the
/// admin token. `hosts` are extra names or IP addresses the API
/// certificates carry (what clients dial: `127.0.0.1`, a hostname).
/// Refuses a directory that already holds a CA.
pub fn init(dir: &Path, nodes: &[NodeId], hosts: &[String]) -> Result<Initialized, InitError> {
    if dir.join(CA_KEY).exists() {
        return Err(InitError::Invalid(format!(
            "{} already holds a CA; use another directory (or `synod cluster cert` to add a node)",
            dir.display()
        )));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(io(dir))?;
    let name = format!("Synod cluster CA {:08x}", rand::random::<u32>());
    let key = KeyPair::generate()?;
    let ca = ca_params(&name)?.self_signed(&key)?;
    write_private(&dir.join(CA_CERT), ca.pem().as_bytes())?;
    write_private(&dir.join(CA_KEY), key.serialize_pem().as_bytes())?;
    write_private(&dir.join(CA_NAME), name.as_bytes())?;
    for &id in nodes {
        issue_node_certificate(dir, id, hosts)?;
    }
    let admin_token = new_token();
    let tokens = TokensFile {
        token: vec![TokenEntry {
            name: "admin".into(),
            sha256: hash_token(&admin_token),
            role: Role::Admin,
            regions: None,
            expires_at: None,
        }],
    };
    write_tokens(dir, &tokens)?;
    let profile = Profile {
        ca: dir.join(CA_CERT),
        token: admin_token.clone(),
    };
    let profile_text = toml::to_string(&profile).map_err(|e| InitError::Invalid(e.to_string()))?;
    write_private(&dir.join(PROFILE), profile_text.as_bytes())?;
    Ok(Initialized {
        dir: dir.to_path_buf(),
        ca: dir.join(CA_CERT),
        tokens: dir.join(TOKENS),
        profile: dir.join(PROFILE),
        admin_token,
    })
}

fn write_tokens(dir: &Path, tokens: &TokensFile) -> Result<(), InitError> {
    let text = toml::to_string(tokens).map_err(|e| InitError::Invalid(e.to_string()))?;
    write_private(&dir.join(TOKENS), text.as_bytes())
}

/// Issues (or re-issues, for rotation) node `id`'s certificate with the
/// directory's CA.
pub fn issue_node_certificate(dir: &Path, id: NodeId, hosts: &[String]) -> Result<(), InitError> {
    let ca_key_path = dir.join(CA_KEY);
    let ca_key = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let name_path = dir.join(CA_NAME);
    let name = std::fs::read_to_string(&name_path).map_err(io(&name_path))?;
    let issuer = Issuer::new(ca_params(name.trim())?, KeyPair::from_pem(&ca_key)?);
    let mut params = CertificateParams::new(vec![node_name(id)])?;
    for host in hosts {
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.clone()
                    .try_into()
                    .map_err(|_| InitError::Invalid(format!("{host:?} is not a DNS name")))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    params
        .distinguished_name
        .push(DnType::CommonName, node_name(id));
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, &issuer)?;
    let (cert_path, key_path) = node_files(dir, id);
    write_private(&cert_path, certificate.pem().as_bytes())?;
    write_private(&key_path, key.serialize_pem().as_bytes())
}

/// Adds a token to the directory's tokens file and returns it. Nodes read
/// the file at start.
pub fn add_token(
    dir: &Path,
    name: &str,
    role: Role,
    regions: Option<Vec<String>>,
    expires_at: Option<u64>,
) -> Result<String, InitError> {
    let path = dir.join(TOKENS);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let mut tokens: TokensFile = toml::from_str(&text)
        .map_err(|e| InitError::Invalid(format!("{}: {e}", path.display())))?;
    if tokens.token.iter().any(|t| t.name == name) {
        return Err(InitError::Invalid(format!("a token named {name:?} exists")));
    }
    let token = new_token();
    tokens.token.push(TokenEntry {
        name: name.into(),
        sha256: hash_token(&token),
        role,
        regions,
        expires_at,
    });
    write_tokens(dir, &tokens)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn init_writes_private_files_and_certificates_that_name_their_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = dir.path().join("secrets");
        let made = init(&cluster, &[1, 2], &["127.0.0.1".into()]).expect("init");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&cluster), 0o700);
        for file in [CA_KEY, CA_CERT, TOKENS, PROFILE, "node-1.key", "node-2.pem"] {
            assert_eq!(mode(&cluster.join(file)), 0o600, "{file}");
        }
        let tokens = std::fs::read_to_string(&made.tokens).expect("tokens");
        assert!(
            !tokens.contains(&made.admin_token),
            "the raw token is not stored"
        );
        let (cert, _) = node_files(&cluster, 2);
        let chain = super::super::tls::read_certificates(&cert).expect("cert");
        assert!(super::super::tls::certificate_names_node(&chain[0], 2));
        assert!(!super::super::tls::certificate_names_node(&chain[0], 1));
        assert!(
            init(&cluster, &[1], &[]).is_err(),
            "a second init is refused"
        );
    }
}
