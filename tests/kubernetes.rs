//! The Kubernetes manifests (deploy/kubernetes): built by kustomize (kubectl's own,
//! client side), validated against the Kubernetes schemas with kubernetes-validate (PyPI;
//! no cluster needed: kubectl's `--dry-run=client` still asks an API server for its
//! schemas), checked for what a lossless rolling restart needs, and their caracal.toml,
//! with the per-pod `--set`s of the StatefulSet, passes `caracal check`.

mod common;

use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

#[test]
fn manifests_build_validate_and_carry_what_a_rolling_restart_needs() {
    if !have("kubectl") {
        eprintln!("SKIP: kubectl is not installed (Debian: kubectl)");
        return;
    }
    let out = Command::new("kubectl")
        .args(["kustomize", DIR])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for needed in [
        "kind: StatefulSet",
        "publishNotReadyAddresses: true",
        "clusterIP: None",
        "kind: PodDisruptionBudget",
        "maxUnavailable: 1",
        "kind: NetworkPolicy",
        "podAntiAffinity",
        "path: /ready",
        "path: /live",
        "fieldPath: metadata.name",
        "node.jvm_route=\"$(POD_NAME)\"",
        "kind = \"dns\"",
    ] {
        assert!(text.contains(needed), "the manifests lack {needed:?}");
    }
    // The pod's grace period covers the drain and the in-flight requests.
    let secs = |key: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("no {key}"));
        line.chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    let grace = secs("terminationGracePeriodSeconds:");
    assert!(
        secs("drain_timeout") + secs("shutdown_grace") < grace,
        "terminationGracePeriodSeconds {grace} does not cover drain_timeout + shutdown_grace"
    );

    if have("kubernetes-validate") {
        let dir = tempfile::tempdir().unwrap();
        let all = dir.path().join("all.yaml");
        std::fs::write(&all, &text).unwrap();
        let v = Command::new("kubernetes-validate")
            .arg("--strict")
            .arg(&all)
            .output()
            .unwrap();
        let report =
            String::from_utf8_lossy(&v.stdout).to_string() + &String::from_utf8_lossy(&v.stderr);
        assert!(v.status.success(), "schema check failed:\n{report}");
        assert_eq!(
            report.matches(" passed for resource ").count(),
            8,
            "{report}"
        );
    } else {
        eprintln!("SKIP (schema part): kubernetes-validate is not installed (pip)");
    }
}

#[test]
fn the_configmaps_conf_with_the_pods_overrides_passes_caracal_check() {
    let cm = std::fs::read_to_string(format!("{DIR}/configmap.yaml")).unwrap();
    let start = cm
        .find("caracal.toml: |")
        .expect("caracal.toml in the ConfigMap");
    let toml: String = cm[start..]
        .lines()
        .skip(1)
        .map(|l| l.strip_prefix("    ").unwrap_or(l.trim()))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    common::write_certs(dir.path(), "caracal-0");
    let conf = dir.path().join("caracal.toml");
    std::fs::write(
        &conf,
        toml.replace("/etc/caracal/tls", &dir.path().display().to_string()),
    )
    .unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    // The StatefulSet's `--set`s, with what the downward API and the Secret would give.
    let sets = [
        "node.jvm_route=\"caracal-0\"".to_string(),
        "cluster.receiver.address=\"10.244.1.7\"".into(),
        "cluster.advertise_http=\"10.244.1.7:8080\"".into(),
        "cluster.key=\"a-cluster-key-of-32-characters-x\"".into(),
        "admin.token=\"an-admin-token-of-32-characters-\"".into(),
        format!("cluster.tls.cert=\"{}\"", p("caracal-0.pem")),
        format!("cluster.tls.key=\"{}\"", p("caracal-0-key.pem")),
        // The pod's volume.
        format!("persistence.dir=\"{}\"", dir.path().display()),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let (code, err) = common::check_file(&conf, &sets);
    assert_eq!(code, 0, "caracal check: {err}");
    // Without the pod's key the same file is refused (fail closed off loopback).
    let keyless: Vec<&str> = sets
        .iter()
        .copied()
        .filter(|s| !s.starts_with("cluster.key"))
        .collect();
    assert_eq!(common::check_file(&conf, &keyless).0, 2);
}
