//! The developer loop never loses a change (issue 21, part 1), on the real Docker engine:
//! `caas save` ships the source the developer last ran (mounted over the image's copy in the
//! development container, so a plain commit would hold the old one), a development container
//! older than the active image is named as such, and a build that moves a tag says so.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::dev::Dev;
use common::*;

/// What the image holds at the analysis' source target.
fn listing(image: &str) -> String {
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            image,
            "-c",
            "cd /opt/analysis && ls && cat main.sh",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn save_ships_the_source_the_developer_last_ran() {
    let dev = Dev::new("ships");
    std::fs::write(dev.dir.join("src/old-helper.sh"), "echo old\n").unwrap();
    dev.ok(&["build"]);
    // The developer edits the code, adds a file, deletes one, and sees it with --dev.
    let main = dev.dir.join("src/main.sh");
    let script = std::fs::read_to_string(&main).unwrap();
    std::fs::write(
        &main,
        script.replace(
            "echo \"main: wrote $rows rows\"",
            "echo \"main: v2 wrote $rows rows\"",
        ),
    )
    .unwrap();
    std::fs::write(dev.dir.join("src/new helper (v2).sh"), "echo new\n").unwrap();
    std::fs::remove_file(dev.dir.join("src/old-helper.sh")).unwrap();
    let out = dev.run("d1", &["--dev"]);
    assert!(stdout(&out).contains("main: v2 wrote"), "{}", stdout(&out));

    dev.ok(&["exec", "--", "true"]);
    let out = dev.ok(&["save", "-m", "v2"]);
    let err = stderr(&out);
    assert!(
        err.contains("the source") && err.contains("as it is now"),
        "{err}"
    );
    // The next plain run (the saved, active image) runs v2, not the built code.
    let out = dev.run("r1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("main: v2 wrote"), "{}", stdout(&out));
    let active = dev.history()["active"]["id"].as_str().unwrap().to_string();
    let files = listing(&active);
    assert!(files.contains("new helper (v2).sh"), "{files}");
    assert!(!files.contains("old-helper.sh"), "{files}");
    assert!(files.contains("main: v2 wrote"), "{files}");
    // The command and entrypoint are the built image's, not the copy step's.
    let h = dev.history();
    let entries = h["history"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{h}");
    assert_eq!(entries[1]["kind"], "save");
    // No intermediate image or helper container is left with the folder's labels.
    let ps = Command::new("docker")
        .args([
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=caas.dev={}", h["folder_hash"].as_str().unwrap()),
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&ps).lines().count(), 1, "{}", stdout(&ps));
}

#[test]
fn an_out_of_date_dev_container_is_named_and_a_moved_tag_is_reported() {
    let dev = Dev::new("stale");
    dev.ok(&["build"]);
    dev.ok(&["exec", "--", "sh", "-c", "echo 1 > /opt/one"]);
    // Saving makes the saved image active: the container is not out of date for that.
    dev.ok(&["save", "--tag", "one"]);
    let out = dev.ok(&["exec", "--", "true"]);
    assert!(!stderr(&out).contains("note:"), "{}", stderr(&out));

    // A rebuild with changed code moves the build tag: said, with both ids.
    let main = dev.dir.join("src/main.sh");
    let mut script = std::fs::read_to_string(&main).unwrap();
    script.push_str("# rebuilt\n");
    std::fs::write(&main, script).unwrap();
    let h = dev.history();
    let first = h["history"][0]["image"]["id"].as_str().unwrap().to_string();
    let out = dev.ok(&["build"]);
    let err = stderr(&out);
    assert!(err.contains("moved from image"), "{err}");
    assert!(
        err.contains(&first.trim_start_matches("sha256:")[..12]),
        "{err}"
    );
    // A rebuild that changes nothing moves nothing.
    let out = dev.ok(&["build"]);
    assert!(!stderr(&out).contains("moved"), "{}", stderr(&out));

    // The container predates the active image: exec says so, save refuses (nothing changed).
    let out = dev.ok(&["exec", "--", "true"]);
    let err = stderr(&out);
    assert!(
        err.contains("before the active image") && err.contains("caas reset"),
        "{err}"
    );
    let before = dev.state();
    let out = dev.caas(&["save", "--tag", "two"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("older than the active image"),
        "{}",
        stderr(&out)
    );
    assert_eq!(dev.state(), before, "a refused save changed the state");
    // After a reset, the new container starts from the active image: no note.
    dev.ok(&["reset", "--force"]);
    let out = dev.ok(&["exec", "--", "true"]);
    assert!(!stderr(&out).contains("note:"), "{}", stderr(&out));
    // The history names the parent by id as well as by tag.
    let text = stdout(&dev.ok(&["history"]));
    assert!(
        text.contains(&format!("({})", &first.trim_start_matches("sha256:")[..12])),
        "{text}"
    );
}
