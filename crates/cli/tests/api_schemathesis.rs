//! The API against its own OpenAPI document: schemathesis 4 (PyPI, installed by
//! `scripts/setup.sh`) generates requests from `/api/v1/openapi.json` and runs them against a
//! real `caas serve --listen` with a real token, with every check but
//! `positive_data_acceptance` (see README, "Security": names, datasets and analyses a request
//! may refer to are rules and store contents no JSON Schema states, so some schema-valid
//! requests are rightly 400/422). Any undeclared status, wrong body, 5xx, accepted invalid
//! request or ignored token fails the test.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::api::*;
use common::*;

fn schemathesis() -> String {
    let venv = std::env::var("CAAS_VENV").unwrap_or_else(|_| "/opt/caas-venv".into());
    let bin = format!("{venv}/bin/schemathesis");
    if !std::path::Path::new(&bin).exists() {
        let st = Command::new("bash")
            .arg(repo_root().join("scripts/setup.sh"))
            .status()
            .unwrap();
        assert!(st.success(), "scripts/setup.sh failed");
    }
    bin
}

#[test]
fn schemathesis_finds_no_failure_in_the_api() {
    let bin = schemathesis();
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis("st", "echo ok > {results}/ok.txt", ""));
    let store = sb.store();
    let s = store.to_str().unwrap().to_string();
    let env = no_env();
    let api = start_api(
        &s,
        &[&a],
        &["--max-body", "1MiB"],
        &env,
        &sb.path().join("serve.log"),
    );
    let token = token_for(&s, &env, "ann", &["lab"], &[]);
    let c = Client::new(&api, &token);
    assert_eq!(c.put("/api/v1/groups/lab/inputs/a.csv", "1\n").status, 201);
    assert_eq!(
        c.put("/api/v1/groups/lab/configs/c.yaml", "x: 1\n").status,
        201
    );
    // Requests go to the token's own group, so they reach the handlers' logic.
    let config = sb.path().join("schemathesis.toml");
    std::fs::write(&config, "[parameters]\n\"path.group\" = \"lab\"\n").unwrap();
    let out = Command::new(&bin)
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{}/api/v1/openapi.json", api.base)])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", "25", "--seed", "22", "--no-color"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .current_dir(sb.path())
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    let summary: String = text.lines().rev().take(30).collect::<Vec<_>>().join("\n");
    println!("{text}");
    assert!(out.status.success(), "schemathesis failed:\n{text}");
    assert!(
        text.contains("Operations:") && text.contains("20 selected"),
        "{summary}"
    );
    assert!(
        !api.srv.log_text().contains(&token),
        "the token reached the log"
    );
}
