//! Basic authentication: the middleware that guards every path but the probes, and the bcrypt
//! verification behind it.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::web_config::{WebConfig, WebConfigSource};

/// Verified credentials are cached (as hashes) so that bcrypt, deliberately slow, runs once per
/// password rather than once per scrape. The cache is dropped when it grows past this size.
const MAX_CACHED_CREDENTIALS: usize = 1024;

/// Health and readiness stay open to probes (they reveal nothing); everything else needs the basic
/// auth credentials when the web config defines users.
const UNAUTHENTICATED_PATHS: [&str; 4] = ["/healthz", "/readyz", "/-/healthy", "/-/ready"];

pub(super) async fn authenticate(
    State(web_config): State<Arc<WebConfigSource>>,
    request: Request,
    next: Next,
) -> Response {
    let config = web_config.current();
    let needs_auth =
        config.basic_auth.is_some() && !UNAUTHENTICATED_PATHS.contains(&request.uri().path());
    let mut response = if needs_auth && !is_authorized(&config, basic_credentials(&request)).await {
        let mut response = (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"anthropic-keys-exporter\", charset=\"UTF-8\""),
        );
        response
    } else {
        next.run(request).await
    };
    for (name, value) in &config.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// The user and password of a `Basic` authorization header.
fn basic_credentials(request: &Request) -> Option<(String, String)> {
    let encoded = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

async fn is_authorized(config: &Arc<WebConfig>, credentials: Option<(String, String)>) -> bool {
    let Some((user, password)) = credentials else {
        return false;
    };
    let config = Arc::clone(config);
    // NB: bcrypt is slow on purpose; keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        config
            .basic_auth
            .as_ref()
            .is_some_and(|users| users.verify(&user, &password))
    })
    .await
    .unwrap_or(false)
}

/// Users and their bcrypt hashes.
#[derive(Debug)]
pub struct BasicAuthUsers {
    users: BTreeMap<String, String>,
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl BasicAuthUsers {
    /// `users` maps user names to bcrypt hashes that have been checked already.
    pub(super) fn new(users: BTreeMap<String, String>) -> Self {
        Self {
            users,
            verified: Mutex::new(HashSet::new()),
        }
    }

    /// Whether `user`/`password` match. Slow (bcrypt) on the first call for a credential, then cached;
    /// call it off the async workers.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            // NB: spend the same time as for a known user, so that timing does not reveal user names.
            let _ = bcrypt::verify(password, dummy_hash());
            return false;
        };
        let fingerprint: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .chain_update([0])
            .chain_update(hash.as_bytes())
            .finalize()
            .into();
        let mut verified = self
            .verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if verified.contains(&fingerprint) {
            return true;
        }
        drop(verified);
        let matches = bcrypt::verify(password, hash).unwrap_or(false);
        if matches {
            verified = self
                .verified
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if verified.len() >= MAX_CACHED_CREDENTIALS {
                verified.clear();
            }
            verified.insert(fingerprint);
        }
        matches
    }
}

/// A bcrypt hash of a random string, for rejecting unknown users as slowly as known ones.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        let random: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(32)
            .collect();
        bcrypt::hash(random, bcrypt::DEFAULT_COST).unwrap_or_default()
    })
}
