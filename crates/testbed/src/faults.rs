//! The fault switches of running nodes, as the experiments use them: the testbed admin
//! endpoint (`/admin/testbed/...`, served by nodes with `testbed.enabled`, guarded by
//! `testbed.admin_token`), with the typed bodies the nodes take.

use driftkv_core::faults::{ClockSkew, FaultSettings};
use serde::Serialize;

/// A fault the nodes did not take.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// The CA certificate given to trust is not one.
    #[error("the CA certificate is not a PEM certificate")]
    Certificate(#[source] reqwest::Error),
    /// The node did not answer.
    #[error("cannot reach {url}")]
    Unreachable {
        /// The node's endpoint.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The node answered with an error.
    #[error("{url} refused the fault (HTTP {status}): is testbed.enabled set there, with this admin token?")]
    Refused {
        /// The node's endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
    },
}

/// Sets faults on nodes through their admin endpoint.
pub struct FaultClient {
    http: reqwest::Client,
    token: String,
}

impl FaultClient {
    /// A client presenting the admin `token`, trusting `ca_pem` (PEM) besides the system's
    /// CAs for `https://` nodes.
    pub fn new(token: &str, ca_pem: Option<&[u8]>) -> Result<Self, FaultError> {
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = ca_pem {
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(pem).map_err(FaultError::Certificate)?,
            );
        }
        Ok(FaultClient {
            http: builder.build().map_err(FaultError::Certificate)?,
            token: token.to_owned(),
        })
    }

    /// Puts the replication `settings` in force at each of `edges` (the default settings clear
    /// them).
    pub async fn set(&self, edges: &[String], settings: &FaultSettings) -> Result<(), FaultError> {
        self.send(edges, reqwest::Method::PUT, "faults", settings)
            .await
    }

    /// Makes each of `edges` drop its replication stream and rebuild from a snapshot.
    pub async fn resync(&self, edges: &[String]) -> Result<(), FaultError> {
        self.send(
            edges,
            reqwest::Method::POST,
            "resync",
            &serde_json::json!({}),
        )
        .await
    }

    /// Skews the clock write versions are stamped from, through each of `nodes` (central's
    /// endpoint, or in `dev` an edge's); 0 restores it.
    pub async fn skew(&self, nodes: &[String], skew_ms: i64) -> Result<(), FaultError> {
        self.send(
            nodes,
            reqwest::Method::PUT,
            "clock-skew",
            &ClockSkew { skew_ms },
        )
        .await
    }

    async fn send(
        &self,
        nodes: &[String],
        method: reqwest::Method,
        path: &str,
        body: &impl Serialize,
    ) -> Result<(), FaultError> {
        for node in nodes {
            let url = format!("{}/admin/testbed/{path}", node.trim_end_matches('/'));
            let response = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token)
                .json(body)
                .send()
                .await
                .map_err(|source| FaultError::Unreachable {
                    url: url.clone(),
                    source,
                })?;
            if !response.status().is_success() {
                return Err(FaultError::Refused {
                    url,
                    status: response.status().as_u16(),
                });
            }
        }
        Ok(())
    }
}
