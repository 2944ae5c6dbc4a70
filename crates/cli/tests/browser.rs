//! The web page in a real headless Chromium (Debian's `chromium` driven through its
//! `chromedriver`) against a real `caas serve --listen` with the example analysis: sign in
//! (a bad token first), upload a dataset through the file input and a config by drag-and-drop
//! with the progress bar reaching 100 %, a file in resumable parts (resumed where an earlier
//! upload stopped), submit, watch the job turn SUCCESS, its logs arrive live, and download a
//! result and `results.tar`, checking their bytes. Screenshots of every step go to
//! `target/screenshots/`; the job page also to `docs/screenshots/job-page.png` (the README's)
//! with `CAAS_UPDATE_SCREENSHOTS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::server::*;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const LIMIT: Duration = Duration::from_secs(120);

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) -> bool {
    wait_for(Duration::from_secs(60), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
}

/// Chromium and chromedriver, installed by scripts/setup.sh when missing.
fn ensure_chromium() {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        let st = Command::new("bash")
            .arg(repo_root().join("scripts/setup.sh"))
            .status()
            .expect("run scripts/setup.sh");
        assert!(st.success(), "scripts/setup.sh failed");
    }
    assert!(Path::new(CHROMEDRIVER).exists(), "no {CHROMEDRIVER}");
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Runs `caas ARGS --store STORE`, asserting success; returns stdout.
fn caas_ok(store: &Path, args: &[&str]) -> String {
    let out = caas()
        .args(args)
        .arg("--store")
        .arg(store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "caas {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// The browser session with the helpers the steps use.
struct Page {
    c: Client,
    shots: PathBuf,
    step: usize,
    server_log: PathBuf,
}

impl Page {
    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.c.execute(script, args).await.unwrap()
    }

    async fn text(&self, id: &str) -> String {
        self.js(
            "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;",
            vec![json!(id)],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    async fn shot(&mut self, name: &str) -> Vec<u8> {
        self.step += 1;
        let png = self.c.screenshot().await.unwrap();
        std::fs::create_dir_all(&self.shots).unwrap();
        std::fs::write(
            self.shots.join(format!("{:02}-{name}.png", self.step)),
            &png,
        )
        .unwrap();
        png
    }

    /// Polls `script` (a function body returning a value) until it returns something truthy;
    /// on timeout saves a screenshot and fails with what the page and the server said.
    async fn until(&mut self, what: &str, script: &str, limit: Duration) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.js(script, vec![]).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if t0.elapsed() > limit {
                self.shot(&format!("timeout-{}", what.replace(' ', "-")))
                    .await;
                let error = self.text("error").await;
                let status = self.text("upload-status").await;
                let state = self.text("job-state").await;
                let logs = self.text("logs").await;
                panic!(
                    "timed out waiting for {what}: #error {error:?}, #upload-status {status:?}, \
                     #job-state {state:?}, #logs {logs:?}\nserver log:\n{}",
                    std::fs::read_to_string(&self.server_log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.c
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// Sends `path` to the (hidden) file input, as picking it in the file dialog does.
    async fn choose_file(&self, path: &Path) {
        self.c
            .find(Locator::Id("file-input"))
            .await
            .unwrap()
            .send_keys(path.to_str().unwrap())
            .await
            .unwrap();
    }

    /// Waits until the progress bar says 100 and its status names `name` as stored.
    async fn wait_uploaded(&mut self, name: &str, limit: Duration) {
        let script = format!(
            "const p = document.getElementById('upload-progress'); \
             const s = document.getElementById('upload-status').textContent; \
             return p.value === 100 && s.startsWith({name:?}) && s.includes(': uploaded (') && s.endsWith(')');",
            name = format!("{name} ")
        );
        self.until(&format!("upload of {name}"), &script, limit)
            .await;
        assert_eq!(self.text("error").await, "", "an error was shown");
    }
}

/// Waits (at most `limit`) for a file to appear complete in the download folder.
fn wait_download(dir: &Path, name: &str, limit: Duration) -> Vec<u8> {
    let p = dir.join(name);
    assert!(
        wait_for(limit, || {
            p.is_file()
                && std::fs::read_dir(dir)
                    .unwrap()
                    .flatten()
                    .all(|e| !e.file_name().to_string_lossy().ends_with(".crdownload"))
        }),
        "no download {} (folder has {:?})",
        p.display(),
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect::<Vec<_>>()
    );
    std::fs::read(&p).unwrap()
}

/// The bytes of `name` inside a tar archive, if it holds that file.
fn tar_member(tar: &[u8], suffix: &str) -> Option<Vec<u8>> {
    let mut a = tar::Archive::new(tar);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        if path.ends_with(suffix) {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            return Some(v);
        }
    }
    None
}

#[test]
fn the_web_page_signs_in_uploads_submits_follows_a_job_and_downloads_its_results() {
    ensure_chromium();
    let spike = example_analysis();
    let sb = Sandbox::new();
    // A second analysis whose output comes slowly: the logs must arrive while it runs.
    // Its config has a JSON Schema, which the page turns into a form.
    let ticker = sb.analysis(&shell_analysis(
        "ticker",
        "for i in 1 2 3 4 5 6; do echo tick $i; sleep 1; done; echo ticked > {results}/ticks.txt",
        "[inputs]\nschema = \"schema.json\"\n",
    ));
    std::fs::write(
        ticker.join("schema.json"),
        json!({
            "type": "object",
            "required": ["count", "mode"],
            "properties": {
                "count": {"type": "integer", "minimum": 1, "default": 6, "description": "how many ticks"},
                "rate": {"type": "number"},
                "label": {"type": "string", "default": "tick"},
                "loud": {"type": "boolean"},
                "mode": {"enum": ["slow", "fast"]}
            },
            "additionalProperties": false
        })
        .to_string(),
    )
    .unwrap();
    let store = sb.store();
    std::fs::create_dir_all(&store).unwrap();
    caas_ok(&store, &["users", "add", "alice", "--group", "lab"]);
    let created: Value =
        serde_json::from_str(&caas_ok(&store, &["token", "create", "alice", "--json"])).unwrap();
    let token = created["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {created}"))
        .to_string();
    assert!(token.starts_with("caas_"), "{token}");

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server_log = sb.path().join("serve.log");
    let _srv = Server::start(
        store.to_str().unwrap(),
        &[&spike, &ticker],
        &["--listen", &listen],
        &server_log,
    );
    assert!(wait_port(port), "caas serve does not listen on {listen}");

    let driver_port = free_port();
    let _driver = Proc(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .arg(format!(
                "--log-path={}",
                sb.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_port(driver_port), "chromedriver did not start");

    let downloads = sb.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let profile = sb.path().join("chromium-profile");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu",
                         "--disable-background-networking", "--no-first-run",
                         "--disable-dev-shm-usage", "--window-size=1280,1500",
                         format!("--user-data-dir={}", profile.display())],
                "prefs": {
                    "download.default_directory": downloads.to_str().unwrap(),
                    "download.prompt_for_download": false,
                },
            }),
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
            .expect("a chromedriver session");
        let shots = target_dir().join("screenshots");
        let _ = std::fs::remove_dir_all(&shots); // only this run's steps
        let mut p = Page {
            c,
            shots,
            step: 0,
            server_log: server_log.clone(),
        };
        let base = format!("http://{listen}/");
        p.c.goto(&base).await.unwrap();
        assert_eq!(p.c.title().await.unwrap(), "caas");
        // The page and its script and style come from the binary, not from any CDN.
        let sources = p
            .js(
                "return [...document.querySelectorAll('script[src], link[href]')].map(e => e.src || e.href);",
                vec![],
            )
            .await;
        for s in sources.as_array().unwrap() {
            assert!(s.as_str().unwrap().starts_with(&base), "{s}");
        }
        p.shot("sign-in").await;

        // A wrong token: the API's 401 message is shown, nothing else.
        let bad_token = &format!("caas_000000000000_{}", "0".repeat(64));
        p.c.find(Locator::Id("token"))
            .await
            .unwrap()
            .send_keys(bad_token)
            .await
            .unwrap();
        p.click("#sign-in").await;
        let err = p
            .until(
                "the error of a bad token",
                "const e = document.getElementById('error'); return !e.hidden && e.textContent;",
                LIMIT,
            )
            .await;
        let said: Value = reqwest::Client::new()
            .get(format!("{base}api/v1/whoami"))
            .bearer_auth(bad_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(err, said["error"], "the page must show the API's message");
        assert_eq!(p.js("return document.getElementById('app').hidden;", vec![]).await, json!(true));
        p.shot("bad-token").await;

        // Sign in.
        p.js("document.getElementById('token').value = '';", vec![]).await;
        p.c.find(Locator::Id("token"))
            .await
            .unwrap()
            .send_keys(&token)
            .await
            .unwrap();
        p.click("#sign-in").await;
        p.until(
            "sign-in",
            "return document.getElementById('whoami').textContent.startsWith('alice') && \
             document.querySelectorAll('#analyses .analysis').length === 2 && \
             getComputedStyle(document.getElementById('sign-in-form')).display === 'none';",
            LIMIT,
        )
        .await;
        assert_eq!(p.text("error").await, "");
        assert_eq!(
            p.js("return document.getElementById('group').value;", vec![]).await,
            json!("lab")
        );
        assert_eq!(
            p.js(
                "return sessionStorage.getItem('caas-token');",
                vec![]
            )
            .await,
            json!(token)
        );
        let analyses = p.text("analyses").await;
        assert!(analyses.contains("spike-detect"), "{analyses}");
        assert!(analyses.contains("v0.1.0"), "{analyses}");
        assert!(
            analyses.contains("Detect spikes in a single-channel"),
            "{analyses}"
        );
        p.shot("signed-in").await;

        // A dataset through the file input: the bar goes from 0 to 100.
        assert_eq!(
            p.js("return document.getElementById('upload-progress').value;", vec![])
                .await,
            json!(0)
        );
        let trace = spike.join("sample/trace.csv");
        p.choose_file(&trace).await;
        p.wait_uploaded("trace.csv", LIMIT).await;
        assert_eq!(
            std::fs::read(store.join("lab/inputs/trace.csv")).unwrap(),
            std::fs::read(&trace).unwrap()
        );
        p.shot("dataset-uploaded").await;

        // A config dropped on the drop zone (a real drop event carrying a File).
        let config = std::fs::read_to_string(spike.join("sample/config.yaml")).unwrap();
        p.js(
            "const dt = new DataTransfer(); \
             dt.items.add(new File([arguments[0]], 'config.yaml', {type: 'text/yaml'})); \
             document.getElementById('drop').dispatchEvent(new DragEvent('drop', \
               {dataTransfer: dt, bubbles: true, cancelable: true}));",
            vec![json!(config)],
        )
        .await;
        p.wait_uploaded("config.yaml", LIMIT).await;
        assert_eq!(
            std::fs::read_to_string(store.join("lab/configs/config.yaml")).unwrap(),
            config
        );
        assert_eq!(
            p.js("return document.getElementById('configs').value;", vec![]).await,
            json!("config.yaml")
        );

        // A file above 8 MiB goes in resumable parts. An earlier upload of it stopped after
        // its first part (sent here directly); the page asks the server and resumes there.
        let big: Vec<u8> = (0..20 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let big_path = sb.path().join("big.bin");
        std::fs::write(&big_path, &big).unwrap();
        let http = reqwest::Client::new();
        let api = format!("http://{listen}/api/v1/groups/lab/uploads");
        let up: Value = http
            .post(&api)
            .bearer_auth(&token)
            .json(&json!({"kind": "inputs", "name": "big.bin", "size": big.len()}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = up["id"].as_str().unwrap_or_else(|| panic!("{up}")).to_string();
        let part = 8 * 1024 * 1024;
        let r = http
            .put(format!("{api}/{id}?offset=0"))
            .bearer_auth(&token)
            .body(big[..part].to_vec())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{:?}", r.text().await);
        let mtime_ms = std::fs::metadata(&big_path)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        p.js(
            "localStorage.setItem(arguments[0], arguments[1]);",
            vec![
                json!(format!("caas-upload:lab:inputs:big.bin:{}:{mtime_ms}", big.len())),
                json!(id),
            ],
        )
        .await;
        assert!(!store.join("lab/inputs/big.bin").exists());
        p.choose_file(&big_path).await;
        p.wait_uploaded("big.bin", LIMIT).await;
        assert_eq!(
            p.js(
                "return document.getElementById('upload-progress').dataset.resumedFrom;",
                vec![]
            )
            .await,
            json!(part.to_string()),
            "the page did not resume the interrupted upload"
        );
        assert!(
            std::fs::read(store.join("lab/inputs/big.bin")).unwrap() == big,
            "the stored big.bin differs from the file"
        );
        p.shot("uploaded").await;

        // Pick trace.csv (uploaded ones are ticked; untick big.bin) and submit.
        let ticked = p
            .js(
                "return [...document.querySelectorAll('#datasets input:checked')].map(c => c.value).sort();",
                vec![],
            )
            .await;
        assert_eq!(ticked, json!(["big.bin", "trace.csv"]));
        p.click("#datasets input[value='big.bin']").await;
        p.js(
            "document.getElementById('analysis').value = 'spike-detect';",
            vec![],
        )
        .await;
        p.shot("ready-to-submit").await;
        p.click("#submit").await;
        let job = p
            .until(
                "the job page",
                "const m = location.hash.match(/^#job\\/(.+)$/); return m && decodeURIComponent(m[1]);",
                LIMIT,
            )
            .await;
        let job = job.as_str().unwrap().to_string();
        assert!(job.starts_with("job__spike-detect_"), "{job}");
        p.until(
            "SUCCESS",
            "const s = document.getElementById('job-state'); \
             return s.dataset.state === 'succeeded' && s.textContent.includes('SUCCESS') && \
               document.querySelector('#job-datasets tr[data-dataset=\"trace.csv\"] .state')?.dataset.state === 'succeeded' && \
               document.getElementById('log-state').textContent.startsWith('complete') && \
               document.querySelectorAll('#results .result-link').length > 0 && \
               document.getElementById('certificate').textContent.includes('SUCCESS');",
            LIMIT,
        )
        .await;
        let logs = p.text("logs").await;
        let stored_log =
            std::fs::read_to_string(store.join(format!("lab/results/{job}/logs/trace.csv.stdout.log")))
                .unwrap();
        assert_eq!(logs, stored_log, "the page's stdout differs from the stored log");
        assert!(logs.contains("detect: 68 spikes"), "{logs}");
        assert_eq!(p.text("error").await, "");
        let png = p.shot("job-page").await;
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        // The README's picture is refreshed on request only, so a test run leaves the
        // checkout clean.
        if std::env::var_os("CAAS_UPDATE_SCREENSHOTS").is_some() {
            let docs = repo_root().join("docs/screenshots");
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(docs.join("job-page.png"), &png).unwrap();
        }

        // Download spikes.csv and results.tar; their bytes are the stored ones.
        let path = p
            .js(
                "return [...document.querySelectorAll('#results .result-link')].map(a => a.dataset.path).find(p => p.endsWith('spikes.csv'));",
                vec![],
            )
            .await;
        let path = path.as_str().unwrap_or_else(|| panic!("no spikes.csv: {path}")).to_string();
        p.click(&format!("#results .result-link[data-path='{path}']"))
            .await;
        let got = wait_download(&downloads, "spikes.csv", LIMIT);
        let stored = std::fs::read(
            store.join(format!("lab/results/{job}")).join(&path),
        )
        .unwrap();
        assert_eq!(got, stored, "downloaded spikes.csv differs from the stored one");
        assert!(got.starts_with(b"time_ms,amplitude_uv\n"));
        p.click("#download-tar").await;
        let tar = wait_download(&downloads, &format!("{job}.tar"), LIMIT);
        assert_eq!(
            tar_member(&tar, "spikes.csv").as_deref(),
            Some(&stored[..]),
            "results.tar has no spikes.csv with the stored bytes"
        );
        assert_eq!(p.text("error").await, "");

        // Live logs: a slower job's first lines show while it still runs.
        p.click("#back").await;
        p.until(
            "the job list",
            &format!(
                "return !document.getElementById('home-view').hidden && \
                 document.querySelector('#jobs tr[data-job=\"{job}\"] .state')?.dataset.state === 'succeeded';"
            ),
            LIMIT,
        )
        .await;
        p.shot("jobs").await;
        // The ticker's config from the form its schema makes: a bad value is refused by the
        // page, a good one uploaded as JSON and picked as the config.
        let form = "#analyses .analysis[data-analysis='ticker'] form";
        p.js(
            "document.getElementById('cfg-ticker-count').value = '2.5';",
            vec![],
        )
        .await;
        p.click(&format!("{form} button[type='submit']")).await;
        let err = p
            .until(
                "the form's complaint",
                "const e = document.getElementById('error'); return !e.hidden && e.textContent;",
                LIMIT,
            )
            .await;
        assert_eq!(err, json!("count must be an integer"));
        p.js(
            "document.getElementById('cfg-ticker-count').value = '6'; \
             document.getElementById('cfg-ticker-rate').value = '0.5'; \
             document.getElementById('cfg-ticker-loud').checked = true; \
             document.getElementById('cfg-ticker-mode').value = '1';",
            vec![],
        )
        .await;
        p.click(&format!("{form} button[type='submit']")).await;
        p.wait_uploaded("ticker-config.json", LIMIT).await;
        let made: Value = serde_json::from_slice(
            &std::fs::read(store.join("lab/configs/ticker-config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            made,
            json!({"count": 6, "rate": 0.5, "label": "tick", "loud": true, "mode": "fast"})
        );
        assert_eq!(
            p.js("return document.getElementById('configs').value;", vec![]).await,
            json!("ticker-config.json")
        );
        p.shot("schema-form").await;
        p.js(
            "document.getElementById('analysis').value = 'ticker';",
            vec![],
        )
        .await;
        p.click("#submit").await;
        let live = p
            .until(
                "live logs",
                "const s = document.getElementById('job-state').dataset.state; \
                 const l = document.getElementById('logs').textContent; \
                 return l.includes('tick 1') ? {state: s, logs: l} : null;",
                LIMIT,
            )
            .await;
        // The page polls the job's state each second: it may still show an earlier state
        // than the running one, but never an end.
        assert!(
            !["succeeded", "failed", "timed_out", "cancelled", "lost", "rejected"]
                .contains(&live["state"].as_str().unwrap()),
            "the first log line showed only when the job was {}",
            live["state"]
        );
        assert!(!live["logs"].as_str().unwrap().contains("tick 6"), "{live}");
        p.shot("live-logs").await;
        p.until(
            "the ticker's end",
            "return document.getElementById('job-state').dataset.state === 'succeeded' && \
                    document.getElementById('log-state').textContent.startsWith('complete');",
            LIMIT,
        )
        .await;
        let logs = p.text("logs").await;
        let want: String = (1..=6).map(|i| format!("tick {i}\n")).collect();
        assert_eq!(logs, want, "live log lost or doubled lines");
        p.shot("ticker-done").await;
        p.c.close().await.unwrap();
    });
}
