//! The cluster plane under attack, with real processes on loopback: mutual TLS on gRPC (only a
//! certificate of the cluster CA, of the right role, gets in; only central's certificate makes
//! a node central), sealed gossip (forged members stay out), no takeover by a node that merely
//! claims to be central, HTTPS for the REST API and the CLI, nodes that refuse to listen in the
//! open, and a central that stops promptly with edges subscribed.
//!
//! The TLS material comes from `driftkv certs`, as a user would make it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{wait_for, Server, ACCOUNT};
use driftkv_proto::pb;
use driftkv_proto::pb::central_client::CentralClient;
use driftkv_tls::Role;
use serde_json::{json, Value};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Runs `driftkv ARGS`, asserting success; returns stdout.
fn driftkv(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_driftkv"))
        .args(args)
        .output()
        .expect("driftkv runs");
    assert!(
        output.status.success(),
        "driftkv {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A cluster CA and gossip key made by `driftkv certs init`, and certificates from it.
struct Secrets {
    dir: tempfile::TempDir,
}

impl Secrets {
    fn init() -> Secrets {
        let dir = tempfile::tempdir().unwrap();
        driftkv(&["certs", "init", "--dir", dir.path().to_str().unwrap()]);
        Secrets { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues `node`'s certificate for `role`; returns (cert, key).
    fn issue(&self, node: &str, role: &str) -> (PathBuf, PathBuf) {
        driftkv(&[
            "certs",
            "issue",
            "--dir",
            self.dir.path().to_str().unwrap(),
            "--node",
            node,
            "--role",
            role,
        ]);
        (
            self.path(&format!("{node}.pem")),
            self.path(&format!("{node}.key")),
        )
    }

    /// The environment of a node running with this cluster's TLS and gossip key as `node`.
    fn node_env(&self, node: &str, role: &str) -> Vec<(String, String)> {
        let (cert, key) = self.issue(node, role);
        let text = |p: &Path| p.display().to_string();
        vec![
            ("DRIFTKV_TLS__CA".into(), text(&self.path("ca.pem"))),
            ("DRIFTKV_TLS__CERT".into(), text(&cert)),
            ("DRIFTKV_TLS__KEY".into(), text(&key)),
            (
                "DRIFTKV_GOSSIP__KEYS_FILE".into(),
                text(&self.path("gossip.key")),
            ),
        ]
    }
}

fn as_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn free_udp() -> String {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

/// `driftkv central` on loopback with `env`; returns it and its gossip address.
fn start_central(dir: &Path, env: &[(String, String)]) -> (Server, String) {
    let gossip = free_udp();
    let mut all = vec![
        ("DRIFTKV_GRPC__LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("DRIFTKV_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("DRIFTKV_GOSSIP__LISTEN".to_owned(), gossip.clone()),
        ("DRIFTKV_GOSSIP__INTERVAL_MS".to_owned(), "100".to_owned()),
        (
            "DRIFTKV_REPLICATION__HEARTBEAT_MS".to_owned(),
            "100".to_owned(),
        ),
    ];
    all.extend_from_slice(env);
    let args = ["central", "--data-dir", dir.to_str().unwrap()].map(String::from);
    let server = Server::launch(&args, dir, &as_refs(&all), "driftkv central listening on ")
        .expect("central starts");
    (server, gossip)
}

/// `driftkv edge` on loopback, node `id`, seeded with `seed`, following central at `address`
/// (empty: found through gossip).
fn start_edge(dir: &Path, id: u64, seed: &str, address: &str, env: &[(String, String)]) -> Server {
    let mut all = vec![
        ("DRIFTKV_NODE_ID".to_owned(), id.to_string()),
        ("DRIFTKV_CENTRAL__ADDRESS".to_owned(), address.to_owned()),
        (
            "DRIFTKV_GOSSIP__LISTEN".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
        ("DRIFTKV_GOSSIP__SEEDS".to_owned(), format!("[\"{seed}\"]")),
        ("DRIFTKV_GOSSIP__INTERVAL_MS".to_owned(), "100".to_owned()),
        (
            "DRIFTKV_CENTRAL__CONNECT_TIMEOUT_MS".to_owned(),
            "500".to_owned(),
        ),
    ];
    all.extend_from_slice(env);
    let args = [
        "edge",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
    ]
    .map(String::from);
    Server::launch(&args, dir, &as_refs(&all), "driftkv edge listening on ").expect("edge starts")
}

/// A gRPC client for central at `address` (`https://host:port`), trusting `ca` for central's
/// certificate and checking it is central's, presenting `identity` when given.
async fn dial(
    address: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<CentralClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name(Role::Central.identity());
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    let channel = Endpoint::from_shared(address.to_owned())?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(CentralClient::new(channel))
}

/// Whether a client can create a namespace, follow the log and take a snapshot: the three
/// kinds of call central guards.
async fn what_it_may_do(client: &mut CentralClient<Channel>) -> (bool, bool, bool) {
    let created = client
        .create_namespace(pb::CreateNamespaceRequest {
            account_id: ACCOUNT.into(),
            title: format!("probe-{}", rand_suffix()),
        })
        .await
        .is_ok();
    let subscribed = match client
        .subscribe(pb::SubscribeRequest {
            from_sequence: 1,
            node_id: "probe".into(),
            ..Default::default()
        })
        .await
    {
        Ok(stream) => stream.into_inner().message().await.is_ok(),
        Err(_) => false,
    };
    let snapshot = match client
        .snapshot(pb::SnapshotRequest {
            node_id: "probe".into(),
        })
        .await
    {
        Ok(stream) => stream.into_inner().message().await.is_ok(),
        Err(_) => false,
    };
    (created, subscribed, snapshot)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test(flavor = "multi_thread")]
async fn central_takes_calls_only_from_certificates_of_its_cluster_and_the_right_role() {
    let secrets = Secrets::init();
    let dir = tempfile::tempdir().unwrap();
    let (central, _) = start_central(dir.path(), &secrets.node_env("central", "central"));
    let address = central.base.clone();
    assert!(address.starts_with("https://"), "{address}");
    let ca = secrets.path("ca.pem");

    let (edge_cert, edge_key) = secrets.issue("edge-1", "edge");
    let mut as_edge = dial(&address, &ca, Some((&edge_cert, &edge_key)))
        .await
        .unwrap();
    assert_eq!(what_it_may_do(&mut as_edge).await, (true, true, true));

    let (tool_cert, tool_key) = secrets.issue("bench", "client");
    let mut tool = dial(&address, &ca, Some((&tool_cert, &tool_key)))
        .await
        .unwrap();
    assert_eq!(
        what_it_may_do(&mut tool).await,
        (true, false, false),
        "a tool writes but does not replicate"
    );

    // Central's own certificate, used to dial in: not a caller's role.
    let (central_cert, central_key) = (secrets.path("central.pem"), secrets.path("central.key"));
    let mut posing = dial(&address, &ca, Some((&central_cert, &central_key)))
        .await
        .unwrap();
    assert_eq!(what_it_may_do(&mut posing).await, (false, false, false));

    // No certificate, or one from another CA: refused at the handshake (or at the first call,
    // as TLS 1.3 reports a refused client certificate after the handshake).
    let refused = |client: Result<CentralClient<Channel>, _>| async move {
        match client {
            Err(_) => true,
            Ok(mut client) => what_it_may_do(&mut client).await == (false, false, false),
        }
    };
    assert!(
        refused(dial(&address, &ca, None).await).await,
        "no certificate"
    );
    let others = Secrets::init();
    let (foreign_cert, foreign_key) = others.issue("edge-9", "edge");
    assert!(
        refused(dial(&address, &ca, Some((&foreign_cert, &foreign_key))).await).await,
        "a certificate of another CA"
    );

    // A node showing an edge certificate where central should be: an edge's HTTPS port, which
    // presents one. A client checking for central refuses it at the handshake.
    let edge_dir = tempfile::tempdir().unwrap();
    let (cert, key) = secrets.issue("edge-2", "edge");
    let mut env = secrets.node_env("edge-3", "edge");
    env.push(("DRIFTKV_HTTPS__CERT".into(), cert.display().to_string()));
    env.push(("DRIFTKV_HTTPS__KEY".into(), key.display().to_string()));
    let impostor = start_edge(edge_dir.path(), 3, &free_udp(), &address, &env);
    let posing_as_central = impostor.base.clone();
    assert!(posing_as_central.starts_with("https://"));
    let dialled = dial(&posing_as_central, &ca, Some((&edge_cert, &edge_key))).await;
    assert!(dialled.is_err(), "an edge certificate passed for central's");
}

/// The gossip address of member `node_id` in `view`.
fn member<'a>(view: &'a Value, node_id: &str) -> Option<&'a Value> {
    view["members"]
        .as_array()?
        .iter()
        .find(|m| m["node_id"] == node_id)
}

async fn view(http: &reqwest::Client, base: &str) -> Value {
    common::cluster_view(http, base).await
}

/// Forged gossip members (another key) never show in `/cluster`; a member with the key does.
/// A node that has the key but not a certificate the CA issued for central, and claims to be
/// central under central's own node id (what took an edge over before), is shown by gossip
/// but never followed: the edge keeps writing through the real central and keeps its data.
#[tokio::test(flavor = "multi_thread")]
async fn an_edge_follows_only_a_central_its_ca_vouches_for() {
    let secrets = Secrets::init();
    let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let (central, central_gossip) =
        start_central(dirs[0].path(), &secrets.node_env("central", "central"));
    let mut edge_env = secrets.node_env("edge-2", "edge");
    edge_env.push(("DRIFTKV_CENTRAL__REQUEST_TIMEOUT_MS".into(), "1000".into()));
    // It learns central's address from gossip only, as in the compose and k8s set-ups.
    let edge = start_edge(dirs[1].path(), 2, &central_gossip, "", &edge_env);
    let http = common::client();
    let ns = wait_for(Duration::from_secs(30), "the edge to take writes", || {
        let request = http.post(edge.api()).json(&json!({ "title": "precious" }));
        async move {
            let body: Value = request.send().await.ok()?.json().await.ok()?;
            body["result"]["id"].as_str().map(str::to_owned)
        }
    })
    .await;
    let value = format!("{}/{ns}/values/kept", edge.api());
    common::send_ok(http.put(&value).body("before")).await;
    let edge_gossip = member(&view(&http, &edge.base).await, "2").unwrap()["gossip"]
        .as_str()
        .unwrap()
        .to_owned();

    // A node with another cluster's key (and CA) posing as central, seeded at the edge.
    let strangers = Secrets::init();
    let mut forged_env = strangers.node_env("central", "central");
    forged_env.push((
        "DRIFTKV_GOSSIP__SEEDS".into(),
        format!("[\"{edge_gossip}\"]"),
    ));
    let (_forged, forged_gossip) = start_central(dirs[2].path(), &forged_env);
    // A legitimate edge joins after it: once the edge sees the newcomer, the forger has been
    // gossiping at it for longer.
    let newcomer = start_edge(
        dirs[3].path(),
        3,
        &central_gossip,
        "",
        &secrets.node_env("edge-3", "edge"),
    );
    wait_for(
        Duration::from_secs(30),
        "the keyed newcomer in /cluster",
        || {
            let http = http.clone();
            let base = edge.base.clone();
            async move {
                let view = view(&http, &base).await;
                (member(&view, "3")?["status"] == "live").then_some(())
            }
        },
    )
    .await;
    let seen = view(&http, &edge.base).await;
    assert!(
        !seen.to_string().contains(&forged_gossip),
        "a member without the key got in: {seen}"
    );
    assert_eq!(member(&seen, "1").unwrap()["grpc"], central.base.as_str());

    // The gossip key but a central certificate of another CA, under central's node id.
    let mut rogue_env = strangers.node_env("rogue", "central");
    rogue_env.retain(|(k, _)| k != "DRIFTKV_GOSSIP__KEYS_FILE");
    rogue_env.push((
        "DRIFTKV_GOSSIP__KEYS_FILE".into(),
        secrets.path("gossip.key").display().to_string(),
    ));
    rogue_env.push((
        "DRIFTKV_GOSSIP__SEEDS".into(),
        format!("[\"{edge_gossip}\"]"),
    ));
    let (rogue, _) = start_central(dirs[4].path(), &rogue_env);
    wait_for(
        Duration::from_secs(30),
        "gossip to carry the rogue's claim",
        || {
            let http = http.clone();
            let base = edge.base.clone();
            let rogue = rogue.base.clone();
            async move {
                let view = view(&http, &base).await;
                (member(&view, "1")?["grpc"] == rogue.as_str()).then_some(())
            }
        },
    )
    .await;
    // Several gossip rounds (100 ms each) with the claim in force: every write still goes to
    // the real central, and nothing the edge held is gone.
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(3) {
        common::send_ok(
            http.put(format!("{}/{ns}/values/after-{n}", edge.api()))
                .body("x"),
        )
        .await;
        n += 1;
    }
    assert_eq!(common::fetch_bytes(http.get(&value)).await, "before");
    // More than a page of keys when writes are quick: every page is read.
    let listed = common::list_all_keys(&http, &format!("{}/{ns}", edge.api())).await;
    assert_eq!(listed.len(), n + 1);
    drop(newcomer);
}

/// The CLI and the REST API over HTTPS with a certificate from `driftkv certs`: trusted with
/// `--ca-cert`, refused without it.
#[test]
fn the_cli_speaks_https_to_a_node_with_a_cluster_certificate() {
    let secrets = Secrets::init();
    let (cert, key) = secrets.issue("dev", "edge");
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("DRIFTKV_HTTPS__CERT", cert.to_str().unwrap()),
        ("DRIFTKV_HTTPS__KEY", key.to_str().unwrap()),
    ];
    let server = Server::start_in(dir.path(), &env).expect("dev starts with HTTPS");
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );
    let home = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_driftkv"))
            .args([
                "kv",
                "namespace",
                "create",
                "over-tls",
                "--json",
                "--retry-secs",
                "0",
            ])
            .args(extra)
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env("DRIFTKV_URL", &server.base)
            .output()
            .unwrap()
    };
    let untrusted = run(&[]);
    assert!(!untrusted.status.success());
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
    let trusted = run(&["--ca-cert", secrets.path("ca.pem").to_str().unwrap()]);
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let created: Value = serde_json::from_slice(&trusted.stdout).unwrap();
    assert_eq!(created["title"], "over-tls");
}

/// A client for `https://{name}:{port}` that reaches `addr` and trusts `ca`.
fn client_for(name: &str, addr: std::net::SocketAddr, ca: &Path) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .resolve(name, addr)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The HTTPS certificate is replaced without a restart: on SIGHUP, and when its files change.
#[tokio::test(flavor = "multi_thread")]
async fn the_https_certificate_is_reloaded_on_sighup_and_on_change() {
    let secrets = Secrets::init();
    let issue = |node: &str| {
        driftkv(&[
            "certs",
            "issue",
            "--dir",
            secrets.dir.path().to_str().unwrap(),
            "--node",
            node,
            "--role",
            "edge",
            "--no-loopback",
        ]);
        (
            secrets.path(&format!("{node}.pem")),
            secrets.path(&format!("{node}.key")),
        )
    };
    let (first_cert, first_key) = issue("first.test");
    let served = tempfile::tempdir().unwrap();
    let (cert, key) = (served.path().join("api.pem"), served.path().join("api.key"));
    std::fs::copy(&first_cert, &cert).unwrap();
    std::fs::copy(&first_key, &key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("DRIFTKV_HTTPS__CERT", cert.to_str().unwrap()),
        ("DRIFTKV_HTTPS__KEY", key.to_str().unwrap()),
    ];
    let server = Server::start_in(dir.path(), &env).expect("dev starts");
    let addr: std::net::SocketAddr = server.addr().parse().unwrap();
    let ca = secrets.path("ca.pem");
    let answers = |name: &'static str| {
        let client = client_for(name, addr, &ca);
        async move {
            client
                .get(format!("https://{name}:{}/healthz", addr.port()))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    };
    assert!(answers("first.test").await);
    assert!(!answers("second.test").await);

    let (second_cert, second_key) = issue("second.test");
    std::fs::copy(&second_cert, &cert).unwrap();
    std::fs::copy(&second_key, &key).unwrap();
    let pid = server_pid(&server);
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_for(
        Duration::from_secs(10),
        "the reloaded certificate",
        || async { answers("second.test").await.then_some(()) },
    )
    .await;
    assert!(!answers("first.test").await);

    // No signal this time: the changed files are noticed.
    let (third_cert, third_key) = issue("third.test");
    std::fs::copy(&third_cert, &cert).unwrap();
    std::fs::copy(&third_key, &key).unwrap();
    wait_for(
        Duration::from_secs(20),
        "the changed files to be served",
        || async { answers("third.test").await.then_some(()) },
    )
    .await;
    server.stop();
}

fn server_pid(server: &Server) -> String {
    server.pid().to_string()
}

/// SIGTERM ends central's replication streams, so it exits promptly with edges subscribed.
#[tokio::test(flavor = "multi_thread")]
async fn central_exits_within_seconds_of_sigterm_with_edges_subscribed() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (central, gossip) = start_central(dirs[0].path(), &[]);
    let edges: Vec<Server> = (1..3)
        .map(|i| start_edge(dirs[i].path(), 1 + i as u64, &gossip, &central.base, &[]))
        .collect();
    let http = common::client();
    for edge in &edges {
        wait_for(Duration::from_secs(30), "the edge to subscribe", || {
            let request = http.get(format!("{}/readyz", edge.base));
            async move {
                let body: Value = request.send().await.ok()?.json().await.ok()?;
                (body["central_connected"] == true).then_some(())
            }
        })
        .await;
    }
    let started = Instant::now();
    central.stop();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "central took {took:?} to exit"
    );
}

/// Listening beyond loopback without authentication and encryption is refused at start-up,
/// with one line saying what to set.
#[test]
fn nodes_refuse_to_listen_in_the_open() {
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 4] = [
        (
            "central",
            vec![("DRIFTKV_GRPC__LISTEN", "0.0.0.0:0")],
            "tls.ca, tls.cert and tls.key",
        ),
        (
            "central",
            vec![("DRIFTKV_GOSSIP__LISTEN", "0.0.0.0:0")],
            "gossip.keys_file",
        ),
        (
            "edge",
            vec![
                ("DRIFTKV_LISTEN", "0.0.0.0:0"),
                (
                    "DRIFTKV_API_TOKENS",
                    "a-token-long-enough-to-be-accepted-here-0123",
                ),
            ],
            "https.cert and https.key",
        ),
        (
            "edge",
            vec![("DRIFTKV_CENTRAL__ADDRESS", "http://central.invalid:7070")],
            "refusing plain-text gRPC",
        ),
    ];
    for (role, env, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut all = vec![
            ("DRIFTKV_LISTEN", "127.0.0.1:0"),
            ("DRIFTKV_GRPC__LISTEN", "127.0.0.1:0"),
            ("DRIFTKV_GOSSIP__LISTEN", "127.0.0.1:0"),
        ];
        all.extend(env);
        let args = [role, "--data-dir", dir.path().to_str().unwrap()].map(String::from);
        let refused = Server::launch(
            &args,
            dir.path(),
            &all,
            &format!("driftkv {role} listening on "),
        )
        .err()
        .unwrap_or_else(|| panic!("{role} started with {all:?}"));
        let line = refused
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("no error line: {refused}"));
        assert!(line.contains(expected), "{line}");
    }
}
