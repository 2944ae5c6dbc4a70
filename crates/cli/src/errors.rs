//! The difference between "you asked for something that cannot work" (exit code 2) and "caas or
//! its infrastructure failed" (exit code 1), carried through `anyhow`.

use std::fmt;

/// An error in what the user gave (arguments, files, names); the CLI exits with 2.
#[derive(Debug)]
pub struct UserError(pub String);

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

/// Shorthand: a user error as an `anyhow::Error`.
pub fn user(msg: impl Into<String>) -> anyhow::Error {
    UserError(msg.into()).into()
}

/// A user operation's error: the caller's mistakes (not found, bad input, conflict) exit with
/// 2, the store's failures with 1.
pub fn client_error(e: caas_client::ClientError) -> anyhow::Error {
    if e.is_caller_error() {
        user(e.to_string())
    } else {
        e.into()
    }
}
