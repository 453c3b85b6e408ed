//! `driftkv-bench`: measures a running driftkv cluster (`driftkv dev --edges 3`, or separate
//! nodes) through its public interfaces only, and prints figures:
//!
//! 1. write acknowledgement latency, one write at a time: a PUT at an edge over HTTP (edge,
//!    gRPC hop, central's durable commit, local apply) and a Write straight to central's gRPC
//!    service;
//! 2. propagation delay: after each acknowledged PUT at the first edge, how long until every
//!    edge's replica holds it, watched through key listings (which read the replica, never the
//!    read cache);
//! 3. throughput with durable acknowledgements over distinct keys: many writers at once against
//!    central's gRPC service, and against the edge over HTTP.
//!
//! It finds the other edges and central's gRPC address in the first edge's `GET /cluster`, and
//! writes into a namespace of its own, so it can run against a cluster holding other data. Every
//! loop is bounded by a sample count or a duration.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use bytes::Bytes;
use clap::Parser;
use driftkv_core::cluster::{ClusterView, NodeRole};
use driftkv_proto::pb;
use driftkv_proto::pb::central_client::CentralClient;
use futures::future::try_join_all;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tonic::transport::Channel;

/// How often an edge's listing is polled while waiting for a write to arrive: the resolution of
/// the propagation figures.
const POLL: Duration = Duration::from_millis(1);

/// Longest a write may take to reach every edge before the run is declared broken.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(30);

/// gRPC connections the central throughput run spreads its writers over.
const CHANNELS: usize = 8;

#[derive(Parser)]
#[command(
    about = "Measures replication delay, write latency and durable write throughput of a running driftkv cluster"
)]
struct Args {
    /// HTTP address of the edge that takes the writes.
    #[arg(long, default_value = "http://127.0.0.1:8787")]
    edge: String,
    /// Account id the benchmark namespace is created in.
    #[arg(long, default_value = "bench")]
    account: String,
    /// Bearer token, when the edge requires one.
    #[arg(long, env = "DRIFTKV_API_TOKEN")]
    token: Option<String>,
    /// Writes timed one at a time, for each latency and the propagation figures.
    #[arg(long, default_value_t = 1000)]
    samples: u32,
    /// Seconds each throughput run lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Writes in flight at once in the throughput runs.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Size of every value written, in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Live edges to wait for in `/cluster` (gossip may take a moment to show a fresh cluster
    /// whole) before measuring; at least a live central is always waited for.
    #[arg(long, default_value_t = 1)]
    expect_edges: usize,
    /// The cluster CA (PEM): trusted for https:// edges, and the CA central's certificate must
    /// chain to when central runs mutual TLS.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (`driftkv certs issue --role client`) for central's mutual TLS.
    #[arg(long, requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<std::path::PathBuf>,
    /// Its private key.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

/// Longest the cluster may take to show a live central and the expected edges.
const TOPOLOGY_LIMIT: Duration = Duration::from_secs(30);

/// The cluster as the first edge's `/cluster` describes it.
struct Topology {
    /// HTTP addresses of the live edges, the writing edge first.
    edges: Vec<String>,
    /// Central's gRPC address.
    central: String,
}

/// What every measurement needs.
struct Bench {
    args: Args,
    http: reqwest::Client,
    topology: Topology,
    /// Hex id of the benchmark's namespace.
    namespace: String,
    value: Bytes,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &args.token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().context("token")?,
        );
    }
    let mut http = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(args.concurrency);
    if let Some(ca) = &args.tls_ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    let http = http.build()?;
    let topology = wait_for_topology(&http, &args.edge, args.expect_edges).await?;
    let value = Bytes::from(vec![b'v'; args.value_bytes]);
    let mut bench = Bench {
        args,
        http,
        topology,
        namespace: String::new(),
        value,
    };
    bench.namespace = bench.create_namespace().await?;
    println!(
        "cluster: {} edges, central at {}; {}-byte values",
        bench.topology.edges.len(),
        bench.topology.central,
        bench.value.len()
    );

    println!();
    println!(
        "== write acknowledgement latency, one write at a time, {} writes ==",
        bench.args.samples
    );
    let edge_latency = bench.edge_write_latency().await?;
    let central_latency = bench.central_write_latency().await?;
    print_table(&[
        ("PUT at an edge (HTTP)", &edge_latency),
        ("Write at central (gRPC)", &central_latency),
    ]);

    println!();
    println!(
        "== propagation: acknowledged at edge 0 until listed at each edge, {} writes, polled every {} ms ==",
        bench.args.samples,
        POLL.as_millis()
    );
    let (per_edge, all) = bench.propagation().await?;
    let mut rows: Vec<(String, &Histogram<u64>)> = per_edge
        .iter()
        .enumerate()
        .map(|(i, h)| (format!("edge {i}"), h))
        .collect();
    rows.push(("all edges".into(), &all));
    print_table(
        &rows
            .iter()
            .map(|(name, h)| (name.as_str(), *h))
            .collect::<Vec<_>>(),
    );

    println!();
    println!(
        "== durable write throughput over distinct keys, {} in flight, {} s each ==",
        bench.args.concurrency, bench.args.seconds
    );
    let central_rate = bench.central_throughput().await?;
    let edge_rate = bench.edge_throughput().await?;
    println!("{:<28} {:>12}", "", "writes/s");
    println!("{:<28} {:>12.0}", "Write at central (gRPC)", central_rate);
    println!("{:<28} {:>12.0}", "PUT at an edge (HTTP)", edge_rate);
    Ok(())
}

/// Polls `edge`'s `/cluster` until it shows a live central and at least `edges` live edges.
async fn wait_for_topology(
    http: &reqwest::Client,
    edge: &str,
    edges: usize,
) -> anyhow::Result<Topology> {
    let deadline = Instant::now() + TOPOLOGY_LIMIT;
    loop {
        match topology(http, edge).await {
            Ok(found) if found.edges.len() >= edges => return Ok(found),
            Ok(found) if Instant::now() >= deadline => bail!(
                "{edge}/cluster shows {} live edges, expected {edges}",
                found.edges.len()
            ),
            Err(e) if Instant::now() >= deadline => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Reads the live edges and central's gRPC address from `edge`'s `/cluster`.
async fn topology(http: &reqwest::Client, edge: &str) -> anyhow::Result<Topology> {
    let view: ClusterView = http
        .get(format!("{edge}/cluster"))
        .send()
        .await
        .with_context(|| format!("cannot reach {edge}"))?
        .error_for_status()?
        .json()
        .await?;
    let central = view
        .live(NodeRole::Central)
        .find_map(|m| m.grpc.clone())
        .context("/cluster shows no live central")?;
    let mut edges = vec![edge.trim_end_matches('/').to_owned()];
    edges.extend(
        view.live(NodeRole::Edge)
            .filter_map(|m| m.http.clone())
            .filter(|http| *http != edges[0])
            .collect::<Vec<_>>(),
    );
    Ok(Topology { edges, central })
}

impl Bench {
    fn api(&self, edge: &str) -> String {
        format!(
            "{edge}/client/v4/accounts/{}/storage/kv/namespaces",
            self.args.account
        )
    }

    fn value_url(&self, edge: &str, key: &str) -> String {
        format!("{}/{}/values/{key}", self.api(edge), self.namespace)
    }

    /// Creates the benchmark's namespace at the first edge and waits until every edge has it.
    async fn create_namespace(&self) -> anyhow::Result<String> {
        let title = format!("bench-{}", now_nanos());
        let body: Value = self
            .http
            .post(self.api(&self.topology.edges[0]))
            .json(&json!({ "title": title }))
            .send()
            .await?
            .json()
            .await?;
        let id = body["result"]["id"]
            .as_str()
            .with_context(|| format!("cannot create a namespace: {body}"))?
            .to_owned();
        for edge in &self.topology.edges {
            let url = format!("{}/{id}", self.api(edge));
            let started = Instant::now();
            while self.http.get(&url).send().await?.status() != 200 {
                ensure!(
                    started.elapsed() < PROPAGATION_LIMIT,
                    "the namespace never reached {edge}"
                );
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(id)
    }

    /// One PUT at `edge`, failing on anything but success.
    async fn put(&self, edge: &str, key: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .put(self.value_url(edge, key))
            .body(self.value.clone())
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "PUT {key}: HTTP {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    async fn central_client(&self) -> anyhow::Result<CentralClient<Channel>> {
        let mut endpoint = Channel::from_shared(self.topology.central.clone())?;
        if let (Some(ca), Some(cert), Some(key)) =
            (&self.args.tls_ca, &self.args.tls_cert, &self.args.tls_key)
        {
            let identity =
                driftkv_tls::ClusterIdentity::load(ca, cert, key, driftkv_tls::Role::Client)?;
            endpoint = endpoint.tls_config(driftkv_proto::tls::client_config(&identity))?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to central at {}", self.topology.central))?;
        Ok(CentralClient::new(channel)
            .max_decoding_message_size(driftkv_proto::MAX_REPLY_BYTES)
            .max_encoding_message_size(driftkv_proto::MAX_REQUEST_BYTES))
    }

    /// One single-put Write straight to central, failing unless central applied it.
    async fn central_put(
        &self,
        client: &mut CentralClient<Channel>,
        key: String,
    ) -> anyhow::Result<()> {
        let reply = client
            .write(pb::WriteRequest {
                account_id: self.args.account.clone(),
                namespace_id: hex::decode(&self.namespace)?,
                writes: vec![pb::Write {
                    key,
                    put: Some(pb::LiveValue {
                        value: self.value.clone(),
                        metadata: None,
                        expiration: None,
                    }),
                }],
            })
            .await
            .context("central refused a write")?
            .into_inner();
        ensure!(
            reply.results.first().is_some_and(|r| r.applied),
            "central did not apply a write (rate limited?)"
        );
        Ok(())
    }

    async fn edge_write_latency(&self) -> anyhow::Result<Histogram<u64>> {
        let mut latency = histogram();
        for i in 0..self.args.samples {
            let started = Instant::now();
            self.put(&self.topology.edges[0], &format!("l{i:08}"))
                .await?;
            record(&mut latency, started.elapsed());
        }
        Ok(latency)
    }

    async fn central_write_latency(&self) -> anyhow::Result<Histogram<u64>> {
        let mut client = self.central_client().await?;
        let mut latency = histogram();
        for i in 0..self.args.samples {
            let started = Instant::now();
            self.central_put(&mut client, format!("g{i:08}")).await?;
            record(&mut latency, started.elapsed());
        }
        Ok(latency)
    }

    /// Per edge and for all edges together, the time from a PUT's acknowledgement at the first
    /// edge until the edge's listing shows the key.
    async fn propagation(&self) -> anyhow::Result<(Vec<Histogram<u64>>, Histogram<u64>)> {
        let mut per_edge: Vec<Histogram<u64>> =
            self.topology.edges.iter().map(|_| histogram()).collect();
        let mut all = histogram();
        for i in 0..self.args.samples {
            let key = format!("p{i:08}");
            self.put(&self.topology.edges[0], &key).await?;
            let acked = Instant::now();
            let arrivals = try_join_all(
                self.topology
                    .edges
                    .iter()
                    .map(|edge| self.wait_listed(edge, &key, acked)),
            )
            .await?;
            for (h, arrival) in per_edge.iter_mut().zip(&arrivals) {
                record(h, *arrival);
            }
            record(&mut all, arrivals.into_iter().max().unwrap_or_default());
        }
        Ok((per_edge, all))
    }

    /// Polls `edge`'s listing until it shows `key`; returns how long after `since` it did.
    async fn wait_listed(&self, edge: &str, key: &str, since: Instant) -> anyhow::Result<Duration> {
        let url = format!("{}/{}/keys", self.api(edge), self.namespace);
        loop {
            let body: Value = self
                .http
                .get(&url)
                .query(&[("prefix", key), ("limit", "10")])
                .send()
                .await?
                .json()
                .await?;
            if body["result"]
                .as_array()
                .is_some_and(|keys| !keys.is_empty())
            {
                return Ok(since.elapsed());
            }
            ensure!(
                since.elapsed() < PROPAGATION_LIMIT,
                "{key} did not reach {edge} within {PROPAGATION_LIMIT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Writes per second with `concurrency` single-put Writes in flight at central.
    async fn central_throughput(&self) -> anyhow::Result<f64> {
        let mut clients = Vec::with_capacity(CHANNELS);
        for _ in 0..CHANNELS {
            clients.push(self.central_client().await?);
        }
        let deadline = Instant::now() + Duration::from_secs(self.args.seconds);
        let started = Instant::now();
        let counts = try_join_all((0..self.args.concurrency).map(|writer| {
            let mut client = clients[writer % CHANNELS].clone();
            async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    self.central_put(&mut client, format!("c{writer:04}-{n:010}"))
                        .await?;
                    n += 1;
                }
                anyhow::Ok(n)
            }
        }))
        .await?;
        Ok(counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64())
    }

    /// Writes per second with `concurrency` PUTs in flight at the first edge.
    async fn edge_throughput(&self) -> anyhow::Result<f64> {
        let deadline = Instant::now() + Duration::from_secs(self.args.seconds);
        let started = Instant::now();
        let counts = try_join_all((0..self.args.concurrency).map(|writer| async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                self.put(&self.topology.edges[0], &format!("h{writer:04}-{n:010}"))
                    .await?;
                n += 1;
            }
            anyhow::Ok(n)
        }))
        .await?;
        Ok(counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64())
    }
}

/// A histogram of microseconds, from 1 µs to 10 minutes, to three significant figures.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, elapsed: Duration) {
    h.saturating_record(elapsed.as_micros().max(1) as u64);
}

fn print_table(rows: &[(&str, &Histogram<u64>)]) {
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10}",
        "", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let ms = |us: u64| us as f64 / 1000.0;
    for (name, h) in rows {
        println!(
            "{:<28} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            name,
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max())
        );
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}
