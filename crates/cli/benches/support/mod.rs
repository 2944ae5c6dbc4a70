//! Helpers the benches that start a real `caas serve` share (api, inplace): ports, waiting,
//! the S3 test server's environment and the AWS CLI, running the `caas` binary, and the server.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A bench's result: failures are messages.
pub type R<T> = Result<T, String>;

pub fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

pub fn free_port() -> R<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(e)?
        .local_addr()
        .map_err(e)?
        .port())
}

pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> R<()> {
    let t0 = Instant::now();
    while !cond() {
        if t0.elapsed() > limit {
            return Err("timed out waiting".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub fn s3_env(c: &mut Command) -> &mut Command {
    c.env("AWS_ENDPOINT_URL", "http://127.0.0.1:5055")
        .env("AWS_ACCESS_KEY_ID", "caas-test")
        .env("AWS_SECRET_ACCESS_KEY", "caas-test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
}

pub fn aws(args: &[&str]) -> R<()> {
    let venv = std::env::var("CAAS_VENV").unwrap_or_else(|_| "/opt/caas-venv".into());
    let out = s3_env(&mut Command::new(format!("{venv}/bin/aws")))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|x| format!("aws (installed by scripts/setup.sh): {x}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "aws {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub fn caas(store: &str, args: &[&str]) -> R<String> {
    let out = s3_env(&mut Command::new(env!("CARGO_BIN_EXE_caas")))
        .args(args)
        .args(["--store", store])
        .env("RUST_LOG", "warn")
        .output()
        .map_err(e)?;
    if !out.status.success() {
        return Err(format!(
            "caas {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `caas serve --listen` on a free port with a user `bench` of group `bench` and its token;
/// killed when dropped.
pub struct Serve {
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The bench user's API token.
    pub token: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `caas serve --store <store> --poll 500ms <args>` (its log in `log`) and wait until it
/// listens.
pub fn serve(store: &str, args: &[String], log: &Path) -> R<Serve> {
    caas(store, &["users", "add", "bench", "--group", "bench"])?;
    let t: serde_json::Value =
        serde_json::from_str(&caas(store, &["token", "create", "bench", "--json"])?).map_err(e)?;
    let token = t["token"].as_str().ok_or("no token")?.to_string();
    let port = free_port()?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_caas"));
    s3_env(&mut cmd)
        .env("RUST_LOG", "info")
        .args(["serve", "--store", store, "--poll", "500ms"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args);
    let f = std::fs::File::create(log).map_err(e)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone().map_err(e)?)
        .stderr(f)
        .spawn()
        .map_err(e)?;
    let s = Serve {
        child,
        base: format!("http://127.0.0.1:{port}"),
        token,
    };
    wait_until(Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .map_err(|_| {
        format!(
            "caas serve did not listen: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    })?;
    Ok(s)
}
