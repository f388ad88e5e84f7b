//! A large organization on loopback for `scripts/bench`: the crate's fake Admin API serving a generated
//! organization, and a client that measures the fetch floor a poll is compared against.
//!
//! ```text
//! fake_admin_api --keys 10000 --dir DIR                   # one organization of 10,000 keys
//! fake_admin_api --keys 20 --orgs 1000 --dir DIR          # 1,000 organizations of 20 keys
//! fake_admin_api --fetch-floor URL --key-file DIR/admin-key
//! ```
//!
//! Serving writes `DIR/admin-key`, `DIR/base-url` (written last: its presence means the fake is
//! listening) and, with `--orgs`, `DIR/config.yml` for `--config.file`; then it runs until killed,
//! printing `requests_per_second N` on standard error for every second in which requests arrived.
//!
//! One fake serves one admin key, so the organizations of `--orgs` share one fake, one key file and
//! one data set. That keeps what the exporter does faithful (every organization is polled, decoded,
//! joined and rendered on its own, and all of them go to one upstream host through one connection
//! pool, as with the real API); what it does not reproduce is that real organizations hold different
//! keys, which only matters for how well the text compresses.
//!
//! Requests are counted by a relay in front of the fake that counts request heads on their way in,
//! so the fake itself stays exactly the one the tests use. The base URL points at the relay, and the
//! fetch floor goes through it too, so the poll and its floor take the same path.

use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anthropic_keys_exporter::demo::{Dataset, FakeAdminApi, UsageEvent};
use clap::Parser;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// Not a secret: it opens nothing but this fake.
const ADMIN_KEY: &str = "sk-ant-admin01-bench-not-a-real-key";
/// Most users of an organization; creators are drawn from a tenth more, who have left.
const MAX_USERS: usize = 300;
const MAX_SERVICE_ACCOUNTS: usize = 8;
const PAGE_LIMIT: usize = 1000;

#[derive(Debug, Parser)]
#[command(about = "A generated organization on the fake Admin API, or the fetch floor of one")]
struct Args {
    /// Keys of each organization.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Workspaces the keys are spread over [default: one per 5 keys, at most 20].
    #[arg(long)]
    workspaces: Option<usize>,
    /// Organizations: with more than one, DIR/config.yml lists them all, sharing one key and data set.
    #[arg(long)]
    orgs: Option<usize>,
    /// Where the key file, the base URL and the config file are written.
    #[arg(long, required_unless_present = "fetch_floor")]
    dir: Option<PathBuf>,
    /// Seed of the generated data, so that runs are comparable.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Instead of serving: fetch every page of api_keys from the fake at this base URL and print the time.
    #[arg(long, value_name = "BASE_URL", conflicts_with_all = ["dir", "orgs"])]
    fetch_floor: Option<String>,
    /// The admin key file, for --fetch-floor.
    #[arg(long, requires = "fetch_floor")]
    key_file: Option<PathBuf>,
    /// How many times --fetch-floor fetches the whole list; it prints the median.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    match (&args.fetch_floor, &args.dir) {
        (Some(base_url), _) => {
            let key_file = args.key_file.as_deref().ok_or("--key-file is required")?;
            fetch_floor(base_url, key_file, args.repeat.max(1)).await
        }
        (None, Some(dir)) => serve(&args, dir).await,
        (None, None) => Err("give --dir or --fetch-floor".into()),
    }
}

async fn serve(args: &Args, dir: &Path) -> Result<()> {
    let workspaces = args.workspaces.unwrap_or(args.keys.div_ceil(5).min(20));
    if args.keys == 0 || workspaces == 0 || args.orgs == Some(0) {
        return Err("--keys, --workspaces and --orgs must be above 0".into());
    }
    let generated = Instant::now();
    // NB: the API's timestamps have microseconds.
    let now = OffsetDateTime::now_utc();
    let now = now.replace_microsecond(now.microsecond()).unwrap_or(now);
    let dataset = dataset(args.keys, workspaces, args.seed, now);
    eprintln!(
        "fake_admin_api: generated {} keys, {} workspaces, {} users, {} usage events in {:.2} s",
        dataset.api_keys.len(),
        dataset.workspaces.len(),
        dataset.users.len(),
        dataset.usage.len(),
        generated.elapsed().as_secs_f64()
    );
    let fake = FakeAdminApi::start(dataset, CancellationToken::new()).await?;
    let upstream: SocketAddr = fake
        .base_url()?
        .socket_addrs(|| None)?
        .into_iter()
        .next()
        .ok_or("the fake has no address")?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let requests = Arc::new(AtomicU64::new(0));
    tokio::spawn(relay(listener, upstream, Arc::clone(&requests)));
    tokio::spawn(report_rate(Arc::clone(&requests)));

    std::fs::create_dir_all(dir)?;
    write_file(&dir.join("admin-key"), &format!("{ADMIN_KEY}\n"), 0o600)?;
    if let Some(orgs) = args.orgs {
        write_file(
            &dir.join("config.yml"),
            &config_file(orgs, &base_url),
            0o644,
        )?;
    }
    write_file(&dir.join("base-url"), &format!("{base_url}\n"), 0o644)?;
    println!("{base_url}");
    std::future::pending::<()>().await;
    Ok(())
}

/// Written under another name and renamed, so that whoever waits for the file never reads half of it.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&partial)?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

fn config_file(orgs: usize, base_url: &str) -> String {
    let mut text = String::from("organizations:\n");
    for org in 1..=orgs {
        text.push_str(&format!(
            "  - name: org-{org:05}\n    admin_key_file: admin-key\n    base_url: {base_url}\n"
        ));
    }
    text
}

/// Passes bytes both ways, counting request heads (`\r\n\r\n`) on the way in: the exporter only sends
/// GETs without a body, so each head is one request.
async fn relay(listener: TcpListener, upstream: SocketAddr, requests: Arc<AtomicU64>) {
    loop {
        let inbound = match listener.accept().await {
            Ok((inbound, _)) => inbound,
            Err(error) => {
                eprintln!("fake_admin_api: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let requests = Arc::clone(&requests);
        tokio::spawn(async move {
            if let Err(error) = pass(inbound, upstream, &requests).await {
                eprintln!("fake_admin_api: relayed connection failed: {error}");
            }
        });
    }
}

async fn pass(inbound: TcpStream, upstream: SocketAddr, requests: &AtomicU64) -> Result<()> {
    let outbound = TcpStream::connect(upstream).await?;
    inbound.set_nodelay(true)?;
    outbound.set_nodelay(true)?;
    let (mut from_client, mut to_client) = inbound.into_split();
    let (from_fake, mut to_fake) = outbound.into_split();
    let upward = async {
        let mut buffer = vec![0u8; 16 * 1024];
        let mut matched = 0;
        loop {
            let read = from_client.read(&mut buffer).await?;
            if read == 0 {
                to_fake.shutdown().await?;
                return Ok::<_, std::io::Error>(());
            }
            let mut heads = 0;
            for &byte in &buffer[..read] {
                matched = match (matched, byte) {
                    (0 | 2, b'\r') => matched + 1,
                    (1 | 3, b'\n') => matched + 1,
                    (_, b'\r') => 1,
                    _ => 0,
                };
                if matched == 4 {
                    heads += 1;
                    matched = 0;
                }
            }
            requests.fetch_add(heads, Ordering::Relaxed);
            to_fake.write_all(&buffer[..read]).await?;
        }
    };
    let downward = async {
        let mut from_fake = tokio::io::BufReader::with_capacity(256 * 1024, from_fake);
        tokio::io::copy_buf(&mut from_fake, &mut to_client).await?;
        to_client.shutdown().await
    };
    tokio::try_join!(upward, downward)?;
    Ok(())
}

async fn report_rate(requests: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let count = requests.swap(0, Ordering::Relaxed);
        if count > 0 {
            eprintln!("requests_per_second {count}");
        }
    }
}

/// An organization of `keys` keys over `workspaces` workspaces (every seventh archived): a quarter of
/// the keys never expire, statuses are mixed, creators are up to a few hundred users (one per two
/// keys; a tenth more have left), a few service accounts or nobody, and a fifth of the keys have
/// been used within the last 40 days.
fn dataset(keys: usize, workspaces: usize, seed: u64, now: OffsetDateTime) -> Dataset {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut id = |prefix: &str| {
        let tail: String = std::iter::repeat_with(|| rng.alphanumeric())
            .take(22)
            .collect();
        format!("{prefix}_01{tail}")
    };
    let at = |offset: time::Duration| (now + offset).format(&Rfc3339).unwrap_or_default();
    let (days, hours) = (time::Duration::days, time::Duration::hours);

    let workspace_ids: Vec<String> = (0..workspaces).map(|_| id("wrkspc")).collect();
    let workspaces = workspace_ids
        .iter()
        .enumerate()
        .map(|(index, workspace_id)| {
            json!({
                "id": workspace_id, "type": "workspace", "name": format!("Workspace {index:03}"),
                "display_color": "#6C5BB9", "created_at": at(days(-900 + index as i64)),
                "archived_at": if index % 7 == 6 { Value::from(at(days(-20))) } else { Value::Null },
            })
        })
        .collect();

    let members = keys.div_ceil(2).clamp(2, MAX_USERS);
    let roles = ["user", "developer", "developer", "billing", "admin"];
    let user_ids: Vec<String> = (0..members + members.div_ceil(10))
        .map(|_| id("user"))
        .collect();
    let users = user_ids[..members]
        .iter()
        .enumerate()
        .map(|(index, user_id)| {
            json!({"id": user_id, "type": "user", "name": format!("User {index:03}"),
                   "email": format!("user{index:03}@example.com"), "role": roles[index % roles.len()],
                   "added_at": at(days(-800 + index as i64))})
        })
        .collect();
    let service_accounts: Vec<String> = (0..keys.div_ceil(100).min(MAX_SERVICE_ACCOUNTS))
        .map(|_| id("svac"))
        .collect();

    let environments = ["production", "staging", "ci", "batch", "dev"];
    let mut usage = Vec::new();
    let mut api_keys = Vec::with_capacity(keys);
    for index in 0..keys {
        let key_id = id("apikey");
        let name = match index % 100 {
            37 => format!("clé d'équipe {index} — données"),
            73 => format!("notebook \"{index}\" C:\\keys"),
            _ => format!(
                "service-{index:06}-{}",
                environments[index % environments.len()]
            ),
        };
        let created = -days(((index * 7919) % 700) as i64) - hours((index % 24) as i64);
        let never_expires = index % 4 == 0;
        let status = match index % 20 {
            0..=11 => "active",
            12 | 13 => "inactive",
            14..=16 => "archived",
            _ if never_expires => "archived",
            _ => "expired",
        };
        let expires = match (never_expires, status) {
            (true, _) => None,
            (false, "expired") => Some(-days((index % 60) as i64 + 1)),
            (false, _) => Some(days(1 + ((index * 31) % 365) as i64)),
        };
        let created_by = match index % 20 {
            0 => Value::Null,
            1 | 2 => {
                json!({"id": service_accounts[index % service_accounts.len()], "type": "service_account"})
            }
            _ => json!({"id": user_ids[(index * 13) % user_ids.len()], "type": "user"}),
        };
        let mut key = json!({
            "id": key_id, "type": "api_key", "name": name, "created_at": at(created),
            "created_by": created_by, "expires_at": expires.map(at),
            "partial_key_hint": format!("sk-ant-api03-{}...{:04}AA", &key_id[9..12], index % 10_000),
            "status": status,
        });
        let workspace_id = &workspace_ids[index % workspace_ids.len()];
        // Both shapes a long-lived organization returns: `scope` with the deprecated `workspace_id`,
        // the older `workspace_id` alone, and keys of the Default workspace as older versions send them.
        match index % 10 {
            0 => key["workspace_id"] = Value::Null,
            1..=6 => {
                key["scope"] = json!({"type": "workspace", "workspace_id": workspace_id});
                key["workspace_id"] = json!(workspace_id);
            }
            _ => key["workspace_id"] = json!(workspace_id),
        }
        if index % 5 == 0 {
            usage.push(UsageEvent {
                api_key_id: Some(key_id.clone()),
                at: now - hours(((index * 37) % (40 * 24)) as i64) - time::Duration::minutes(7),
                output_tokens: 100 + (index % 1000) as u64,
            });
        }
        api_keys.push(key);
    }
    usage.push(UsageEvent {
        api_key_id: None,
        at: now - hours(3),
        output_tokens: 500,
    });

    Dataset {
        admin_key: ADMIN_KEY.to_owned(),
        organization: json!({"id": "00000000-0000-4000-8000-0000000be7c4", "type": "organization",
                             "name": "Bench organization"}),
        workspaces,
        api_keys,
        users,
        usage,
    }
}

/// What the client needs of a page to follow the cursor; `data` is read over, not decoded.
#[derive(Deserialize)]
struct Page {
    data: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

/// Fetches every page of api_keys, as the exporter's poll does (limit 1000, `after_id`, one
/// connection, one request at a time), `repeat` times, and prints each time and their median.
async fn fetch_floor(base_url: &str, key_file: &Path, repeat: usize) -> Result<()> {
    let key = std::fs::read_to_string(key_file)?.trim().to_owned();
    let client = reqwest::Client::builder().no_proxy().build()?;
    let url = format!(
        "{}/v1/organizations/api_keys",
        base_url.trim_end_matches('/')
    );
    let mut times = Vec::with_capacity(repeat);
    let (mut keys, mut pages) = (0, 0);
    for _ in 0..repeat {
        let started = Instant::now();
        let mut cursor: Option<String> = None;
        (keys, pages) = (0, 0);
        loop {
            let mut query = vec![("limit", PAGE_LIMIT.to_string())];
            if let Some(after_id) = cursor.take() {
                query.push(("after_id", after_id));
            }
            let response = client
                .get(&url)
                .query(&query)
                .header("x-api-key", &key)
                .header("anthropic-version", "2023-06-01")
                .send()
                .await?
                .error_for_status()?;
            let page: Page = serde_json::from_slice(&response.bytes().await?)?;
            keys += page.data.len();
            pages += 1;
            if !page.has_more {
                break;
            }
            cursor = Some(page.last_id.ok_or("has_more without last_id")?);
            if pages > 10_000 {
                return Err("more than 10,000 pages".into());
            }
        }
        times.push(started.elapsed().as_secs_f64());
    }
    let runs: Vec<String> = times.iter().map(|t| format!("{t:.4}")).collect();
    times.sort_by(f64::total_cmp);
    println!(
        "fetch_floor_seconds {:.4} keys {keys} pages {pages} runs {}",
        times[times.len() / 2],
        runs.join(",")
    );
    Ok(())
}
