//! Analysis configs (the parameter files users upload): parsed by extension before any compute
//! is spent, as NeuroCAAS did (`.json` as JSON, `.yaml`/`.yml` as YAML).

use serde_json::Value;

use crate::SpecError;

/// Parse a config's bytes by its file name's extension; other extensions are passed through
/// unchecked (an analysis may take any parameter format) and give `None`.
pub fn parse_config(name: &str, bytes: &[u8]) -> Result<Option<Value>, SpecError> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".json") {
        serde_json::from_slice(bytes).map(Some).map_err(|e| {
            SpecError::Config(format!(
                "Could not load config file {name}. JSON is misformatted: {e}"
            ))
        })
    } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
        let v: serde_yaml::Value = serde_yaml::from_slice(bytes).map_err(|e| {
            SpecError::Config(format!(
                "Could not load config file {name}. YAML is misformatted: {e}"
            ))
        })?;
        serde_json::to_value(v)
            .map(Some)
            .map_err(|e| SpecError::Config(format!("Could not load config file {name}: {e}")))
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_extension() {
        assert_eq!(parse_config("c.yaml", b"a: 1\n").unwrap().unwrap()["a"], 1);
        assert_eq!(
            parse_config("c.JSON", br#"{"a": 2}"#).unwrap().unwrap()["a"],
            2
        );
        assert!(parse_config("c.txt", b"anything").unwrap().is_none());
        let err = parse_config("c.yaml", b"a: [1,\n").unwrap_err().to_string();
        assert!(err.contains("YAML is misformatted"), "{err}");
        let err = parse_config("c.json", b"{").unwrap_err().to_string();
        assert!(err.contains("JSON is misformatted"), "{err}");
    }
}
