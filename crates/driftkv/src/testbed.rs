//! `driftkv testbed ...`: the consistency testbed's commands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use driftkv_client::{Client, MemberStatus, NodeRole};
use driftkv_core::faults::FaultSettings;
use driftkv_core::time::unix_now_ms;
use driftkv_testbed::faults::FaultClient;
use driftkv_testbed::staleness;
use driftkv_testbed::visibility::{self, Plan, ReadPattern};
use driftkv_testbed::{check, report, Described, History, Rule};

use crate::cli::{Bar, Target};
use driftkv_client::Progress as _;

/// `driftkv testbed ...`
#[derive(Subcommand, Debug)]
pub enum TestbedCommand {
    /// Measure t-visibility: write unique keys at the first edge, read each once at every
    /// other edge a random time after the write's acknowledgement, and report the probability
    /// a read that late returns the write (PBS), per edge and overall, with a CSV, an SVG plot
    /// and the operation history in --out.
    Visibility(VisibilityArgs),
    /// Run a mixed read/write workload over many keys and every edge for a fixed time and
    /// report the fraction of stale reads and how stale (in versions and ms), per second, with
    /// a CSV, an SVG plot and the operation history in --out.
    Staleness(StalenessArgs),
    /// Verify a recorded history against the consistency model: no phantom reads, staleness
    /// within the bound, read-your-writes at the writing edge, convergence at the end. Prints
    /// each violation with the operations involved; exits 1 if there is any.
    Check {
        /// The history (JSON lines, as the testbed's experiments write them).
        history: PathBuf,
        /// Staleness bound in milliseconds [default: the history's own bound_ms].
        #[arg(long)]
        bound_ms: Option<u64>,
    },
}

/// Whether reads of a key happen before it is written.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PatternArg {
    /// Every reading edge reads the key (caching its absence) before the write.
    ReadBefore,
    /// The scheduled read is the key's first.
    NeverRead,
}

/// `driftkv testbed visibility`.
#[derive(Args, Debug)]
pub struct VisibilityArgs {
    #[command(flatten)]
    target: Target,
    /// Wait (up to 30 s) until /cluster shows at least this many edges serving, the target
    /// included.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(2..))]
    expect_edges: u64,
    /// Keys to write (each read once at every other edge).
    #[arg(long, default_value_t = 200)]
    keys: usize,
    /// The cacheTtl reads ask for, in seconds (the edges' cache.min_ttl_secs bounds it).
    #[arg(long, default_value_t = 60)]
    cache_ttl: u64,
    /// Read pattern.
    #[arg(long, value_enum, default_value_t = PatternArg::ReadBefore)]
    pattern: PatternArg,
    /// Reads happen up to this long after the acknowledgement, in ms [default: cacheTtl +
    /// 5 s].
    #[arg(long)]
    max_offset_ms: Option<u64>,
    /// Keys in flight at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Inject this replication delay (ms) at the reading edges for the run (needs the
    /// testbed enabled on them and --admin-token).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// ... plus up to this much uniform jitter (ms).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// The edges' testbed.admin_token [env: DRIFTKV_TESTBED_ADMIN_TOKEN].
    #[arg(long, env = "DRIFTKV_TESTBED_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Directory for visibility.csv, visibility.svg and history.jsonl.
    #[arg(long, default_value = "testbed-out")]
    out: PathBuf,
}

/// `driftkv testbed staleness`.
#[derive(Args, Debug)]
pub struct StalenessArgs {
    #[command(flatten)]
    target: Target,
    /// Wait (up to 30 s) until /cluster shows at least this many edges serving, the target
    /// included.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(2..))]
    expect_edges: u64,
    /// Keys the workload spreads over.
    #[arg(long, default_value_t = 100)]
    keys: usize,
    /// How long the workload runs, in seconds.
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    /// Writes per second over all keys (each key at most once a second).
    #[arg(long, default_value_t = 20.0)]
    writes_per_second: f64,
    /// Reads per second over all keys.
    #[arg(long, default_value_t = 200.0)]
    reads_per_second: f64,
    /// The cacheTtl reads ask for, in seconds.
    #[arg(long, default_value_t = 60)]
    cache_ttl: u64,
    /// Requests in flight at once, at most.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Inject this replication delay (ms) at every edge but the first for the run.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// ... plus up to this much uniform jitter (ms).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Pause replication at every edge but the first this many seconds into the run ...
    #[arg(long, requires = "pause_for_s")]
    pause_at_s: Option<u64>,
    /// ... for this many seconds.
    #[arg(long, requires = "pause_at_s")]
    pause_for_s: Option<u64>,
    /// Make every edge but the first resynchronise from a snapshot this many seconds in.
    #[arg(long)]
    resync_at_s: Option<u64>,
    /// Skew the clock central stamps write versions from by this many ms for the run (positive:
    /// ahead). Set at central's admin endpoint, found in /cluster (with `dev`, which gives
    /// central no HTTP port, at the first edge: the same process).
    #[arg(long, allow_negative_numbers = true)]
    clock_skew_ms: Option<i64>,
    /// The nodes' testbed.admin_token, for the faults [env: DRIFTKV_TESTBED_ADMIN_TOKEN].
    #[arg(long, env = "DRIFTKV_TESTBED_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Directory for staleness.csv, staleness.svg and history.jsonl.
    #[arg(long, default_value = "testbed-out")]
    out: PathBuf,
}

/// Runs a testbed command.
pub async fn run(command: TestbedCommand) -> anyhow::Result<()> {
    match command {
        TestbedCommand::Visibility(args) => visibility(args).await,
        TestbedCommand::Staleness(args) => staleness(args).await,
        TestbedCommand::Check { history, bound_ms } => {
            let file = std::fs::File::open(&history)
                .with_context(|| format!("cannot open {}", history.display()))?;
            let mut recorded = History::read(std::io::BufReader::new(file))
                .with_context(|| format!("{} is not a history", history.display()))?;
            if let Some(bound) = bound_ms {
                recorded.meta.bound_ms = bound;
            }
            let violations = check(&recorded);
            let count = |rule: Rule| violations.iter().filter(|v| v.rule == rule).count();
            println!(
                "{} operations, staleness bound {} ms",
                recorded.ops.len(),
                recorded.meta.bound_ms
            );
            for rule in [
                Rule::PhantomRead,
                Rule::StaleRead,
                Rule::ReadYourWrites,
                Rule::Divergence,
            ] {
                println!("  {:<18} {} violations", rule.to_string(), count(rule));
            }
            for violation in &violations {
                println!("\n{}: {}", violation.rule, violation.message);
                for &op in &violation.ops {
                    println!("    #{op}: {}", Described(&recorded.ops[op]));
                }
            }
            anyhow::ensure!(
                violations.is_empty(),
                "{} violations of the consistency model",
                violations.len()
            );
            println!("\nthe history satisfies the consistency model");
            Ok(())
        }
    }
}

/// The client for the nodes' fault switches, with the experiment's admin token and the
/// target's CA.
fn fault_client(target: &Target, token: Option<&str>) -> anyhow::Result<FaultClient> {
    let token = token.context("--admin-token is needed to inject faults")?;
    Ok(FaultClient::new(
        token,
        target.resolve()?.ca_pem.as_deref(),
    )?)
}

/// Replication delayed by `delay_ms` plus up to `jitter_ms`, and paused or not.
fn delayed(delay_ms: u64, jitter_ms: u64, paused: bool) -> FaultSettings {
    FaultSettings {
        delay_ms,
        jitter_ms,
        paused,
    }
}

/// How long the experiments wait for the edges they need to show in /cluster.
const EDGES_LIMIT: Duration = Duration::from_secs(30);

/// The edges `target` knows of through gossip, the target first, then by node id; dead ones
/// left out. Waits (up to [`EDGES_LIMIT`]) until there are `expect` of them: right after a
/// cluster starts, gossip may not have carried every member yet.
async fn cluster_edges(target: &Target, expect: u64) -> anyhow::Result<(Vec<Client>, Vec<String>)> {
    let target = target.resolve()?;
    let writer = target.client_at(&target.url)?;
    let deadline = tokio::time::Instant::now() + EDGES_LIMIT;
    let mut told = false;
    let readers = loop {
        let view = writer.cluster().await?;
        let mut readers: Vec<(u64, String)> = view
            .members
            .iter()
            // A member still "joining" (not judged yet by the failure detector) serves already.
            .filter(|m| m.role == Some(NodeRole::Edge) && m.status != MemberStatus::Dead)
            .filter_map(|m| Some((m.node_id.parse().ok()?, m.http.clone()?)))
            .filter(|(_, http)| http.trim_end_matches('/') != target.url.trim_end_matches('/'))
            .collect();
        if readers.len() as u64 + 1 >= expect {
            readers.sort();
            break readers
                .into_iter()
                .map(|(_, http)| http)
                .collect::<Vec<_>>();
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} shows {} edge(s) in /cluster after {} s, not the {expect} expected (--expect-edges)",
            target.url,
            readers.len() + 1,
            EDGES_LIMIT.as_secs()
        );
        if !told {
            eprintln!(
                "waiting for {expect} edges in {}/cluster (it shows {} so far)",
                target.url,
                readers.len() + 1
            );
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut edges = vec![writer];
    for reader in &readers {
        edges.push(target.client_at(reader)?);
    }
    Ok((edges, readers))
}

async fn visibility(args: VisibilityArgs) -> anyhow::Result<()> {
    let url = args.target.resolve()?.url;
    let (edges, readers) = cluster_edges(&args.target, args.expect_edges).await?;
    let writer = edges[0].clone();
    let max_offset =
        Duration::from_millis(args.max_offset_ms.unwrap_or(args.cache_ttl * 1000 + 5000));
    let namespace = writer
        .create_namespace(&format!("testbed-visibility-{}", unix_now_ms()))
        .await?
        .id;
    let faults = (args.delay_ms > 0 || args.jitter_ms > 0)
        .then(|| fault_client(&args.target, args.admin_token.as_deref()))
        .transpose()?;
    if let Some(faults) = &faults {
        faults
            .set(&readers, &delayed(args.delay_ms, args.jitter_ms, false))
            .await?;
    }
    let plan = Plan {
        edges,
        namespace,
        keys: args.keys,
        cache_ttl_s: args.cache_ttl,
        pattern: match args.pattern {
            PatternArg::ReadBefore => ReadPattern::ReadBefore,
            PatternArg::NeverRead => ReadPattern::NeverRead,
        },
        max_offset,
        concurrency: args.concurrency,
        // Staleness allowed: the cache TTL, the injected delay, and a second for the rest.
        bound: Duration::from_millis(args.cache_ttl * 1000 + args.delay_ms + args.jitter_ms + 1000),
    };
    println!(
        "visibility: {} keys written at {}, read once at each of {} edges up to {} ms later; cacheTtl {} s, {:?}{}",
        args.keys,
        url,
        readers.len(),
        max_offset.as_millis(),
        args.cache_ttl,
        args.pattern,
        if faults.is_some() {
            format!(", injected replication delay {} + up to {} ms", args.delay_ms, args.jitter_ms)
        } else {
            String::new()
        }
    );
    let bar = Bar::new(Some(args.keys as u64), "keys");
    let outcome = visibility::run(&plan, &|| bar.advance(1)).await;
    drop(bar);
    // Restore the edges whatever happened.
    if let Some(faults) = &faults {
        faults.set(&readers, &FaultSettings::default()).await?;
    }
    let outcome = outcome?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let rows = report::summarize(
        &outcome.samples,
        plan.edges.len(),
        max_offset.as_secs_f64() * 1000.0,
    );
    let out = |name: &str| args.out.join(name);
    report::write_csv(&out("visibility.csv"), &outcome.samples)?;
    report::plot_svg(
        &out("visibility.svg"),
        &format!(
            "t-visibility, cacheTtl {} s, {:?}",
            args.cache_ttl, args.pattern
        ),
        &rows,
        max_offset.as_secs_f64() * 1000.0,
    )
    .map_err(|e| anyhow::anyhow!("cannot plot: {e}"))?;
    println!("\ntime until a read returns the write (from the t-visibility curve):");
    print!("{}", report::table(&rows));
    println!();
    finish(&args.out, &outcome.history)
}

/// Writes an experiment's history to `out`, checks it against the model and says so.
fn finish(out: &Path, history: &History) -> anyhow::Result<()> {
    let path = out.join("history.jsonl");
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    history.write(std::io::BufWriter::new(file))?;
    println!(
        "history: {} operations, {} violations of the consistency model (bound {} ms)",
        history.ops.len(),
        check(history).len(),
        history.meta.bound_ms
    );
    println!("wrote {}", out.display());
    Ok(())
}

async fn staleness(args: StalenessArgs) -> anyhow::Result<()> {
    let (edges, others) = cluster_edges(&args.target, args.expect_edges).await?;
    if let (Some(at), Some(length)) = (args.pause_at_s, args.pause_for_s) {
        anyhow::ensure!(
            at + length <= args.duration_s,
            "the pause must end within the run ({} s)",
            args.duration_s
        );
    }
    anyhow::ensure!(
        args.resync_at_s.is_none_or(|at| at < args.duration_s),
        "the resync must happen within the run"
    );
    let faulty = args.delay_ms > 0
        || args.jitter_ms > 0
        || args.pause_at_s.is_some()
        || args.resync_at_s.is_some();
    let faults = (faulty || args.clock_skew_ms.is_some())
        .then(|| fault_client(&args.target, args.admin_token.as_deref()))
        .transpose()?;
    // Where versions are stamped: central's HTTP endpoint, else (dev) the first edge's process.
    let stamper = match args.clock_skew_ms {
        Some(_) => {
            let view = edges[0].cluster().await?;
            let central = view
                .members
                .iter()
                .find(|m| m.role == Some(NodeRole::Central) && m.status != MemberStatus::Dead)
                .and_then(|m| m.http.clone());
            vec![central.unwrap_or_else(|| edges[0].url().to_owned())]
        }
        None => Vec::new(),
    };
    let (delay_ms, jitter_ms) = (args.delay_ms, args.jitter_ms);
    if let Some(faults) = &faults {
        if let Some(ms) = args.clock_skew_ms {
            faults.skew(&stamper, ms).await?;
        }
        if delay_ms > 0 || jitter_ms > 0 {
            faults
                .set(&others, &delayed(delay_ms, jitter_ms, false))
                .await?;
        }
    }
    // The faults scheduled during the run, at the edges other than the first.
    let schedule = async {
        let Some(faults) = &faults else {
            return anyhow::Ok(());
        };
        let pause = async {
            if let (Some(at), Some(length)) = (args.pause_at_s, args.pause_for_s) {
                tokio::time::sleep(Duration::from_secs(at)).await;
                faults
                    .set(&others, &delayed(delay_ms, jitter_ms, true))
                    .await?;
                tokio::time::sleep(Duration::from_secs(length)).await;
                faults
                    .set(&others, &delayed(delay_ms, jitter_ms, false))
                    .await?;
            }
            anyhow::Ok(())
        };
        let resync = async {
            if let Some(at) = args.resync_at_s {
                tokio::time::sleep(Duration::from_secs(at)).await;
                faults.resync(&others).await?;
            }
            anyhow::Ok(())
        };
        tokio::try_join!(pause, resync).map(|_| ())
    };
    let namespace = edges[0]
        .create_namespace(&format!("testbed-staleness-{}", unix_now_ms()))
        .await?
        .id;
    let plan = staleness::Plan {
        edges,
        namespace,
        keys: args.keys,
        duration: Duration::from_secs(args.duration_s),
        writes_per_second: args.writes_per_second,
        reads_per_second: args.reads_per_second,
        cache_ttl_s: args.cache_ttl,
        concurrency: args.concurrency,
        bound: Duration::from_millis(args.cache_ttl * 1000 + 1000),
    };
    println!(
        "staleness: {} s, {} writes/s and {} reads/s over {} keys on {} edges; cacheTtl {} s",
        args.duration_s,
        args.writes_per_second,
        args.reads_per_second,
        args.keys,
        plan.edges.len(),
        args.cache_ttl
    );
    let bar = Bar::new(Some(args.duration_s), "seconds");
    let ticking = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            ticks.tick().await;
            loop {
                ticks.tick().await;
                bar.advance(1);
            }
        })
    };
    let (outcome, scheduled) = tokio::join!(staleness::run(&plan), schedule);
    ticking.abort();
    drop(bar);
    // Restore the nodes whatever happened.
    if let Some(faults) = &faults {
        if faulty {
            faults.set(&others, &FaultSettings::default()).await?;
        }
        if args.clock_skew_ms.is_some() {
            faults.skew(&stamper, 0).await?;
        }
    }
    scheduled?;
    let outcome = outcome?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let out = |name: &str| args.out.join(name);
    let seconds = staleness::timeline(&outcome.reads);
    report::write_reads_csv(&out("staleness.csv"), &outcome.reads)?;
    report::plot_staleness_svg(
        &out("staleness.svg"),
        &format!("stale reads per second, cacheTtl {} s", args.cache_ttl),
        &seconds,
    )
    .map_err(|e| anyhow::anyhow!("cannot plot: {e}"))?;
    println!("\n{}", staleness::Summary::of(&outcome.reads));
    finish(&args.out, &outcome.history)
}
