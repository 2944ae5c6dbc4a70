//! Snakemake 9 with its TES executor (`snakemake-executor-plugin-tes`, unchanged, from the venv
//! `scripts/setup.sh` makes) running a multi-rule workflow end to end against the real
//! `caas serve --listen` (Docker executor, a store on S3):
//!
//! - the store and Snakemake's default storage are one S3 server and bucket; Snakemake's files
//!   live under the group's prefix (`s3://<bucket>/<store prefix>/lab/inputs/smk-…`), the only
//!   kind of URL this server takes besides its own, so no `file://` is ever sent;
//! - the jobs run in `local/snakemake:test` (`scripts/snakemake-image.sh`: Debian's Python,
//!   bash and Snakemake, built without a registry), which the operator allows with
//!   `--tes-image`; they reach the S3 server on the Docker bridge, so this test runs its own
//!   moto bound to the bridge's gateway (the shared one listens on 127.0.0.1 only);
//! - Snakemake authenticates with HTTP Basic (`--tes-user`, `SNAKEMAKE_TES_PASSWORD` = the API
//!   token) on the pre-1.0 `/v1/tasks` paths its py-tes 0.4 speaks.
//!
//! Checked: Snakemake succeeds, the workflow's result is right, every rule's job was a TES task
//! that completed as a caas job of group `lab` (claim, job folder), and the token never reached
//! the server's log.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::api::*;
use common::server::wait_for;
use common::*;

const IMAGE: &str = "local/snakemake:test";

const SNAKEFILE: &str = r#"
# Split a word list in two, count each part, add the counts.
rule all:
    input: "counts/total.txt"

rule split:
    input: "data/words.txt"
    output: "parts/{n}.txt"
    shell: "awk 'NR % 2 == {wildcards.n}' {input} > {output}"

rule count:
    input: "parts/{n}.txt"
    output: "counts/{n}.txt"
    shell: "wc -l < {input} | tr -d ' ' > {output}"

rule total:
    input: expand("counts/{n}.txt", n=[0, 1])
    output: "counts/total.txt"
    shell: "cat {input} | awk '{{s += $1}} END {{print s}}' > {output}"
"#;

fn venv() -> PathBuf {
    std::env::var_os("CAAS_SNAKEMAKE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/caas-snakemake-venv"))
}

/// A moto S3 server this test started (stopped by its own process id when dropped).
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn aws(endpoint: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut c = Command::new(common::s3::aws_bin());
    c.env("AWS_ACCESS_KEY_ID", "caas-test")
        .env("AWS_SECRET_ACCESS_KEY", "caas-test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .args(["--endpoint-url", endpoint])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(b) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn snakemake_runs_a_workflow_through_tes() {
    ensure_engine();
    common::s3::ensure_s3(); // setup.sh: the venvs and moto's package
    let st = Command::new("bash")
        .arg(repo_root().join("scripts/snakemake-image.sh"))
        .status()
        .unwrap();
    assert!(st.success(), "scripts/snakemake-image.sh failed");
    let gw = String::from_utf8(
        Command::new("docker")
            .args([
                "network",
                "inspect",
                "bridge",
                "--format",
                "{{(index .IPAM.Config 0).Gateway}}",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    assert!(!gw.is_empty(), "no Docker bridge gateway");
    let port = free_port();
    let venv_bin = PathBuf::from(common::s3::aws_bin()).with_file_name("moto_server");
    let sb = Sandbox::new();
    let _moto = Moto(
        Command::new(venv_bin)
            .args(["-H", &gw, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(sb.path().join("moto.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let endpoint = format!("http://{gw}:{port}");
    assert!(
        wait_for(Duration::from_secs(60), || std::net::TcpStream::connect((
            gw.as_str(),
            port
        ))
        .is_ok()),
        "moto did not start on {endpoint}"
    );
    let bucket = format!("caas-smk-{}", std::process::id());
    aws(&endpoint, &["s3", "mb", &format!("s3://{bucket}")], None);
    let store = format!("s3://{bucket}/caas");
    let env: Vec<(&str, String)> = vec![
        ("AWS_ENDPOINT_URL", endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "caas-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "caas-test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ];
    let token = token_for(&store, &env, "ann", &["lab"], &[]);
    let analysis = sb.analysis(&shell_analysis("base", "true", ""));
    let api = start_api(
        &store,
        &[&analysis],
        &["--tes-image", IMAGE],
        &env,
        &sb.path().join("serve.log"),
    );
    // The workflow's data, under the group's prefix in the store's bucket.
    let prefix = format!("{store}/lab/inputs/smk-{}", std::process::id());
    aws(
        &endpoint,
        &["s3", "cp", "-", &format!("{prefix}/data/words.txt")],
        Some(b"alpha\nbeta\ngamma\ndelta\nepsilon\nzeta\neta\n"),
    );
    let wf = sb.path().join("wf");
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::write(wf.join("Snakefile"), SNAKEFILE).unwrap();
    // The executor reads `$GITHUB_WORKSPACE/funnel.log` when a task fails (its CI's server
    // log); give it an empty one so a failure is reported instead of a KeyError.
    std::fs::write(sb.path().join("funnel.log"), b"").unwrap();
    let out = Command::new(venv().join("bin/snakemake"))
        .current_dir(&wf)
        .env_remove("AWS_ENDPOINT_URL")
        .env("GITHUB_WORKSPACE", sb.path())
        .env("SNAKEMAKE_TES_PASSWORD", &token)
        .args([
            "--executor",
            "tes",
            "--tes-url",
            &api.base,
            "--tes-user",
            "snakemake",
        ])
        .args(["--jobs", "4", "--container-image", IMAGE])
        .args([
            "--default-storage-provider",
            "s3",
            "--default-storage-prefix",
            &prefix,
        ])
        .args(["--storage-s3-endpoint-url", &endpoint])
        .args([
            "--storage-s3-access-key",
            "caas-test",
            "--storage-s3-secret-key",
            "caas-test",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "snakemake failed:\n{text}\nserver:\n{}",
        api.srv.log_text()
    );
    assert!(text.contains("6 of 6 steps (100%) done"), "{text}");
    // 7 words: 3 on even lines, 4 on odd ones, 7 in all.
    let get = |k: &str| {
        aws(
            &endpoint,
            &["s3", "cp", &format!("{prefix}/{k}"), "-"],
            None,
        )
    };
    assert_eq!(get("counts/0.txt").trim(), "3");
    assert_eq!(get("counts/1.txt").trim(), "4");
    assert_eq!(get("counts/total.txt").trim(), "7");

    // Every rule's job (split ×2, count ×2, total) was a TES task that completed as a caas job.
    let tasks: serde_json::Value = reqwest::blocking::Client::new()
        .get(format!("{}/ga4gh/tes/v1/tasks?view=BASIC", api.base))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let tasks = tasks["tasks"].as_array().unwrap();
    let mut names: Vec<&str> = tasks.iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names.len(), 5, "{tasks:?}");
    for rule in ["split", "split", "count", "count", "total"] {
        assert!(
            names
                .iter()
                .filter(|n| n.contains(&format!(".{rule}.")))
                .count()
                == if rule == "total" { 1 } else { 2 },
            "{names:?}"
        );
    }
    assert!(tasks.iter().all(|t| t["state"] == "COMPLETE"), "{tasks:?}");
    assert!(
        tasks
            .iter()
            .all(|t| t["executors"][0]["image"] == IMAGE
                && t["logs"][0]["logs"][0]["exit_code"] == 0),
        "{tasks:?}"
    );
    let results = aws(
        &endpoint,
        &["s3", "ls", &format!("{store}/lab/results/")],
        None,
    );
    for t in tasks {
        let id = t["id"].as_str().unwrap();
        assert!(results.contains(&format!("job__tes_{id}/")), "{results}");
    }
    let log = api.srv.log_text();
    assert!(!log.contains(token.rsplit('_').next().unwrap()));
    assert!(!log.contains("panicked"), "{log}");
}
