//! TES clients of every era against the real server (`caas serve --listen`, Docker executor,
//! local store), unchanged:
//! - py-tes 0.4.2 (what Snakemake's TES executor pins; `/v1/tasks` paths, HTTP Basic, strict
//!   parsing) runs `tes/legacy_client.py` from the Snakemake venv `scripts/setup.sh` makes;
//! - `tes/test_tes10.py` (pytest, py-tes 1.1 and curl): answers hold only TES 1.0's fields and
//!   states unless a task set more, and Basic credentials (py-tes user/password, `curl --netrc`,
//!   a URL's user part) carry the API token under the same scopes, expiry and groups.
//!
//! Then, from here: the server's log never holds a token's secret.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::api::*;
use common::*;

/// The venv with Snakemake 9, its TES executor and py-tes 0.4 (`scripts/setup.sh`), or
/// `CAAS_SNAKEMAKE_VENV`.
fn snakemake_venv() -> PathBuf {
    std::env::var_os("CAAS_SNAKEMAKE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/caas-snakemake-venv"))
}

fn caas_python() -> PathBuf {
    std::env::var_os("CAAS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/caas-venv/bin/python"))
}

fn run(mut c: Command, what: &str) -> String {
    let out = c.output().expect("python runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}:\n{text}");
    text
}

#[test]
fn tes_1_0_and_legacy_clients_and_basic_credentials() {
    ensure_engine();
    let sb = Sandbox::new();
    let store = sb.store();
    let store_s = store.display().to_string();
    let analysis = sb.analysis(&shell_analysis("tes-compat", "true", ""));
    let env = no_env();
    let ann = token_for(&store_s, &env, "ann", &["lab"], &[]);
    let bob = token_for(&store_s, &env, "bob", &["other"], &[]);
    let token = |extra: &[&str]| -> String {
        let mut args = vec!["token", "create", "ann", "--json", "--store", &store_s];
        args.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_str(caas_ok(&env, &args).trim()).unwrap();
        v["token"].as_str().unwrap().to_string()
    };
    let ro = token(&["--read-only"]);
    let expired = token(&["--expires", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let api = start_api(
        &store_s,
        &[&analysis],
        &[],
        &env,
        &sb.path().join("serve.log"),
    );
    let run_id = format!("c{}", std::process::id());
    let common_env = [
        ("CAAS_TES_URL", api.base.clone()),
        ("CAAS_TOKEN", ann.clone()),
        ("CAAS_OTHER_TOKEN", bob.clone()),
        ("CAAS_RUN", run_id),
    ];

    let mut legacy = Command::new(snakemake_venv().join("bin/python"));
    legacy.arg(repo_root().join("crates/cli/tests/tes/legacy_client.py"));
    legacy.envs(common_env.iter().map(|(k, v)| (k, v)));
    let out = run(legacy, "py-tes 0.4.2");
    println!("{out}");
    assert!(out.contains("legacy client: ok"), "{out}");

    let mut py = Command::new(caas_python());
    py.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"])
        .arg(repo_root().join("crates/cli/tests/tes/test_tes10.py"))
        .envs(common_env.iter().map(|(k, v)| (k, v)))
        .env("CAAS_READONLY_TOKEN", &ro)
        .env("CAAS_EXPIRED_TOKEN", &expired)
        .env("CAAS_TMP", sb.path());
    let out = run(py, "pytest test_tes10.py");
    println!("{out}");
    assert!(out.contains("4 passed") && !out.contains("failed"), "{out}");

    // No token's secret (sent as a Basic password or a bearer token) reached the log.
    let log = api.srv.log_text();
    for t in [&ann, &bob, &ro, &expired] {
        let secret = t.rsplit('_').next().unwrap();
        assert!(!log.contains(secret), "a token's secret is in the log");
    }
    assert!(!log.contains("panicked"), "{log}");
}
