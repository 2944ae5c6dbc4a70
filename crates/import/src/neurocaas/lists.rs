//! The two lists an import fills: every blueprint field either carried over (and where to) or
//! not (and why); nothing is dropped silently, unknown fields included.

use serde::Serialize;

use crate::value::{Obj, short};

/// A field carried over, and where to.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Carried {
    /// The blueprint field's dotted path.
    pub field: String,
    /// Its value, short.
    pub value: String,
    /// Where it went in caas.
    pub to: String,
}

/// A field not carried over, and why.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NotCarried {
    /// The blueprint field's dotted path.
    pub field: String,
    /// Its value, short.
    pub value: String,
    /// Why caas does not use it (and what to do instead, where something can be done).
    pub reason: String,
}

/// The lists being built.
#[derive(Default)]
pub(super) struct Out {
    pub(super) carried: Vec<Carried>,
    pub(super) not_carried: Vec<NotCarried>,
}

impl Out {
    pub(super) fn carry(&mut self, obj: Obj<'_>, key: &str, to: String) {
        if let Some(v) = obj.get(key) {
            self.carried.push(Carried {
                field: obj.field(key),
                value: short(v),
                to,
            });
        }
    }

    pub(super) fn drop(&mut self, obj: Obj<'_>, key: &str, reason: &str) {
        if let Some(v) = obj.get(key) {
            self.not_carried.push(NotCarried {
                field: obj.field(key),
                value: short(v),
                reason: reason.to_string(),
            });
        }
    }

    /// Every key of `obj` not in `known`: named, never dropped silently.
    pub(super) fn unknown(&mut self, obj: Obj<'_>, known: &[&str]) {
        for (k, v) in obj.map {
            if !known.contains(&k.as_str()) {
                self.not_carried.push(NotCarried {
                    field: obj.field(k),
                    value: short(v),
                    reason: "a field caas's importer does not know".into(),
                });
            }
        }
    }
}
