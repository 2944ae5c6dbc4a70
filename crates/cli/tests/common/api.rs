//! The HTTP API under test: `caas serve --listen 127.0.0.1:<free port>` as a real process, tokens
//! made with the real `caas users add` / `caas token create`, and a real HTTP client that
//! records every status it sees (so a test can assert that no answer was a 5xx). Raw requests
//! go over a plain TCP socket, for paths an HTTP client would normalise (`..`, `%2e%2e`).

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::caas;
use super::server::{Server, wait_for};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `caas serve --listen`.
pub struct ApiServer {
    pub srv: Server,
    pub base: String,
    pub addr: String,
}

/// Start `caas serve --store STORE --analysis A... --listen 127.0.0.1:PORT EXTRA...` with `env`.
pub fn start_api(
    store: &str,
    analyses: &[&Path],
    extra: &[&str],
    env: &[(&str, String)],
    log: &Path,
) -> ApiServer {
    let file = std::fs::File::create(log).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = caas();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env("RUST_LOG", "info")
        .arg("serve")
        .args(["--store", store, "--poll", "200ms", "--listen", &addr]);
    for a in analyses {
        cmd.arg("--analysis").arg(a);
    }
    let child = cmd
        .args(extra)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let srv = Server {
        child,
        log: log.to_path_buf(),
    };
    assert!(
        wait_for(Duration::from_secs(60), || srv
            .log_text()
            .contains("API on http://")),
        "caas serve --listen did not start: {}",
        srv.log_text()
    );
    ApiServer {
        srv,
        base: format!("http://{addr}"),
        addr,
    }
}

/// Run `caas ARGS` with `env`; panics unless it succeeds; returns stdout.
pub fn caas_ok(env: &[(&str, String)], args: &[&str]) -> String {
    let mut c = caas();
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "caas {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Add `user` with `groups` and make a token (`extra`: e.g. `--read-only`); returns the token.
pub fn token_for(
    store: &str,
    env: &[(&str, String)],
    user: &str,
    groups: &[&str],
    extra: &[&str],
) -> String {
    let mut args = vec!["users", "add", user, "--store", store];
    for g in groups {
        args.extend(["--group", g]);
    }
    caas_ok(env, &args);
    let mut args = vec!["token", "create", user, "--store", store, "--json"];
    args.extend(extra);
    let out = caas_ok(env, &args);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v.get("hash").is_none(), "the hash is never printed: {v}");
    v["token"].as_str().unwrap().to_string()
}

/// An HTTP client with a token; every status is recorded.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::blocking::Client,
    pub base: String,
    pub addr: String,
    pub token: String,
    pub seen: Arc<Mutex<Vec<(String, u16)>>>,
}

/// An answer: status, headers and body.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    pub fn new(api: &ApiServer, token: &str) -> Self {
        Self {
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            base: api.base.clone(),
            addr: api.addr.clone(),
            token: token.to_string(),
            seen: Arc::default(),
        }
    }

    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: token.to_string(),
            ..self.clone()
        }
    }

    pub fn record(&self, what: String, status: u16) {
        assert!(status < 500, "{what}: a 5xx ({status})");
        self.seen.lock().unwrap().push((what, status));
    }

    /// Send a request; `path` is appended to the base URL as given.
    pub fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<reqwest::blocking::Body>,
    ) -> Answer {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if !self.token.is_empty() {
            req = req.header("authorization", format!("Bearer {}", self.token));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().unwrap().to_vec();
        self.record(format!("{method} {path}"), status);
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn get(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, &[], None)
    }

    pub fn put(&self, path: &str, body: impl Into<reqwest::blocking::Body>) -> Answer {
        self.send(reqwest::Method::PUT, path, &[], Some(body.into()))
    }

    pub fn post(&self, path: &str, json: &serde_json::Value) -> Answer {
        self.send(
            reqwest::Method::POST,
            path,
            &[("content-type", "application/json")],
            Some(json.to_string().into()),
        )
    }

    pub fn post_raw(&self, path: &str, body: &str) -> Answer {
        self.send(
            reqwest::Method::POST,
            path,
            &[("content-type", "application/json")],
            Some(body.to_string().into()),
        )
    }

    /// A request written byte for byte on a TCP socket (no normalisation of the path); returns
    /// the status.
    pub fn raw(&self, method: &str, path: &str, body: &[u8]) -> u16 {
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            self.token,
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP answer to {method} {path}: {text:?}"));
        self.record(format!("raw {method} {path}"), status);
        status
    }

    /// Poll the job until it has ended (a terminal state and its end marker, at most `limit`);
    /// returns its JSON.
    pub fn wait_job(&self, group: &str, job: &str, limit: Duration) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        let done = wait_for(limit, || {
            let a = self.get(&format!("/api/v1/groups/{group}/jobs/{job}"));
            if a.status != 200 {
                return false;
            }
            last = a.json();
            matches!(
                last["state"].as_str(),
                Some("succeeded" | "failed" | "timed_out" | "cancelled" | "lost" | "rejected")
            )
        });
        assert!(done, "job {job} did not end: {last}");
        // job.json turns terminal before the job's last writes (the provenance crate, then
        // `process_results/end.txt`): wait for the end marker, so a caller sees the finished job.
        let ended = wait_for(limit, || {
            let a = self.get(&format!("/api/v1/groups/{group}/jobs/{job}/results"));
            a.status == 200
                && a.json().as_array().is_some_and(|files| {
                    files.iter().any(|f| f["path"] == "process_results/end.txt")
                })
        });
        assert!(ended, "job {job} has no end.txt: {last}");
        // The job as it ended (job.json is written once more when it ends: reason, finished).
        let a = self.get(&format!("/api/v1/groups/{group}/jobs/{job}"));
        assert_eq!(a.status, 200, "job {job}: {}", a.text());
        a.json()
    }

    /// How many requests were made, and how many of them had each status.
    pub fn counts(&self) -> std::collections::BTreeMap<u16, usize> {
        let mut m = std::collections::BTreeMap::new();
        for (_, s) in self.seen.lock().unwrap().iter() {
            *m.entry(*s).or_default() += 1;
        }
        m
    }
}

/// Every file below `dir` (hidden ones too) with its bytes, leaving out `skip` prefixes (paths
/// relative to `dir`).
pub fn fingerprint(dir: &Path, skip: &[&str]) -> Vec<(String, Vec<u8>)> {
    super::snapshot(dir)
        .into_iter()
        .filter_map(|(p, b)| {
            let rel = Path::new(&p).strip_prefix(dir).ok()?.display().to_string();
            (!skip.iter().any(|s| rel.starts_with(s))).then_some((rel, b))
        })
        .collect()
}

/// `Command` for the AWS-less local case: nothing to set.
pub fn no_env() -> Vec<(&'static str, String)> {
    Vec::new()
}
