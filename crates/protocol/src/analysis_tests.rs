//! Unit tests of `caas.toml` parsing and checks (`analysis.rs`).

use super::*;

const MINIMAL: &str = r#"
[analysis]
name = "pca"                 # lowercase, digits, '-'; the job folder is job__<name>_<timestamp>
version = "0.1.0"

[environment]
image = "local/busybox:test" # a pinned image, OR:
# dockerfile = "Dockerfile"  # built by `caas build` (context = this folder)

[run]
command = ["sh", "-c", "wc -l {data} > {results}/lines.txt"]
timeout = "10m"              # humantime durations

[resources]                  # optional
cpus = 1
memory = "512MiB"            # bytes with IEC/SI units
"#;

fn parse(text: &str) -> Result<AnalysisSpec, SpecError> {
    AnalysisSpec::parse(text, Path::new("/x/caas.toml"))
}

#[test]
fn design_minimal_file_parses() {
    let s = parse(MINIMAL).unwrap();
    assert_eq!(s.analysis.name.as_str(), "pca");
    assert_eq!(s.timeout(), Duration::from_secs(600));
    assert_eq!(s.resources.memory, Some(ByteSize(512 << 20)));
    assert_eq!(s.resources.cpus, Some(1.0));
    assert_eq!(s.default_image(), "local/busybox:test");
    assert_eq!(s.io.dir, "/io");
}

#[test]
fn unknown_key_names_key_file_and_line() {
    let text = MINIMAL.replace("cpus = 1", "cpus = 1\ncpu_count = 2");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("/x/caas.toml"), "{err}");
    assert!(err.contains("cpu_count"), "{err}");
    assert!(err.contains("line 16"), "{err}");
}

#[test]
fn bad_values_name_the_line() {
    let err = parse(&MINIMAL.replace("\"10m\"", "\"ten minutes\""))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 12") && err.contains("not a duration"),
        "{err}"
    );
    let err = parse(&MINIMAL.replace("\"512MiB\"", "\"lots\""))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 16") && err.contains("not a size"),
        "{err}"
    );
    let err = parse(&MINIMAL.replace("version = \"0.1.0\"\n", ""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing field `version`"), "{err}");
    let err = parse(&MINIMAL.replace("{results}", "{output}"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown placeholder {output}") && err.contains("line 11"),
        "{err}"
    );
    let err = parse(&MINIMAL.replace("\"pca\"", "\"../pca\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("analysis name"), "{err}");
}

#[test]
fn values_at_the_edge_are_errors_not_surprises() {
    // An empty shell string would run nothing and report SUCCESS.
    let cmd = "command = [\"sh\", \"-c\", \"wc -l {data} > {results}/lines.txt\"]";
    for empty in ["command = \"\"", "command = \"   \"", "command = []"] {
        let err = parse(&MINIMAL.replace(cmd, empty)).unwrap_err().to_string();
        assert!(err.contains("must not be empty"), "{empty}: {err}");
    }
    // Memory beyond what an engine can limit is an error, not "no limit".
    let err = parse(&MINIMAL.replace("\"512MiB\"", "\"10000000TiB\""))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("more than a container engine can limit"),
        "{err}"
    );
    // A process limit applies by default and is checked.
    assert_eq!(parse(MINIMAL).unwrap().resources.pids_limit(), DEFAULT_PIDS);
    let s = parse(&MINIMAL.replace("cpus = 1", "cpus = 1\npids = 64")).unwrap();
    assert_eq!(s.resources.pids_limit(), 64);
    for bad in ["pids = 0", "pids = 5000000"] {
        let err = parse(&MINIMAL.replace("cpus = 1", &format!("cpus = 1\n{bad}")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("process limit"), "{bad}: {err}");
    }
}

#[test]
fn a_timeout_longer_than_a_year_is_refused_naming_the_key() {
    for huge in ["500000000years", "18446744073709551615s", "366days"] {
        let err = parse(&MINIMAL.replace("\"10m\"", &format!("{huge:?}")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("timeout") && err.contains("365 days") && err.contains("line 12"),
            "{huge}: {err}"
        );
    }
    let s = parse(&MINIMAL.replace("\"10m\"", "\"365days\"")).unwrap();
    assert_eq!(s.timeout(), MAX_TIMEOUT);
}

#[test]
fn dev_keys_are_optional_and_checked() {
    let s = parse(MINIMAL).unwrap();
    assert!(s.environment.source.is_none() && s.run.credentials.is_none());
    assert_eq!(s.source_target(), DEFAULT_SOURCE_TARGET);
    let text = MINIMAL.replace(
        "[run]\n",
        "source = \"src\"\nsource_target = \"/srv/a\"\n\n[run]\ncredentials = \"~/.aws/credentials\"\n",
    );
    let s = parse(&text).unwrap();
    assert_eq!(s.environment.source, Some(PathBuf::from("src")));
    assert_eq!(s.source_target(), "/srv/a");
    assert!(s.run.credentials.is_some());
    let err = parse(&text.replace("\"src\"", "\"../src\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`source`") && err.contains("line 10"), "{err}");
    let err = parse(&text.replace("\"/srv/a\"", "\"srv\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("source_target"), "{err}");
}

#[test]
fn placeholders_fill() {
    let mut v = BTreeMap::new();
    v.insert("data", "/io/inputs/a.csv".to_string());
    assert_eq!(
        fill_placeholders("wc {data} {{x}}", &v),
        "wc /io/inputs/a.csv {x}"
    );
}

#[test]
fn globs() {
    assert!(glob_match("*.csv", "trace.csv"));
    assert!(!glob_match("*.csv", "trace.npy"));
    assert!(glob_match("rec?_*", "rec1_a.bin"));
}

#[test]
fn pricing_and_budgets_are_optional_and_parsed() {
    let base = "[analysis]\nname = \"p\"\nversion = \"1\"\n[environment]\nimage = \"i\"\n[run]\ncommand = \"true\"\n";
    let s = AnalysisSpec::parse(base, Path::new("caas.toml")).unwrap();
    assert_eq!(
        s.pricing.cost(
            &crate::Usage {
                wall_seconds: 3600.0,
                cpu_seconds: 3600.0,
                peak_memory_bytes: 1 << 30
            },
            2
        ),
        0.0
    );
    assert!(s.budget.for_group(&"lab".parse().unwrap()).is_none());
    let t = format!(
        "{base}[pricing]\nwall_hour = 1.0\ncpu_hour = 2.0\n[budget]\ndefault = 10\ngroups = {{ lab = 0.5 }}\n"
    );
    let s = AnalysisSpec::parse(&t, Path::new("caas.toml")).unwrap();
    let u = crate::Usage {
        wall_seconds: 1800.0,
        cpu_seconds: 900.0,
        peak_memory_bytes: 0,
    };
    assert!((s.pricing.cost(&u, 0) - 1.0).abs() < 1e-9);
    assert_eq!(s.budget.for_group(&"lab".parse().unwrap()), Some(0.5));
    assert_eq!(s.budget.for_group(&"other".parse().unwrap()), Some(10.0));
    // A GPU-hour price: per GPU held, per hour of wall time, in the cost and the estimate.
    let g = format!("{base}[pricing]\nwall_hour = 1.0\ngpu_hour = 3.0\n");
    let s = AnalysisSpec::parse(&g, Path::new("caas.toml")).unwrap();
    assert!((s.pricing.cost(&u, 2) - (0.5 + 2.0 * 0.5 * 3.0)).abs() < 1e-9);
    assert!((s.pricing.cost(&u, 0) - 0.5).abs() < 1e-9);
    assert!((s.pricing.estimate(2.0, 1.0, 0, 4) - 2.0 * (1.0 + 4.0 * 3.0)).abs() < 1e-9);
    let bad = format!("{base}[pricing]\nper_gpu = 1\n");
    assert!(AnalysisSpec::parse(&bad, Path::new("caas.toml")).is_err());
}
