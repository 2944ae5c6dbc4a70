//! Reading a blueprint's loosely typed JSON: numbers that are sometimes strings, prose left in
//! from templates, and the dotted field paths every message names.

use serde_json::{Map, Value};

/// A JSON object of the blueprint and the dotted path it sits at.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Obj<'a> {
    pub path: &'a str,
    pub map: &'a Map<String, Value>,
}

/// A field error: the dotted path and the message.
pub(crate) type FieldError = (String, String);

impl<'a> Obj<'a> {
    /// The dotted path of `key` in this object.
    pub fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// An error about `key`.
    pub fn error(&self, key: &str, message: impl Into<String>) -> FieldError {
        (self.field(key), message.into())
    }

    /// The value of `key`, if present and not null.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A required string.
    pub fn string(&self, key: &str) -> Result<&'a str, FieldError> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(self.error(key, format!("must be a string, found {other}"))),
            None => Err(self.error(key, "is missing")),
        }
    }

    /// An optional string.
    pub fn opt_string(&self, key: &str) -> Result<Option<&'a str>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.string(key).map(Some),
        }
    }

    /// An optional number, also accepted as a string of digits (blueprints write both
    /// `"MAXCOST": 300` and `"MAXCOST": "300"`).
    pub fn opt_number(&self, key: &str) -> Result<Option<f64>, FieldError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if n.is_finite() => Ok(Some(n)),
            _ => Err(self.error(
                key,
                format!(
                    "{} is not a number{}",
                    short(v),
                    if looks_like_prose(v) {
                        " (a template placeholder left in the blueprint?)"
                    } else {
                        ""
                    }
                ),
            )),
        }
    }

    /// A required child object.
    pub fn object(&self, key: &str) -> Result<&'a Map<String, Value>, FieldError> {
        match self.get(key) {
            Some(Value::Object(m)) => Ok(m),
            Some(other) => {
                Err(self.error(key, format!("must be an object, found {}", short(other))))
            }
            None => Err(self.error(key, "is missing (a blueprint has this section)")),
        }
    }
}

/// True when a value reads as a sentence rather than a value: templates leave "your instance
/// type here." or "maximum per user allowed cost (integer) ..." in place.
pub(crate) fn looks_like_prose(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.trim().contains(char::is_whitespace))
}

/// A value for a message: JSON, at most 80 characters.
pub(crate) fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= 80 {
        s
    } else {
        let cut: String = s.chars().take(77).collect();
        format!("{cut}...")
    }
}
