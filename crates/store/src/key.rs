//! The key checks every store call makes first: one naming rule on every store (a key lives
//! under exactly its name, or it is refused up front with [`StoreError::BadKey`]), and the
//! mapping of an object store's failure to the key it concerns.

use object_store::path::Path as ObjPath;

use crate::local::{self, LocalError};
use crate::{Store, StoreError};

impl Store {
    /// The object path of `key`, exactly as given (no percent-encoding, so a name lives under
    /// that same name on every store); refuses keys no store can hold.
    pub(crate) fn path(key: &str) -> Result<ObjPath, StoreError> {
        local::segments(key).map_err(|e| match e {
            LocalError::BadKey(reason) => StoreError::BadKey {
                key: key.escape_debug().to_string(),
                reason,
            },
            other => StoreError::BadKey {
                key: key.escape_debug().to_string(),
                reason: other.to_string(),
            },
        })?;
        ObjPath::parse(key).map_err(|e| StoreError::BadKey {
            key: key.escape_debug().to_string(),
            reason: e.to_string(),
        })
    }

    pub(crate) fn backend<'a>(
        op: &'static str,
        key: &'a str,
    ) -> impl Fn(object_store::Error) -> StoreError + 'a {
        move |source| StoreError::Backend {
            op,
            key: key.to_string(),
            source,
        }
    }
}
