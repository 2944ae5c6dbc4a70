//! Unit tests of the store on a local folder: exactly-once create, one name one place, refused
//! links and special files, transfers.

use super::*;

#[tokio::test]
async fn local_roundtrip_and_exactly_once_create() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s").to_str().unwrap()).unwrap();
    let key = "g/results/job__a_16:52:06.1/logs/DATASET_NAME:x y.csv_STATUS.txt";
    assert!(store.create(key, "one").await.unwrap());
    assert!(!store.create(key, "two").await.unwrap());
    assert_eq!(store.get(key).await.unwrap().unwrap(), "one");
    assert!(store.local_path(key).unwrap().is_file());
    assert!(store.get("g/nothing").await.unwrap().is_none());
    store.put("g/inputs/big", vec![7u8; 2000]).await.unwrap();
    let err = store.get_small("g/inputs/big", 1000).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { size: 2000, .. }));
    let listed = store.list("g").await.unwrap();
    assert_eq!(listed.len(), 2);
    let (dirs, objs) = store.list_dir("").await.unwrap();
    assert_eq!(dirs, ["g"]);
    assert!(objs.is_empty());
    let (dirs, _) = store.list_dir("g").await.unwrap();
    assert_eq!(dirs, ["inputs", "results"]);
}

#[tokio::test]
async fn one_name_one_place() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s").to_str().unwrap()).unwrap();
    // Names object_store's local backend would encode or split: each lives under itself.
    let names = [
        "c~d",
        "c%7Ed",
        "a#b",
        "x[1]{2}",
        "données.csv",
        "🧠 brain.csv",
        "50%",
    ];
    for (i, n) in names.iter().enumerate() {
        let key = format!("g/inputs/{n}");
        store.put(&key, format!("{i}")).await.unwrap();
        assert!(dir.path().join("s/g/inputs").join(n).is_file(), "{n}");
    }
    for (i, n) in names.iter().enumerate() {
        let key = format!("g/inputs/{n}");
        assert_eq!(store.get(&key).await.unwrap().unwrap(), format!("{i}"));
        assert!(store.head(&key).await.unwrap().is_some());
    }
    let mut listed: Vec<String> = store
        .list("g/inputs")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.location.to_string())
        .collect();
    listed.sort();
    let mut want: Vec<String> = names.iter().map(|n| format!("g/inputs/{n}")).collect();
    want.sort();
    assert_eq!(listed, want);
    // Keys no store can hold are refused up front, naming why.
    for bad in ["g/inputs/new\nline", "g//x", "g/../x", "g/inputs/\0"] {
        let err = store.put(bad, "x").await.unwrap_err();
        assert!(matches!(err, StoreError::BadKey { .. }), "{bad:?}: {err}");
    }
}

#[tokio::test]
async fn a_bad_name_on_disk_does_not_stop_a_listing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let store = Store::open(root.to_str().unwrap()).unwrap();
    store.put("g/submissions/ok.json", "{}").await.unwrap();
    std::fs::write(root.join("g/submissions/bad\nsubmit.json"), "{}").unwrap();
    std::fs::write(root.join("odd\nroot"), "x").unwrap();
    let listed = store.list("g/submissions").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].location.as_ref(), "g/submissions/ok.json");
    let (dirs, objs) = store.list_dir("").await.unwrap();
    assert_eq!(dirs, ["g"]);
    assert!(objs.is_empty());
}

#[tokio::test]
async fn links_and_special_files_are_never_followed_or_opened() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let store = Store::open(root.to_str().unwrap()).unwrap();
    let outside = dir.path().join("secret.txt");
    std::fs::write(&outside, "host secret").unwrap();
    store.put("g/inputs/real.csv", "1,2").await.unwrap();
    std::os::unix::fs::symlink(&outside, root.join("g/inputs/link.csv")).unwrap();
    std::os::unix::fs::symlink(dir.path(), root.join("g/inputs/linkdir")).unwrap();
    std::os::unix::fs::symlink(root.join("g"), root.join("other")).unwrap();
    let fifo = root.join("g/inputs/pipe.csv");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for key in ["g/inputs/link.csv", "g/inputs/pipe.csv"] {
        let err = store.head(key).await.unwrap_err();
        assert!(matches!(err, StoreError::Refused { .. }), "{key}: {err}");
        let err = store.get(key).await.unwrap_err();
        assert!(matches!(err, StoreError::Refused { .. }), "{key}: {err}");
    }
    // A link on the way is refused too (never a way out of the prefix).
    for key in ["g/inputs/linkdir/secret.txt", "other/inputs/real.csv"] {
        let err = store.get(key).await.unwrap_err();
        assert!(matches!(err, StoreError::Refused { .. }), "{key}: {err}");
    }
    let listed = store.list("g").await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let err = store.check_tree("g/inputs").await.unwrap_err();
    assert!(matches!(err, StoreError::Refused { .. }), "{err}");
    // Staging for a container: links refused, regular files linked from their open file.
    let work = root.join(".caas/work");
    let staged = store
        .stage_local("g/inputs/real.csv", false, &work.join("t/real.csv"), &work)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read_to_string(staged).unwrap(), "1,2");
    // While staged, the file has two names, and neither is foreign.
    store.check_links("g/inputs/real.csv", &work).await.unwrap();
    let err = store
        .stage_local("g/inputs/link.csv", false, &work.join("t/l"), &work)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Refused { .. }), "{err}");
    // A hard link from elsewhere is foreign.
    std::fs::hard_link(&outside, root.join("g/inputs/hard.csv")).unwrap();
    let err = store
        .check_links("g/inputs/hard.csv", &work)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("hard link"), "{err}");
    let err = store
        .stage_local("g/inputs/hard.csv", false, &work.join("t/h"), &work)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("hard link"), "{err}");
    // A folder dataset with a link inside is refused as a whole.
    store.put("g/inputs/sess/a.csv", "a").await.unwrap();
    std::os::unix::fs::symlink(&outside, root.join("g/inputs/sess/b.csv")).unwrap();
    let err = store
        .stage_local("g/inputs/sess", true, &work.join("t/sess"), &work)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    // Uploading a local FIFO is refused, not a hang.
    let local_fifo = dir.path().join("local.fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&local_fifo)
            .status()
            .unwrap()
            .success()
    );
    let err = store
        .upload_file(&local_fifo, "g/inputs/f")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Refused { .. }), "{err}");
}

#[tokio::test]
async fn moving_in_never_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s").to_str().unwrap()).unwrap();
    store.put("g/results/r/out.txt", "old").await.unwrap();
    let src = dir.path().join("s/.caas/work/out.txt");
    std::fs::create_dir_all(src.parent().unwrap()).unwrap();
    std::fs::write(&src, "new").unwrap();
    let key = store.move_in(&src, "g/results/r/out.txt").await.unwrap();
    assert_eq!(key, "g/results/r/out.txt.1");
    assert_eq!(
        store.get("g/results/r/out.txt").await.unwrap().unwrap(),
        "old"
    );
    assert_eq!(store.get(&key).await.unwrap().unwrap(), "new");
}

#[tokio::test]
async fn file_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s").to_str().unwrap()).unwrap();
    let src = dir.path().join("src.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    assert_eq!(
        store.upload_file(&src, "g/inputs/src.bin").await.unwrap(),
        data.len() as u64
    );
    let back = dir.path().join("back/src.bin");
    store
        .download_file("g/inputs/src.bin", &back)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), data);
}
