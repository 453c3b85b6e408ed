//! `driftkv token create`: a new random API token and the token-file entry that grants it.

use clap::Args;
use driftkv_http::token_digest;
use rand::RngCore as _;

/// `driftkv token create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// An account the token may use (repeatable).
    #[arg(long = "account", required_unless_present = "all_accounts")]
    accounts: Vec<String>,
    /// Every account.
    #[arg(long, conflicts_with = "accounts")]
    all_accounts: bool,
    /// Reads only: values, listings, metadata, namespaces, bulk gets.
    #[arg(long, conflicts_with = "edit", required_unless_present = "edit")]
    read: bool,
    /// Reads and writes.
    #[arg(long)]
    edit: bool,
}

/// Prints a new random token and the `api_tokens_file` entry that grants it (which holds the
/// token's digest, not the token).
pub fn create(args: CreateArgs) -> anyhow::Result<()> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let accounts = if args.all_accounts {
        "\"*\"".to_owned()
    } else {
        args.accounts
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let permission = if args.read { "read" } else { "edit" };
    println!("token: {token}");
    println!();
    println!("# add to the api_tokens_file of every node (reloaded within 5 s, or on SIGHUP):");
    println!("[[tokens]]");
    println!("sha256 = \"{}\"", token_digest(&token));
    println!("accounts = [{accounts}]");
    println!("permission = \"{permission}\"");
    Ok(())
}
