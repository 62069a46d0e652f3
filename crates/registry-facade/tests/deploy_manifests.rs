//! The Kubernetes manifests under `deploy/` validated offline: `kubernetes-validate --strict`
//! (installed by scripts/test; it bundles the schemas) on the output of `kubectl kustomize`
//! when kubectl is there, else on every file; and the facade's ConfigMap accepted by the real
//! binary's `check-config`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_registry-facade");

fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/base")
}

fn many_nodes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/overlays/many-nodes")
}

fn validate(files: &[&Path]) -> Output {
    rf_testkit::require_tool("kubernetes-validate");
    Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "--no-warn"])
        .args(files)
        .output()
        .expect("running kubernetes-validate")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `resources:` entries of the kustomization.
fn resources() -> Vec<String> {
    let k = std::fs::read_to_string(base().join("kustomization.yaml")).unwrap();
    k.lines()
        .skip_while(|l| *l != "resources:")
        .skip(1)
        .take_while(|l| l.starts_with("  - "))
        .map(|l| l.trim_start_matches("  - ").trim().to_string())
        .collect()
}

#[test]
fn kustomization_lists_every_manifest() {
    let mut listed = resources();
    listed.sort();
    let mut files: Vec<String> = std::fs::read_dir(base())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    files.sort();
    assert_eq!(listed, files);
    for kind in [
        "kind: DaemonSet",
        "kind: Deployment",
        "kind: ConfigMap",
        "kind: Service",
        "kind: PodDisruptionBudget",
    ] {
        assert!(
            files.iter().any(|f| std::fs::read_to_string(base().join(f))
                .unwrap()
                .contains(kind)),
            "no {kind}"
        );
    }
}

#[test]
fn every_manifest_passes_strict_schema_validation() {
    let files: Vec<PathBuf> = resources().iter().map(|r| base().join(r)).collect();
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let out = validate(&refs);
    assert!(out.status.success(), "{}", text(&out));

    // What the cluster gets: the kustomize build, when kubectl is here (it works offline).
    let built = Command::new("kubectl")
        .arg("kustomize")
        .arg(base())
        .output();
    if let Ok(built) = built {
        assert!(
            built.status.success(),
            "kubectl kustomize: {}",
            text(&built)
        );
        let dir = tempfile::tempdir().unwrap();
        let all = dir.path().join("all.yaml");
        std::fs::write(&all, &built.stdout).unwrap();
        let out = validate(&[&all]);
        assert!(out.status.success(), "{}", text(&out));
        let yaml = String::from_utf8_lossy(&built.stdout);
        assert!(
            yaml.contains("image: registry.example.com/registry-facade/registry-facade:0.1.0"),
            "{yaml}"
        );
        // The many-nodes overlay: the peer port, the pod's IP and the secrets on the facade.
        let built = Command::new("kubectl")
            .arg("kustomize")
            .arg(many_nodes())
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "kubectl kustomize: {}",
            text(&built)
        );
        std::fs::write(&all, &built.stdout).unwrap();
        let out = validate(&[&all]);
        assert!(out.status.success(), "{}", text(&out));
        let yaml = String::from_utf8_lossy(&built.stdout);
        for want in [
            "containerPort: 32224",
            "fieldPath: status.podIP",
            "secretName: registry-facade-peer",
            "\"advertiseAddress\": \"${POD_IP}:32224\"",
            "containerPort: 32223",
        ] {
            assert!(yaml.contains(want), "{want} missing from\n{yaml}");
        }
    } else {
        eprintln!("kubectl is not installed: validated the files one by one");
    }
}

#[test]
fn strict_validation_rejects_an_unknown_field() {
    // The control for the test above: an unexpected property must fail the same validator.
    let good = std::fs::read_to_string(base().join("blobserve-deployment.yaml")).unwrap();
    let bad = good.replacen("  replicas: 2\n", "  replicas: 2\n  replicaz: 2\n", 1);
    assert_ne!(good, bad);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, bad).unwrap();
    let out = validate(&[&path]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("replicaz"), "{}", text(&out));
}

/// The `config.json` block of a ConfigMap manifest (a literal block indented by four spaces).
fn config_json(file: &str) -> String {
    config_json_in(&base(), file)
}

fn config_json_in(dir: &Path, file: &str) -> String {
    let yaml = std::fs::read_to_string(dir.join(file)).unwrap();
    let body: Vec<&str> = yaml
        .lines()
        .skip_while(|l| l.trim() != "config.json: |")
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| l.get(4..).unwrap_or(""))
        .collect();
    assert!(!body.is_empty(), "no config.json in {file}");
    body.join("\n")
}

#[test]
fn config_maps_hold_valid_configs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config_json("registry-facade-config.yaml")).unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(
        &path,
        config_json_in(&many_nodes(), "registry-facade-config.yaml"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "many-nodes: {}", text(&out));
    for f in ["blobserve-config.yaml", "image-builder-config.yaml"] {
        let v: serde_json::Value = serde_json::from_str(&config_json(f))
            .unwrap_or_else(|e| panic!("{f}: config.json is not JSON: {e}"));
        assert!(v.is_object(), "{f}");
    }
    // blobserve's own check, when its binary was built beside ours (always in scripts/test,
    // which builds the whole workspace first).
    let blobserve = Path::new(BIN).with_file_name("blobserve");
    if blobserve.is_file() {
        std::fs::write(&path, config_json("blobserve-config.yaml")).unwrap();
        let out = Command::new(&blobserve)
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
}
