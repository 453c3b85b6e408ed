//! The Kubernetes manifests in `deploy/k8s` are valid for Kubernetes 1.31, checked strictly
//! (unknown fields refused) against the API's own schemas by `kubernetes-validate` (PyPI), the
//! closest this machine has to `kubectl apply --dry-run=client` without a cluster. Skipped with
//! a message when the validator is not installed; `.ci/run` installs it and sets
//! `DRIFTKV_REQUIRE_K8S_VALIDATE=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KUBERNETES_VERSION: &str = "1.31.0";

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s")
}

/// The files `kustomization.yaml` lists under `resources:` and `files:`.
fn listed(section: &str) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(k8s_dir().join("kustomization.yaml")).unwrap();
    let mut inside = false;
    let mut files = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        if trimmed.ends_with(':') || trimmed.contains(": ") || trimmed.starts_with("- name:") {
            inside = trimmed == format!("{section}:");
            continue;
        }
        if let Some(file) = trimmed.strip_prefix("- ").filter(|_| inside) {
            files.push(k8s_dir().join(file));
        }
    }
    files
}

/// Runs the validator on `files`; `None` when it is not installed (and not required).
fn validate(files: &[PathBuf]) -> Option<Output> {
    let installed = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        let required = std::env::var("DRIFTKV_REQUIRE_K8S_VALIDATE").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "DRIFTKV_REQUIRE_K8S_VALIDATE=1 but kubernetes-validate is missing"
        );
        eprintln!(
            "skipping: kubernetes-validate is not installed (pip install kubernetes-validate)"
        );
        return None;
    }
    let output = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--no-warn", "-k"])
        .arg(KUBERNETES_VERSION)
        .args(files)
        .output()
        .expect("python3 runs");
    Some(output)
}

#[test]
fn the_manifests_are_valid_kubernetes_resources() {
    let resources = listed("resources");
    assert!(
        resources.len() >= 4,
        "kustomization.yaml lists {resources:?}"
    );
    for file in resources.iter().chain(&listed("files")) {
        assert!(
            file.exists(),
            "kustomization.yaml names a missing file {file:?}"
        );
    }
    let Some(output) = validate(&resources) else {
        return;
    };
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The check is strict: a misspelt field in a StatefulSet fails it.
#[test]
fn the_validator_refuses_a_broken_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("edges.yaml");
    let text = std::fs::read_to_string(k8s_dir().join("edges.yaml")).unwrap();
    assert!(text.contains("  replicas: 3\n"));
    std::fs::write(&broken, text.replace("  replicas: 3\n", "  replicaz: 3\n")).unwrap();
    let Some(output) = validate(&[broken]) else {
        return;
    };
    assert!(
        !output.status.success(),
        "a misspelt field passed validation"
    );
}

/// The `path:` of every `readinessProbe` in `text` (an indentation-structured YAML file).
fn readiness_paths(text: &str) -> Vec<String> {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let lines: Vec<&str> = text.lines().collect();
    let mut paths = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "readinessProbe:" {
            continue;
        }
        let path = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
            .find_map(|l| l.trim().strip_prefix("path:"))
            .expect("a readinessProbe with an HTTP path");
        paths.push(path.trim().to_owned());
    }
    paths
}

/// Readiness is `/readyz` (an edge that can serve and take writes), liveness `/healthz`: a
/// Service must not route to an edge that is still catching up.
#[test]
fn every_readiness_probe_asks_readyz() {
    let mut probes = 0;
    for file in listed("resources") {
        let paths = readiness_paths(&std::fs::read_to_string(&file).unwrap());
        for path in &paths {
            assert_eq!(path, "/readyz", "{file:?}");
        }
        probes += paths.len();
    }
    assert_eq!(
        probes, 2,
        "central and the edges each have a readiness probe"
    );
    let compose =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"))
            .unwrap();
    let check = compose
        .lines()
        .find(|l| l.trim_start().starts_with("test:") && l.contains("health"))
        .expect("a compose health check");
    assert!(check.contains("/readyz"), "{check}");
    // The scanner itself reads what it should.
    assert_eq!(
        readiness_paths("  readinessProbe:\n    httpGet:\n      path: /x\n  livenessProbe:\n    httpGet:\n      path: /y\n"),
        ["/x"]
    );
}
