//! `driftkv testbed ...`: the consistency testbed's commands.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use driftkv_testbed::{check, Described, History, Rule};

/// `driftkv testbed ...`
#[derive(Subcommand, Debug)]
pub enum TestbedCommand {
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

/// Runs a testbed command.
pub fn run(command: TestbedCommand) -> anyhow::Result<()> {
    match command {
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
