//! A driftkv node as a library.
//!
//! [`CentralNode::start`] and [`EdgeNode::start`] assemble a node from its [`Config`], its data
//! directory and its listeners, and run it until the [`Shutdown`] they are given fires; the
//! `driftkv` binary is argument parsing around them, and [`run_dev`], [`run_central`] and
//! [`run_edge`] are what its `dev`, `central` and `edge` commands call (they print the lines
//! scripts wait for on standard output and stop on SIGINT or SIGTERM).
//!
//! Besides the node's services, a node serves what operators read (`/readyz`, `/cluster`,
//! `/metrics` gauges, see [`ops`] and [`membership`]), the testbed's fault switches and the
//! console's consistency experiments when `testbed.enabled` is set ([`admin`],
//! [`experiments`]), and, on edges, the workerd KV binding ([`binding`]). Start-up refuses any
//! listener beyond loopback that is not authenticated and encrypted ([`security`]); API tokens
//! come from the configuration and a token file that is reloaded while the node runs
//! ([`tokens`]).

pub mod admin;
pub mod binding;
pub mod config;
pub mod experiments;
pub mod membership;
mod node;
pub mod ops;
mod run;
pub mod security;
pub mod tokens;

pub use config::{Config, Overrides};
pub use node::{
    announce, listen, private_dir, require_tokens_beyond_loopback, shutdown, signal, CentralNode,
    EdgeNode, EdgeSite, GossipPlace, Process, Shutdown, ShutdownTrigger,
};
pub use run::{run_central, run_dev, run_edge};
