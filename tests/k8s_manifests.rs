//! The Kubernetes manifests in `deploy/k8s` are valid for Kubernetes 1.31, checked strictly
//! (unknown fields refused) against the API's own schemas by `kubernetes-validate` (PyPI), the
//! closest this machine has to `kubectl apply --dry-run=client` without a cluster. Skipped with
//! a message when the validator is not installed; `.ci/run` installs it and sets
//! `DRIFTKV_REQUIRE_K8S_VALIDATE=1`.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject as _;
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
            // `key=path` names a file under another key.
            let path = file.split_once('=').map_or(file, |(_, path)| path);
            files.push(k8s_dir().join(path));
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
        resources.len() >= 3,
        "kustomization.yaml lists {resources:?}"
    );
    for file in resources.iter().chain(&listed("files")) {
        // The secrets are made by deploy/k8s/secrets.sh (see the test below), not committed.
        if file.starts_with(k8s_dir().join("secrets")) {
            continue;
        }
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

/// deploy/k8s/secrets.sh makes every file the kustomization's Secrets are generated from (and
/// nothing with a known placeholder): a central bundle for central's role, an edge bundle for
/// the edges', and a random API token.
#[test]
fn the_secrets_script_makes_every_file_the_kustomization_needs() {
    let copy = tempfile::tempdir().unwrap();
    let k8s = copy.path().join("deploy/k8s");
    std::fs::create_dir_all(&k8s).unwrap();
    for entry in std::fs::read_dir(k8s_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), k8s.join(entry.file_name())).unwrap();
        }
    }
    let made = Command::new(k8s.join("secrets.sh"))
        .env("DRIFTKV", env!("CARGO_BIN_EXE_driftkv"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let text = std::fs::read_to_string(k8s.join("kustomization.yaml")).unwrap();
    let generated: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ")?.split_once("=secrets/"))
        .map(|(_, path)| path)
        .collect();
    assert!(generated.len() >= 9, "{generated:?}");
    for path in generated {
        assert!(
            k8s.join("secrets").join(path).is_file(),
            "{path} was not made"
        );
    }
    let role_of = |bundle: &str| {
        let pem = std::fs::read(k8s.join("secrets").join(bundle).join("node.pem")).unwrap();
        let der = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .unwrap();
        driftkv_tls::Role::of(&der)
    };
    assert_eq!(role_of("central"), Some(driftkv_tls::Role::Central));
    assert_eq!(role_of("edge"), Some(driftkv_tls::Role::Edge));
    let token = std::fs::read_to_string(k8s.join("secrets/api-tokens")).unwrap();
    assert!(
        token.len() >= 32 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "{token}"
    );
    // Run twice, it keeps what it made.
    let again = Command::new(k8s.join("secrets.sh"))
        .env("DRIFTKV", env!("CARGO_BIN_EXE_driftkv"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert_eq!(
        std::fs::read_to_string(k8s.join("secrets/api-tokens")).unwrap(),
        token
    );
}
