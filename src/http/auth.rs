//! Basic authentication: the middleware that guards every path but the probes, and the bcrypt
//! verification behind it, bounded so that wrong passwords cannot take the CPU from scrapes.
//!
//! - Verified credentials are remembered, so a scraper costs one bcrypt per password, not per scrape.
//! - Failed credentials are remembered for [`FAILURE_MEMORY`], so a repeated wrong password (a
//!   scraper with a stale password, a naive attacker) costs nothing either.
//! - At most [`bcrypt_concurrency`] bcrypt checks run at once; a request that would need one more
//!   is answered 503 at once, without hashing.
//! - An unknown user is checked against a decoy hash of the configured cost, so that response times
//!   do not reveal which user names exist.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::str::FromStr as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::is_probe_path;
use super::web_config::{WebConfig, WebConfigSource};

/// Verified credentials are cached (as keyed hashes) so that bcrypt, deliberately slow, runs once
/// per password rather than once per scrape. The cache is dropped when it grows past this size.
const MAX_CACHED_CREDENTIALS: usize = 1024;
/// How many failed credentials are remembered at most; the oldest are forgotten first.
const MAX_CACHED_FAILURES: usize = 4096;
/// How long a failed credential is answered 401 without running bcrypt again.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(60);
/// bcrypt costs outside this range are refused: below is bcrypt's own minimum, above takes seconds
/// per check (each step doubles the time; 17 takes several seconds), which no scrape can wait for.
pub const BCRYPT_COSTS: std::ops::RangeInclusive<u32> = 4..=16;

/// How many bcrypt checks may run at once: half the cores, at least one, so that a flood of wrong
/// passwords leaves CPU for scrapes and probes.
pub fn bcrypt_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1))
}

/// The cost of a bcrypt hash in the modular crypt format (`$2a$`, `$2b$` or `$2y$`, two digits of
/// cost, 53 characters of salt and hash), checked by parsing it rather than by running bcrypt.
pub fn bcrypt_cost(hash: &str) -> Result<u32, String> {
    let prefix_ok = ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|prefix| hash.starts_with(prefix));
    let digits = hash.get(4..6).unwrap_or_default();
    if !prefix_ok || hash.len() != 60 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("is not a bcrypt hash ($2a$, $2b$ or $2y$, a two-digit cost, 53 characters of salt and hash)".into());
    }
    bcrypt::HashParts::from_str(hash)
        .map_err(|error| format!("is not a valid bcrypt hash ({error})"))?;
    let cost: u32 = digits.parse().unwrap_or_default();
    if !BCRYPT_COSTS.contains(&cost) {
        return Err(format!(
            "has bcrypt cost {cost}; use a cost from {} to {}",
            BCRYPT_COSTS.start(),
            BCRYPT_COSTS.end()
        ));
    }
    Ok(cost)
}

/// What the authentication middleware shares: the configuration in force and the bcrypt bound.
#[derive(Debug, Clone)]
pub struct Authenticator {
    web_config: Arc<WebConfigSource>,
    bcrypt: Arc<Semaphore>,
}

impl Authenticator {
    /// At most `concurrent_bcrypt` bcrypt checks run at once (see [`bcrypt_concurrency`]).
    pub fn new(web_config: Arc<WebConfigSource>, concurrent_bcrypt: usize) -> Self {
        Self {
            web_config,
            bcrypt: Arc::new(Semaphore::new(concurrent_bcrypt.max(1))),
        }
    }

    async fn check(
        &self,
        config: &Arc<WebConfig>,
        credentials: Option<(String, String)>,
    ) -> Outcome {
        let Some(users) = &config.basic_auth else {
            return Outcome::Allowed;
        };
        let Some((user, password)) = credentials else {
            return Outcome::Denied;
        };
        let fingerprint = users.fingerprint(&user, &password);
        match users.remembered(&fingerprint) {
            Some(true) => return Outcome::Allowed,
            Some(false) => return Outcome::Denied,
            None => {}
        }
        let Ok(permit) = Arc::clone(&self.bcrypt).try_acquire_owned() else {
            return Outcome::Busy;
        };
        let config = Arc::clone(config);
        // NB: bcrypt is slow on purpose; keep it off the async workers. The permit goes with it, so
        // the bound holds even when the client gives up and the request is dropped.
        let verified = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            config
                .basic_auth
                .as_ref()
                .is_some_and(|users| users.verify_slowly(&user, &password, fingerprint))
        })
        .await
        .unwrap_or(false);
        match verified {
            true => Outcome::Allowed,
            false => Outcome::Denied,
        }
    }
}

enum Outcome {
    Allowed,
    Denied,
    /// Every bcrypt slot is busy: answered at once rather than queued.
    Busy,
}

pub(super) async fn authenticate(
    State(authenticator): State<Authenticator>,
    request: Request,
    next: Next,
) -> Response {
    if is_probe_path(request.uri().path()) {
        return next.run(request).await;
    }
    let config = authenticator.web_config.current();
    let credentials = basic_credentials(&request);
    match authenticator.check(&config, credentials).await {
        Outcome::Allowed => next.run(request).await,
        Outcome::Denied => {
            let mut response = (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Basic realm=\"anthropic-keys-exporter\", charset=\"UTF-8\"",
                ),
            );
            response
        }
        Outcome::Busy => {
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many password checks in progress; retry later\n",
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

/// The user and password of a `Basic` authorization header; the scheme is case-insensitive
/// (RFC 9110, section 11.1).
fn basic_credentials(request: &Request) -> Option<(String, String)> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim_start();
    let (scheme, encoded) = value.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

type CredentialHash = [u8; 32];

/// Users and their bcrypt hashes, with what was learned about credentials since they were loaded.
#[derive(Debug)]
pub struct BasicAuthUsers {
    users: BTreeMap<String, String>,
    /// A hash of a random password at the highest configured cost, checked for unknown users.
    decoy: String,
    /// Keys the credential hashes, so that the caches hold nothing a password can be guessed from
    /// offline.
    key: [u8; 32],
    verified: Mutex<HashSet<CredentialHash>>,
    failed: Mutex<FailureCache>,
}

impl BasicAuthUsers {
    /// `users` maps user names to bcrypt hashes that [`bcrypt_cost`] accepted, `cost` being the
    /// highest of their costs. Slow: makes the decoy hash at that cost.
    pub(super) fn new(users: BTreeMap<String, String>, cost: u32) -> Self {
        let mut random = [0u8; 64];
        let provider = rustls::crypto::ring::default_provider();
        if provider.secure_random.fill(&mut random).is_err() {
            random.fill_with(|| fastrand::u8(..));
        }
        let (key, decoy_password) = random.split_at(32);
        let decoy_password = base64::engine::general_purpose::STANDARD.encode(decoy_password);
        Self {
            users,
            decoy: bcrypt::hash(decoy_password, cost).unwrap_or_default(),
            key: key.try_into().unwrap_or([0; 32]),
            verified: Mutex::new(HashSet::new()),
            failed: Mutex::new(FailureCache::default()),
        }
    }

    fn fingerprint(&self, user: &str, password: &str) -> CredentialHash {
        Sha256::new()
            .chain_update(self.key)
            .chain_update((user.len() as u64).to_be_bytes())
            .chain_update(user.as_bytes())
            .chain_update(password.as_bytes())
            .finalize()
            .into()
    }

    /// `Some(true)` for credentials verified before, `Some(false)` for ones that failed recently.
    fn remembered(&self, fingerprint: &CredentialHash) -> Option<bool> {
        if lock(&self.verified).contains(fingerprint) {
            return Some(true);
        }
        lock(&self.failed)
            .contains(fingerprint, Instant::now())
            .then_some(false)
    }

    /// Whether `user`/`password` match: from the caches when they know, with bcrypt otherwise.
    /// Slow; call it off the async workers.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let fingerprint = self.fingerprint(user, password);
        match self.remembered(&fingerprint) {
            Some(known) => known,
            None => self.verify_slowly(user, password, fingerprint),
        }
    }

    fn verify_slowly(&self, user: &str, password: &str, fingerprint: CredentialHash) -> bool {
        // NB: an unknown user costs the same bcrypt as a known one, so timing reveals no user names.
        let matches = match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, &self.decoy);
                false
            }
        };
        if matches {
            let mut verified = lock(&self.verified);
            if verified.len() >= MAX_CACHED_CREDENTIALS {
                verified.clear();
            }
            verified.insert(fingerprint);
        } else {
            lock(&self.failed).insert(fingerprint, Instant::now());
        }
        matches
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Recently failed credentials, forgotten after [`FAILURE_MEMORY`] or when more than
/// [`MAX_CACHED_FAILURES`] newer ones came in.
#[derive(Debug, Default)]
struct FailureCache {
    failed_at: HashMap<CredentialHash, Instant>,
    /// Insertion order, oldest first; an entry whose time no longer matches was inserted again.
    order: VecDeque<(CredentialHash, Instant)>,
}

impl FailureCache {
    fn contains(&self, fingerprint: &CredentialHash, now: Instant) -> bool {
        self.failed_at
            .get(fingerprint)
            .is_some_and(|at| now.saturating_duration_since(*at) < FAILURE_MEMORY)
    }

    fn insert(&mut self, fingerprint: CredentialHash, now: Instant) {
        while let Some((oldest, at)) = self.order.front().copied() {
            let expired = now.saturating_duration_since(at) >= FAILURE_MEMORY;
            if !expired && self.order.len() < MAX_CACHED_FAILURES {
                break;
            }
            self.order.pop_front();
            if self.failed_at.get(&oldest) == Some(&at) {
                self.failed_at.remove(&oldest);
            }
        }
        self.failed_at.insert(fingerprint, now);
        self.order.push_back((fingerprint, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(password: &str) -> BasicAuthUsers {
        let hash = bcrypt::hash(password, 4).unwrap();
        BasicAuthUsers::new(BTreeMap::from([("alice".to_owned(), hash)]), 4)
    }

    #[test]
    fn passwords_are_verified_and_both_outcomes_remembered() {
        let users = users("s3cret");
        assert!(users.verify("alice", "s3cret"));
        assert_eq!(
            users.remembered(&users.fingerprint("alice", "s3cret")),
            Some(true)
        );
        assert!(users.verify("alice", "s3cret"), "the cached path agrees");
        assert!(!users.verify("alice", "wrong"));
        assert_eq!(
            users.remembered(&users.fingerprint("alice", "wrong")),
            Some(false)
        );
        assert!(!users.verify("alice", "wrong"), "the cached failure agrees");
        assert!(!users.verify("bob", "s3cret"));
        assert_eq!(users.remembered(&users.fingerprint("bob", "other")), None);
    }

    #[test]
    fn the_decoy_has_the_configured_cost() {
        let hash = bcrypt::hash("x", 6).unwrap();
        let users = BasicAuthUsers::new(BTreeMap::from([("alice".to_owned(), hash)]), 6);
        assert_eq!(bcrypt_cost(&users.decoy), Ok(6));
    }

    #[test]
    fn user_and_password_cannot_be_shifted_into_each_other() {
        let users = users("x");
        assert_ne!(users.fingerprint("ab", "c"), users.fingerprint("a", "bc"));
    }

    #[test]
    fn failures_are_forgotten_after_a_while_and_when_too_many() {
        let mut cache = FailureCache::default();
        let start = Instant::now();
        cache.insert([1; 32], start);
        assert!(cache.contains(&[1; 32], start + FAILURE_MEMORY / 2));
        assert!(!cache.contains(&[1; 32], start + FAILURE_MEMORY));
        for i in 0..MAX_CACHED_FAILURES + 10 {
            let mut fingerprint = [0u8; 32];
            fingerprint[..8].copy_from_slice(&(i as u64).to_be_bytes());
            cache.insert(fingerprint, start);
        }
        assert_eq!(cache.failed_at.len(), MAX_CACHED_FAILURES);
        assert!(cache.order.len() <= MAX_CACHED_FAILURES);
        assert!(!cache.contains(&[0; 32], start), "the oldest went first");
    }

    #[test]
    fn hashes_are_checked_by_their_format_and_cost() {
        let good = bcrypt::hash("x", 4).unwrap();
        let body = &good[7..];
        assert_eq!(bcrypt_cost(&good), Ok(4));
        for prefix in ["$2a$", "$2b$", "$2y$"] {
            assert_eq!(
                bcrypt_cost(&format!("{prefix}05${body}")),
                Ok(5),
                "{prefix}"
            );
        }
        for (hash, needle) in [
            (format!("$2x$04${body}"), "not a bcrypt hash"),
            (format!("$2b$+4${body}"), "not a bcrypt hash"),
            (format!("$2b$04${}", &body[1..]), "not a bcrypt hash"),
            (format!("$2b$04$!{}", &body[1..]), "not a valid bcrypt hash"),
            ("plaintext".to_owned(), "not a bcrypt hash"),
            (format!("$2b$03${body}"), "cost"),
            (format!("$2b$17${body}"), "cost 17"),
        ] {
            let message = bcrypt_cost(&hash).unwrap_err();
            assert!(message.contains(needle), "{hash}: {message}");
        }
    }

    #[test]
    fn the_basic_scheme_is_case_insensitive() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:pw:with:colons");
        for header in [
            format!("Basic {encoded}"),
            format!("basic {encoded}"),
            format!("BASIC  {encoded}"),
        ] {
            let request = Request::builder()
                .header(header::AUTHORIZATION, header.as_str())
                .body(axum::body::Body::empty())
                .unwrap();
            assert_eq!(
                basic_credentials(&request),
                Some(("alice".to_owned(), "pw:with:colons".to_owned())),
                "{header}"
            );
        }
        let bearer = Request::builder()
            .header(header::AUTHORIZATION, format!("Bearer {encoded}"))
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(basic_credentials(&bearer), None);
    }
}
