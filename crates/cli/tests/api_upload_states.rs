//! A resumable upload as a state machine (issue 22, part 3), against the real `caas serve
//! --listen` on a local store and on S3 (moto): `proptest` applies random sequences of parts
//! that are empty, repeated, at a wrong offset, too large, aborted mid-body, sent twice at the
//! same time, and early completions; after each, the upload's status must equal the bytes the
//! model says were kept, and in the end sending the rest and completing must store exactly the
//! file.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;

use common::api::*;
use common::*;

/// The body limit of the servers under test (parts above it are 413).
const MAX_BODY: u64 = 16 << 10;

#[derive(Clone, Debug)]
enum Op {
    /// A part of `len` bytes at the offset received so far.
    Part(u16),
    /// A part at a wrong offset (`received + delta`, or before it).
    WrongOffset(i32, u16),
    /// The last accepted part again, at its own offset.
    Repeat,
    /// A part whose connection is closed after `sent` of `len + 1..` announced bytes.
    Aborted(u16),
    /// Two requests with the same part at the same time.
    Concurrent(u16),
    /// Complete before everything arrived.
    CompleteEarly,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u16..24_000).prop_map(Op::Part),
        1 => Just(Op::Part(0)),
        1 => (-3000i32..3000, 1u16..2000).prop_map(|(d, l)| Op::WrongOffset(d, l)),
        1 => Just(Op::Repeat),
        1 => (0u16..8000).prop_map(Op::Aborted),
        1 => (1u16..8000).prop_map(Op::Concurrent),
        1 => Just(Op::CompleteEarly),
    ]
}

struct Target {
    c: Client,
    /// Reads the stored file back.
    read: ReadBack,
}

/// Reads a stored file back by its key.
type ReadBack = Box<dyn Fn(&str) -> Vec<u8>>;

static N: AtomicU32 = AtomicU32::new(0);

fn put_part(c: &Client, id: &str, offset: u64, bytes: Vec<u8>) -> Answer {
    c.put(
        &format!("/api/v1/groups/lab/uploads/{id}?offset={offset}"),
        bytes,
    )
}

fn status(c: &Client, id: &str) -> u64 {
    let s = c.get(&format!("/api/v1/groups/lab/uploads/{id}"));
    assert_eq!(s.status, 200, "{}", s.text());
    s.json()["received"].as_u64().unwrap()
}

/// Run `ops` on a fresh upload of `data`, checking the status after each; then finish it.
fn run(t: &Target, data: &[u8], ops: &[Op]) -> Result<(), TestCaseError> {
    let c = &t.c;
    let name = format!("f{}.bin", N.fetch_add(1, Ordering::SeqCst));
    let up = c.post(
        "/api/v1/groups/lab/uploads",
        &json!({"kind": "inputs", "name": name, "size": data.len()}),
    );
    prop_assert_eq!(up.status, 201, "{}", up.text());
    let id = up.json()["id"].as_str().unwrap().to_string();
    let size = data.len() as u64;
    let mut received = 0u64;
    let mut last: Option<(u64, Vec<u8>)> = None;
    for op in ops {
        let left = size - received;
        let fits = |len: u64| len <= left.min(MAX_BODY);
        let slice = |len: u64| -> Vec<u8> {
            if received + len <= size {
                data[received as usize..(received + len) as usize].to_vec()
            } else {
                vec![b'#'; len as usize]
            }
        };
        match op {
            Op::Part(len) => {
                let len = u64::from(*len);
                let a = put_part(c, &id, received, slice(len));
                if fits(len) {
                    prop_assert_eq!(a.status, 200, "{:?}: {}", op, a.text());
                    if len > 0 {
                        last = Some((received, slice(len)));
                    }
                    received += len;
                    prop_assert_eq!(a.json()["received"].as_u64(), Some(received));
                } else {
                    prop_assert_eq!(a.status, 413, "{:?}: {}", op, a.text());
                }
            }
            Op::WrongOffset(delta, len) => {
                let at = received as i64 + i64::from(*delta);
                if at < 0 || at as u64 == received {
                    continue;
                }
                let a = put_part(c, &id, at as u64, vec![b'x'; usize::from(*len)]);
                prop_assert_eq!(a.status, 409, "{:?}: {}", op, a.text());
                prop_assert_eq!(a.json()["received"].as_u64(), Some(received));
            }
            Op::Repeat => {
                let Some((at, bytes)) = last.clone() else {
                    continue;
                };
                let a = put_part(c, &id, at, bytes);
                prop_assert_eq!(a.status, 409, "{:?}: {}", op, a.text());
            }
            Op::Aborted(sent) => {
                let sent = usize::from(*sent).min(left as usize);
                let mut s = TcpStream::connect(&c.addr).unwrap();
                let head = format!(
                    "PUT /api/v1/groups/lab/uploads/{id}?offset={received} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
                    c.token,
                    sent + 1
                );
                s.write_all(head.as_bytes()).unwrap();
                let _ = s.write_all(&data[received as usize..received as usize + sent]);
                let _ = s.shutdown(Shutdown::Write);
                let mut answer = Vec::new();
                let _ = s.read_to_end(&mut answer);
                let text = String::from_utf8_lossy(&answer);
                prop_assert!(
                    text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.1 413"),
                    "{:?}: {}",
                    op,
                    text
                );
            }
            Op::Concurrent(len) => {
                let len = u64::from(*len);
                let bytes = slice(len);
                let threads: Vec<_> = (0..2)
                    .map(|_| {
                        let (c, id, b) = (c.clone(), id.clone(), bytes.clone());
                        std::thread::spawn(move || put_part(&c, &id, received, b).status)
                    })
                    .collect();
                let mut codes: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
                codes.sort();
                if !fits(len) {
                    prop_assert_eq!(codes, vec![413, 413]);
                } else {
                    prop_assert_eq!(codes, vec![200, 409], "{:?}", op);
                    last = Some((received, bytes));
                    received += len;
                }
            }
            Op::CompleteEarly => {
                if received == size {
                    continue;
                }
                let a = c.post(
                    &format!("/api/v1/groups/lab/uploads/{id}/complete"),
                    &json!({}),
                );
                prop_assert_eq!(a.status, 409, "{:?}: {}", op, a.text());
                prop_assert_eq!(a.json()["received"].as_u64(), Some(received));
            }
        }
        prop_assert_eq!(status(c, &id), received, "after {:?}", op);
    }
    // The client can always finish: the rest, then complete.
    while received < size {
        let len = (size - received).min(MAX_BODY);
        let a = put_part(
            c,
            &id,
            received,
            data[received as usize..(received + len) as usize].to_vec(),
        );
        prop_assert_eq!(a.status, 200, "{}", a.text());
        received += len;
        prop_assert_eq!(status(c, &id), received);
    }
    let done = c.post(
        &format!("/api/v1/groups/lab/uploads/{id}/complete"),
        &json!({}),
    );
    prop_assert_eq!(done.status, 201, "{}", done.text());
    prop_assert!(
        (t.read)(&name) == data,
        "the stored file differs from what was sent"
    );
    Ok(())
}

fn check(t: &Target, cases: u32) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(any::<u8>(), 0..40_000),
        prop::collection::vec(op(), 0..12),
    );
    runner
        .run(&strategy, |(data, ops)| run(t, &data, &ops))
        .unwrap();
}

fn server(store: &str, env: &[(&str, String)], sb: &Sandbox) -> (ApiServer, Client) {
    let a = sb.analysis(&shell_analysis("up", "true", ""));
    let api = start_api(
        store,
        &[&a],
        &["--max-body", "16KiB"],
        env,
        &sb.path().join("serve.log"),
    );
    let c = Client::new(&api, &token_for(store, env, "ann", &["lab"], &[]));
    (api, c)
}

#[test]
fn any_sequence_of_parts_leaves_a_finishable_upload_on_a_local_store() {
    let sb = Sandbox::new();
    let store = sb.store();
    let s = store.to_str().unwrap().to_string();
    let (_api, c) = server(&s, &no_env(), &sb);
    let root = store.clone();
    let t = Target {
        c,
        read: Box::new(move |name| std::fs::read(root.join("lab/inputs").join(name)).unwrap()),
    };
    check(&t, 200);
    // Nothing is left of the uploads (every one was completed): no part, record or staging.
    let uploads = store.join("_caas/uploads");
    assert!(uploads.is_dir(), "the uploads went elsewhere");
    let left: Vec<String> = snapshot(&uploads).into_iter().map(|(p, _)| p).collect();
    assert!(left.is_empty(), "upload files left behind: {left:?}");
}

#[test]
fn any_sequence_of_parts_leaves_a_finishable_upload_on_s3() {
    let sb = Sandbox::new();
    let (env, s, bucket) = s3_bucket("upstate");
    let (_api, c) = server(&s, &env, &sb);
    let t = Target {
        c,
        read: Box::new(move |name| {
            let out = std::process::Command::new("/opt/caas-venv/bin/aws")
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .args(["--endpoint-url", "http://127.0.0.1:5055", "s3", "cp"])
                .arg(format!("s3://{bucket}/caas/lab/inputs/{name}"))
                .arg("-")
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
            out.stdout
        }),
    };
    check(&t, 16);
}

/// A fresh bucket on moto: (the S3 environment, the store `s3://<bucket>/caas`, the bucket).
fn s3_bucket(what: &str) -> (Vec<(&'static str, String)>, String, String) {
    assert!(
        TcpStream::connect("127.0.0.1:5055").is_ok(),
        "the S3 server (moto) is not running on 127.0.0.1:5055; run scripts/setup.sh"
    );
    let env: Vec<(&str, String)> = vec![
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:5055".into()),
        ("AWS_ACCESS_KEY_ID", "caas-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "caas-test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ];
    let bucket = format!(
        "caas-{what}-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let out = std::process::Command::new("/opt/caas-venv/bin/aws")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["--endpoint-url", "http://127.0.0.1:5055", "s3", "mb"])
        .arg(format!("s3://{bucket}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let s = format!("s3://{bucket}/caas");
    (env, s, bucket)
}
