//! The caas.toml text an import writes: commented, every string a TOML literal, checked by
//! caas's own parser before it is returned.

use std::path::Path;

use caas_protocol::AnalysisName;

use crate::ec2;

pub(super) struct Render<'a> {
    pub name: &'a AnalysisName,
    pub pipeline: &'a str,
    pub blueprint: &'a Path,
    pub command: &'a str,
    pub image: Option<&'a str>,
    pub instance: &'a ec2::InstanceType,
    pub instance_name: &'a str,
    pub timeout: Option<f64>,
    pub budget: Option<f64>,
    pub missing_config: Option<&'a str>,
}

/// A TOML string literal.
fn lit(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

pub(super) fn render(r: &Render<'_>) -> String {
    let mut t = String::new();
    let file = r
        .blueprint
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let folder = r
        .blueprint
        .parent()
        .and_then(Path::file_name)
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    t.push_str(&format!(
        "# Imported by `caas import neurocaas` from {} (PipelineName {}).\n\n",
        lit(&format!("{folder}/{file}")).trim_matches('"'),
        lit(r.pipeline)
    ));
    t.push_str("[analysis]\n");
    t.push_str(&format!("name = {}\n", lit(r.name.as_str())));
    t.push_str("version = \"0.1.0\"\n");
    t.push_str(&format!(
        "description = {}\n\n",
        lit(&format!("NeuroCAAS analysis {} (imported)", r.pipeline))
    ));
    t.push_str("[environment]\n");
    match r.image {
        Some(image) => t.push_str(&format!("image = {}\n\n", lit(image))),
        None => t.push_str("# The blueprint's AMI cannot run here: write this Dockerfile and run `caas build`.\ndockerfile = \"Dockerfile\"\n\n"),
    }
    t.push_str("[run]\n");
    t.push_str(&format!("command = {}\n", lit(r.command)));
    if let Some(s) = r.timeout {
        t.push_str(&format!("timeout = \"{}s\"\n", s.round() as u64));
    }
    t.push('\n');
    t.push_str(&format!(
        "[resources]                  # {}\n",
        r.instance_name
    ));
    t.push_str(&format!("cpus = {}\n", r.instance.vcpus));
    t.push_str(&format!("memory = \"{}GiB\"\n", r.instance.memory_gib));
    if r.instance.gpus > 0 {
        t.push_str(&format!(
            "gpus = {}                     # {}\n",
            r.instance.gpus,
            r.instance.gpu_model.as_deref().unwrap_or("GPU")
        ));
    }
    t.push('\n');
    t.push_str(&format!(
        "[pricing]                    # {} On-Demand, {} ({})\nwall_hour = {}\n",
        r.instance_name,
        ec2::table().date,
        ec2::table().source,
        r.instance.usd_per_hour
    ));
    if let Some(b) = r.budget {
        t.push_str(&format!(
            "\n[budget]                     # MAXCOST\ndefault = {b:?}\n"
        ));
    }
    if let Some(m) = r.missing_config {
        t.push_str(&format!("\n[inputs]\nmissing_config = {}\n", lit(m)));
    }
    t
}
