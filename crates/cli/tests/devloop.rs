//! The developer workflow end to end on the real Docker engine: `caas new`, `build`, `shell`
//! (through a real pseudo-terminal, driven with tmux), `exec`, `save`, `history`, `reset`,
//! `prune`, `run --dev` and credentials; and every bad input gets a clear error with nothing
//! stored lost.

// The helpers below are test code too.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::dev::Dev;
use common::*;

/// An interactive `caas shell` in a tmux pseudo-terminal.
struct Pty {
    socket: String,
}

impl Pty {
    fn start(dir: &Path, caas_args: &str) -> Self {
        let socket = format!(
            "caas-test-{}-{}",
            std::process::id(),
            dir.to_string_lossy().len() ^ (Instant::now().elapsed().subsec_nanos() as usize)
        );
        let cmd = format!(
            "cd {:?} && {:?} shell {caas_args}; echo CAAS-EXIT:$?; sleep 60",
            dir,
            env!("CARGO_BIN_EXE_caas")
        );
        let st = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-s", "t", "-x", "120"])
            .args(["-y", "40", &cmd])
            .status()
            .unwrap();
        assert!(st.success(), "tmux did not start");
        Self { socket }
    }

    fn send(&self, keys: &[&str]) {
        let st = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "t"])
            .args(keys)
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn resize(&self, cols: u16, rows: u16) {
        let st = Command::new("tmux")
            .args(["-L", &self.socket, "resize-window", "-t", "t"])
            .args(["-x", &cols.to_string(), "-y", &rows.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args([
                "-L",
                &self.socket,
                "capture-pane",
                "-p",
                "-J",
                "-S",
                "-500",
                "-t",
                "t",
            ])
            .output()
            .unwrap();
        stdout(&out)
    }

    /// Wait until the screen shows `text`; panics with the screen after 30 s.
    fn expect(&self, text: &str) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(text) {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "timed out waiting for {text:?}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn new_scaffolds_a_layer_cache_friendly_analysis_and_refuses_a_non_empty_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = caas()
        .current_dir(tmp.path())
        .args(["new", "pyan", "--template", "python"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let d = tmp.path().join("pyan");
    for f in [
        "caas.toml",
        "Dockerfile",
        ".dockerignore",
        "src/main.py",
        "requirements.txt",
        "sample/data.csv",
        "sample/config.yaml",
    ] {
        assert!(d.join(f).is_file(), "{f} missing");
    }
    let df = std::fs::read_to_string(d.join("Dockerfile")).unwrap();
    let pos = |s: &str| df.find(s).unwrap_or_else(|| panic!("{s} not in {df}"));
    assert!(df.starts_with("#") && df.contains("FROM python:3.12-slim"));
    assert!(pos("apt-get") < pos("pip install") && pos("pip install") < pos("COPY src/"));
    assert!(
        std::fs::read_to_string(d.join(".dockerignore"))
            .unwrap()
            .contains(".caas/")
    );
    let toml = std::fs::read_to_string(d.join("caas.toml")).unwrap();
    assert!(toml.contains("name = \"pyan\"") && toml.contains("source = \"src\""));
    let py = std::fs::read_to_string(d.join("src/main.py")).unwrap();
    assert!(py.starts_with("\"\"\"The entry script"), "{py}");
    // The scaffolded caas.toml is valid (history loads it).
    let out = caas()
        .args(["history", "--json", "--analysis"])
        .arg(&d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // Into an existing non-empty folder: refused, nothing touched.
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    write(&busy.join("notes.txt"), "mine");
    let out = caas()
        .current_dir(tmp.path())
        .args(["new", "busy"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already exists and is not empty"),
        "{}",
        stderr(&out)
    );
    let left: Vec<_> = std::fs::read_dir(&busy).unwrap().collect();
    assert_eq!(left.len(), 1);
    assert_eq!(
        std::fs::read_to_string(busy.join("notes.txt")).unwrap(),
        "mine"
    );
    // A bad name: refused, nothing created.
    let out = caas()
        .current_dir(tmp.path())
        .args(["new", "Bad_Name"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!tmp.path().join("Bad_Name").exists());
    // No staging folder left behind.
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("caas-new")), "{names:?}");
}

#[test]
fn full_loop_new_build_shell_save_run_history() {
    let dev = Dev::new("loop");
    // The entry script also reports a file the developer adds in the shell.
    let main = dev.dir.join("src/main.sh");
    let script = std::fs::read_to_string(&main).unwrap();
    write(
        &main,
        &format!(
            "{script}if [ -f /opt/tools/marker ]; then cp /opt/tools/marker \"$out/marker\"; fi\n"
        ),
    );
    let out = dev.ok(&["build"]);
    assert!(
        stderr(&out).contains("built caas/loop-"),
        "{}",
        stderr(&out)
    );

    let pty = Pty::start(&dev.dir, "");
    pty.expect("caas: shell in caas-dev-loop-");
    pty.send(&[
        "mkdir -p /opt/tools && echo from-the-shell > /opt/tools/marker && echo made-$((40+2))",
        "Enter",
    ]);
    pty.expect("made-42");
    pty.send(&["ls /io/inputs", "Enter"]);
    pty.expect("data.csv");
    // A real terminal: its size, and then the window's new size.
    pty.send(&["echo size=$(stty size)", "Enter"]);
    pty.expect("size=40 120");
    pty.resize(100, 30);
    // The new size reaches the container asynchronously (SIGWINCH, then the engine): ask
    // until it shows.
    let t0 = Instant::now();
    loop {
        pty.send(&["echo size=$(stty size)", "Enter"]);
        std::thread::sleep(Duration::from_millis(300));
        if pty.screen().contains("size=30 100") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the window size did not follow:\n{}",
            pty.screen()
        );
    }
    // Ctrl-C goes to the container's shell, which stays.
    pty.send(&["sleep 60; echo not-interrupted", "Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    pty.send(&["C-c"]);
    pty.send(&["echo still-$((20+1))", "Enter"]);
    let screen = pty.expect("still-21");
    assert!(
        !screen.lines().any(|l| l.trim() == "not-interrupted"),
        "{screen}"
    );
    pty.send(&["exit 0", "Enter"]);
    pty.expect("CAAS-EXIT:0");
    drop(pty);
    // Nothing runs in it any more: stopped, not left running (its filesystem stays).
    let name = dev.history()["dev_container_name"]
        .as_str()
        .unwrap()
        .to_string();
    let running = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", &name])
        .output()
        .unwrap();
    assert_eq!(stdout(&running).trim(), "false");

    // Unsaved changes: reset refuses.
    let out = dev.caas(&["reset"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unsaved changes") && stderr(&out).contains("/opt/tools/marker"),
        "{}",
        stderr(&out)
    );

    let out = dev.ok(&["save", "--tag", "with-marker", "-m", "add marker", "--json"]);
    let saved: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(saved["image"].as_str().unwrap().ends_with(":with-marker"));
    assert_eq!(saved["diff"]["added"], 2, "{saved}"); // /opt/tools and its marker

    // run uses the saved (active) image: it sees the file.
    let out = dev.run("r1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dev.results("loop", "r1").join("marker")).unwrap(),
        "from-the-shell\n"
    );
    // --image picks another: the built image has no marker.
    let h = dev.history();
    let built = h["history"][0]["image"]["id"].as_str().unwrap().to_string();
    let out = dev.run("r2", &["--image", &built]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dev.results("loop", "r2").join("marker").exists());
    assert!(dev.results("loop", "r2").join("summary.json").is_file());

    // history shows both images, the saved one active, with parent, message and diff.
    let entries = h["history"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{h}");
    assert_eq!(entries[0]["kind"], "build");
    assert_eq!(entries[1]["kind"], "save");
    assert_eq!(entries[1]["parent"]["id"], entries[0]["image"]["id"]);
    assert_eq!(entries[1]["message"], "add marker");
    assert_eq!(entries[1]["active"], true);
    assert!(entries.iter().all(|e| e["present"] == true));
    let text = stdout(&dev.ok(&["history"]));
    assert!(
        text.contains("build") && text.contains("with-marker") && text.contains("add marker"),
        "{text}"
    );

    // Saved: reset now goes through and removes the container.
    dev.ok(&["reset"]);
    let name = h["dev_container_name"].as_str().unwrap();
    let ps = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter", &format!("name=^{name}$")])
        .output()
        .unwrap();
    assert!(stdout(&ps).trim().is_empty(), "container still there");
}

#[test]
fn build_failures_show_the_failing_step_and_keep_the_history() {
    let dev = Dev::new("bfail");
    dev.ok(&["build"]);
    let before = dev.state();
    let dockerfile = dev.dir.join("Dockerfile");
    let good = std::fs::read_to_string(&dockerfile).unwrap();

    write(
        &dockerfile,
        &good.replace(
            "RUN mkdir -p /opt/analysis",
            "RUN mkdir -p /opt/analysis\nRUN echo about-to-fail && exit 7",
        ),
    );
    let out = dev.caas(&["build"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("image build failed at Step") && err.contains("exit 7"),
        "{err}"
    );
    assert!(err.contains("about-to-fail"), "{err}");
    assert_eq!(dev.state(), before, "a failed build changed the state");

    write(&dockerfile, &good.replace("COPY src/", "COPPY src/"));
    let out = dev.caas(&["build"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).to_lowercase().contains("coppy"),
        "{}",
        stderr(&out)
    );
    assert_eq!(dev.state(), before);
    // The earlier image still runs.
    let out = dev.run("after-fail", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn save_refuses_an_existing_tag_and_a_missing_container() {
    let dev = Dev::new("tags");
    dev.ok(&["build"]);
    let out = dev.caas(&["save"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no development container"),
        "{}",
        stderr(&out)
    );

    dev.ok(&["exec", "--", "sh", "-c", "echo 1 > /opt/one"]);
    dev.ok(&["save", "--tag", "v1"]);
    let before = dev.state();
    dev.ok(&["exec", "--", "sh", "-c", "echo 2 > /opt/two"]);
    let out = dev.caas(&["save", "--tag", "v1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("already exists") && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    assert_eq!(dev.state(), before, "a refused save changed the state");
    let out = dev.caas(&["save", "--tag", "bad tag!"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(dev.state(), before);

    let out = dev.ok(&["save", "--tag", "v1", "--force", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let h = dev.history();
    let hist = h["history"].as_array().unwrap();
    assert_eq!(hist.len(), 3); // build, v1, v1 again
    assert_eq!(hist[2]["image"]["id"], v["id"]);
    // The first v1 image lost its tag but not its place in the history.
    assert_ne!(hist[1]["image"]["id"], hist[2]["image"]["id"]);

    // Unsaved changes: reset refuses, --force throws them away.
    dev.ok(&["exec", "--", "sh", "-c", "echo 3 > /opt/three"]);
    let out = dev.caas(&["reset"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/opt/three"), "{}", stderr(&out));
    dev.ok(&["reset", "--force"]);
    let out = dev.ok(&["exec", "--", "sh", "-c", "ls /opt"]);
    assert!(!stdout(&out).contains("three"), "{}", stdout(&out));
    // The new container starts from the active image: the saved changes are there.
    assert!(
        stdout(&out).contains("one") && stdout(&out).contains("two"),
        "{}",
        stdout(&out)
    );

    // Without a terminal, `caas shell` reads commands from stdin.
    let mut child = caas()
        .current_dir(&dev.dir)
        .arg("shell")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"echo piped-$((1+2))\necho to-err >&2\nexit 4\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(stdout(&out), "piped-3\n");
    assert!(stderr(&out).contains("to-err"));

    // Ctrl-C on `caas exec` reaches the command in the container; it does not keep running.
    let mut child = caas()
        .current_dir(&dev.dir)
        .args(["exec", "--", "sh", "-c"])
        .arg("trap 'echo got-int; exit 9' INT; echo ready; sleep 60 & wait")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout_pipe = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("ready") {
        use std::io::Read;
        let n = stdout_pipe.read(&mut buf).unwrap();
        assert!(n > 0, "exec ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    let t0 = Instant::now();
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    {
        use std::io::Read;
        stdout_pipe.read_to_end(&mut seen).unwrap();
    }
    assert_eq!(status.code(), Some(9), "{}", String::from_utf8_lossy(&seen));
    assert!(String::from_utf8_lossy(&seen).contains("got-int"));
    assert!(t0.elapsed() < Duration::from_secs(20));

    // exec returns the command's own exit code.
    let out = dev.caas(&["exec", "--", "sh", "-c", "echo out; echo err >&2; exit 5"]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");
}

#[test]
fn a_dev_container_removed_behind_caas_back_is_reported_not_replaced() {
    let dev = Dev::new("gone");
    dev.ok(&["build"]);
    dev.ok(&["exec", "--", "true"]);
    let h = dev.history();
    let name = h["dev_container_name"].as_str().unwrap().to_string();
    let st = Command::new("docker")
        .args(["rm", "-f", &name])
        .output()
        .unwrap();
    assert!(st.status.success());
    let before = dev.state();

    for cmd in [&["shell"][..], &["exec", "--", "true"], &["save"]] {
        let out = dev.caas(cmd);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("was removed outside caas")
                && stderr(&out).contains("caas reset"),
            "{cmd:?}: {}",
            stderr(&out)
        );
        assert_eq!(dev.state(), before, "{cmd:?} changed the state");
    }
    let text = stdout(&dev.ok(&["history"]));
    assert!(text.contains("MISSING"), "{text}");
    // An image removed behind caas's back is shown as missing, and run says so.
    let active = h["active"]["id"].as_str().unwrap().to_string();
    let rm = Command::new("docker")
        .args(["rmi", "-f", &active])
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", stderr(&rm));
    let h2 = dev.history();
    assert_eq!(h2["history"][0]["present"], false);
    let out = dev.run("nope", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is missing"), "{}", stderr(&out));

    dev.ok(&["reset"]);
    dev.ok(&["build"]);
    dev.ok(&["exec", "--", "true"]);
}

#[test]
fn same_basename_in_two_places_does_not_collide() {
    let a = Dev::new("twin");
    let b = Dev::new("twin");
    for (d, word) in [(&a, "alpha"), (&b, "beta")] {
        d.ok(&["build"]);
        d.ok(&["exec", "--", "sh", "-c", &format!("echo {word} > /opt/who")]);
        d.ok(&["save", "--tag", "mine"]);
    }
    let (ha, hb) = (a.history(), b.history());
    assert_ne!(ha["dev_container_name"], hb["dev_container_name"]);
    assert_ne!(ha["image_repo"], hb["image_repo"]);
    assert_ne!(ha["active"]["id"], hb["active"]["id"]);
    for (d, word) in [(&a, "alpha"), (&b, "beta")] {
        let out = d.ok(&["exec", "--", "cat", "/opt/who"]);
        assert_eq!(stdout(&out), format!("{word}\n"));
    }
    // prune of one removes its untagged images and leaves the other's alone.
    b.ok(&["exec", "--", "sh", "-c", "echo beta2 > /opt/who2"]);
    b.ok(&["save", "--tag", "mine", "--force"]);
    let pb = b.ok(&["prune", "--json"]);
    let pruned: serde_json::Value = serde_json::from_str(&stdout(&pb)).unwrap();
    assert_eq!(
        pruned["removed_images"].as_array().unwrap().len(),
        1,
        "{pruned}"
    );
    // A stopped container of b's goes; one of a's stays.
    let make = |hash: &str| {
        let out = Command::new("docker")
            .args([
                "create",
                "--label",
                &format!("caas.dev={hash}"),
                BASE_IMAGE,
                "true",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    let stray_a = make(ha["folder_hash"].as_str().unwrap());
    let stray_b = make(hb["folder_hash"].as_str().unwrap());
    let pb = b.ok(&["prune", "--json"]);
    let pruned: serde_json::Value = serde_json::from_str(&stdout(&pb)).unwrap();
    assert_eq!(
        pruned["removed_containers"].as_array().unwrap().len(),
        1,
        "{pruned}"
    );
    let exists = |id: &str| {
        Command::new("docker")
            .args(["inspect", id])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(!exists(&stray_b));
    assert!(exists(&stray_a));
    let _ = Command::new("docker").args(["rm", "-f", &stray_a]).output();
    let hb = b.history();
    let present: Vec<bool> = hb["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["present"] == true)
        .collect();
    assert_eq!(present, [true, false, true], "{hb}");
    let out = a.ok(&["exec", "--", "cat", "/opt/who"]);
    assert_eq!(stdout(&out), "alpha\n");
    assert!(
        a.history()["history"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["present"] == true)
    );
}

#[test]
fn run_dev_mounts_the_source_over_the_image_copy() {
    let dev = Dev::new("fast");
    dev.ok(&["build"]);
    let main = dev.dir.join("src/main.sh");
    let script = std::fs::read_to_string(&main).unwrap();
    write(
        &main,
        &script.replace(
            "echo \"main: wrote $rows rows\"",
            "echo \"main: v2 wrote $rows rows\"",
        ),
    );
    let out = dev.run("d1", &["--dev"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("main: v2 wrote 5 rows"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("--dev:") && stderr(&out).contains("caas build"));
    // Without --dev the image still has the old code, until `caas build`.
    let out = dev.run("d2", &[]);
    assert!(
        stdout(&out).contains("main: wrote 5 rows"),
        "{}",
        stdout(&out)
    );
    let out = dev.ok(&["build"]);
    assert!(stderr(&out).contains("from cache"), "{}", stderr(&out));
    let out = dev.run("d3", &[]);
    assert!(
        stdout(&out).contains("main: v2 wrote 5 rows"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn credentials_are_mounted_read_only_and_never_saved() {
    let dev = Dev::new("creds");
    dev.ok(&["build"]);
    let secret = "aws_secret_access_key = NOT-A-REAL-SECRET-1234";
    let cred = dev.dir.join("../my-credentials");
    write(&cred, &format!("[default]\n{secret}\n"));
    let cred_s = cred.to_str().unwrap();

    let out = dev.ok(&[
        "exec",
        "--credentials",
        cred_s,
        "--",
        "cat",
        "/root/.aws/credentials",
    ]);
    assert!(stdout(&out).contains(secret));
    assert!(!stderr(&out).contains(secret));
    let out = dev.caas(&["exec", "--", "sh", "-c", "echo x >> /root/.aws/credentials"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "the credentials file is writable"
    );
    // The mount itself is not a change to save.
    dev.ok(&["exec", "--", "sh", "-c", "echo ok > /opt/fine"]);
    let before = dev.state();
    // A copy in the writable layer: save refuses, naming the path.
    dev.ok(&[
        "exec",
        "--",
        "sh",
        "-c",
        "mkdir -p /home/u/.aws && cp /root/.aws/credentials /home/u/.aws/credentials",
    ]);
    let out = dev.caas(&["save"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/home/u/.aws/credentials") && !stderr(&out).contains(secret),
        "{}",
        stderr(&out)
    );
    assert_eq!(dev.state(), before);
    dev.ok(&["exec", "--", "rm", "-r", "/home/u"]);
    dev.ok(&["save", "-m", "no secrets"]);

    // caas run: mounted read-only for the unprivileged task, never in the logs.
    let toml = dev.dir.join("caas.toml");
    let t = std::fs::read_to_string(&toml).unwrap().replace(
        "command = [\"sh\", \"/opt/analysis/main.sh\", \"{data}\", \"{config}\", \"{results}\"]",
        "command = [\"sh\", \"-c\", \"grep -c NOT-A-REAL \\\"$AWS_SHARED_CREDENTIALS_FILE\\\" > {results}/found\"]",
    );
    write(&toml, &t);
    let out = dev.run("c1", &["--credentials", cred_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dev.results("creds", "c1").join("found")).unwrap(),
        "1\n"
    );
    assert!(!stdout(&out).contains(secret) && !stderr(&out).contains(secret));
    // A missing credentials file is refused.
    let out = dev.run("c2", &["--credentials", "/nonexistent/creds"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/creds"));
}
