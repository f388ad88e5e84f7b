//! Attacks on the HTTP server, reproduced on loopback: a web config reload that would fail open,
//! floods of wrong passwords, timing that would reveal user names, connections and clients that hold
//! resources, headers that would corrupt responses, and reloads that would stall every request.
//!
//! Timing assertions compare figures measured in the same run (a ratio), never absolute times, so
//! that a slow or busy machine does not make them fail.

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wiremock::MockServer;

use crate::fixtures::*;
use crate::helpers::*;
use crate::web::{TempDir, TestCa, bcrypt_hash, organization, tls_client};

/// The web config is checked this often in these tests, so that reload rules show in a second.
const CHECK: Duration = Duration::from_millis(200);

/// Tests that time responses, or that load the CPU, take turns: a timing measured while another test
/// hashes passwords would measure that test.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn median(mut samples: Vec<Duration>) -> Duration {
    assert!(!samples.is_empty());
    samples.sort();
    samples[samples.len() / 2]
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-6)
}

/// Whether the server has closed `stream`: a read returns end of file or an error within `wait`.
/// Anything the server sent before closing is consumed.
async fn is_closed(stream: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_never_removes_tls_or_basic_auth() {
    // Arrange: TLS and basic auth, and a client that keeps checking that both are still demanded.
    let dir = TempDir::new("downgrade");
    let ca = TestCa::new("downgrade CA");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    dir.write("server.crt", &cert);
    dir.write("server.key", &key);
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let users =
        |password: &str| format!("basic_auth_users:\n  prom: '{}'\n", bcrypt_hash(password));
    let config = dir.write("web.yml", &format!("{tls}{}", users("secret")));
    let app = spawn_app_with(organization().await, |c| {
        c.web_config_file = Some(config);
        c.server_limits.web_config_check_interval = CHECK;
    })
    .await;
    let https = format!("https://{}/metrics", app.address);
    let plain = app.url("/metrics");
    let violations = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let checks = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn({
        let (https, plain, ca) = (https.clone(), plain.clone(), ca.pem.clone());
        let (violations, checks, stop) = (violations.clone(), checks.clone(), stop.clone());
        async move {
            let anonymous = tls_client(&ca, None);
            let plain_client = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.is_cancelled() && Instant::now() < deadline {
                if let Ok(response) = anonymous.get(&https).send().await
                    && response.status() != 401
                {
                    let status = response.status();
                    violations
                        .lock()
                        .unwrap()
                        .push(format!("HTTPS without credentials: {status}"));
                }
                if let Ok(response) = plain_client.get(&plain).send().await {
                    let status = response.status();
                    violations
                        .lock()
                        .unwrap()
                        .push(format!("plain HTTP answered: {status}"));
                }
                checks.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    });
    let client = tls_client(&ca.pem, None);
    let scrape = |user: &'static str, password: &'static str| {
        let request = client.get(&https).basic_auth(user, Some(password));
        async move { request.send().await.map(|r| r.status().as_u16()).ok() }
    };
    assert_eq!(scrape("prom", "secret").await, Some(200));

    // Act: what editors and config management leave behind for a moment, or by mistake.
    let downgrades = [
        ("a truncated file", String::new()),
        (
            "`tls_server_config:` alone",
            "tls_server_config:\n".to_owned(),
        ),
        ("a file without TLS", users("secret")),
        ("a file without basic auth", tls.to_owned()),
    ];
    let mut kept = Vec::new();
    for (what, text) in &downgrades {
        dir.write("web.yml", text);
        tokio::time::sleep(CHECK * 5).await;
        kept.push((*what, scrape("prom", "secret").await));
    }
    // An editor's save: truncate, then write the new version, which applies once stable.
    dir.write("web.yml", "");
    tokio::time::sleep(CHECK).await;
    dir.write("web.yml", &format!("{tls}{}", users("rotated")));
    eventually(Duration::from_secs(5), "the rotated password", || async {
        scrape("prom", "rotated").await == Some(200)
    })
    .await;
    // A new certificate applies as well.
    let second_ca = TestCa::new("second CA");
    let (cert, key) = second_ca.issue(&["127.0.0.1"]);
    dir.write("server.crt", &cert);
    dir.write("server.key", &key);
    let second = tls_client(&second_ca.pem, None);
    eventually(Duration::from_secs(5), "the new certificate", || async {
        let request = second.get(&https).basic_auth("prom", Some("rotated"));
        request.send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    stop.cancel();
    watcher.await.unwrap();

    // Assert
    for (what, status) in kept {
        assert_eq!(status, Some(200), "after {what}: the running config stays");
    }
    let violations = violations.lock().unwrap();
    assert!(
        violations.is_empty(),
        "TLS or basic auth was lost: {violations:?}"
    );
    assert!(
        checks.load(Ordering::Relaxed) >= 20,
        "the watcher checked often enough"
    );
}

/// The exporter with basic auth for one user, `prom`, whose password has a bcrypt hash of `cost`; the
/// directory holding the web config lives as long as it is kept.
async fn app_with_prom_user(
    name: &str,
    password: &str,
    cost: u32,
    customize: impl FnOnce(&mut anthropic_keys_exporter::config::Config),
) -> (TempDir, TestApp) {
    let dir = TempDir::new(name);
    let hash = bcrypt::hash(password, cost).unwrap();
    let config = dir.write("web.yml", &format!("basic_auth_users:\n  prom: '{hash}'\n"));
    let app = spawn_app_with(organization().await, |c| {
        c.web_config_file = Some(config);
        customize(c);
    })
    .await;
    (dir, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_flood_does_not_slow_down_an_authenticated_scrape() {
    let _turn = HEAVY.lock().await;
    // Arrange: a realistic bcrypt cost, and a scraper whose credentials are already verified.
    let (_dir, app) = app_with_prom_user("flood", "right", 10, |_| {}).await;
    let metrics = app.url("/metrics");
    let scrape = || {
        let request = app.http.get(&metrics).basic_auth("prom", Some("right"));
        async move {
            let started = Instant::now();
            let response = request.send().await.unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            assert_eq!(status, 200, "{body}");
            (started.elapsed(), body)
        }
    };
    eventually(Duration::from_secs(10), "the first poll", || async {
        scrape().await.1.contains("anthropic_up{")
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..30 {
        idle.push(scrape().await.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Act: 60 clients send distinct wrong passwords (so no cache helps) for two seconds.
    let statuses = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        usize,
    >::new()));
    // NB: the attackers run on a runtime of their own, as another process would, rather than
    // sharing the exporter's worker threads.
    let flood_until = Instant::now() + Duration::from_secs(2);
    let flood = std::thread::spawn({
        let (metrics, statuses) = (metrics.clone(), statuses.clone());
        move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut clients = Vec::new();
                for client in 0..60 {
                    let (metrics, statuses) = (metrics.clone(), statuses.clone());
                    clients.push(tokio::spawn(async move {
                        let http = reqwest::Client::builder()
                            .timeout(Duration::from_secs(10))
                            .build()
                            .unwrap();
                        let mut attempt = 0;
                        while Instant::now() < flood_until && attempt < 400 {
                            attempt += 1;
                            let password = format!("wrong-{client}-{attempt}");
                            let request = http.get(&metrics).basic_auth("prom", Some(password));
                            let outcome = match request.send().await {
                                Ok(response) => response.status().as_u16().to_string(),
                                Err(_) => "error".to_owned(),
                            };
                            *statuses.lock().unwrap().entry(outcome).or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }));
                }
                for client in clients {
                    client.await.unwrap();
                }
            });
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut flooded = Vec::new();
    for _ in 0..30 {
        flooded.push(scrape().await.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::task::spawn_blocking(move || flood.join().unwrap())
        .await
        .unwrap();

    // Assert
    let (idle, flooded) = (median(idle), median(flooded));
    let statuses = statuses.lock().unwrap().clone();
    println!("idle median {idle:?}, under the flood {flooded:?}, flood answers {statuses:?}");
    assert!(
        ratio(flooded, idle) < 10.0,
        "an authenticated scrape took {flooded:?} under the flood, {idle:?} idle ({statuses:?})"
    );
    assert!(
        statuses.get("503").copied().unwrap_or(0) > 0,
        "bcrypt work beyond the bound is shed: {statuses:?}"
    );
    assert!(
        statuses
            .keys()
            .all(|status| status == "401" || status == "503"),
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_times_do_not_reveal_which_user_names_exist() {
    let _turn = HEAVY.lock().await;
    // Arrange: a cost below bcrypt's default, as a fast `htpasswd -B` setting would give.
    let (_dir, app) = app_with_prom_user("timing", "right", 8, |_| {}).await;
    let metrics = app.url("/metrics");
    let attempt = |user: &'static str, password: String| {
        let request = app.http.get(&metrics).basic_auth(user, Some(password));
        async move {
            let started = Instant::now();
            let status = request.send().await.unwrap().status();
            assert_eq!(status, 401);
            started.elapsed()
        }
    };

    // Act: alternate, with a new password each time so that no failure is answered from a cache.
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..8 {
        known.push(attempt("prom", format!("known-{i}")).await);
        unknown.push(attempt("mallory", format!("unknown-{i}")).await);
    }

    // Assert
    let (known, unknown) = (median(known), median(unknown));
    println!("known user {known:?}, unknown user {unknown:?}");
    let ratio = ratio(unknown, known);
    assert!(
        (0.5..2.0).contains(&ratio),
        "unknown user {unknown:?} vs known user {known:?}"
    );
}

/// A raw connection that has sent one `/healthz` request and read its answer, then stays idle.
async fn kept_alive_connection(address: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !answer.ends_with(b"ok\n") {
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer))
            .await
            .expect("the probe is answered")
            .unwrap();
        assert!(read > 0, "the connection stays open after the answer");
        answer.extend_from_slice(&buffer[..read]);
    }
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_once_while_probes_answer() {
    // Arrange
    let app = spawn_app_with(organization().await, |c| {
        c.server_limits.max_connections = 20;
        c.server_limits.header_read_timeout = Duration::from_secs(3);
    })
    .await;
    // NB: clients that keep no idle connection, so that the test's own pool takes no slot.
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    eventually(Duration::from_secs(10), "the first poll", || async {
        let ready = fresh().get(app.url("/readyz")).send().await;
        ready.is_ok_and(|r| r.status() == 200)
    })
    .await;

    // Act: 19 idle connections and one kept alive after a request fill the limit; 20 more follow.
    let mut held = Vec::new();
    for _ in 0..19 {
        held.push(TcpStream::connect(app.address).await.unwrap());
    }
    held.push(kept_alive_connection(app.address).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut extra = Vec::new();
    for _ in 0..20 {
        extra.push(TcpStream::connect(app.address).await.unwrap());
    }
    let mut closed_at_once = 0;
    for stream in &mut extra {
        if is_closed(stream, Duration::from_millis(300)).await {
            closed_at_once += 1;
        }
    }
    let mut closed_later = 0;
    for stream in &mut extra {
        if is_closed(stream, Duration::from_millis(1500)).await {
            closed_later += 1;
        }
    }
    let probe = fresh().get(app.url("/healthz")).send().await;
    let scrape_at_the_limit = fresh().get(app.url("/metrics")).send().await;
    let mut still_held = 0;
    for stream in &mut held {
        if !is_closed(stream, Duration::from_millis(10)).await {
            still_held += 1;
        }
    }
    let checked_within = started.elapsed();
    // The limit's connections are idle: they are closed after the header read timeout.
    let mut idle_closed = 0;
    for stream in &mut held {
        if is_closed(stream, Duration::from_secs(4)).await {
            idle_closed += 1;
        }
    }
    let scrape_after = fresh().get(app.url("/metrics")).send().await;

    // Assert
    assert!(
        closed_at_once >= 10,
        "only {closed_at_once} of 20 connections beyond the limit were closed at once"
    );
    assert!(
        checked_within < Duration::from_secs(3),
        "checked before the idle timeout"
    );
    assert_eq!(
        closed_later, 20,
        "every connection beyond the limit is closed"
    );
    assert_eq!(
        still_held, 20,
        "the connections within the limit are served"
    );
    assert_eq!(
        probe.expect("the probe is answered").status(),
        200,
        "/healthz answers at the limit"
    );
    assert!(
        scrape_at_the_limit.is_err() || scrape_at_the_limit.unwrap().status() == 503,
        "scrapes beyond the limit are refused"
    );
    assert_eq!(idle_closed, 20, "idle connections are closed after a while");
    assert_eq!(scrape_after.unwrap().status(), 200);
}

/// An organization whose metrics are megabytes, so that a client that does not read blocks the
/// server's writes.
async fn large_organization() -> MockServer {
    let server = MockServer::start().await;
    let keys: Vec<_> = (0..3000)
        .map(|i| {
            KeyFixture::new(&format!("apikey_{i:06}"))
                .name(&format!("{i:06}-{}", "x".repeat(200)))
                .expires_at("2030-01-01T00:00:00Z")
                .json()
        })
        .collect();
    mount_simple_organization(&server, &keys).await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_cannot_hold_every_scrape_slot() {
    let _turn = HEAVY.lock().await;
    // Arrange
    let app = spawn_app_with(large_organization().await, |c| {
        c.max_requests = 4;
        c.server_limits.write_timeout = Duration::from_secs(1);
    })
    .await;
    let size = app.wait_for_first_poll().await.text.len();
    assert!(size > 2_000_000, "the body is large enough: {size} bytes");

    // Act: 16 clients with small receive buffers ask for /metrics and never read the body.
    let mut clients = Vec::new();
    for _ in 0..16 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(app.address).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        clients.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for stream in &mut clients {
        let mut status_line = [0u8; 12];
        let status =
            match tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut status_line))
                .await
            {
                Ok(Ok(_)) => String::from_utf8_lossy(&status_line[9..]).into_owned(),
                Ok(Err(error)) if error.kind() == ErrorKind::UnexpectedEof => "closed".to_owned(),
                other => format!("{other:?}"),
            };
        *statuses.entry(status).or_default() += 1;
    }
    let while_held = app.http.get(app.url("/metrics")).send().await.unwrap();
    let held_at = Instant::now();
    let mut released_after = None;
    for _ in 0..100 {
        let response = app.http.get(app.url("/metrics")).send().await.unwrap();
        if response.status() == 200 {
            released_after = Some(held_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Assert
    println!("never-reading clients got {statuses:?}; slots free after {released_after:?}");
    let served = statuses.get("200").copied().unwrap_or(0);
    assert!(
        served <= 4,
        "{served} clients got in beyond --web.max-requests 4: {statuses:?}"
    );
    assert_eq!(
        served + statuses.get("503").copied().unwrap_or(0),
        16,
        "{statuses:?}"
    );
    assert_eq!(
        while_held.status(),
        503,
        "a response being sent still counts against the limit"
    );
    let released_after = released_after.expect("the stalled clients are dropped");
    assert!(
        released_after < Duration::from_secs(4),
        "dropped after the write timeout, not later: {released_after:?}"
    );
    drop(clients);
}

/// `--config.check` of the real binary with the web config at `path`.
fn check_web_config(path: &std::path::Path) -> std::process::Output {
    let path = path.to_str().unwrap();
    run_to_completion(
        &["--demo", "--config.check", "--web.config.file", path],
        &[],
    )
}

#[tokio::test]
async fn only_the_exporter_toolkit_security_headers_can_be_configured() {
    // Arrange
    let dir = TempDir::new("forbidden-headers");
    let cases = [
        ("Content-Length: 5", "Content-Length"),
        ("Set-Cookie: session=1", "Set-Cookie"),
        ("X-Frame-Options: allow-from-anywhere", "X-Frame-Options"),
        ("X-Content-Type-Options: sniff", "X-Content-Type-Options"),
    ];

    for (line, name) in cases {
        // Act
        let config = dir.write(
            "web.yml",
            &format!("http_server_config:\n  headers:\n    {line}\n"),
        );
        let output = check_web_config(&config);

        // Assert
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{line}: {stderr}");
        assert!(stderr.contains(name), "{line}: {stderr}");
    }
}

#[tokio::test]
async fn the_basic_scheme_is_matched_case_insensitively() {
    // Arrange
    let (_dir, app) = app_with_prom_user("scheme", "right", 4, |_| {}).await;
    let credentials = base64::engine::general_purpose::STANDARD.encode("prom:right");

    for scheme in ["Basic", "basic", "BASIC", "bAsIc"] {
        // Act
        let response = app
            .http
            .get(app.url("/metrics"))
            .header("authorization", format!("{scheme} {credentials}"))
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(response.status(), 200, "scheme {scheme:?}");
    }
}

/// bcrypt hashes of cost 12, made once: hashing them in the test would cost seconds.
const NEW_PASSWORD_COST_12: &str = "$2b$12$cjBJEyIdcn7VmxKxgt.UoOdeTQ0ROxgiFavAZphGmTUhC.FupK5ue";
const OTHER_COST_12: [&str; 3] = [
    "$2b$12$lQdEkvyCmDvHFBPq0ieAt.vfqPjXGkpOKlV4zQ/iSp6HTETjq.Vt6",
    "$2b$12$jiY6u4u.CDaaJmHL8cRHlO9EkG7KGjnaDwMyG8QH1YcGZfFgEB9oi",
    "$2b$12$aH0ssjmK6NuND.c7GnkuSOB7EF.N42rKu9RHosh8qvMu2zDT1O/qi",
];

async fn probe_latencies(app: &TestApp, window: Duration) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let until = Instant::now() + window;
    while Instant::now() < until && latencies.len() < 2000 {
        let started = Instant::now();
        assert_eq!(app.get("/healthz").await.status(), 200);
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_never_blocks_probes_and_refuses_hashes_costlier_than_16() {
    let _turn = HEAVY.lock().await;
    // Arrange
    let (dir, app) = app_with_prom_user("costly", "old", 4, |c| {
        c.server_limits.web_config_check_interval = CHECK;
    })
    .await;
    let config = dir.path().join("web.yml");
    let scrape = |password: &'static str| {
        let request = app
            .http
            .get(app.url("/metrics"))
            .basic_auth("prom", Some(password));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(scrape("old").await, 200);
    let idle = probe_latencies(&app, Duration::from_secs(1)).await;

    // Act: four users with cost-12 hashes.
    let mut users = format!("basic_auth_users:\n  prom: '{NEW_PASSWORD_COST_12}'\n");
    for (i, hash) in OTHER_COST_12.iter().enumerate() {
        users.push_str(&format!("  user{i}: '{hash}'\n"));
    }
    dir.write("web.yml", &users);
    let reloading = probe_latencies(&app, Duration::from_secs(3)).await;
    eventually(Duration::from_secs(10), "the cost-12 config", || async {
        scrape("new").await == 200
    })
    .await;
    // A cost-17 hash (a cost-4 one with its cost changed: it parses, but would take seconds).
    let cost_17 = format!("$2b$17${}", &bcrypt_hash("x")[7..]);
    dir.write(
        "web.yml",
        &format!("basic_auth_users:\n  prom: '{cost_17}'\n"),
    );
    tokio::time::sleep(CHECK * 6).await;
    let after_cost_17 = scrape("new").await;
    let check = check_web_config(&config);

    // Assert
    let idle_max = *idle.iter().max().unwrap();
    let idle_median = median(idle.clone());
    let reloading_max = *reloading.iter().max().unwrap();
    println!(
        "/healthz idle: median {idle_median:?}, max {idle_max:?}; during the reload: median {:?}, max {reloading_max:?}",
        median(reloading.clone())
    );
    assert!(
        ratio(reloading_max, idle_max.max(idle_median * 2)) < 20.0,
        "a reload stalled /healthz for {reloading_max:?} (idle max {idle_max:?})"
    );
    assert_eq!(
        after_cost_17, 200,
        "the cost-17 config is refused, the old one stays"
    );
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cost 17"), "{stderr}");
}
