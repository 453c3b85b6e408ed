//! An unchanged Cloudflare API client against `driftkv dev`: the official Python SDK
//! (`pip install cloudflare`) runs tests/compat/cloudflare_sdk.py against a fresh server.
//!
//! Skipped, with a message, where the SDK is not installed, unless DRIFTKV_REQUIRE_SDK=1 (as
//! in CI), where a missing SDK fails the test.

mod common;

use std::process::Command;

use common::Server;

#[test]
fn the_official_cloudflare_python_sdk_works_unchanged() {
    let has_sdk = Command::new("python3")
        .args(["-c", "import cloudflare"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_sdk {
        assert!(
            std::env::var("DRIFTKV_REQUIRE_SDK").as_deref() != Ok("1"),
            "DRIFTKV_REQUIRE_SDK=1 but the Cloudflare Python SDK is not installed (pip install cloudflare)"
        );
        eprintln!("skipped: the Cloudflare Python SDK is not installed (pip install cloudflare)");
        return;
    }
    let server = Server::start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/compat/cloudflare_sdk.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .env("DRIFTKV_BASE_URL", format!("{}/client/v4", server.base))
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
