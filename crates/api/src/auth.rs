//! Users and bearer tokens, kept in the store (`_caas/users/`, `_caas/tokens/`) so several
//! managers on one store share them. A token reads `caas_<id>_<secret>`: the id (12 hex) is
//! public and names the record, the secret (32 random bytes, 64 hex) is shown once and only
//! its SHA-256 is stored; it is compared in constant time and never logged.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;

use caas_protocol::GroupName;
use caas_protocol::layout::{TOKENS_PREFIX, token_key, user_key};
use caas_store::Store;

use crate::AppState;
use crate::error::ApiError;

/// The largest user or token record read.
const RECORD_MAX: u64 = 64 << 10;

/// An API user: `_caas/users/<name>.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct UserRecord {
    /// The user's name.
    pub name: String,
    /// The groups whose prefixes the user may use.
    pub groups: Vec<String>,
    /// When the user was added.
    pub created: DateTime<Utc>,
}

/// A token: `_caas/tokens/<id>.json` (never the secret).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    /// The public id (12 lowercase hex).
    pub id: String,
    /// Whose token it is.
    pub user: String,
    /// SHA-256 (hex) of the secret.
    pub hash: String,
    /// When it was made.
    pub created: DateTime<Utc>,
    /// When it stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    /// Whether it may only read.
    #[serde(default)]
    pub read_only: bool,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<DateTime<Utc>>,
}

impl TokenRecord {
    /// The record without its hash, for listings.
    pub fn public(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("hash");
        }
        v
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a token secret, hex.
pub fn secret_hash(secret: &str) -> String {
    hex(&sha2::Sha256::digest(secret.as_bytes()))
}

fn random_hex(n: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf)
        .map_err(|e| ApiError::Store(format!("no randomness available: {e}")))?;
    Ok(hex(&buf))
}

/// A random id for an upload (24 hex).
pub fn upload_id() -> Result<String, ApiError> {
    random_hex(12)
}

/// A user name: the rules of a group name (letters, digits, `-`, `_`, `.`).
pub fn user_name(name: &str) -> Result<GroupName, ApiError> {
    name.parse::<GroupName>()
        .map_err(|e| ApiError::BadRequest(format!("user name: {e}")))
}

/// Add (or update the groups of) the user `name`.
pub async fn add_user(
    store: &Store,
    name: &str,
    groups: &[String],
) -> Result<UserRecord, ApiError> {
    let key = user_key(&user_name(name)?);
    if groups.is_empty() {
        return Err(ApiError::BadRequest(
            "give at least one --group the user belongs to".into(),
        ));
    }
    for g in groups {
        g.parse::<GroupName>()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    let created = match read_user(store, name).await? {
        Some(old) => old.created,
        None => Utc::now(),
    };
    let rec = UserRecord {
        name: name.to_string(),
        groups: groups.to_vec(),
        created,
    };
    store
        .put(&key, serde_json::to_vec_pretty(&rec).unwrap_or_default())
        .await?;
    Ok(rec)
}

/// The user `name`, when there is one.
pub async fn read_user(store: &Store, name: &str) -> Result<Option<UserRecord>, ApiError> {
    let Ok(n) = name.parse::<GroupName>() else {
        return Ok(None);
    };
    match store.get_small(&user_key(&n), RECORD_MAX).await? {
        None => Ok(None),
        Some(b) => Ok(serde_json::from_slice(&b).ok()),
    }
}

/// A new token for `user`: its record and the token itself (shown once).
pub async fn create_token(
    store: &Store,
    user: &str,
    expires_in: Option<std::time::Duration>,
    read_only: bool,
) -> Result<(TokenRecord, String), ApiError> {
    if read_user(store, user).await?.is_none() {
        return Err(ApiError::Missing(format!(
            "no user {user:?}; add it first with `caas users add {user} --group G`"
        )));
    }
    let now = Utc::now();
    let expires = match expires_in {
        None => None,
        Some(d) => Some(
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .ok_or_else(|| ApiError::BadRequest("--expires is too far away".into()))?,
        ),
    };
    loop {
        let id = random_hex(6)?;
        let secret = random_hex(32)?;
        let rec = TokenRecord {
            id: id.clone(),
            user: user.to_string(),
            hash: secret_hash(&secret),
            created: now,
            expires,
            read_only,
            revoked: None,
        };
        let key = token_key(&id).ok_or_else(|| ApiError::Store("bad token id".into()))?;
        if store
            .create(&key, serde_json::to_vec_pretty(&rec).unwrap_or_default())
            .await?
        {
            return Ok((rec, format!("caas_{id}_{secret}")));
        }
    }
}

/// Every token record (unreadable ones are skipped).
pub async fn list_tokens(store: &Store) -> Result<Vec<TokenRecord>, ApiError> {
    let mut out = Vec::new();
    for o in store.list(TOKENS_PREFIX).await? {
        if let Some(b) = store.get_small(o.location.as_ref(), RECORD_MAX).await?
            && let Ok(rec) = serde_json::from_slice::<TokenRecord>(&b)
        {
            out.push(rec);
        }
    }
    out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    Ok(out)
}

async fn read_token(store: &Store, id: &str) -> Result<Option<TokenRecord>, ApiError> {
    let Some(key) = token_key(id) else {
        return Ok(None);
    };
    match store.get_small(&key, RECORD_MAX).await? {
        None => Ok(None),
        Some(b) => Ok(serde_json::from_slice(&b).ok()),
    }
}

/// Revoke the token `id` (it stops working at once).
pub async fn revoke_token(store: &Store, id: &str) -> Result<TokenRecord, ApiError> {
    let Some(mut rec) = read_token(store, id).await? else {
        return Err(ApiError::Missing(format!(
            "no token {id:?}; `caas token list` shows the ids"
        )));
    };
    if rec.revoked.is_none() {
        rec.revoked = Some(Utc::now());
        let key = token_key(id).ok_or(ApiError::NotFound)?;
        store
            .put(&key, serde_json::to_vec_pretty(&rec).unwrap_or_default())
            .await?;
    }
    Ok(rec)
}

/// Who is asking: the token's user, groups and rights.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The user.
    pub user: UserRecord,
    /// The token used.
    pub token: TokenRecord,
}

impl Principal {
    /// `group` when this token may use it; anything else is the same 404 as a group that does
    /// not exist.
    pub fn group(&self, group: &str) -> Result<GroupName, ApiError> {
        if !self.user.groups.iter().any(|g| g == group) {
            return Err(ApiError::NotFound);
        }
        group.parse().map_err(|_| ApiError::NotFound)
    }

    /// Refuse a write with a read-only token.
    pub fn may_write(&self) -> Result<(), ApiError> {
        if self.token.read_only {
            return Err(ApiError::Forbidden(
                "this token is read-only; create one without --read-only to upload, submit or cancel"
                    .into(),
            ));
        }
        Ok(())
    }
}

fn unauthorized(why: &str) -> ApiError {
    ApiError::Unauthorized(format!(
        "{why}; send `Authorization: Bearer caas_<id>_<secret>` (an operator makes one with `caas token create USER`)"
    ))
}

/// Check an `Authorization` header value against the store.
pub async fn authenticate(store: &Store, header: Option<&str>) -> Result<Principal, ApiError> {
    let header = header.ok_or_else(|| unauthorized("no token"))?;
    let token = header
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthorized("the Authorization header is not a bearer token"))?
        .trim();
    let malformed = || unauthorized("the token is malformed");
    let rest = token.strip_prefix("caas_").ok_or_else(malformed)?;
    let (id, secret) = rest.split_once('_').ok_or_else(malformed)?;
    if token_key(id).is_none()
        || secret.len() != 64
        || !secret
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(malformed());
    }
    let rec = read_token(store, id).await?;
    // Hash and compare even for an unknown id, so both take the same time.
    let given = secret_hash(secret);
    let stored = rec.as_ref().map(|r| r.hash.clone()).unwrap_or_default();
    let same: bool = given.as_bytes().ct_eq(stored.as_bytes()).into();
    let Some(rec) = rec.filter(|_| same) else {
        return Err(unauthorized("the token is not known"));
    };
    if rec.revoked.is_some() {
        return Err(unauthorized("the token was revoked"));
    }
    if rec.expires.is_some_and(|e| e <= Utc::now()) {
        return Err(unauthorized("the token has expired"));
    }
    let Some(user) = read_user(store, &rec.user).await? else {
        return Err(unauthorized("the token's user no longer exists"));
    };
    Ok(Principal { user, token: rec })
}

/// The extractor: every handler that takes an [`Auth`] requires a valid token.
#[derive(Clone, Debug)]
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        authenticate(state.store(), header).await.map(Auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_work_until_revoked_or_expired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().to_str().expect("utf-8")).expect("store");
        assert!(create_token(&store, "ann", None, false).await.is_err());
        add_user(&store, "ann", &["lab".into()])
            .await
            .expect("user");
        let (rec, token) = create_token(&store, "ann", None, false)
            .await
            .expect("token");
        assert!(token.starts_with(&format!("caas_{}_", rec.id)));
        assert_eq!(token.len(), 5 + 12 + 1 + 64);
        let stored =
            std::fs::read_to_string(dir.path().join(format!("_caas/tokens/{}.json", rec.id)))
                .expect("record");
        assert!(!stored.contains(&token[18..]), "the secret is never stored");
        let bearer = format!("Bearer {token}");
        let p = authenticate(&store, Some(&bearer)).await.expect("valid");
        assert_eq!(p.user.groups, ["lab"]);
        assert!(p.group("lab").is_ok());
        assert!(matches!(p.group("other"), Err(ApiError::NotFound)));
        let mut wrong = bearer.clone();
        wrong.pop();
        wrong.push(if bearer.ends_with('0') { '1' } else { '0' });
        for bad in [
            None,
            Some("Bearer x"),
            Some("Basic abc"),
            Some(wrong.as_str()),
        ] {
            let err = authenticate(&store, bad).await.expect_err("refused");
            assert_eq!(err.status(), 401, "{bad:?}");
        }
        revoke_token(&store, &rec.id).await.expect("revoke");
        let err = authenticate(&store, Some(&bearer))
            .await
            .expect_err("revoked");
        assert!(err.to_string().contains("revoked"), "{err}");
        let (_, short) = create_token(
            &store,
            "ann",
            Some(std::time::Duration::from_millis(1)),
            true,
        )
        .await
        .expect("token");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let err = authenticate(&store, Some(&format!("Bearer {short}")))
            .await
            .expect_err("expired");
        assert!(err.to_string().contains("expired"), "{err}");
        assert_eq!(list_tokens(&store).await.expect("list").len(), 2);
    }
}
