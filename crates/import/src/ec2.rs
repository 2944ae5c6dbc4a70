//! The EC2 instance types a NeuroCAAS blueprint names, with what `[resources]` and `[pricing]`
//! need of them: vCPUs, memory, GPUs and the On-Demand price. The table is data
//! (`data/ec2-instance-types.toml`, with its date and source), not code.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

/// One instance type.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceType {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in GiB.
    pub memory_gib: f64,
    /// GPUs (0: none).
    #[serde(default)]
    pub gpus: u32,
    /// The GPU's model, when there are GPUs.
    #[serde(default)]
    pub gpu_model: Option<String>,
    /// On-Demand USD per hour (us-east-1, Linux).
    pub usd_per_hour: f64,
}

/// The whole table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    /// When the table was written.
    pub date: String,
    /// Where its values come from.
    pub source: String,
    /// Types by name (`p3.2xlarge`).
    pub types: BTreeMap<String, InstanceType>,
}

const TABLE: &str = include_str!("../data/ec2-instance-types.toml");

/// The table (parsed once; its text is part of the binary and checked by a unit test).
pub fn table() -> &'static Table {
    static PARSED: OnceLock<Table> = OnceLock::new();
    PARSED.get_or_init(|| match toml::from_str(TABLE) {
        Ok(t) => t,
        // The data is compiled in and parsed by this crate's tests: an empty table would only
        // make every lookup "unknown", which is reported to the user, never a wrong price.
        Err(_) => Table {
            date: String::new(),
            source: String::new(),
            types: BTreeMap::new(),
        },
    })
}

/// The instance type `name`, if the table knows it.
pub fn lookup(name: &str) -> Option<&'static InstanceType> {
    table().types.get(name)
}

/// Give `spec` the resources (vCPUs, memory, GPUs) and the On-Demand price of the instance type
/// `name`: what a NeuroCAAS blueprint's `INSTANCE_TYPE`, or a submission's `instance_type`
/// override, asks for. Unknown names are refused with the message a user sees.
pub fn apply(spec: &mut caas_protocol::AnalysisSpec, name: &str) -> Result<(), String> {
    let Some(it) = lookup(name.trim()) else {
        let family = name.split('.').next().unwrap_or("");
        let near: Vec<&str> = table()
            .types
            .keys()
            .filter(|k| !family.is_empty() && k.starts_with(&format!("{family}.")))
            .map(String::as_str)
            .collect();
        return Err(format!(
            "'instance_type' {:?} is not an EC2 instance type caas knows{}",
            name,
            if near.is_empty() {
                String::new()
            } else {
                format!(" (of that family: {})", near.join(", "))
            }
        ));
    };
    spec.resources.cpus = Some(f64::from(it.vcpus));
    spec.resources.memory = Some(caas_protocol::units::ByteSize(
        (it.memory_gib * 1024.0 * 1024.0 * 1024.0) as u64,
    ));
    spec.resources.gpus = (it.gpus > 0).then_some(it.gpus);
    spec.pricing.wall_hour = it.usd_per_hour;
    spec.pricing.cpu_hour = 0.0;
    spec.pricing.memory_gb_hour = 0.0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses_and_is_sane() {
        let t: Table = toml::from_str(TABLE).expect("the table is valid TOML");
        assert!(t.types.len() >= 30, "{} types", t.types.len());
        assert!(!t.date.is_empty() && !t.source.is_empty());
        for (name, it) in &t.types {
            assert!(it.vcpus >= 1, "{name}");
            assert!(it.memory_gib > 0.0, "{name}");
            assert!(it.usd_per_hour > 0.0 && it.usd_per_hour < 100.0, "{name}");
            assert_eq!(
                it.gpus > 0,
                it.gpu_model.is_some(),
                "{name}: gpus and model"
            );
        }
        // The GPU families NeuroCAAS served on.
        for gpu in ["p2.xlarge", "p3.2xlarge", "g4dn.12xlarge"] {
            assert!(lookup(gpu).is_some_and(|i| i.gpus >= 1), "{gpu}");
        }
        assert_eq!(lookup("m5.16xlarge").map(|i| i.vcpus), Some(64));
        assert!(lookup("your instance type here.").is_none());
    }

    #[test]
    fn an_instance_type_sets_resources_and_price() {
        let mut spec = caas_protocol::AnalysisSpec::parse(
            "[analysis]\nname = \"a\"\nversion = \"1\"\n[environment]\nimage = \"x\"\n[run]\ncommand = \"true\"\n[pricing]\ncpu_hour = 1.0\n",
            std::path::Path::new("caas.toml"),
        )
        .expect("valid");
        apply(&mut spec, "g4dn.12xlarge").expect("known");
        assert_eq!(spec.resources.cpus, Some(48.0));
        assert_eq!(spec.resources.gpus, Some(4));
        assert_eq!(spec.resources.memory.map(|m| m.0), Some(192 << 30));
        assert_eq!(spec.pricing.wall_hour, 3.912);
        assert_eq!(spec.pricing.cpu_hour, 0.0, "one price: the instance's");
        let e = apply(&mut spec, "m5.mega").unwrap_err();
        assert!(e.contains("m5.large") && e.contains("m5.mega"), "{e}");
        assert!(apply(&mut spec, "x\ny").unwrap_err().contains("x\\ny"));
    }
}
