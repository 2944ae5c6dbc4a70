//! Placeholders in shell code (a string `command`, run with `sh -c`, and the script of an argv
//! `["sh", "-c", ...]`) are quoted for the shell: every dataset name caas accepts — the
//! corpus' hostile ones and names with spaces, parentheses, quotes, `$(...)` and backticks —
//! reaches the analysis as one word and runs nothing, with the real binary on the real engine.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

/// The dataset names of the corpus that caas accepts, and the ones the issue reported.
fn hostile_names() -> Vec<String> {
    let text =
        std::fs::read_to_string(repo_root().join("crates/cli/tests/corpus/hostile.toml")).unwrap();
    let corpus: toml::Value = toml::from_str(&text).unwrap();
    let mut names: Vec<String> = corpus["name"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c.get("ok").and_then(|o| o.as_bool()) == Some(true))
        .filter_map(|c| c.get("dataset").and_then(|d| d.as_str()))
        .map(String::from)
        .collect();
    assert!(names.len() >= 5, "{names:?}");
    for n in [
        "mouse 4 (ca1).csv",
        "it's \"quoted\".csv",
        "$(touch pwned) `touch pwned2` ; & | > x.csv",
        "dollar $HOME ${x}.csv",
    ] {
        names.push(n.to_string());
    }
    names
}

fn run_all(name: &str, command: &str) {
    let sb = Sandbox::new();
    let toml = format!(
        "[analysis]\nname = \"{name}\"\nversion = \"0.1.0\"\n\n[environment]\nimage = \
         \"{BASE_IMAGE}\"\n\n[run]\ncommand = {command}\ntimeout = \"2m\"\n"
    );
    let a = sb.analysis(&toml);
    for (i, n) in hostile_names().iter().enumerate() {
        std::fs::write(sb.path().join(n), format!("content of {n}\n")).unwrap();
        let ts = format!("t{i}");
        let out = sb
            .caas_run(&a)
            .arg("--data")
            .arg(sb.path().join(n))
            .args([
                "--config",
                "config.yaml",
                "--group",
                "lab",
                "--timestamp",
                &ts,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{n:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        let results = sb.job_dir(name, &ts).join("process_results");
        let copy = std::fs::read_to_string(results.join("copy.txt"))
            .unwrap_or_else(|e| panic!("{n:?}: {e}: {}", stderr(&out)));
        assert_eq!(copy, format!("content of {n}\n"), "{n:?}");
        let said = std::fs::read_to_string(results.join("name.txt")).unwrap();
        assert_eq!(said, format!("{n}\n"), "{n:?}");
        // Nothing the name holds ran: only what the command wrote and caas's own files.
        let files = walk(&results);
        assert!(
            files
                .iter()
                .all(|p| ["copy.txt", "name.txt", "end.txt", "config.yaml"]
                    .iter()
                    .any(|f| p.ends_with(&format!("/{f}")))),
            "{n:?}: {files:?}"
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    snapshot(dir).into_iter().map(|(p, _)| p).collect()
}

#[test]
fn a_string_command_quotes_hostile_dataset_names() {
    // Unquoted, as a newcomer writes it.
    run_all(
        "qstring",
        r#""cd {results} && cat {data} > copy.txt && echo {dataset} > name.txt""#,
    );
}

#[test]
fn placeholders_inside_double_and_single_quotes_stay_one_word() {
    run_all(
        "qquoted",
        r#"["sh", "-c", "cat \"{data}\" > \"{results}/copy.txt\" && echo '{dataset}' > '{results}'/name.txt"]"#,
    );
}
