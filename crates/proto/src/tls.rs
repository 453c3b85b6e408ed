//! Mutual TLS on the gRPC link: central's server configuration, the configuration its
//! clients dial with, and who a caller is.
//!
//! Clients verify central's certificate against the cluster CA *and* the central role name
//! ([`Role::identity`]), whatever address they dial: an address learned from gossip cannot
//! lead an edge to anything but a node the CA made central. Central requires a client
//! certificate from the same CA and reads the caller's role from it.

use driftkv_core::KvError;
use driftkv_tls::{ClusterIdentity, Role};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use crate::status_from_error;

/// Central's TLS: its certificate, and client certificates required from the cluster CA.
pub fn server_config(identity: &ClusterIdentity) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
        .client_ca_root(Certificate::from_pem(&identity.ca_pem))
}

/// A client's TLS towards central: its own certificate, and central's checked against the
/// cluster CA and the central role name.
pub fn client_config(identity: &ClusterIdentity) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&identity.ca_pem))
        .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
        .domain_name(Role::Central.identity())
}

/// What a call does, for deciding who may make it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Writes, namespace changes, reads: edges and tools.
    Use,
    /// Following the log and taking snapshots (every key of every account): edges only.
    Replicate,
}

/// The role the caller's certificate gives it, on a TLS connection.
pub fn caller_role<T>(request: &Request<T>) -> Option<Role> {
    request.peer_certs()?.first().and_then(Role::of)
}

/// Whether a caller of role `role` may make a call of kind `access`.
pub fn allowed(role: Option<Role>, access: Access) -> Result<(), Status> {
    match (role, access) {
        (Some(Role::Edge), _) | (Some(Role::Client), Access::Use) => Ok(()),
        (role, access) => {
            let who = role.map_or("a caller without a driftkv node certificate", |r| match r {
                Role::Central => "a central certificate",
                Role::Edge => "an edge certificate",
                Role::Client => "a client certificate",
            });
            let what = match access {
                Access::Use => "use central",
                Access::Replicate => "replicate (only edges may)",
            };
            Err(status_from_error(&KvError::Forbidden(format!(
                "{who} may not {what}"
            ))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_edges_replicate_and_central_certificates_call_nothing() {
        assert!(allowed(Some(Role::Edge), Access::Replicate).is_ok());
        assert!(allowed(Some(Role::Edge), Access::Use).is_ok());
        assert!(allowed(Some(Role::Client), Access::Use).is_ok());
        let refused = allowed(Some(Role::Client), Access::Replicate).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(allowed(Some(Role::Central), Access::Use).is_err());
        assert!(allowed(None, Access::Use).is_err());
    }
}
