//! API tokens: the grants a node accepts, from `api_tokens` (`DRIFTKV_API_TOKENS`, every right)
//! and `api_tokens_file` (scoped grants, or plain tokens), the file reloaded on SIGHUP and
//! whenever it changes; and `driftkv token create`, which makes a token and the line that
//! grants it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use driftkv_http::{parse_token_file, Auth, Grant};
use driftkv_tls::reload::{modified, ReloadTriggers};

use crate::config::Config;
use crate::security::check_tokens;

/// How often the token file is looked at for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// Every grant the configuration gives, checked: `api_tokens` (each with every right) and the
/// token file's.
pub fn grants(config: &Config) -> anyhow::Result<Vec<Grant>> {
    check_tokens(&config.api_tokens)?;
    let mut grants: Vec<Grant> = config.api_tokens.iter().map(|t| Grant::full(t)).collect();
    if !config.api_tokens_file.as_os_str().is_empty() {
        grants.extend(file_grants(&config.api_tokens_file)?);
    }
    Ok(grants)
}

/// The grants of a token file; plain tokens in it are held to the same rules as `api_tokens`.
fn file_grants(path: &Path) -> anyhow::Result<Vec<Grant>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read api_tokens_file {}", path.display()))?;
    let plain: Vec<String> = if text.lines().any(|l| l.trim() == "[[tokens]]") {
        Vec::new()
    } else {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    check_tokens(&plain).with_context(|| format!("api_tokens_file {}", path.display()))?;
    parse_token_file(&text).with_context(|| format!("api_tokens_file {}", path.display()))
}

/// Reloads `config`'s grants into `auth` on SIGHUP and whenever the token file changes, for
/// the life of the process. A file that does not load leaves the grants as they are, with an
/// error in the log: a half-written file must not lock everyone out, nor let anyone in.
pub fn watch(auth: Auth, config: &Config) {
    if config.api_tokens_file.as_os_str().is_empty() {
        return;
    }
    let config = config.clone();
    let path: PathBuf = config.api_tokens_file.clone();
    tokio::spawn(async move {
        let mut triggers = ReloadTriggers::new(RELOAD_CHECK);
        let mut seen = modified(&path);
        loop {
            let asked = triggers.next().await;
            let now = modified(&path);
            if !asked && now == seen {
                continue;
            }
            seen = now;
            match grants(&config) {
                Ok(grants) => {
                    tracing::info!(tokens = grants.len(), file = %path.display(), "API tokens reloaded");
                    auth.replace(grants);
                }
                Err(e) => tracing::error!(
                    error = format!("{e:#}"),
                    "cannot reload the API tokens; keeping the ones in force"
                ),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftkv_http::token_digest;

    #[test]
    fn the_file_adds_scoped_grants_to_the_configured_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.toml");
        std::fs::write(
            &file,
            format!(
                "[[tokens]]\nsha256 = \"{}\"\naccounts = [\"acme\"]\npermission = \"read\"\n",
                token_digest("a-read-only-token-for-acme-0123456789")
            ),
        )
        .unwrap();
        let config = Config {
            api_tokens: vec!["an-edit-token-for-every-account-0123".into()],
            api_tokens_file: file.clone(),
            ..Config::default()
        };
        assert_eq!(grants(&config).unwrap().len(), 2);
        // Plain tokens in the file follow the rules of api_tokens.
        std::fs::write(&file, "short\n").unwrap();
        let refused = format!("{:#}", grants(&config).unwrap_err());
        assert!(refused.contains("bytes long"), "{refused}");
        std::fs::write(&file, "# nothing yet\n").unwrap();
        assert!(grants(&config).is_err());
    }
}
