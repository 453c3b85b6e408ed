//! driftkv's TLS material.
//!
//! The cluster plane (gRPC between edges and central) runs mutual TLS under one cluster CA.
//! What a node may do is decided by its certificate, not by anything it says about itself:
//! every node certificate names the node's [`Role`] in a subject alternative name that no real
//! host can have (`central.driftkv.invalid`, `edge.driftkv.invalid`, `client.driftkv.invalid`).
//! An edge connects to central with that name as the TLS server name, so only a certificate the
//! CA issued for central is accepted, whatever address gossip gave; central reads the role of
//! each client from its certificate.
//!
//! [`issue`] creates the CA and issues node certificates (`driftkv certs`); [`ClusterIdentity`]
//! loads and checks a node's material at start-up, so a wrong file is a clear one-line error
//! rather than a handshake failure later; [`HttpsCertificate`] serves the REST API's
//! certificate and reloads it when its files change or on SIGHUP ([`reload`] says when).

mod https;
pub mod issue;
pub mod reload;

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier as _;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

pub use https::HttpsCertificate;

/// What a certificate lets its holder be in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The write region: the only node edges forward writes to and replicate from.
    Central,
    /// An edge: may write, read through and replicate.
    Edge,
    /// A tool (the load generator): may write and read, not replicate.
    Client,
}

impl Role {
    /// Every role, in the order they are tried when reading a certificate.
    pub const ALL: [Role; 3] = [Role::Central, Role::Edge, Role::Client];

    /// The subject alternative name (a DNS name under the reserved `.invalid` top-level
    /// domain, so it can never be a real host) that marks a certificate as this role's.
    pub fn identity(self) -> &'static str {
        match self {
            Role::Central => "central.driftkv.invalid",
            Role::Edge => "edge.driftkv.invalid",
            Role::Client => "client.driftkv.invalid",
        }
    }

    /// The role's name, as `driftkv certs issue --role` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Central => "central",
            Role::Edge => "edge",
            Role::Client => "client",
        }
    }

    /// The role a certificate was issued for, if any. The certificate's chain is not checked
    /// here: the TLS handshake has done that already for a peer's certificate.
    pub fn of(certificate: &CertificateDer<'_>) -> Option<Role> {
        let cert = webpki::EndEntityCert::try_from(certificate).ok()?;
        Role::ALL.into_iter().find(|role| {
            ServerName::try_from(role.identity())
                .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        })
    }
}

impl std::str::FromStr for Role {
    type Err = TlsError;

    fn from_str(name: &str) -> Result<Role, TlsError> {
        Role::ALL
            .into_iter()
            .find(|role| role.name() == name)
            .ok_or_else(|| TlsError::Invalid(format!("no role {name:?}: central, edge or client")))
    }
}

/// A failure to read or use TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    /// The material does not fit together, or does not fit its use.
    #[error("{0}")]
    Invalid(String),
    /// Certificate generation failed.
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the material.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The certificates of a PEM file, in order (a chain: the node's first).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            reason: format!("not PEM certificates: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            reason: "holds no certificate".into(),
        });
    }
    Ok(chain)
}

/// The private key of a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        reason: format!("no PEM private key: {e}"),
    })
}

/// A node's cluster-plane material: the CA its peers must chain to, and its own certificate
/// and key, as PEM (what tonic takes), checked to fit together.
#[derive(Clone)]
pub struct ClusterIdentity {
    /// The cluster CA certificate.
    pub ca_pem: Vec<u8>,
    /// This node's certificate chain.
    pub cert_pem: Vec<u8>,
    /// Its private key.
    pub key_pem: Vec<u8>,
    /// The role the certificate was issued for.
    pub role: Role,
}

impl std::fmt::Debug for ClusterIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterIdentity")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl ClusterIdentity {
    /// Loads the CA, certificate and key files and checks them: the key is the certificate's,
    /// the certificate was issued by the CA, is valid now, and is for `role`.
    pub fn load(ca: &Path, cert: &Path, key: &Path, role: Role) -> Result<Self, TlsError> {
        let roots = root_store(ca)?;
        let chain = certificates(cert)?;
        let private = private_key(key)?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&private)?;
        rustls::sign::CertifiedKey::new(chain.clone(), signing)
            .keys_match()
            .map_err(|e| {
                TlsError::Invalid(format!(
                    "{} is not the key of {}: {e}",
                    key.display(),
                    cert.display()
                ))
            })?;
        let found = Role::of(&chain[0]);
        if found != Some(role) {
            return Err(TlsError::Invalid(format!(
                "{} is {}, but this node runs as {}: issue it with `driftkv certs issue --role {}`",
                cert.display(),
                found.map_or_else(
                    || "not a driftkv node certificate".to_owned(),
                    |r| format!("a certificate for the {} role", r.name())
                ),
                role.name(),
                role.name()
            )));
        }
        check_issued_by(&roots, &chain, role).map_err(|e| {
            TlsError::Invalid(format!(
                "{} was not issued by the CA in {} (or is not valid now): {e}",
                cert.display(),
                ca.display()
            ))
        })?;
        Ok(ClusterIdentity {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            role,
        })
    }
}

/// A root store holding the CA certificates of `path`.
pub fn root_store(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certificates(path)? {
        roots.add(ca).map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// Checks a chain against the CA as its peers will: central's as a server certificate for the
/// central identity, the others' as client certificates.
fn check_issued_by(
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    role: Role,
) -> Result<(), rustls::Error> {
    let now = UnixTime::now();
    match role {
        Role::Central => {
            let verifier = rustls::client::WebPkiServerVerifier::builder(roots.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            let name = ServerName::try_from(Role::Central.identity())
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], now)?;
        }
        Role::Edge | Role::Client => {
            let verifier = WebPkiClientVerifier::builder(roots.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            verifier.verify_client_cert(&chain[0], &chain[1..], now)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use issue::{Authority, NodeRequest};

    fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn issued_certificates_carry_their_role_and_load_only_as_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::create("test cluster").unwrap();
        let ca_path = write(dir.path(), "ca.pem", &ca.cert_pem);
        for role in Role::ALL {
            let node = ca
                .issue(&NodeRequest::new(&format!("n-{}", role.name()), role))
                .unwrap();
            let cert = write(dir.path(), "n.pem", &node.cert_pem);
            let key = write(dir.path(), "n.key", &node.key_pem);
            let der = certificates(&cert).unwrap();
            assert_eq!(Role::of(&der[0]), Some(role));
            let identity = ClusterIdentity::load(&ca_path, &cert, &key, role).unwrap();
            assert_eq!(identity.role, role);
            for other in Role::ALL.into_iter().filter(|r| *r != role) {
                let error = ClusterIdentity::load(&ca_path, &cert, &key, other).unwrap_err();
                assert!(
                    error.to_string().contains("but this node runs as"),
                    "{error}"
                );
            }
        }
    }

    #[test]
    fn material_that_does_not_fit_together_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::create("ours").unwrap();
        let other = Authority::create("theirs").unwrap();
        let ca_path = write(dir.path(), "ca.pem", &ca.cert_pem);
        let foreign = other.issue(&NodeRequest::new("e", Role::Edge)).unwrap();
        let cert = write(dir.path(), "e.pem", &foreign.cert_pem);
        let key = write(dir.path(), "e.key", &foreign.key_pem);
        let error = ClusterIdentity::load(&ca_path, &cert, &key, Role::Edge).unwrap_err();
        assert!(
            error.to_string().contains("was not issued by the CA"),
            "{error}"
        );

        let ours = ca.issue(&NodeRequest::new("e", Role::Edge)).unwrap();
        let cert = write(dir.path(), "e.pem", &ours.cert_pem);
        // The key of another certificate.
        let error = ClusterIdentity::load(&ca_path, &cert, &key, Role::Edge).unwrap_err();
        assert!(error.to_string().contains("is not the key of"), "{error}");

        let missing = dir.path().join("missing.pem");
        let error = ClusterIdentity::load(&missing, &cert, &key, Role::Edge).unwrap_err();
        assert!(error.to_string().contains("missing.pem"), "{error}");
        let garbage = write(dir.path(), "garbage.pem", "not pem at all");
        assert!(certificates(&garbage).is_err());
    }
}
