//! The REST API's HTTPS certificate, reloaded while the node runs.
//!
//! Certificates are renewed without restarting the node: [`HttpsCertificate::watch`] reloads
//! the files on SIGHUP and whenever their modification time changes (checked every few
//! seconds, which also catches a Kubernetes Secret update, a symlink swap). New handshakes use
//! the new certificate; a file that does not load leaves the current one in place, with an
//! error in the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::reload::{modified, ReloadTriggers};
use crate::{certificates, private_key, TlsError};

/// A certificate and key read from files, swapped for new ones when the files change.
pub struct HttpsCertificate {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times when last loaded.
    loaded: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl std::fmt::Debug for HttpsCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsCertificate")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certificates(cert)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private_key(key)?)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        TlsError::Invalid(format!(
            "{} is not the key of {}: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(Arc::new(certified))
}

impl HttpsCertificate {
    /// Loads the certificate chain and key.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let stamps = (modified(cert), modified(key));
        Ok(Arc::new(HttpsCertificate {
            current: RwLock::new(load(cert, key)?),
            cert: cert.to_owned(),
            key: key.to_owned(),
            loaded: Mutex::new(stamps),
        }))
    }

    /// A rustls server configuration serving this certificate (HTTP/2 and HTTP/1.1).
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Reads the files again and serves what they hold from the next handshake on.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = (modified(&self.cert), modified(&self.key));
        let fresh = load(&self.cert, &self.key)?;
        *self.current.write().expect("certificate lock") = fresh;
        *self.loaded.lock().expect("stamp lock") = stamps;
        Ok(())
    }

    /// Whether either file changed since it was last loaded.
    fn changed(&self) -> bool {
        let now = (modified(&self.cert), modified(&self.key));
        *self.loaded.lock().expect("stamp lock") != now
    }

    /// Reloads on SIGHUP and whenever the files change (looked at every `every`), until the
    /// returned task is aborted.
    pub fn watch(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut triggers = ReloadTriggers::new(every);
            loop {
                let asked = triggers.next().await;
                if !asked && !self.changed() {
                    continue;
                }
                match self.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %self.cert.display(), "HTTPS certificate reloaded")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reload the HTTPS certificate; keeping the current one")
                    }
                }
            }
        })
    }
}

impl ResolvesServerCert for HttpsCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{Authority, NodeRequest};
    use crate::Role;

    #[test]
    fn a_reload_serves_the_new_certificate_and_a_bad_file_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::create("t").unwrap();
        let (cert, key) = (dir.path().join("api.pem"), dir.path().join("api.key"));
        let first = ca.issue(&NodeRequest::new("one", Role::Edge)).unwrap();
        std::fs::write(&cert, &first.cert_pem).unwrap();
        std::fs::write(&key, &first.key_pem).unwrap();
        let https = HttpsCertificate::load(&cert, &key).unwrap();
        let served = |h: &HttpsCertificate| h.current.read().unwrap().cert[0].clone();
        let before = served(&https);

        let second = ca.issue(&NodeRequest::new("two", Role::Edge)).unwrap();
        std::fs::write(&cert, &second.cert_pem).unwrap();
        std::fs::write(&key, &second.key_pem).unwrap();
        https.reload().unwrap();
        let after = served(&https);
        assert_ne!(before, after);
        assert_eq!(after, crate::certificates(&cert).unwrap()[0]);

        // Half-written: a new certificate with the old key. The served one stays.
        let third = ca.issue(&NodeRequest::new("three", Role::Edge)).unwrap();
        std::fs::write(&cert, &third.cert_pem).unwrap();
        assert!(https.reload().is_err());
        assert_eq!(served(&https), after);
    }
}
