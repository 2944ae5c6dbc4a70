//! `file://` datasets resolved on a real filesystem (temporary folders): links out of the
//! allowed tree, FIFOs, devices, hard links, the store's own files, sizes.

use super::*;

struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::create_dir_all(root.join("shared/data/sub")).unwrap();
    std::fs::create_dir_all(root.join("secret")).unwrap();
    std::fs::write(root.join("shared/data/a.csv"), b"1,2,3\n").unwrap();
    std::fs::write(root.join("shared/data/sub/b.csv"), b"4,5\n").unwrap();
    std::fs::write(root.join("secret/key"), b"s3cr3t").unwrap();
    Tree { _dir: dir, root }
}

fn url(t: &Tree, rel: &str) -> DataUrl {
    DataUrl::parse(&format!("file://{}/{rel}", t.root.display())).unwrap()
}

fn rule(t: &Tree, rel: &str) -> DataRule {
    format!("file://{}/{rel}", t.root.display())
        .parse()
        .unwrap()
}

fn err(t: &Tree, rel: &str, store: Option<&Path>) -> String {
    resolve_file(
        &url(t, rel),
        &rule(t, "shared/data/*"),
        store,
        1 << 20,
        "dataname 0",
    )
    .unwrap_err()
    .to_string()
}

#[test]
fn files_and_folders_under_the_rule_resolve_with_size_and_mtime() {
    let t = tree();
    let r = rule(&t, "shared/data/*");
    let f = resolve_file(&url(&t, "shared/data/a.csv"), &r, None, 1 << 20, "d").unwrap();
    assert_eq!((f.size, f.files, f.folder), (6, 1, false));
    assert!(f.mtime.is_some());
    let d = resolve_file(&url(&t, "shared/data/"), &r, None, 1 << 20, "d").unwrap();
    assert_eq!((d.size, d.files, d.folder), (10, 2, true));
    assert_eq!(d.path, t.root.join("shared/data"));
    // A link inside the tree to elsewhere inside it is followed to its real place.
    std::os::unix::fs::symlink(
        t.root.join("shared/data/sub"),
        t.root.join("shared/data/alias"),
    )
    .unwrap();
    let l = resolve_file(&url(&t, "shared/data/alias/"), &r, None, 1 << 20, "d").unwrap();
    assert_eq!(l.path, t.root.join("shared/data/sub"));
}

#[test]
fn links_out_of_the_tree_and_special_files_are_refused() {
    let t = tree();
    let d = t.root.join("shared/data");
    std::os::unix::fs::symlink(t.root.join("secret/key"), d.join("escape.csv")).unwrap();
    std::os::unix::fs::symlink(t.root.join("secret"), d.join("escdir")).unwrap();
    let e = err(&t, "shared/data/escape.csv", None);
    assert!(
        e.starts_with("dataname 0: ") && e.contains("out of the allowed folder"),
        "{e}"
    );
    let e = err(&t, "shared/data/escdir/key", None);
    assert!(e.contains("out of the allowed folder"), "{e}");
    // Inside a folder dataset a link is refused whatever it points at.
    let e = err(&t, "shared/data/", None);
    assert!(e.contains("symbolic link (at esc"), "{e}");
    std::fs::remove_file(d.join("escape.csv")).unwrap();
    std::fs::remove_file(d.join("escdir")).unwrap();

    let fifo = d.join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let e = err(&t, "shared/data/pipe", None);
    assert!(e.contains("FIFO"), "{e}");
    let e = err(&t, "shared/data/", None);
    assert!(e.contains("FIFO") && e.contains("pipe"), "{e}");
    std::fs::remove_file(&fifo).unwrap();

    std::fs::hard_link(t.root.join("secret/key"), d.join("hard")).unwrap();
    let e = err(&t, "shared/data/hard", None);
    assert!(e.contains("hard-linked"), "{e}");
    std::fs::remove_file(d.join("hard")).unwrap();

    // A device (the null device, by a link the rule allows: still refused as a device).
    let dev: DataRule = "file:///dev/null".parse().unwrap();
    let e = resolve_file(
        &DataUrl::parse("file:///dev/null").unwrap(),
        &dev,
        None,
        1,
        "i",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("a device"), "{e}");

    assert!(err(&t, "shared/data/missing.csv", None).contains("does not exist"));
    assert!(err(&t, "shared/data/sub", None).contains("trailing '/'"));
    assert!(err(&t, "shared/data/a.csv/", None).contains("not a folder"));
}

#[test]
fn the_store_size_limits_and_name_prefixes_are_enforced() {
    let t = tree();
    // The store inside the allowed tree: its files are never read this way.
    let store = t.root.join("shared/data/sub");
    let e = err(&t, "shared/data/sub/b.csv", Some(&store));
    assert!(e.contains("caas's own store"), "{e}");
    let e = err(&t, "shared/data/", Some(&store));
    assert!(e.contains("caas's own store"), "{e}");
    let r = rule(&t, "shared/data/*");
    let e = resolve_file(&url(&t, "shared/data/"), &r, None, 5, "d")
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most"), "{e}");
    // `run*` covers run1/ but a link named run2 to a sibling folder is not under it.
    std::fs::create_dir_all(t.root.join("shared/run1")).unwrap();
    std::fs::write(t.root.join("shared/run1/x"), b"x").unwrap();
    std::os::unix::fs::symlink(t.root.join("shared/data"), t.root.join("shared/run2")).unwrap();
    let runs = rule(&t, "shared/run*");
    assert!(resolve_file(&url(&t, "shared/run1/x"), &runs, None, 10, "d").is_ok());
    let e = resolve_file(&url(&t, "shared/run2/a.csv"), &runs, None, 10, "d")
        .unwrap_err()
        .to_string();
    assert!(e.contains("out of the allowed folder"), "{e}");
}

#[test]
fn a_folder_swapped_for_a_link_while_checked_is_refused_and_the_identity_is_the_checked_file() {
    let t = tree();
    let file = t.root.join("shared/data/sub/b.csv");
    let data = resolve_file(
        &url(&t, "shared/data/sub/b.csv"),
        &rule(&t, "shared/*"),
        None,
        u64::MAX,
        "dataname 0",
    )
    .unwrap();
    assert_eq!(
        data.identity,
        SourceIdentity::of(&std::fs::metadata(&file).unwrap())
    );
    // Looked up by path, then `sub` becomes a link to a folder holding a file of that name
    // outside the tree, before the path is opened.
    let meta = std::fs::symlink_metadata(&file).unwrap();
    std::fs::create_dir_all(t.root.join("secret/sub")).unwrap();
    std::fs::write(t.root.join("secret/sub/b.csv"), b"s3cr3t").unwrap();
    std::fs::rename(
        t.root.join("shared/data/sub"),
        t.root.join("shared/data/old"),
    )
    .unwrap();
    std::os::unix::fs::symlink(t.root.join("secret/sub"), t.root.join("shared/data/sub")).unwrap();
    let err = pinned(&file, &meta).unwrap_err();
    assert!(err.contains("changed while it was checked"), "{err}");
    // Another file on the path (the folder moved back, the file replaced) is refused too.
    std::fs::remove_file(t.root.join("shared/data/sub")).unwrap();
    std::fs::rename(
        t.root.join("shared/data/old"),
        t.root.join("shared/data/sub"),
    )
    .unwrap();
    // (The checked file is kept under another name, so its inode cannot be reused.)
    std::fs::rename(&file, t.root.join("shared/data/sub/b.old")).unwrap();
    std::fs::write(&file, b"new").unwrap();
    let err = pinned(&file, &meta).unwrap_err();
    assert!(err.contains("another file"), "{err}");
}
