//! Ctrl-C on `caas exec` reaches the command in the development container also while its
//! output pours out (real Docker engine): the interrupt that comes while caas is writing a chunk
//! is kept for the next turn, never lost (a lost one left the command running).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dev::Dev;
use common::server::wait_for;
use common::*;

/// The `caas exec` process, killed and waited for when dropped (also when the test fails).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ctrl_c_reaches_a_command_whose_output_never_stops() {
    let dev = Dev::new("sigflood");
    dev.ok(&["build"]);
    for round in 0..3 {
        let mut child = Reaped(
            caas()
            .current_dir(&dev.dir)
            .args(["exec", "--", "sh", "-c"])
            .arg("trap 'echo got-int; exit 9' INT; echo ready; i=0; while :; do echo line $i; i=$((i+1)); done")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        );
        let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
        let mut pipe = child.0.stdout.take().unwrap();
        let sink = seen.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut s = sink.lock().unwrap();
                        // Keep the start and the last 4 KiB: enough for "ready" and "got-int".
                        if s.len() > 1 << 16 {
                            let at = s.len() - 4096;
                            let keep = s.split_off(at);
                            s.truncate(64);
                            s.extend_from_slice(&keep);
                        }
                        s.extend_from_slice(&buf[..n]);
                    }
                }
            }
        });
        let ready = wait_for(Duration::from_secs(60), || {
            String::from_utf8_lossy(&seen.lock().unwrap()).contains("ready")
        });
        assert!(ready, "round {round}: the command never started");
        // Let the output flow for a moment, then Ctrl-C.
        std::thread::sleep(Duration::from_millis(300));
        let st = Command::new("kill")
            .args(["-INT", &child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let t0 = Instant::now();
        let mut status = None;
        while t0.elapsed() < Duration::from_secs(30) {
            if let Some(s) = child.0.try_wait().unwrap() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if status.is_none() {
            // Lost: stop it (a second Ctrl-C kills the command) before failing.
            let _ = Command::new("kill")
                .args(["-INT", &child.0.id().to_string()])
                .status();
            let _ = child.0.wait();
        }
        reader.join().unwrap();
        let out = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
        let status = status.unwrap_or_else(|| {
            panic!("round {round}: the interrupt was lost; the command kept running")
        });
        assert_eq!(
            status.code(),
            Some(9),
            "round {round}: ...{}",
            &out[out.len().saturating_sub(300)..]
        );
        assert!(out.contains("got-int"), "round {round}");
    }
}
