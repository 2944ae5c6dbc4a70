//! `caas serve --config serve.toml`: every flag of `caas serve` also as a key of one TOML file,
//! so an operator keeps the service's settings in a file a systemd unit names.
//!
//! A key is the flag's long name with `_` for `-` (`group_limit = 2` is `--group-limit 2`); a
//! list repeats a flag (`analysis = ["a", "b"]`), `true` sets a switch. The file's values go
//! through the very parsers of the flags (turned into arguments placed before the command
//! line's), so a value means the same in both places; a flag given on the command line (or by
//! its environment variable) overrides its key. Unknown keys and bad values are errors that
//! name the file, the line and the key, as in caas.toml.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Command};

use crate::serve::ServeArgs;

/// The key of `--config` itself: a file cannot name another.
const CONFIG_ID: &str = "config";

/// The arguments the file at `path` stands for, leaving out the flags `given` on the command
/// line; an error names the file, the line and the key.
pub fn file_args(path: &Path, given: &ArgMatches) -> Result<Vec<OsString>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    parse(&text, path, |id| {
        matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    })
}

/// [`file_args`] on `text`; `given(id)` says whether the command line set that argument.
fn parse(text: &str, path: &Path, given: impl Fn(&str) -> bool) -> Result<Vec<OsString>, String> {
    type Table = std::collections::BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>;
    let table: Table = toml::from_str(text)
        .map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))?;
    let cmd = ServeArgs::augment_args(Command::new("caas serve"));
    let mut out = Vec::new();
    for (key, value) in &table {
        let line = line_at(text, key.span().start);
        let at = |msg: String| {
            format!(
                "{}, line {line}: key `{}`: {msg}",
                path.display(),
                key.get_ref()
            )
        };
        let arg = cmd
            .get_arguments()
            .find(|a| key_of(a).as_deref() == Some(key.get_ref().as_str()))
            .ok_or_else(|| {
                let known: Vec<String> = cmd.get_arguments().filter_map(key_of).collect();
                at(format!("unknown key; known: {}", known.join(", ")))
            })?;
        let id = arg.get_id().as_str();
        let long = format!("--{}", arg.get_long().unwrap_or(id));
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let mut these: Vec<OsString> = Vec::new();
        match value.get_ref() {
            toml::Value::Boolean(b) if switch => {
                if *b {
                    these.push(long.clone().into());
                }
            }
            _ if switch => return Err(at("give true or false".into())),
            toml::Value::Array(items) => {
                if !matches!(arg.get_action(), ArgAction::Append) {
                    return Err(at("give one value, not a list".into()));
                }
                for item in items {
                    these.push(format!("{long}={}", scalar(item).map_err(&at)?).into());
                }
            }
            other => these.push(format!("{long}={}", scalar(other).map_err(&at)?).into()),
        }
        // The flag's own parser checks the value now, so a bad one is blamed on its line.
        let mut probe = vec![OsString::from("caas serve")];
        probe.extend(these.iter().cloned());
        if let Err(e) = cmd.clone().try_get_matches_from(probe) {
            let msg = e.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            // clap repeats the value: a URL's user part or query never reaches the message.
            let mut first = first.to_string();
            for a in &these {
                let a = a.to_string_lossy();
                let v = a.split_once('=').map_or(&*a, |(_, v)| v);
                if caas_protocol::datasource::is_url(v) {
                    first = first.replace(v, &caas_protocol::datasource::shown(v));
                }
            }
            return Err(at(first));
        }
        if !given(id) {
            out.extend(these);
        }
    }
    Ok(out)
}

/// The file's key of a flag: its long name with `_` for `-` (`--config` has none).
fn key_of(arg: &clap::Arg) -> Option<String> {
    arg.get_long()
        .filter(|l| *l != CONFIG_ID && !arg.is_hide_set())
        .map(|l| l.replace('-', "_"))
}

/// A TOML scalar as the text a flag takes.
fn scalar(v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "give a string or a number, not {}",
            other.type_str()
        )),
    }
}

/// The 1-based line of byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.matches('\n').count())
        + 1
}

/// `args` with `extra` inserted right after the subcommand `serve` (the first argument that
/// is not a global flag), so the command line's own flags come after the file's.
pub fn splice(args: &[OsString], extra: Vec<OsString>) -> Vec<OsString> {
    let at = args
        .iter()
        .skip(1)
        .position(|a| !a.to_string_lossy().starts_with('-'))
        .map_or(args.len(), |i| i + 2);
    let mut out = args[..at.min(args.len())].to_vec();
    out.extend(extra);
    out.extend_from_slice(&args[at.min(args.len())..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str, given: &[&str]) -> Result<Vec<String>, String> {
        parse(text, Path::new("serve.toml"), |id| given.contains(&id)).map(|v| {
            v.into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn keys_become_flags_and_the_command_line_wins() {
        let text = "store = \"s3://b/p\"\nanalysis = [\"a\", \"b\"]\nconcurrency = 8\n\
                    stop_on_exit = true\npoll = \"2s\"\nmax_body = \"64MiB\"\n";
        assert_eq!(
            args(text, &[]).unwrap(),
            [
                "--analysis=a",
                "--analysis=b",
                "--concurrency=8",
                "--max-body=64MiB",
                "--poll=2s",
                "--stop-on-exit",
                "--store=s3://b/p"
            ]
        );
        let kept = args(text, &["store", "analysis"]).unwrap();
        // A key named as the flag is spelled, not as the field behind it.
        assert_eq!(
            args("sbatch_arg = [\"--qos=short\"]\n", &[]).unwrap(),
            ["--sbatch-arg=--qos=short"]
        );
        assert!(
            !kept
                .iter()
                .any(|a| a.starts_with("--store") || a.starts_with("--analysis"))
        );
        assert!(kept.contains(&"--concurrency=8".to_string()));
    }

    /// Issue 25's settings (the event source, the reconcile, the backoff bound) as keys.
    #[test]
    fn the_event_settings_are_keys_too() {
        let text = "events = \"sqs://caas-events\"\nreconcile = \"10m\"\npoll_max = \"1m\"\n";
        assert_eq!(
            args(text, &[]).unwrap(),
            [
                "--events=sqs://caas-events",
                "--poll-max=1m",
                "--reconcile=10m"
            ]
        );
        let e = args("store = \"x\"\nevents = \"kafka://q\"\n", &[]).unwrap_err();
        assert!(e.starts_with("serve.toml, line 2: key `events`:"), "{e}");
        assert!(e.contains("sqs://QUEUE-NAME"), "{e}");
        let e = args("reconcile = \"often\"\n", &[]).unwrap_err();
        assert!(e.starts_with("serve.toml, line 1: key `reconcile`:"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_file_line_and_key() {
        let e = args("store = \"x\"\n\nconcurency = 3\n", &[]).unwrap_err();
        assert!(
            e.starts_with("serve.toml, line 3: key `concurency`: unknown key"),
            "{e}"
        );
        assert!(e.contains("concurrency"), "{e}");
        let e = args("poll = \"soon\"\n", &[]).unwrap_err();
        assert!(e.starts_with("serve.toml, line 1: key `poll`:"), "{e}");
        assert!(e.contains("soon"), "{e}");
        let e = args("store = \"x\"\nexecutor = \"k8s\"\n", &[]).unwrap_err();
        assert!(e.starts_with("serve.toml, line 2: key `executor`:"), "{e}");
        let e = args("concurrency = [1, 2]\n", &[]).unwrap_err();
        assert!(e.contains("not a list"), "{e}");
        let e = args("stop_on_exit = \"yes\"\n", &[]).unwrap_err();
        assert!(e.contains("true or false"), "{e}");
        let e = args("config = \"other.toml\"\n", &[]).unwrap_err();
        assert!(e.contains("unknown key"), "{e}");
        // Not TOML at all: toml's own message, with the file and the line.
        let e = args("store = \n", &[]).unwrap_err();
        assert!(e.starts_with("serve.toml:") && e.contains("line 1"), "{e}");
        // A value that is a table is no flag's.
        let e = args("[store]\nx = 1\n", &[]).unwrap_err();
        assert!(e.contains("line 1") && e.contains("key `store`"), "{e}");
    }

    #[test]
    fn data_sources_and_sinks_are_keys_checked_by_their_flag() {
        let text = "data_source = [\"s3://dandiarchive/blobs/*\", \"file:///shared/data/* groups=lab\"]\n\
                    data_sink = [\"file:///shared/out/*\"]\n";
        assert_eq!(
            args(text, &[]).unwrap(),
            [
                "--data-sink=file:///shared/out/*",
                "--data-source=s3://dandiarchive/blobs/*",
                "--data-source=file:///shared/data/* groups=lab"
            ]
        );
        let e = args(
            "store = \"x\"\ndata_source = [\"https://u:p@h.org/*\"]\n",
            &[],
        )
        .unwrap_err();
        assert!(
            e.starts_with("serve.toml, line 2: key `data_source`:"),
            "{e}"
        );
        assert!(e.contains("credentials") && !e.contains("u:p"), "{e}");
        let e = args("data_sink = [\"file:///shared/../etc/*\"]\n", &[]).unwrap_err();
        assert!(
            e.starts_with("serve.toml, line 1: key `data_sink`:") && e.contains("'..'"),
            "{e}"
        );
        let e = args("data_sink = [\"https://x.org/out/*\"]\n", &[]).unwrap_err();
        assert!(e.contains("a sink is a folder of s3:// or file://"), "{e}");
        let e = args("data_sorce = [\"s3://b/*\"]\n", &[]).unwrap_err();
        assert!(
            e.contains("line 1: key `data_sorce`: unknown key") && e.contains("data_source"),
            "{e}"
        );
    }

    #[test]
    fn file_arguments_go_right_after_the_subcommand() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let out = splice(
            &os(&["caas", "-v", "serve", "--store", "x"]),
            os(&["--concurrency=2"]),
        );
        assert_eq!(
            out,
            os(&["caas", "-v", "serve", "--concurrency=2", "--store", "x"])
        );
    }
}
