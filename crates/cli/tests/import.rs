//! `caas import neurocaas` through the real binary: a blueprint becomes a caas.toml that
//! `caas run` and `caas serve` run on the real Docker engine, and users in the store; malformed
//! blueprints are refused naming the field, with nothing written; an existing caas.toml is
//! never replaced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::server::{Server, job_folders, put, wait_end};
use common::{BASE_IMAGE, Sandbox, caas, snapshot, stderr, stdout};

/// A CPU blueprint in NeuroCAAS's format whose command shows the four arguments NeuroCAAS
/// passes, and copies the data and the config into the results.
fn blueprint() -> serde_json::Value {
    serde_json::json!({
        "PipelineName": "Echo_Args",
        "REGION": "us-east-1",
        "STAGE": "websubstack",
        "Lambda": {
            "CodeUri": "../../protocols",
            "Handler": "submit_start.handler_develop",
            "Launch": true,
            "LambdaConfig": {
                "AMI": "ami-0123456789abcdef0",
                "INSTANCE_TYPE": "t2.micro",
                "COMMAND": "sh -c 'echo \"bucket=$0\" > \"$2/args.txt\"; cp \"$1\" \"$2/data-copy.csv\"; cp \"$3\" \"$2/config-copy.yaml\"' \"{}\" \"{}\" \"{}\" \"{}\"",
                "CONFIG": "config.yaml",
                "MISSING_CONFIG_ERROR": "We need a config file to analyze data.",
                "EXECUTION_TIMEOUT": 900,
                "SSM_TIMEOUT": 600,
                "DEPLOY_LIMIT": 3,
                "MAXCOST": "300",
                "MONITOR": true
            }
        },
        "UXData": {"Affiliates": [
            {"AffiliateName": "lab", "UserNames": ["ann", "bob@uni.edu"], "UserInput": true,
             "ContactEmail": "The email we should notify regarding processing status."}
        ]}
    })
}

fn import(sb: &Sandbox, bp: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    caas()
        .current_dir(sb.path())
        .args(["import", "neurocaas"])
        .arg(bp)
        .arg("--store")
        .arg(sb.store())
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn an_imported_blueprint_runs_and_serves_and_its_users_exist() {
    let sb = Sandbox::new();
    let bp = sb.path().join("echo_stack");
    std::fs::create_dir_all(&bp).unwrap();
    std::fs::write(
        bp.join("stack_config_template.json"),
        serde_json::to_vec_pretty(&blueprint()).unwrap(),
    )
    .unwrap();
    let analysis = sb.path().join("echo");
    let o = import(&sb, &bp, &analysis, &["--image", BASE_IMAGE]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("as the analysis echo-args"), "{out}");
    assert!(
        out.contains("PipelineName \"Echo_Args\" is not a valid caas name"),
        "{out}"
    );
    assert!(
        out.contains("Lambda.LambdaConfig.AMI"),
        "the AMI is listed: {out}"
    );
    assert!(
        out.contains("Lambda.LambdaConfig.EXECUTION_TIMEOUT"),
        "{out}"
    );
    assert!(out.contains("--concurrency 3"), "DEPLOY_LIMIT: {out}");
    assert!(
        out.contains("bob_at_uni.edu (was \"bob@uni.edu\")"),
        "{out}"
    );

    // The users exist in the store: a token can be made for each.
    for user in ["ann", "bob_at_uni.edu"] {
        let t = caas()
            .args(["token", "create", user, "--store"])
            .arg(sb.store())
            .output()
            .unwrap();
        assert!(t.status.success(), "{user}: {}", stderr(&t));
    }

    // caas run: NeuroCAAS's four arguments arrive as the bucket (the analysis name) and paths.
    let run = sb.run(&analysis, "imp-1", &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    let results = sb.job_dir("echo-args", "imp-1").join("process_results");
    assert_eq!(
        std::fs::read_to_string(results.join("args.txt")).unwrap(),
        "bucket=echo-args\n"
    );
    assert_eq!(
        std::fs::read(results.join("data-copy.csv")).unwrap(),
        std::fs::read(sb.path().join("data.csv")).unwrap()
    );
    assert_eq!(
        std::fs::read(results.join("config-copy.yaml")).unwrap(),
        std::fs::read(sb.path().join("config.yaml")).unwrap()
    );

    // caas serve: a submission without configname gets MISSING_CONFIG_ERROR's message.
    let store = sb.store();
    let log = sb.path().join("serve.log");
    let _server = Server::start(store.to_str().unwrap(), &[&analysis], &[], &log);
    put(&store, "lab/inputs/d.csv", b"x,y\n1,2\n");
    put(
        &store,
        "lab/submissions/nocfgsubmit.json",
        br#"{"dataname": "lab/inputs/d.csv", "timestamp": "nocfg"}"#,
    );
    let folder = store.join("lab/results/job__echo-args_nocfg");
    assert!(
        wait_end(&folder, Duration::from_secs(60)),
        "rejected job ends"
    );
    let cert = std::fs::read_to_string(folder.join("logs/certificate.txt")).unwrap();
    assert!(
        cert.contains("We need a config file to analyze data. Name a config file (such as config.yaml) in 'configname'."),
        "{cert}"
    );
    assert_eq!(job_folders(&store, "lab", "nocfg").len(), 1);

    // Importing again: identical caas.toml is left as it is; a changed one is never replaced.
    let again = import(&sb, &bp, &analysis, &["--image", BASE_IMAGE]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stdout(&again).contains("unchanged"), "{}", stdout(&again));
    let toml = analysis.join("caas.toml");
    let edited = format!("{}\n# my edit\n", std::fs::read_to_string(&toml).unwrap());
    std::fs::write(&toml, &edited).unwrap();
    let refused = import(&sb, &bp, &analysis, &["--image", BASE_IMAGE]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("not replaced"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(std::fs::read_to_string(&toml).unwrap(), edited);
}

#[test]
fn malformed_blueprints_are_refused_naming_the_field_and_nothing_is_written() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.store()).unwrap();
    let before = snapshot(&sb.store());
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "prose budget",
            {
                let mut b = blueprint();
                b["Lambda"]["LambdaConfig"]["MAXCOST"] = serde_json::json!(
                    "maximum per user allowed cost (integer) before lockout. Set to 300 by default."
                );
                b
            },
            "Lambda.LambdaConfig.MAXCOST",
        ),
        (
            "placeholder instance type",
            {
                let mut b = blueprint();
                b["Lambda"]["LambdaConfig"]["INSTANCE_TYPE"] =
                    serde_json::json!("your instance type here.");
                b
            },
            "Lambda.LambdaConfig.INSTANCE_TYPE",
        ),
        (
            "missing section",
            {
                let mut b = blueprint();
                b.as_object_mut().unwrap().remove("Lambda");
                b
            },
            "field `Lambda`",
        ),
        (
            "another group's path as a group",
            {
                let mut b = blueprint();
                b["UXData"]["Affiliates"][0]["AffiliateName"] = serde_json::json!("../other");
                b
            },
            "UXData.Affiliates[0].AffiliateName",
        ),
    ];
    for (what, bp, needle) in cases {
        let file = sb.path().join(format!("{}.json", what.replace(' ', "_")));
        std::fs::write(&file, serde_json::to_vec(&bp).unwrap()).unwrap();
        let out = sb.path().join(format!("out-{}", what.replace(' ', "_")));
        let o = import(&sb, &file, &out, &[]);
        assert_eq!(o.status.code(), Some(2), "{what}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{what}: {}", stderr(&o));
        assert!(!out.join("caas.toml").exists(), "{what}: nothing written");
    }
    // Not JSON, a FIFO, a folder without a blueprint.
    let not_json = sb.path().join("bp.json");
    std::fs::write(&not_json, b"{\"PipelineName\": ").unwrap();
    let fifo = sb.path().join("fifo.json");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let empty = sb.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for (p, needle) in [
        (&not_json, "not valid JSON"),
        (&fifo, "not a regular file"),
        (&empty, "holds no stack_config_template.json"),
    ] {
        let o = import(&sb, p, &sb.path().join("out"), &[]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{}", stderr(&o));
    }
    assert_eq!(snapshot(&sb.store()), before, "the store is untouched");
    assert!(!sb.path().join("out/caas.toml").exists());
}

#[test]
fn a_submissions_instance_type_sets_the_jobs_resources_and_price() {
    let sb = Sandbox::new();
    // An analysis with no price of its own: only the instance type can make the task cost.
    let analysis = sb.analysis(&common::shell_analysis(
        "itype",
        "if [ -f /sys/fs/cgroup/cpu.max ]; then cat /sys/fs/cgroup/cpu.max; else echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us); fi > \"$CAAS_RESULTS/cpu.txt\"; sleep 1",
        "",
    ));
    let store = sb.store();
    let _server = Server::start(
        store.to_str().unwrap(),
        &[&analysis],
        &[],
        &sb.path().join("serve.log"),
    );
    put(&store, "lab/inputs/d.csv", b"1\n");
    put(&store, "lab/configs/c.yaml", b"k: 1\n");
    for (ts, itype) in [("t1", "\"t2.micro\""), ("t2", "\"p9.mega\""), ("t3", "42")] {
        put(
            &store,
            &format!("lab/submissions/{ts}submit.json"),
            format!(
                r#"{{"dataname": "lab/inputs/d.csv", "configname": "lab/configs/c.yaml", "timestamp": "{ts}", "instance_type": {itype}}}"#
            )
            .as_bytes(),
        );
    }
    let ok = store.join("lab/results/job__itype_t1");
    assert!(wait_end(&ok, Duration::from_secs(60)));
    let job: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ok.join("job.json")).unwrap()).unwrap();
    assert_eq!(job["state"], "succeeded", "{job}");
    let cost = job["tasks"][0]["cost_usd"].as_f64().unwrap();
    let wall = job["tasks"][0]["usage"]["wall_seconds"].as_f64().unwrap();
    assert!(
        (cost - wall / 3600.0 * 0.0116).abs() < 1e-9 && cost > 0.0,
        "t2.micro's price: {cost} for {wall} s"
    );
    // t2.micro has one vCPU: the container's CPU quota is one period (cgroup v2 or v1).
    let cpu = std::fs::read_to_string(ok.join("process_results/cpu.txt")).unwrap();
    let v: Vec<f64> = cpu.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(v.len(), 2, "{cpu}");
    assert!((v[0] / v[1] - 1.0).abs() < 1e-9, "cpus = 1: {cpu}");
    for (ts, needle) in [
        (
            "t2",
            "'instance_type' \"p9.mega\" is not an EC2 instance type caas knows",
        ),
        ("t3", "'instance_type' must be a string"),
    ] {
        let f = store.join(format!("lab/results/job__itype_{ts}"));
        assert!(wait_end(&f, Duration::from_secs(60)), "{ts}");
        let cert = std::fs::read_to_string(f.join("logs/certificate.txt")).unwrap();
        assert!(cert.contains(needle), "{ts}: {cert}");
    }
}
