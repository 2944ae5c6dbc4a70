//! The run command with its placeholders filled, safe for the shell: a string command (run
//! with `sh -c`) and the script of an argv that starts a shell with `-c` are shell code, so a
//! value put into them is quoted for where it lands (outside quotes, inside '…' or inside
//! "…"); a dataset called `mouse 4 (ca1).csv` or `a'b $(x).csv` is then one word that runs
//! nothing. Other argv elements are passed as they are (no shell sees them).

use std::collections::BTreeMap;

use crate::AnalysisSpec;
use crate::analysis::{Command, fill_placeholders, placeholder_at};

/// Shells whose `-c` argument is code.
const SHELLS: [&str; 6] = ["sh", "bash", "dash", "ash", "zsh", "ksh"];

impl AnalysisSpec {
    /// The command to run, placeholders filled from `values` (`data`, `config`, ...): quoted
    /// for the shell in shell code, as given elsewhere.
    pub fn command_with(&self, values: &BTreeMap<&str, String>) -> Vec<String> {
        let argv = self.argv_template();
        let script = match &self.run.command {
            Command::Shell(_) => Some(2),
            Command::Argv(v) => shell_script_index(v),
        };
        argv.iter()
            .enumerate()
            .map(|(i, a)| {
                if Some(i) == script {
                    fill_shell(a, values)
                } else {
                    fill_placeholders(a, values)
                }
            })
            .collect()
    }
}

/// The index of the script in an argv that runs a shell with `-c` (`sh -c S`, `bash -ec S`,
/// `/bin/sh -e -c S`): the first argument after options when one of them holds `c`.
pub fn shell_script_index(argv: &[String]) -> Option<usize> {
    let prog = argv.first()?;
    let base = prog.rsplit('/').next().unwrap_or(prog);
    if !SHELLS.contains(&base) {
        return None;
    }
    let mut has_c = false;
    for (i, a) in argv.iter().enumerate().skip(1) {
        match a.strip_prefix('-') {
            Some(flags) if !flags.is_empty() && !flags.starts_with('-') => {
                has_c |= flags.contains('c');
            }
            // `-o name` and `--long` options are not cluster flags; stop guessing.
            _ if a.starts_with('-') => return None,
            _ => return has_c.then_some(i),
        }
    }
    None
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

/// Fill the placeholders of a shell script, each value quoted for the quoting it lands in.
pub fn fill_shell(script: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(script.len());
    let mut state = Quote::None;
    let mut rest = script;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("{{") {
            out.push('{');
            rest = after;
            continue;
        }
        if let Some(after) = rest.strip_prefix("}}") {
            out.push('}');
            rest = after;
            continue;
        }
        if let Some((name, v)) =
            placeholder_at(rest).and_then(|name| values.get(name).map(|v| (name, v)))
        {
            out.push_str(&quote(v, state));
            rest = &rest[name.len() + 2..];
            continue;
        }
        let n = c.len_utf8();
        out.push(c);
        rest = &rest[n..];
        match (state, c) {
            (Quote::None | Quote::Double, '\\') => {
                // The next character is escaped: copy it as it is.
                if let Some(next) = rest.chars().next() {
                    out.push(next);
                    rest = &rest[next.len_utf8()..];
                }
            }
            (Quote::None, '\'') => state = Quote::Single,
            (Quote::None, '"') => state = Quote::Double,
            (Quote::Single, '\'') | (Quote::Double, '"') => state = Quote::None,
            _ => {}
        }
    }
    out
}

/// `v` as one shell word, quoted only when it needs it (for commands caas prints as hints).
pub fn shell_word(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        v.to_string()
    } else {
        quote(v, Quote::None)
    }
}

/// `v` as one literal word where it lands.
fn quote(v: &str, state: Quote) -> String {
    match state {
        Quote::None => format!("'{}'", v.replace('\'', r"'\''")),
        // Close the quotes, an escaped quote, open again.
        Quote::Single => v.replace('\'', r"'\''"),
        Quote::Double => {
            let mut s = String::with_capacity(v.len());
            for c in v.chars() {
                if matches!(c, '\\' | '"' | '$' | '`') {
                    s.push('\\');
                }
                s.push(c);
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(data: &str) -> BTreeMap<&'static str, String> {
        let mut v = BTreeMap::new();
        v.insert("data", data.to_string());
        v.insert("results", "/io/results".to_string());
        v
    }

    #[test]
    fn the_script_of_a_shell_is_found() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(shell_script_index(&s(&["sh", "-c", "x"])), Some(2));
        assert_eq!(shell_script_index(&s(&["/bin/bash", "-euc", "x"])), Some(2));
        assert_eq!(
            shell_script_index(&s(&["sh", "-e", "-c", "x", "a"])),
            Some(3)
        );
        assert_eq!(shell_script_index(&s(&["sh", "main.sh", "{data}"])), None);
        assert_eq!(shell_script_index(&s(&["python3", "-c", "x"])), None);
        assert_eq!(shell_script_index(&s(&["sh", "-c"])), None);
    }

    #[test]
    fn hint_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("s3://b/p"), "s3://b/p");
        assert_eq!(shell_word("my store"), "'my store'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn values_are_quoted_for_where_they_land() {
        let v = vals("/io/inputs/a'b \"c\" $(x) `y` \\z.csv");
        assert_eq!(
            fill_shell("wc {data}", &v),
            r#"wc '/io/inputs/a'\''b "c" $(x) `y` \z.csv'"#
        );
        assert_eq!(
            fill_shell("wc \"{data}\"", &v),
            r#"wc "/io/inputs/a'b \"c\" \$(x) \`y\` \\z.csv""#
        );
        assert_eq!(
            fill_shell("wc '{data}'", &v),
            r#"wc '/io/inputs/a'\''b "c" $(x) `y` \z.csv'"#
        );
        // Escaped quotes do not change the state; awk braces and {{ }} stay literal.
        assert_eq!(
            fill_shell(r#"echo \" {data} | awk '{print $1}' {{x}}"#, &vals("a b")),
            r#"echo \" 'a b' | awk '{print $1}' {x}"#
        );
    }
}
