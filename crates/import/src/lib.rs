//! Importers: another system's description of an analysis turned into caas's own, so that an
//! analysis and its users move to caas without rework.
//!
//! Today one source: NeuroCAAS blueprints (`stack_config_template.json`), in [`neurocaas`].
//! An importer never drops a field silently: every field is either carried over (and says
//! where to) or named with the reason it is not. It is pure: it reads the blueprint and
//! returns text and lists; the binary writes the files and the store records.

pub mod ec2;
pub mod neurocaas;
mod value;

use std::path::PathBuf;

/// Everything that can stop an import.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The blueprint file (or folder) could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A folder was given that holds no blueprint.
    #[error("{} holds no stack_config_template.json (give the blueprint file or its folder)", path.display())]
    NoBlueprint {
        /// The folder.
        path: PathBuf,
    },
    /// The file is not a JSON object.
    #[error("{}: not a NeuroCAAS blueprint: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// One field is missing or holds something unusable; `field` is its dotted path.
    #[error("{}: field `{field}`: {message}", path.display())]
    Field {
        /// The file.
        path: PathBuf,
        /// The dotted path of the field, e.g. `Lambda.LambdaConfig.MAXCOST`.
        field: String,
        /// What is wrong and what would be right.
        message: String,
    },
    /// The caas.toml made from the blueprint does not pass caas's own checks (a bug in the
    /// importer if it ever happens, reported rather than written).
    #[error("the caas.toml made from {} is not valid: {source}", path.display())]
    Spec {
        /// The blueprint.
        path: PathBuf,
        /// caas.toml's own error.
        source: caas_protocol::SpecError,
    },
}
