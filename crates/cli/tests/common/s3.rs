//! The S3 test server (moto, started by scripts/setup.sh) and the AWS CLI as an independent
//! client: the endpoint, the test credentials, and `aws` run as a user runs it.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use super::{ensure_engine, repo_root, stderr, stdout};

pub fn endpoint() -> String {
    let port = std::env::var("CAAS_S3_PORT").unwrap_or_else(|_| "5055".into());
    format!("http://127.0.0.1:{port}")
}

pub fn aws_bin() -> String {
    let venv = std::env::var("CAAS_VENV").unwrap_or_else(|_| "/opt/caas-venv".into());
    format!("{venv}/bin/aws")
}

/// Make sure the S3 server answers (runs scripts/setup.sh once if not).
pub fn ensure_s3() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        ensure_engine();
        let up = std::net::TcpStream::connect(endpoint().trim_start_matches("http://")).is_ok();
        if !up || !Path::new(&aws_bin()).exists() {
            let st = Command::new("bash")
                .arg(repo_root().join("scripts/setup.sh"))
                .status()
                .expect("run scripts/setup.sh");
            assert!(st.success(), "scripts/setup.sh failed");
        }
    });
}

pub fn with_aws_env(c: &mut Command) -> &mut Command {
    c.env("AWS_ENDPOINT_URL", endpoint())
        .env("AWS_ACCESS_KEY_ID", "caas-test")
        .env("AWS_SECRET_ACCESS_KEY", "caas-test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
}

/// The AWS CLI, as the user runs it.
pub fn aws(args: &[&str]) -> Output {
    let mut c = Command::new(aws_bin());
    with_aws_env(&mut c)
        .args(["--endpoint-url", &endpoint()])
        .args(args);
    c.output().expect("run the AWS CLI")
}

pub fn aws_ok(args: &[&str]) -> String {
    let out = aws(args);
    assert!(
        out.status.success(),
        "aws {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}
