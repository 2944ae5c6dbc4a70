//! The analyses a manager serves, as they are now: `caas serve` reloads an analysis whose
//! caas.toml or active image changed, and new jobs get the new version while jobs in flight
//! keep the one they started with (each job takes its own copy at its start). An edit that
//! does not load keeps the previous version and its reason here, for the log and `/readyz`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use caas_protocol::AnalysisSpec;

/// One analysis the manager serves.
#[derive(Clone, Debug)]
pub struct Analysis {
    /// Its `caas.toml`.
    pub spec: AnalysisSpec,
    /// The image its tasks run.
    pub image: String,
    /// Which version this is (recorded in each job's job.json as `analysis_revision`).
    pub revision: String,
}

#[derive(Debug, Default)]
struct Served {
    list: Arc<Vec<Analysis>>,
    /// Per analysis name: why its latest edit was refused (the previous version serves).
    errors: BTreeMap<String, String>,
}

/// The served analyses, shared by the manager, its submitter and the API; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Analyses(Arc<RwLock<Served>>);

impl Analyses {
    /// Serve `list` (the first is the default of a submission that names none).
    pub fn new(list: Vec<Analysis>) -> Self {
        Self(Arc::new(RwLock::new(Served {
            list: Arc::new(list),
            errors: BTreeMap::new(),
        })))
    }

    /// The analyses as they are now (a snapshot: later reloads do not change it).
    pub fn current(&self) -> Arc<Vec<Analysis>> {
        match self.0.read() {
            Ok(s) => s.list.clone(),
            Err(poisoned) => poisoned.into_inner().list.clone(),
        }
    }

    /// Serve `new` in place of the analysis of the same name (new jobs get it) and forget
    /// any refused edit of it; `false` when no analysis of that name is served.
    pub fn replace(&self, new: Analysis) -> bool {
        let mut s = match self.0.write() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let name = new.spec.analysis.name.to_string();
        let mut list: Vec<Analysis> = s.list.as_ref().clone();
        let Some(slot) = list
            .iter_mut()
            .find(|a| a.spec.analysis.name.as_str() == name)
        else {
            return false;
        };
        *slot = new;
        s.list = Arc::new(list);
        s.errors.remove(&name);
        true
    }

    /// Record why the latest edit of analysis `name` was refused (its previous version keeps
    /// serving).
    pub fn refuse(&self, name: &str, why: String) {
        let mut s = match self.0.write() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        s.errors.insert(name.to_string(), why);
    }

    /// Why edits were refused, per analysis name (empty when every analysis serves as it is
    /// on disk): what `/readyz` reports.
    pub fn load_errors(&self) -> BTreeMap<String, String> {
        match self.0.read() {
            Ok(s) => s.errors.clone(),
            Err(poisoned) => poisoned.into_inner().errors.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis(name: &str, version: &str) -> Analysis {
        let text = format!(
            "[analysis]\nname = \"{name}\"\nversion = \"{version}\"\n[environment]\nimage = \"x:y\"\n[run]\ncommand = \"true\"\n"
        );
        Analysis {
            spec: caas_protocol::AnalysisSpec::parse(&text, std::path::Path::new("caas.toml"))
                .expect("spec"),
            image: "x:y".into(),
            revision: format!("{name}-{version}"),
        }
    }

    #[test]
    fn a_reload_changes_new_snapshots_only_and_a_refusal_is_kept_until_fixed() {
        let a = Analyses::new(vec![analysis("a", "1"), analysis("b", "1")]);
        let before = a.current();
        assert!(a.replace(analysis("b", "2")));
        assert_eq!(before[1].spec.analysis.version, "1");
        assert_eq!(a.current()[1].spec.analysis.version, "2");
        assert!(!a.replace(analysis("c", "1")));
        a.refuse("a", "line 3: bad".into());
        assert_eq!(
            a.load_errors().get("a").map(String::as_str),
            Some("line 3: bad")
        );
        assert!(a.replace(analysis("a", "2")));
        assert!(a.load_errors().is_empty());
    }
}
