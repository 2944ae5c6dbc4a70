//! GA4GH TES 1.1 against the real server: `caas serve --listen` with the Docker executor and a
//! local store, driven by the real `py-tes` client from PyPI (`tes/test_pytes.py`, run with
//! pytest from the venv `scripts/setup.sh` makes). Then, from here: the tasks went through the
//! manager's claim path (claims, job folders, ledger), and another group's store is untouched.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::api::*;
use common::server::put;
use common::*;

/// The Python that has py-tes, httpx and pytest (`scripts/setup.sh`), or `CAAS_PYTHON`.
pub fn python() -> PathBuf {
    std::env::var_os("CAAS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/caas-venv/bin/python"))
}

/// Run pytest on `file` with `env`; panics with its output unless every test passed.
pub fn pytest(file: &Path, env: &[(&str, String)]) -> String {
    let mut c = Command::new(python());
    c.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"])
        .arg(file)
        .env_remove("CAAS_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("python runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pytest {}:\n{text}", file.display());
    text
}

#[test]
fn py_tes_client_end_to_end() {
    ensure_engine();
    let sb = Sandbox::new();
    let store = sb.store();
    let store_s = store.display().to_string();
    // Priced, with a group that has no budget left: its tasks are refused before compute.
    let analysis = sb.analysis(&shell_analysis(
        "tes-base",
        "true",
        "[pricing]\nwall_hour = 0.01\n[budget]\ngroups = { poor = 0.0 }\n",
    ));
    let env = no_env();
    let ann = token_for(&store_s, &env, "ann", &["lab"], &[]);
    let bob = token_for(&store_s, &env, "bob", &["other"], &[]);
    let cat = token_for(&store_s, &env, "cat", &["poor"], &[]);
    let ro: serde_json::Value = serde_json::from_str(
        caas_ok(
            &env,
            &[
                "token",
                "create",
                "ann",
                "--read-only",
                "--json",
                "--store",
                &store_s,
            ],
        )
        .trim(),
    )
    .unwrap();
    put(&store, "lab/inputs/lines.txt", b"one\ntwo\nthree\n");
    put(&store, "lab/inputs/folder/a.txt", b"a\n");
    put(&store, "lab/inputs/folder/b.txt", b"b\n");
    put(&store, "other/inputs/secret.txt", b"bob's\n");
    let before_other = fingerprint(&store.join("other"), &[]);
    let api = start_api(
        &store_s,
        &[&analysis],
        &["--tes-max-cpus", "4"],
        &env,
        &sb.path().join("serve.log"),
    );
    let run = format!("r{}", std::process::id());
    let out = pytest(
        &repo_root().join("crates/cli/tests/tes/test_pytes.py"),
        &[
            ("CAAS_TES_URL", api.base.clone()),
            ("CAAS_TOKEN", ann),
            ("CAAS_OTHER_TOKEN", bob),
            ("CAAS_POOR_TOKEN", cat),
            (
                "CAAS_READONLY_TOKEN",
                ro["token"].as_str().unwrap().to_string(),
            ),
            ("CAAS_STORE_DIR", store_s.clone()),
            ("CAAS_RUN", run),
        ],
    );
    println!("{out}");
    assert!(out.contains("passed") && !out.contains("failed"), "{out}");

    // Every task was a caas job of group lab, claimed once, with a ledger entry.
    let jobs: Vec<String> = std::fs::read_dir(store.join("lab/results"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("job__tes_tes-"))
        .collect();
    assert!(jobs.len() >= 10, "{jobs:?}");
    let claims = std::fs::read_dir(store.join("_caas/claims/lab"))
        .unwrap()
        .count();
    assert!(
        claims >= jobs.len(),
        "{claims} claims for {} jobs",
        jobs.len()
    );
    let ledger = std::fs::read_dir(store.join("logs/lab")).unwrap().count();
    assert!(ledger >= 8, "ledger entries: {ledger}");
    // The refused task of group poor never ran: no ledger entry, a rejected job.
    assert!(!store.join("logs/poor").exists());
    let poor: Vec<_> = std::fs::read_dir(store.join("poor/results"))
        .unwrap()
        .collect();
    assert_eq!(poor.len(), 1);
    // Nothing of group other was read into lab or changed.
    assert_eq!(fingerprint(&store.join("other"), &[]), before_other);
    assert!(!store.join("other/results").exists());
    let log = api.srv.log_text();
    assert!(!log.contains("panicked"), "{log}");
}
