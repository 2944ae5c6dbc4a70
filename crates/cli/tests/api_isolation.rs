//! The API's security and bad-input rules against the real server: a token of group `lab`
//! asks for everything of group `other` (by name, by `../`, by URL-encoded tricks, by a job id
//! of `other`) and gets the same 404 with nothing read and nothing written (the store is
//! fingerprinted before and after); bad tokens are 401, read-only writes 403; bad names 400;
//! bodies over the limit 413 with nothing stored; an interrupted upload leaves nothing; bad
//! job requests 4xx with a message. No answer is ever a 5xx (the client asserts it).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::time::Duration;

use serde_json::json;

use common::api::*;
use common::server::wait_for;
use common::*;

const LIMIT: Duration = Duration::from_secs(120);

struct World {
    _sb: Sandbox,
    store: std::path::PathBuf,
    _api: ApiServer,
    ann: Client,
    bob_job: String,
}

/// A server with groups `lab` (ann), `other` (bob, with a finished job) and `poor` (over
/// budget); body limit 1 MiB.
fn world() -> World {
    let sb = Sandbox::new();
    let a = sb.analysis(&shell_analysis(
        "iso",
        "echo secret-output {dataset}; wc -l < {data} > {results}/lines.txt",
        "[pricing]\nwall_hour = 1000\n\n[budget]\ngroups = { poor = 0.01 }\n",
    ));
    let store = sb.store();
    let s = store.to_str().unwrap().to_string();
    let env = no_env();
    let api = start_api(
        &s,
        &[&a],
        &["--max-body", "1MiB"],
        &env,
        &sb.path().join("serve.log"),
    );
    let ann = Client::new(&api, &token_for(&s, &env, "ann", &["lab", "poor"], &[]));
    let bob = ann.with_token(&token_for(&s, &env, "bob", &["other"], &[]));
    let g = "/api/v1/groups/other";
    assert_eq!(bob.put(&format!("{g}/inputs/d.csv"), "1\n2\n").status, 201);
    assert_eq!(
        bob.put(&format!("{g}/configs/c.yaml"), "x: 1\n").status,
        201
    );
    let j = bob.post(
        &format!("{g}/jobs"),
        &json!({"dataname": ["d.csv"], "configname": "c.yaml", "timestamp": "b1"}),
    );
    assert_eq!(j.status, 201, "{}", j.text());
    let bob_job = j.json()["job"].as_str().unwrap().to_string();
    assert_eq!(bob.wait_job("other", &bob_job, LIMIT)["state"], "succeeded");
    assert_eq!(
        ann.put("/api/v1/groups/lab/inputs/a.csv", "1\n").status,
        201
    );
    assert_eq!(
        ann.put("/api/v1/groups/lab/configs/c.yaml", "x: 1\n")
            .status,
        201
    );
    World {
        _sb: sb,
        store,
        _api: api,
        ann,
        bob_job,
    }
}

/// The store as a user-visible fingerprint (caas's scratch space left out).
fn fp(w: &World) -> Vec<(String, Vec<u8>)> {
    fingerprint(&w.store, &[".caas/"])
}

#[test]
fn another_groups_anything_is_404_and_nothing_is_read_or_written() {
    let w = world();
    let c = &w.ann;
    let job = &w.bob_job;
    let before = fp(&w);
    let not_found = |a: Answer, what: &str| {
        assert_eq!(a.status, 404, "{what}: {}", a.text());
        assert_eq!(a.json(), json!({"error": "not found"}), "{what}");
        assert!(!a.text().contains("secret-output"));
    };
    let fake_upload = "0123456789abcdef01234567";
    let mut n = 0;
    // By name: every endpoint, with group `other`, and with an unknown group (the same answer).
    for group in ["other", "nosuchgroup", "_caas", "logs"] {
        let g = format!("/api/v1/groups/{group}");
        let gets = [
            format!("{g}/inputs"),
            format!("{g}/configs"),
            format!("{g}/uploads/{fake_upload}"),
            format!("{g}/jobs"),
            format!("{g}/jobs/{job}"),
            format!("{g}/jobs/b1"),
            format!("{g}/jobs/{job}/certificate"),
            format!("{g}/jobs/{job}/logs?dataset=d.csv"),
            format!("{g}/jobs/{job}/results"),
            format!("{g}/jobs/{job}/results/process_results/lines.txt"),
            format!("{g}/jobs/{job}/results.tar"),
            format!("{g}/cost"),
        ];
        for p in &gets {
            not_found(c.get(p), p);
            n += 1;
        }
        for p in [
            format!("{g}/inputs/x.csv"),
            format!("{g}/configs/x.yaml"),
            format!("{g}/uploads/{fake_upload}?offset=0"),
        ] {
            not_found(c.put(&p, "data"), &p);
            n += 1;
        }
        for (p, body) in [
            (
                format!("{g}/uploads"),
                json!({"kind": "inputs", "name": "x", "size": 1}),
            ),
            (format!("{g}/uploads/{fake_upload}/complete"), json!({})),
            (
                format!("{g}/jobs"),
                json!({"dataname": ["d.csv"], "configname": "c.yaml"}),
            ),
            (format!("{g}/jobs/{job}/cancel"), json!({})),
        ] {
            not_found(c.post(&p, &body), &p);
            n += 1;
        }
    }
    // By a job id of `other` inside the token's own group, and by traversal in every form.
    let l = "/api/v1/groups/lab";
    let tricks = [
        format!("{l}/jobs/{job}"),
        format!("{l}/jobs/b1"),
        format!("{l}/jobs/{job}/results.tar"),
        format!("{l}/jobs/{job}/logs?dataset=d.csv"),
        format!("{l}/jobs/..%2F..%2Fother%2Fresults%2F{job}"),
        format!("{l}/jobs/%2e%2e%2f%2e%2e%2fother%2fresults%2f{job}/results"),
        format!("{l}/jobs/%2E%2E/results.tar"),
        format!("{l}/jobs/..%2Fb1/certificate"),
        "/api/v1/groups/lab%2F..%2Fother/jobs".to_string(),
        "/api/v1/groups/%2e%2e%2fother/inputs".to_string(),
        "/api/v1/groups/other%00/inputs".to_string(),
        "/api/v1/groups/lab/..%2Fother/cost".to_string(),
    ];
    for p in &tricks {
        not_found(c.get(p), p);
        n += 1;
    }
    // Raw paths an HTTP client would normalise away.
    let raw = [
        ("GET", "/api/v1/groups/lab/../other/inputs".to_string()),
        (
            "GET",
            format!("/api/v1/groups/lab/jobs/../../other/jobs/{job}"),
        ),
        (
            "GET",
            format!("/api/v1/groups/lab/jobs/{job}/results/../../../../other/inputs/d.csv"),
        ),
        (
            "GET",
            "/api/v1/groups/lab/jobs/x/results/process_results/../../../../../other/inputs/d.csv"
                .to_string(),
        ),
        (
            "GET",
            format!("/api/v1/groups/other/jobs/{job}/results/%2e%2e/%2e%2e/inputs/d.csv"),
        ),
        (
            "GET",
            "/api/v1/groups/lab/jobs/%2e%2e/results.tar".to_string(),
        ),
        (
            "PUT",
            "/api/v1/groups/lab/../other/inputs/x.csv".to_string(),
        ),
        ("POST", "/api/v1/groups/lab/../other/jobs".to_string()),
    ];
    for (m, p) in &raw {
        let st = c.raw(m, p, b"{}");
        assert_eq!(st, 404, "{m} {p}");
        n += 1;
    }
    let after = fp(&w);
    assert_eq!(before.len(), after.len(), "files were added or removed");
    assert!(before == after, "the store changed");
    println!(
        "isolation: {n} requests for another group's data, all 404; store unchanged ({} files); statuses {:?}",
        after.len(),
        c.counts()
    );
}

#[test]
fn bad_tokens_are_401_read_only_writes_403() {
    let w = world();
    let s = w.store.to_str().unwrap().to_string();
    let env = no_env();
    let c = &w.ann;
    assert_eq!(c.get("/api/v1/whoami").status, 200);
    let malformed = [
        "".to_string(),
        "caas_".into(),
        "caas_0123456789ab".into(),
        format!("caas_0123456789ab_{}", "0".repeat(64)),
        format!("caas_0123456789AB_{}", "0".repeat(64)),
        format!("caas_../../x_{}", "0".repeat(64)),
        format!("{}x", c.token),
        c.token.to_uppercase(),
        "Basic abc".into(),
    ];
    for t in &malformed {
        let a = c.with_token(t).get("/api/v1/groups/lab/inputs");
        assert_eq!(a.status, 401, "token {t:?}");
        assert!(
            a.json()["error"]
                .as_str()
                .unwrap()
                .contains("caas token create")
        );
    }
    // No Authorization header at all.
    let a = c
        .http
        .get(format!("{}/api/v1/whoami", c.base))
        .send()
        .unwrap();
    assert_eq!(a.status(), 401);
    // Revoked.
    let t = token_for(&s, &env, "rev", &["lab"], &[]);
    let id = t.split('_').nth(1).unwrap().to_string();
    assert_eq!(c.with_token(&t).get("/api/v1/whoami").status, 200);
    caas_ok(&env, &["token", "revoke", &id, "--store", &s]);
    let a = c.with_token(&t).get("/api/v1/whoami");
    assert_eq!(a.status, 401);
    assert!(a.text().contains("revoked"));
    let list = caas_ok(&env, &["token", "list", "--store", &s, "--json"]);
    assert!(list.contains(&id) && !list.contains(t.rsplit('_').next().unwrap()));
    // Expired: valid for one second, then 401.
    let t = token_for(&s, &env, "exp", &["lab"], &["--expires", "1s"]);
    let expired = wait_for(Duration::from_secs(10), || {
        c.with_token(&t).get("/api/v1/whoami").status == 401
    });
    assert!(expired, "the token never expired");
    assert!(
        c.with_token(&t)
            .get("/api/v1/whoami")
            .text()
            .contains("expired")
    );
    // Read-only: reads work, every write is 403, nothing written.
    let ro = c.with_token(&token_for(&s, &env, "ro", &["lab"], &["--read-only"]));
    assert_eq!(ro.get("/api/v1/groups/lab/inputs").status, 200);
    let before = fp(&w);
    assert_eq!(ro.put("/api/v1/groups/lab/inputs/new.csv", "x").status, 403);
    assert_eq!(
        ro.put("/api/v1/groups/lab/configs/new.yaml", "x").status,
        403
    );
    let j = ro.post(
        "/api/v1/groups/lab/jobs",
        &json!({"dataname": ["a.csv"], "configname": "c.yaml"}),
    );
    assert_eq!(j.status, 403);
    assert!(j.json()["error"].as_str().unwrap().contains("read-only"));
    assert_eq!(
        ro.post(
            "/api/v1/groups/lab/uploads",
            &json!({"kind": "inputs", "name": "x", "size": 1})
        )
        .status,
        403
    );
    assert!(before == fp(&w), "a read-only token wrote something");
    println!("tokens: statuses {:?}", c.counts());
}

#[test]
fn bad_names_big_bodies_interrupted_uploads_and_bad_jobs_are_4xx_with_nothing_stored() {
    let w = world();
    let c = &w.ann;
    let g = "/api/v1/groups/lab";
    let before = fp(&w);
    let long = "a".repeat(4096);
    for name in ["..", "%2e%2e", "%2E%2E", "..%2F..%2Fother%2Finputs%2Fx"] {
        assert_eq!(
            c.raw("PUT", &format!("{g}/inputs/{name}"), b"data"),
            400,
            "{name}"
        );
    }
    for name in ["a%2Fb.csv", "x%00y", "%0a", ".hidden", long.as_str()] {
        let a = c.put(&format!("{g}/inputs/{name}"), "data");
        assert_eq!(a.status, 400, "{name}: {}", a.text());
        assert!(
            a.json()["error"].as_str().unwrap().contains("another name"),
            "{}",
            a.text()
        );
    }
    let a = c.post(
        &format!("{g}/uploads"),
        &json!({"kind": "inputs", "name": "a/b", "size": 1}),
    );
    assert_eq!(a.status, 400);
    let a = c.post(
        &format!("{g}/uploads"),
        &json!({"kind": "secrets", "name": "x", "size": 1}),
    );
    assert_eq!(a.status, 400);
    // Over the 1 MiB limit: with a Content-Length, and streamed without one.
    let big = vec![7u8; 2 << 20];
    assert_eq!(
        put_while_reading(c, &format!("{g}/inputs/big.bin"), &big, false),
        413
    );
    assert_eq!(
        put_while_reading(c, &format!("{g}/inputs/big2.bin"), &big, true),
        413
    );
    // An interrupted upload: the client goes away mid-body.
    let mut s = std::net::TcpStream::connect(&c.addr).unwrap();
    write!(
        s,
        "PUT {g}/inputs/cut.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 500000\r\n\r\n",
        c.token
    )
    .unwrap();
    s.write_all(&[1u8; 100_000]).unwrap();
    s.flush().unwrap();
    drop(s);
    let inputs = w.store.join("lab/inputs");
    let clean = wait_for(Duration::from_secs(20), || {
        std::fs::read_dir(&inputs)
            .unwrap()
            .flatten()
            .all(|e| e.file_name() == "a.csv")
    });
    let left: Vec<_> = std::fs::read_dir(&inputs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(clean, "an interrupted upload left {left:?}");
    assert!(!inputs.join("cut.bin").exists());
    // The server notices the dropped connection when its next read fails (later on a busy
    // machine): its staging file goes then.
    assert!(
        wait_for(Duration::from_secs(20), || before == fp(&w)),
        "a refused upload stored something"
    );

    // Bad job requests.
    let jobs = format!("{g}/jobs");
    for body in [
        "{",
        "[]",
        "{\"dataname\": 3, \"configname\": \"c.yaml\"}",
        "{\"dataname\": [\"a.csv\"]}",
        "{\"dataname\": [\"a.csv\"], \"configname\": \"c.yaml\", \"bogus\": 1}",
    ] {
        let a = c.post_raw(&jobs, body);
        assert_eq!(a.status, 400, "{body}: {}", a.text());
        assert!(!a.json()["error"].as_str().unwrap().is_empty());
    }
    let a = c.post(
        &jobs,
        &json!({"analysis": "nope", "dataname": ["a.csv"], "configname": "c.yaml"}),
    );
    assert_eq!(a.status, 422);
    assert!(
        a.json()["error"]
            .as_str()
            .unwrap()
            .contains("pick one of: iso"),
        "{}",
        a.text()
    );
    for (data, config) in [
        ("../other/inputs/d.csv", "c.yaml"),
        ("other/inputs/d.csv", "c.yaml"),
        ("a.csv", "../../other/configs/c.yaml"),
    ] {
        let a = c.post(&jobs, &json!({"dataname": [data], "configname": config}));
        assert_eq!(a.status, 400, "{data} {config}: {}", a.text());
    }
    assert!(before == fp(&w), "a refused job request stored something");
    let a = c.post(
        &jobs,
        &json!({"dataname": ["missing.csv"], "configname": "c.yaml", "timestamp": "m1"}),
    );
    assert_eq!(a.status, 422, "{}", a.text());
    assert!(
        a.json()["error"].as_str().unwrap().contains("missing.csv"),
        "{}",
        a.text()
    );
    // Over budget (group `poor`: $0.01 at $1000 an hour).
    assert_eq!(c.put("/api/v1/groups/poor/inputs/a.csv", "1\n").status, 201);
    assert_eq!(
        c.put("/api/v1/groups/poor/configs/c.yaml", "x: 1\n").status,
        201
    );
    let a = c.post(
        "/api/v1/groups/poor/jobs",
        &json!({"dataname": ["a.csv"], "configname": "c.yaml", "timestamp": "p1"}),
    );
    assert_eq!(a.status, 422, "{}", a.text());
    let msg = a.json()["error"].as_str().unwrap().to_string();
    assert!(
        msg.contains("budget") && msg.contains("administrator"),
        "{msg}"
    );
    // A reused timestamp: 409, the earlier (succeeded) job untouched.
    let ok = c.post(
        &jobs,
        &json!({"dataname": ["a.csv"], "configname": "c.yaml", "timestamp": "r1"}),
    );
    assert_eq!(ok.status, 201, "{}", ok.text());
    let folder = ok.json()["job"].as_str().unwrap().to_string();
    assert_eq!(c.wait_job("lab", &folder, LIMIT)["state"], "succeeded");
    let job_dir = w.store.join(format!("lab/results/{folder}"));
    assert!(common::server::wait_end(&job_dir, LIMIT), "no end.txt");
    let earlier = snapshot(&job_dir);
    let again = c.post(
        &jobs,
        &json!({"dataname": ["a.csv"], "configname": "c.yaml", "timestamp": "r1"}),
    );
    assert_eq!(again.status, 409, "{}", again.text());
    assert!(earlier == snapshot(&job_dir), "the earlier job changed");
    println!("bad input: statuses {:?}", c.counts());
}

/// PUT `body` (with its Content-Length, or `chunked` without one) over a raw socket, reading
/// the answer while the body is still being sent: a server that refuses the body answers and
/// closes, and a client that only reads after sending everything may find the connection
/// reset before it reads.
fn put_while_reading(c: &Client, path: &str, body: &[u8], chunked: bool) -> u16 {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(&c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    let length = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", body.len())
    };
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n{length}\r\nConnection: close\r\n\r\n",
        c.token
    );
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        // Errors are expected once the server has answered and closed.
        if w.write_all(head.as_bytes()).is_err() {
            return;
        }
        for chunk in body.chunks(64 << 10) {
            let piece = if chunked {
                [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat()
            } else {
                chunk.to_vec()
            };
            if w.write_all(&piece).is_err() {
                return;
            }
        }
        if chunked {
            let _ = w.write_all(b"0\r\n\r\n");
        }
    });
    let mut first = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut first[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => panic!("no answer to the PUT of {path}: {e}"),
        }
    }
    let _ = writer.join();
    let text = String::from_utf8_lossy(&first[..got]);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer to the PUT of {path}: {text:?}"));
    c.record(format!("raw PUT {path}"), status);
    status
}
