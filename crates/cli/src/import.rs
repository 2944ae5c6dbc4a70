//! `caas import neurocaas BLUEPRINT --store STORE`: a NeuroCAAS blueprint becomes a caas.toml
//! (written beside, never over, an existing one) and the groups' users in the store. The
//! conversion is `caas_import`'s; this file writes, prints and picks exit codes.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use caas_api::auth;
use caas_import::ImportError;
use caas_import::neurocaas::{self, Imported, Options};
use caas_store::Store;

use crate::errors::user;

/// `caas import ...`.
#[derive(Debug, Subcommand)]
pub enum ImportCmd {
    /// A NeuroCAAS blueprint (stack_config_template.json, or its folder): writes caas.toml and
    /// the groups' users, and lists every field not carried over with the reason.
    #[command(
        after_help = "Example:\n  caas import neurocaas ncap_blueprints/dlc_web_stack --store ./caas-store --out dlc --image lab/dlc:2.3"
    )]
    Neurocaas(NeurocaasArgs),
}

/// `caas import neurocaas`.
#[derive(Debug, Args)]
pub struct NeurocaasArgs {
    /// The blueprint file, or the folder holding stack_config_template.json.
    blueprint: PathBuf,
    /// The store the groups' users go into: a local folder or s3://bucket/prefix.
    #[arg(long, env = "CAAS_STORE")]
    store: String,
    /// Where caas.toml is written (created if missing).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// The container image to run (a blueprint's AMI cannot be carried over); without it the
    /// caas.toml names a Dockerfile for `caas build`.
    #[arg(long)]
    image: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn import(cmd: ImportCmd) -> anyhow::Result<i32> {
    match cmd {
        ImportCmd::Neurocaas(args) => neurocaas_import(args).await,
    }
}

fn import_error(e: ImportError) -> anyhow::Error {
    match e {
        ImportError::Spec { .. } => anyhow::anyhow!("{e}"),
        other => user(other.to_string()),
    }
}

async fn neurocaas_import(args: NeurocaasArgs) -> anyhow::Result<i32> {
    let (path, blueprint) = neurocaas::read(&args.blueprint).map_err(import_error)?;
    let imported = neurocaas::convert(
        &blueprint,
        &path,
        &Options {
            image: args.image.clone(),
        },
    )
    .map_err(import_error)?;
    // Everything is checked before anything is written.
    let store = Store::open(&args.store)?;
    let toml_path = args.out.join("caas.toml");
    let wrote = write_new(&toml_path, &imported.caas_toml)?;
    for g in &imported.groups {
        for u in &g.users {
            let mut groups = match auth::read_user(&store, &u.name).await {
                Ok(Some(old)) => old.groups,
                Ok(None) => Vec::new(),
                Err(e) => return Err(anyhow::anyhow!("cannot read the user {}: {e}", u.name)),
            };
            if !groups.contains(&g.name) {
                groups.push(g.name.clone());
            }
            auth::add_user(&store, &u.name, &groups)
                .await
                .map_err(|e| anyhow::anyhow!("cannot record the user {}: {e}", u.name))?;
        }
    }
    if args.json {
        let mut v = serde_json::to_value(&imported)?;
        v["caas_toml_path"] = serde_json::json!(toml_path);
        v["caas_toml_written"] = serde_json::json!(wrote);
        println!("{v}");
    } else {
        print_report(&imported, &toml_path, wrote, &args);
    }
    Ok(0)
}

/// Write `text` to `path` unless something is there: identical content is fine (`false`),
/// different content is refused, never replaced.
fn write_new(path: &Path, text: &str) -> anyhow::Result<bool> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| user(format!("cannot create {}: {e}", dir.display())))?;
    if let Ok(old) = std::fs::symlink_metadata(path) {
        if old.is_file() && std::fs::read(path).is_ok_and(|b| b == text.as_bytes()) {
            return Ok(false);
        }
        return Err(user(format!(
            "{} exists and differs from the import: not replaced (move it away, or give --out DIR)",
            path.display()
        )));
    }
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| user(format!("cannot write in {}: {e}", dir.display())))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist_noclobber(path).map_err(|e| {
        user(format!(
            "{} appeared meanwhile: not replaced ({})",
            path.display(),
            e.error
        ))
    })?;
    Ok(true)
}

fn print_report(imp: &Imported, toml_path: &Path, wrote: bool, args: &NeurocaasArgs) {
    println!(
        "caas: imported {} as the analysis {}{}",
        imp.blueprint.display(),
        imp.analysis,
        imp.renamed_from
            .as_ref()
            .map(|r| format!(
                " (PipelineName {r:?} is not a valid caas name: jobs go to job__{}_<timestamp>/)",
                imp.analysis
            ))
            .unwrap_or_default()
    );
    println!(
        "  {} {}",
        if wrote { "wrote" } else { "unchanged" },
        toml_path.display()
    );
    for g in &imp.groups {
        let users: Vec<String> = g
            .users
            .iter()
            .map(|u| match &u.renamed_from {
                Some(r) => format!("{} (was {r:?})", u.name),
                None => u.name.clone(),
            })
            .collect();
        println!("  group {}: {}", g.name, users.join(", "));
    }
    println!("carried over:");
    for c in &imp.carried {
        println!("  {} = {}  →  {}", c.field, c.value, c.to);
    }
    println!("not carried over:");
    for n in &imp.not_carried {
        println!("  {} = {}: {}", n.field, n.value, n.reason);
    }
    println!("next:");
    if args.image.is_none() {
        println!(
            "  write {}/Dockerfile (the AMI's software) and run `caas build --analysis {}`",
            args.out.display(),
            args.out.display()
        );
    }
    println!(
        "  caas serve --store {} --analysis {}{}",
        args.store,
        args.out.display(),
        imp.concurrency
            .map(|c| format!(" --concurrency {c}"))
            .unwrap_or_default()
    );
    println!(
        "  caas token create USER --store {}   (one per user, for the API and the web page)",
        args.store
    );
}
