//! Unit tests of the blueprint conversion, on fixtures written in NeuroCAAS's format
//! (`tests/blueprints/`) and on malformed variants of them.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::*;
use caas_protocol::GroupName;

fn fixture(name: &str) -> (PathBuf, Value) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/blueprints")
        .join(name);
    read(&p).expect("fixture reads")
}

fn with_image() -> Options {
    Options {
        image: Some("local/busybox:test".into()),
    }
}

fn field_error(bp: &Value) -> (String, String) {
    match convert(bp, Path::new("bp.json"), &with_image()) {
        Err(ImportError::Field { field, message, .. }) => (field, message),
        other => panic!("expected a field error, got {other:?}"),
    }
}

/// Every field of the blueprint appears in exactly one of the two lists.
fn leaves(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m)
            if path.is_empty()
                || path == "Lambda"
                || path == "Lambda.LambdaConfig"
                || path == "UXData" =>
        {
            for (k, v) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves(v, &p, out);
            }
        }
        Value::Array(a) if path == "UXData.Affiliates" => {
            for (i, v) in a.iter().enumerate() {
                if let Value::Object(m) = v {
                    for k in m.keys() {
                        out.push(format!("{path}[{i}].{k}"));
                    }
                }
            }
        }
        Value::Null => {}
        _ => out.push(path.to_string()),
    }
}

#[test]
fn a_gpu_blueprint_carries_over_and_names_every_field() {
    let (path, bp) = fixture("pose-gpu.json");
    let imp = convert(&bp, &path, &with_image()).expect("imports");
    assert_eq!(imp.analysis, "pose-gpu-web");
    assert_eq!(imp.renamed_from, None);
    assert_eq!(imp.concurrency, Some(300));
    let spec = AnalysisSpec::parse(&imp.caas_toml, Path::new("caas.toml")).expect("valid");
    assert_eq!(spec.resources.cpus, Some(8.0));
    assert_eq!(spec.resources.gpus, Some(1));
    assert_eq!(
        spec.resources.memory.map(|m| m.0),
        Some(61 * 1024 * 1024 * 1024)
    );
    assert_eq!(spec.pricing.wall_hour, 3.06);
    assert_eq!(spec.budget.default, Some(600.0));
    assert_eq!(spec.run.timeout.map(|t| t.0.as_secs()), Some(172_000));
    assert_eq!(
        spec.environment.image.as_deref(),
        Some("local/busybox:test")
    );
    assert_eq!(
        spec.inputs.missing_config.as_deref(),
        Some(
            "We need a config file to analyze data. Name a config file (such as config.yaml) in 'configname'."
        )
    );
    let caas_protocol::analysis::Command::Shell(cmd) = &spec.run.command else {
        panic!("a string command: {:?}", spec.run.command);
    };
    assert_eq!(
        cmd,
        "cd '/home/ubuntu' && cd /home/ubuntu; sh run_main.sh pose-gpu-web {data} {results} {config} \"pose/run_pose.sh\""
    );
    // Groups, with the e-mail user renamed and ann in both groups once each.
    assert_eq!(imp.groups.len(), 2);
    let pose = &imp.groups[0];
    assert_eq!(pose.name, "poselab");
    assert_eq!(pose.users[1].name, "Bob.Smith_at_example.org");
    assert_eq!(
        pose.users[1].renamed_from.as_deref(),
        Some("Bob.Smith@example.org")
    );
    assert_eq!(imp.groups[1].users.len(), 2);
    // Nothing dropped silently: every leaf field is in exactly one list.
    let mut all = Vec::new();
    leaves(&bp, "", &mut all);
    for f in &all {
        let c = imp.carried.iter().filter(|c| &c.field == f).count();
        let n = imp.not_carried.iter().filter(|c| &c.field == f).count();
        assert_eq!(c + n, 1, "{f}: carried {c}, not carried {n}");
    }
    let post = imp
        .not_carried
        .iter()
        .find(|n| n.field == "Lambda.PostHandler")
        .expect("listed");
    assert!(post.reason.contains("Lambda"), "{}", post.reason);
    let user_input = imp
        .not_carried
        .iter()
        .find(|n| n.field == "UXData.Affiliates[1].UserInput");
    assert!(user_input.is_some(), "UserInput false is named");
}

#[test]
fn a_folder_blueprint_with_a_name_caas_does_not_allow_is_renamed_and_said_so() {
    let (path, bp) = fixture("caiman-lab");
    assert!(path.ends_with("caiman-lab/stack_config_template.json"));
    let imp = convert(&bp, &path, &Options::default()).expect("imports");
    assert_eq!(imp.analysis, "caiman-stable-v2");
    assert_eq!(imp.renamed_from.as_deref(), Some("CaImAn_Stable.v2"));
    let spec = AnalysisSpec::parse(&imp.caas_toml, Path::new("caas.toml")).expect("valid");
    assert_eq!(
        spec.environment.dockerfile.as_deref(),
        Some(Path::new("Dockerfile"))
    );
    assert_eq!(
        spec.budget.default,
        Some(300.0),
        "MAXCOST given as a string"
    );
    assert_eq!(imp.concurrency, Some(20));
    assert_eq!(spec.run.timeout.map(|t| t.0.as_secs()), Some(7200));
    let caas_protocol::analysis::Command::Shell(cmd) = &spec.run.command else {
        panic!("a string command");
    };
    // Unquoted slots, and the command's own braces kept literally ({{ }} in caas.toml).
    assert_eq!(
        cmd,
        "bin/run.sh caiman-stable-v2 {data} {results} {config} '{{\"mode\": 1}}'"
    );
    let ami = imp
        .not_carried
        .iter()
        .find(|n| n.field == "Lambda.LambdaConfig.AMI")
        .expect("AMI listed");
    assert!(
        ami.reason.contains("--image") && ami.reason.contains("caas build"),
        "{}",
        ami.reason
    );
    for unknown in ["Lambda.LambdaConfig.SPOT", "UXData.Theme"] {
        assert!(
            imp.not_carried.iter().any(|n| n.field == unknown),
            "{unknown} named"
        );
    }
    let wd = imp
        .not_carried
        .iter()
        .find(|n| n.field == "Lambda.LambdaConfig.WORKING_DIRECTORY");
    assert!(wd.is_some(), "a ~ working directory is named, not used");
}

#[test]
fn template_placeholders_and_missing_sections_name_the_field() {
    let (_, bp) = fixture("template.json");
    let (field, message) = field_error(&bp);
    assert_eq!(field, "Lambda.LambdaConfig.MAXCOST");
    assert!(
        message.contains("not a number") && message.contains("template placeholder"),
        "{message}"
    );

    let mut bp2 = bp.clone();
    bp2["Lambda"]["LambdaConfig"]["MAXCOST"] = json!(300);
    bp2["Lambda"]["LambdaConfig"]["INSTANCE_TYPE"] = json!("your instance type here.");
    let (field, message) = field_error(&bp2);
    assert_eq!(field, "Lambda.LambdaConfig.INSTANCE_TYPE");
    assert!(message.contains("template placeholder"), "{message}");

    bp2["Lambda"]["LambdaConfig"]["INSTANCE_TYPE"] = json!("p9.mega");
    let (_, message) = field_error(&bp2);
    assert!(
        message.contains("not an EC2 instance type caas knows"),
        "{message}"
    );

    let mut bp3 = bp2.clone();
    bp3["PipelineName"] = json!("bucket name. must be lowercase alphanumeric (dashes okay)");
    assert_eq!(field_error(&bp3).0, "PipelineName");

    let mut bp4 = bp2.clone();
    bp4.as_object_mut().expect("object").remove("Lambda");
    let (field, message) = field_error(&bp4);
    assert_eq!(field, "Lambda");
    assert!(message.contains("missing"), "{message}");

    let mut bp5 = bp2.clone();
    bp5["Lambda"]["LambdaConfig"]["INSTANCE_TYPE"] = json!("t2.micro");
    bp5["Lambda"]["LambdaConfig"]["COMMAND"] = json!("run.sh {} {} {}");
    let (field, message) = field_error(&bp5);
    assert_eq!(field, "Lambda.LambdaConfig.COMMAND");
    assert!(message.contains("has 3"), "{message}");
}

#[test]
fn numbers_at_the_edges_are_refused() {
    let (_, mut bp) = fixture("template.json");
    bp["Lambda"]["LambdaConfig"]["MAXCOST"] = json!(300);
    for (key, value) in [
        ("SSM_TIMEOUT", json!(0)),
        ("SSM_TIMEOUT", json!(-5)),
        ("SSM_TIMEOUT", json!(1e300)),
        ("DEPLOY_LIMIT", json!(2.5)),
        ("DEPLOY_LIMIT", json!("1e99")),
        ("MAXCOST", json!(-1)),
        ("MAXCOST", json!("NaN")),
        ("MAXCOST", json!([300])),
    ] {
        let mut b = bp.clone();
        b["Lambda"]["LambdaConfig"][key] = value.clone();
        let (field, _) = field_error(&b);
        assert_eq!(field, format!("Lambda.LambdaConfig.{key}"), "{value}");
    }
}

#[test]
fn hostile_names_never_reach_the_store_or_the_toml() {
    let (_, mut bp) = fixture("template.json");
    bp["Lambda"]["LambdaConfig"]["MAXCOST"] = json!(300);
    for bad in ["../other", "logs", "a/b", "\u{1F600}", ""] {
        let mut b = bp.clone();
        b["UXData"]["Affiliates"] = json!([{"AffiliateName": bad, "UserNames": ["u"]}]);
        let (field, _) = field_error(&b);
        assert_eq!(field, "UXData.Affiliates[0].AffiliateName", "{bad:?}");
    }
    let mut b = bp.clone();
    b["UXData"]["Affiliates"] =
        json!([{"AffiliateName": "lab", "UserNames": ["../../x", "a\nb", "ok"]}]);
    let imp = convert(&b, Path::new("bp.json"), &with_image()).expect("imports");
    for u in &imp.groups[0].users {
        assert!(u.name.parse::<GroupName>().is_ok(), "{u:?}");
        assert!(!u.name.contains('/') && !u.name.contains('\n'), "{u:?}");
    }
    // Two NeuroCAAS users that would become one caas user: refused, never merged.
    let mut b = bp.clone();
    b["UXData"]["Affiliates"] = json!([{"AffiliateName": "lab", "UserNames": ["x"]}, {"AffiliateName": "other", "UserNames": ["../x"]}]);
    let (field, message) = field_error(&b);
    assert_eq!(field, "UXData.Affiliates[1].UserNames[0]");
    assert!(message.contains("both become"), "{message}");
    // A command with a newline and quotes stays one TOML string that parses back.
    let mut b = bp.clone();
    b["Lambda"]["LambdaConfig"]["COMMAND"] = json!("echo \"x\"\n'{}' {} {} {} # \"\"\"");
    let imp = convert(&b, Path::new("bp.json"), &with_image()).expect("imports");
    AnalysisSpec::parse(&imp.caas_toml, Path::new("caas.toml")).expect("parses back");
    let not_object = json!(["PipelineName"]);
    assert!(matches!(
        convert(&not_object, Path::new("bp.json"), &with_image()),
        Err(ImportError::Format { .. })
    ));
}
