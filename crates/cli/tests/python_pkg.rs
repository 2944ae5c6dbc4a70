//! The Python package (`python/`) against the real server: `pip install ./python` (into a
//! folder of its own, so the shared venv is untouched), then `python -m pytest python/tests`
//! with that install first on the path, against `caas serve --listen` on a local store and on
//! S3 (moto), the Docker executor running a real analysis.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::api::*;
use common::*;

fn python() -> std::path::PathBuf {
    std::env::var_os("CAAS_PYTHON")
        .map(Into::into)
        .unwrap_or_else(|| "/opt/caas-venv/bin/python".into())
}

/// `pip install ./python` into `target` (from a copy of the folder, so the build leaves
/// nothing in the repository); returns where `import caas` then comes from.
fn pip_install(target: &Path) -> String {
    let src = target.with_extension("src");
    let cp = Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("python"))
        .arg(&src)
        .status()
        .unwrap();
    assert!(cp.success());
    let out = Command::new(python())
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
        ])
        .arg(target)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pip install ./python: {}",
        stderr(&out)
    );
    let out = Command::new(python())
        .args(["-c", "import caas; print(caas.__file__)"])
        .env("PYTHONPATH", target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

fn session(store: &str, env: &[(&str, String)], sb: &Sandbox) {
    let analysis = sb.analysis(&shell_analysis(
        "py-flow",
        "for i in 1 2 3; do echo line $i; sleep 0.3; done; sleep $(cat {config}); wc -l < {data} > {results}/lines.txt",
        "",
    ));
    let ann = token_for(store, env, "ann", &["lab"], &[]);
    let bob = token_for(store, env, "bob", &["other"], &[]);
    let api = start_api(store, &[&analysis], &[], env, &sb.path().join("serve.log"));
    let target = sb.path().join("site");
    let installed = pip_install(&target);
    assert!(
        installed.starts_with(target.to_str().unwrap()),
        "{installed}"
    );
    let out = Command::new(python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(repo_root().join("python/tests"))
        .env("PYTHONPATH", &target)
        .env("CAAS_SERVER", &api.base)
        .env("CAAS_TOKEN", ann)
        .env("CAAS_OTHER_TOKEN", bob)
        .env("CAAS_RUN", format!("r{}", std::process::id()))
        .env("XDG_CACHE_HOME", sb.path().join("cache"))
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    println!("{text}");
    assert!(
        out.status.success(),
        "python -m pytest python/tests:\n{text}"
    );
    assert!(text.contains("5 passed"), "{text}");
}

#[test]
fn python_package_on_a_local_store() {
    ensure_engine();
    let sb = Sandbox::new();
    let store = sb.store().display().to_string();
    session(&store, &no_env(), &sb);
}

#[test]
fn python_package_on_s3() {
    ensure_engine();
    let sb = Sandbox::new();
    assert!(
        std::net::TcpStream::connect("127.0.0.1:5055").is_ok(),
        "the S3 server (moto) is not running on 127.0.0.1:5055; run scripts/setup.sh"
    );
    let env: Vec<(&str, String)> = vec![
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:5055".into()),
        ("AWS_ACCESS_KEY_ID", "caas-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "caas-test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ];
    let bucket = format!("caas-py-{}", std::process::id());
    let out = Command::new("/opt/caas-venv/bin/aws")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["--endpoint-url", "http://127.0.0.1:5055", "s3", "mb"])
        .arg(format!("s3://{bucket}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    session(&format!("s3://{bucket}/caas"), &env, &sb);
}
