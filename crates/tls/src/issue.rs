//! Creating the cluster CA and issuing node certificates (what `driftkv certs` does).
//!
//! Keys are ECDSA P-256. The CA is valid for ten years; node certificates for as long as asked
//! (a year by default). A node certificate names its role (see [`Role::identity`]), its node
//! name, and the hosts it may serve HTTPS as (by default also `localhost`, `127.0.0.1` and
//! `::1`, which container health checks use).

use std::io::Write as _;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::{Role, TlsError};

/// Days a CA stays valid.
const CA_DAYS: i64 = 3650;

/// A certificate and its private key, PEM-encoded.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (keep it secret: written 0600).
    pub key_pem: String,
}

/// A cluster CA.
pub struct Authority {
    /// The CA certificate (give it to every node).
    pub cert_pem: String,
    /// The CA's private key (keep it off the nodes).
    pub key_pem: String,
}

/// What to issue a node certificate for.
pub struct NodeRequest {
    /// The node's name (a DNS name; also in the certificate's subject).
    pub node: String,
    /// Its role.
    pub role: Role,
    /// Extra host names or IP addresses it may serve HTTPS as.
    pub hosts: Vec<String>,
    /// Include `localhost`, `127.0.0.1` and `::1`.
    pub loopback: bool,
    /// Days the certificate stays valid.
    pub days: u32,
}

impl NodeRequest {
    /// A request for `node` as `role`, with the loopback names, valid a year.
    pub fn new(node: &str, role: Role) -> Self {
        NodeRequest {
            node: node.to_owned(),
            role,
            hosts: Vec::new(),
            loopback: true,
            days: 365,
        }
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks that run behind the issuer's.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

impl Authority {
    /// A new CA named `name`.
    pub fn create(name: &str) -> Result<Authority, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, "driftkv");
        subject.push(DnType::CommonName, format!("driftkv cluster CA: {name}"));
        params.distinguished_name = subject;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_DAYS);
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA saved earlier.
    pub fn load(cert: &Path, key: &Path) -> Result<Authority, TlsError> {
        let text = |path: &Path| {
            String::from_utf8(crate::read(path)?).map_err(|_| TlsError::Pem {
                path: path.display().to_string(),
                reason: "is not PEM text".into(),
            })
        };
        Ok(Authority {
            cert_pem: text(cert)?,
            key_pem: text(key)?,
        })
    }

    /// Issues a node certificate.
    pub fn issue(&self, request: &NodeRequest) -> Result<Issued, TlsError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let mut names = vec![request.role.identity().to_owned(), request.node.clone()];
        if request.loopback {
            names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
        }
        names.extend(request.hosts.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        names.retain(|name| seen.insert(name.clone()));
        if let Some(reserved) = names[1..]
            .iter()
            .find(|n| Role::ALL.iter().any(|r| r.identity() == n.as_str()))
        {
            return Err(TlsError::Invalid(format!(
                "{reserved} names a role; give the role with --role"
            )));
        }
        let mut params = CertificateParams::new(names)?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, "driftkv");
        subject.push(
            DnType::CommonName,
            format!("{} ({})", request.node, request.role.name()),
        );
        params.distinguished_name = subject;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match request.role {
            // Central serves gRPC and HTTPS; an edge dials central and serves HTTPS.
            Role::Central | Role::Edge => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        validity(&mut params, i64::from(request.days));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes `contents` to a new file only its owner can read and write (0600). An existing file
/// is an error unless `overwrite`: key material is not replaced by accident.
pub fn write_private(path: &Path, contents: &[u8], overwrite: bool) -> Result<(), TlsError> {
    write_file(path, contents, 0o600, overwrite)
}

/// Writes a certificate: public, so readable by all (0644) — clients need the CA certificate
/// to trust the cluster's — but never replaced by accident either.
pub fn write_public(path: &Path, contents: &[u8], overwrite: bool) -> Result<(), TlsError> {
    write_file(path, contents, 0o644, overwrite)
}

fn write_file(path: &Path, contents: &[u8], mode: u32, overwrite: bool) -> Result<(), TlsError> {
    let failed = |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(failed)?;
    // An existing file keeps its mode when opened; set it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(failed)?;
    }
    file.write_all(contents).map_err(failed)?;
    file.sync_all().map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_name_cannot_be_smuggled_in_as_a_host() {
        let ca = Authority::create("t").unwrap();
        let mut request = NodeRequest::new("edge-1", Role::Edge);
        request.hosts = vec![Role::Central.identity().to_owned()];
        assert!(ca.issue(&request).is_err());
    }

    #[test]
    fn a_saved_authority_issues_certificates_that_chain_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::create("t").unwrap();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        write_private(&cert, ca.cert_pem.as_bytes(), false).unwrap();
        write_private(&key, ca.key_pem.as_bytes(), false).unwrap();
        let loaded = Authority::load(&cert, &key).unwrap();
        let node = loaded.issue(&NodeRequest::new("c", Role::Central)).unwrap();
        let (node_cert, node_key) = (dir.path().join("c.pem"), dir.path().join("c.key"));
        write_private(&node_cert, node.cert_pem.as_bytes(), false).unwrap();
        write_private(&node_key, node.key_pem.as_bytes(), false).unwrap();
        crate::ClusterIdentity::load(&cert, &node_cert, &node_key, Role::Central).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_owner_only_and_never_overwritten_by_accident() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        write_private(&path, b"one", false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(write_private(&path, b"two", false).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"three", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
