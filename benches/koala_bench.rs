//! koala's benchmark (issue 5): prints figures beside their targets and
//! never asserts them.
//!
//! ```sh
//! cargo bench --bench koala_bench -- [--quick] [--json FILE] [--store URL] \
//!     [--only ingest,e2e,batch,memory,resync,multi,warehouse,prune]
//! ```
//!
//! It starts the real `koala` binary (cargo builds it in the bench profile,
//! i.e. release) with a config in a temp dir, plays Customer.io against it
//! with signed segment webhooks over HTTP, and plays Meta and the App API
//! with the integration tests' fakes, which run inside this process.
//!
//! The "ceiling" for ingest is this same binary re-executed with
//! `--serve-ceiling`: a second small process whose axum handler only
//! verifies the signature and answers 200. Both servers thus meet the same
//! load generator and the same process boundary.
//!
//! What each phase runs (each on a fresh koala process and SQLite file):
//! - ingest: koala with one audience and no destination (the durable
//!   webhook path alone). Saturation = 64 closed-loop connections with a
//!   distinct person per webhook; then paced open-loop load at 25/50/90% of
//!   it, latency counted from each request's scheduled send time. The same
//!   against the ceiling. On 2 cores the generator shares the CPU with the
//!   server, so the ceiling is "what this generator + a trivial server do";
//!   rows flag where requests left late (connection busy or generator).
//! - memory: koala's VmRSS when idle after start, VmHWM after that load.
//! - e2e: a Meta destination at 1000 req/s → the fake; time from reading
//!   the webhook's 2xx to the fake recording the person's EXTERN_ID.
//! - batch: the same destination at 1 req/s, max_batch 10,000. A call can
//!   carry only what arrived since the previous one, so the best fill is
//!   arrival rate / 10,000 per second; that bound is printed too. Two
//!   loads: the issue's ~2,000/s (best possible fill 20%), and 12,000/s,
//!   above what one call a second carries, where the destination is busy.
//! - resync: see `bench_resync`.
//! - prune: ingest at saturation (then at 50% of it) on a store holding
//!   old rows to prune — events and dedupe keys from 100 days ago and
//!   settled non-member sync rows — on copies of one preload: with pruning
//!   off, then pruning one table at a time, its pass starting a second
//!   after start so that it runs through the whole measurement. See
//!   `bench_prune`.
//! - warehouse: the PostgreSQL warehouse destination against a real
//!   PostgreSQL (`KOALA_BENCH_WAREHOUSE_URL`, default CI's server): see
//!   `bench_warehouse`.
//!
//! Under `cargo test` / `cargo nextest` (no `--bench` argument, or `--list`)
//! the binary does nothing, so `--all-targets` test runs stay fast.

#[path = "../tests/it/support/fake_app_api.rs"]
mod fake_app_api;
#[path = "../tests/it/support/fake_google.rs"]
mod fake_google;
#[path = "../tests/it/support/fake_meta.rs"]
mod fake_meta;
#[path = "../tests/it/support/fake_tiktok.rs"]
mod fake_tiktok;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};
use koala::customerio::signature::{sign, verify};
use koala::secret::Secret;
use serde_json::{json, Value};

use fake_app_api::{FakeAppApi, FAKE_APP_API_KEY};
use fake_meta::{FakeMeta, RecordedRequest, FAKE_META_TOKEN};

const USAGE: &str = "usage: cargo bench --bench koala_bench -- [--quick] [--json FILE] \
[--store URL] [--only ingest,e2e,batch,memory,resync,multi,warehouse,prune] [--resync-runs sizes,lookups,replace]";

const WEBHOOK_KEY: &str = "bench-webhook-signing-key";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const AUDIENCE: &str = "CIO__Bench__CartAbandon";
const SEGMENT: u64 = 42;
/// The Meta audience id koala is configured with (so it never creates one).
const META_AUDIENCE: &str = "23850000000000";
/// Concurrent connections, as a busy Customer.io workspace might open
/// (closed loop for saturation, paced per connection for latency).
const CONNECTIONS: usize = 64;
/// Customer.io's App API page size and koala's client-side App API limit.
const RESYNC_PAGE: u64 = 30_000;
const APP_API_RPS: f64 = 10.0;
const META_MAX_BATCH: usize = 10_000;

// ---------------------------------------------------------------- options

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Ingest,
    E2e,
    Batch,
    Memory,
    Resync,
    Multi,
    Warehouse,
    Prune,
}

impl Phase {
    const ALL: [Phase; 8] = [
        Phase::Ingest,
        Phase::E2e,
        Phase::Batch,
        Phase::Memory,
        Phase::Resync,
        Phase::Multi,
        Phase::Warehouse,
        Phase::Prune,
    ];

    fn name(self) -> &'static str {
        match self {
            Phase::Ingest => "ingest",
            Phase::E2e => "e2e",
            Phase::Batch => "batch",
            Phase::Memory => "memory",
            Phase::Resync => "resync",
            Phase::Multi => "multi",
            Phase::Warehouse => "warehouse",
            Phase::Prune => "prune",
        }
    }

    fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == s.trim())
    }
}

struct Options {
    quick: bool,
    json: Option<PathBuf>,
    store: Option<String>,
    only: BTreeSet<Phase>,
    /// Which runs of the resync phase: `sizes` (100k and 1M without a
    /// destination), `lookups` (first resync with phone lookups at 10/s),
    /// `replace` (1M with lookups and a full replace).
    resync_runs: BTreeSet<String>,
}

const RESYNC_RUNS: [&str; 3] = ["sizes", "lookups", "replace"];

enum Mode {
    Bench(Options),
    /// The ceiling server (a child of the benchmark).
    Ceiling,
    /// Run by `cargo test`/`nextest`: nothing to do. `listing` = `--list`.
    Idle {
        listing: bool,
    },
}

fn parse_args(args: &[String]) -> Result<Mode, String> {
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--serve-ceiling") {
        return Ok(Mode::Ceiling);
    }
    if has("--list") || !has("--bench") {
        return Ok(Mode::Idle {
            listing: has("--list"),
        });
    }
    let mut opts = Options {
        quick: false,
        json: None,
        store: None,
        only: Phase::ALL.into_iter().collect(),
        resync_runs: RESYNC_RUNS.iter().map(|r| r.to_string()).collect(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {}
            "--quick" => opts.quick = true,
            "--json" => opts.json = Some(PathBuf::from(value()?)),
            "--store" => opts.store = Some(value()?),
            "--only" => {
                opts.only = value()?
                    .split(',')
                    .map(|p| Phase::parse(p).ok_or(format!("--only: unknown phase {p:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "--resync-runs" => {
                opts.resync_runs = value()?
                    .split(',')
                    .map(|r| {
                        let r = r.trim();
                        RESYNC_RUNS
                            .contains(&r)
                            .then(|| r.to_owned())
                            .ok_or(format!("--resync-runs: unknown run {r:?}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Mode::Bench(opts))
}

/// How long each step runs; `--quick` shrinks everything to fit ~1 minute.
struct Plan {
    warmup: Duration,
    saturate: Duration,
    paced: Duration,
    e2e: Duration,
    /// (changes, per second): as the issue asks, then above what 1 req/s
    /// of 10,000 rows can carry, so the destination is truly busy.
    batch_loads: [(usize, f64); 2],
    resync_sizes: &'static [u64],
    /// Giving up on a resync of 1M (twice the 60 s target) and of less.
    resync_timeout_1m: Duration,
    resync_timeout: Duration,
    /// First resync with phone lookups at the App API's real 10/s: size
    /// and when to give up (the floor is about size / 1,000 s).
    enrich_size: u64,
    enrich_timeout: Duration,
    /// Phone lookups plus a full replace to Meta, at a raised App API rate
    /// (koala's limit and the fake's) so it takes minutes, not hours.
    enrich_replace_size: u64,
    enrich_replace_rps: u32,
    enrich_replace_timeout: Duration,
    /// Old rows preloaded for the prune phase: (events, dedupe keys,
    /// settled non-member sync rows). Enough that pruning outlasts the
    /// measurement.
    prune_preload: (u64, u64, u64),
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                warmup: Duration::from_millis(500),
                saturate: Duration::from_secs(3),
                paced: Duration::from_secs(2),
                e2e: Duration::from_secs(3),
                batch_loads: [(10_000, 2_000.0), (30_000, 12_000.0)],
                resync_sizes: &[100_000],
                resync_timeout_1m: Duration::from_secs(25),
                resync_timeout: Duration::from_secs(25),
                enrich_size: 10_000,
                enrich_timeout: Duration::from_secs(60),
                enrich_replace_size: 100_000,
                enrich_replace_rps: 200,
                enrich_replace_timeout: Duration::from_secs(120),
                prune_preload: (1_000_000, 3_000_000, 1_000_000),
            }
        } else {
            Plan {
                warmup: Duration::from_secs(1),
                saturate: Duration::from_secs(10),
                paced: Duration::from_secs(6),
                e2e: Duration::from_secs(10),
                batch_loads: [(20_000, 2_000.0), (60_000, 12_000.0)],
                resync_sizes: &[100_000, 1_000_000],
                resync_timeout_1m: Duration::from_secs(120),
                resync_timeout: Duration::from_secs(60),
                enrich_size: 200_000,
                enrich_timeout: Duration::from_secs(600),
                enrich_replace_size: 1_000_000,
                enrich_replace_rps: 200,
                enrich_replace_timeout: Duration::from_secs(1200),
                prune_preload: (3_000_000, 10_000_000, 3_000_000),
            }
        }
    }
}

/// What every phase needs.
struct Ctx {
    opts: Options,
    plan: Plan,
    http: reqwest::Client,
}

// ---------------------------------------------------------------- main

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&args) {
        Ok(Mode::Bench(opts)) => run_bench(opts),
        Ok(Mode::Ceiling) => serve_ceiling(),
        Ok(Mode::Idle { listing }) => {
            // nextest parses `--list` output: print nothing there.
            if !listing {
                eprintln!("koala_bench: nothing to do outside `cargo bench` ({USAGE})");
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("koala_bench: {message}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run_bench(opts: Options) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(CONNECTIONS)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client");
    let ctx = Ctx {
        plan: Plan::new(opts.quick),
        opts,
        http,
    };
    let mut report = Report::default();
    let result = runtime.block_on(run_phases(&ctx, &mut report));
    report.print(&ctx);
    if let Some(path) = &ctx.opts.json {
        match std::fs::write(path, report.to_json(&ctx).to_string()) {
            Ok(()) => eprintln!("figures written to {}", path.display()),
            Err(e) => eprintln!("koala_bench: cannot write {}: {e}", path.display()),
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("koala_bench: stopped: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_phases(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let only = &ctx.opts.only;
    if only.contains(&Phase::Ingest) || only.contains(&Phase::Memory) {
        bench_ingest_and_memory(ctx, report).await?;
    }
    if only.contains(&Phase::E2e) {
        bench_e2e(ctx, report).await?;
    }
    if only.contains(&Phase::Multi) {
        bench_multi(ctx, report).await?;
    }
    if only.contains(&Phase::Batch) {
        bench_batch(ctx, report).await?;
    }
    if only.contains(&Phase::Resync) {
        bench_resync(ctx, report).await?;
    }
    if only.contains(&Phase::Warehouse) {
        bench_warehouse(ctx, report).await?;
    }
    if only.contains(&Phase::Prune) {
        bench_prune(ctx, report).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------- koala process

/// What varies between the koala processes the phases start.
#[derive(Default)]
struct KoalaSetup {
    /// TOML `[[destinations]]` block, if any.
    destination: String,
    /// The audience's `sync` list items.
    sync: String,
    /// Extra keys under `[customerio]`.
    customerio: String,
    /// Keys under `[retention]`.
    retention: String,
}

/// A `koala serve` child with its own temp dir. Killed when dropped.
struct Koala {
    child: Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Koala {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Koala {
    async fn start(ctx: &Ctx, setup: &KoalaSetup) -> anyhow::Result<Koala> {
        Koala::start_in(ctx, setup, tempfile::tempdir().context("temp dir")?).await
    }

    /// Starts on `dir`, whose `koala.db` the caller may have prepared.
    async fn start_in(
        ctx: &Ctx,
        setup: &KoalaSetup,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Koala> {
        let store_url = match &ctx.opts.store {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", dir.path().join("koala.db").display()),
        };
        let port = free_port()?;
        let config_path = dir.path().join("koala.toml");
        std::fs::write(&config_path, koala_config(port, &store_url, setup))?;
        let log = dir.path().join("koala.log");
        let out = std::fs::File::create(&log)?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_koala"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // Overrides from the caller's shell would change what is measured.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("KOALA_")) {
            command.env_remove(key);
        }
        command.env("KOALA_LOG", "warn");
        let child = command.spawn().context("spawning koala")?;
        let mut koala = Koala {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        koala.wait_ready(&ctx.http, &store_url).await?;
        Ok(koala)
    }

    async fn wait_ready(&mut self, http: &reqwest::Client, store_url: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(start_failure(
                    store_url,
                    &status.to_string(),
                    &self.log_tail()
                ));
            }
            let ready = http.get(format!("{}/readyz", self.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(start_failure(
                    store_url,
                    "not ready after 30 s",
                    &self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A `/proc/<pid>/status` memory line (VmRSS, VmHWM) in MB.
    fn memory_mb(&self, key: &str) -> Option<f64> {
        proc_status_kb(self.child.id(), key).map(|kb| kb as f64 / 1024.0)
    }

    fn target(&self, http: &reqwest::Client) -> Target {
        Target::new(http, &self.base)
    }
}

fn start_failure(store_url: &str, how: &str, log: &str) -> String {
    let store = redact(store_url);
    let hint = if store_url.starts_with("postgres") {
        "\nThe PostgreSQL store does not exist in koala yet: the config accepts a postgres:// \
         URL but koala cannot open it. Run without --store to use the embedded SQLite store."
    } else {
        ""
    };
    // koala's own message may quote the URL, password included.
    let log = match url::Url::parse(store_url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
    {
        Some(password) => log.replace(&password, "***"),
        None => log.to_owned(),
    };
    format!("koala did not start with store {store} ({how}).{hint}\nlast lines of its log:\n{log}")
}

/// The store URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

fn koala_config(port: u16, store_url: &str, setup: &KoalaSetup) -> String {
    let store = toml::Value::String(store_url.to_owned());
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_token = "{ADMIN_TOKEN}"
[store]
url = {store}
[customerio]
webhook_signing_keys = ["{WEBHOOK_KEY}"]
{cio}
[retention]
{retention}
[[audiences]]
name = "{AUDIENCE}"
segment_id = {SEGMENT}
sync = [{sync}]
{destination}
"#,
        cio = setup.customerio,
        retention = setup.retention,
        sync = setup.sync,
        destination = setup.destination,
    )
}

/// koala's Meta destination pointed at the fake, with the given limits.
fn meta_setup(meta: &FakeMeta, requests_per_second: f64, concurrency: usize) -> KoalaSetup {
    KoalaSetup {
        destination: format!(
            r#"
[[destinations]]
name = "meta"
type = "meta_custom_audiences"
base_url = "{base}"
access_token = "{FAKE_META_TOKEN}"
ad_account_id = "act_1234"
max_batch = {META_MAX_BATCH}
concurrency = {concurrency}
requests_per_second = {requests_per_second:?}
min_linger = "0s"
request_timeout = "5s"
base_backoff = "20ms"
max_backoff = "200ms"
"#,
            base = meta.base_url()
        ),
        sync: format!(r#"{{ destination = "meta", audience_id = "{META_AUDIENCE}" }}"#),
        ..Default::default()
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "(comm)": state is the 3rd field, utime the 14th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // USER_HZ is 100 on every Linux this runs on.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// Bytes a process has passed to write(2) and friends so far (`wchar` in
/// `/proc/<pid>/io`): for koala, WAL frames and checkpoints. Unlike time,
/// it does not depend on what else the machine runs.
fn written_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

// ---------------------------------------------------------------- ceiling process

/// The ceiling server: this binary re-executed with `--serve-ceiling`.
struct Ceiling {
    child: Child,
    base: String,
}

impl Drop for Ceiling {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ceiling {
    fn start() -> anyhow::Result<Ceiling> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--serve-ceiling")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning the ceiling server")?;
        let stdout = child.stdout.take().context("ceiling stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port: u16 = line.trim().parse().context("ceiling port")?;
        Ok(Ceiling {
            child,
            base: format!("http://127.0.0.1:{port}"),
        })
    }
}

fn serve_ceiling() -> ExitCode {
    // The benchmark holds our stdin: when it goes away, so do we.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the ceiling server");
        let port = listener.local_addr().expect("local address").port();
        println!("{port}");
        std::io::stdout().flush().expect("stdout");
        let keys = Arc::new(vec![Secret::new(WEBHOOK_KEY)]);
        let app = axum::Router::new()
            .route(
                "/webhooks/customerio/segments",
                axum::routing::post(ceiling_webhook),
            )
            .with_state(keys);
        axum::serve(listener, app).await.expect("ceiling server");
    });
    ExitCode::SUCCESS
}

/// Signature check only: what any webhook receiver must do at the least.
async fn ceiling_webhook(
    State(keys): State<Arc<Vec<Secret>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let checked = verify(
        &keys,
        header("x-cio-timestamp"),
        header("x-cio-signature"),
        &body,
        unix_now(),
        Duration::from_secs(8 * 86_400),
    );
    match checked {
        Ok(()) => (StatusCode::OK, r#"{"status":"accepted"}"#),
        Err(_) => (StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#),
    }
}

// ---------------------------------------------------------------- load generation

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Where signed segment webhooks go.
#[derive(Clone)]
struct Target {
    http: reqwest::Client,
    url: String,
}

impl Target {
    fn new(http: &reqwest::Client, base: &str) -> Target {
        Target {
            http: http.clone(),
            url: format!("{base}/webhooks/customerio/segments"),
        }
    }

    /// `person` enters the segment now; Ok on a 2xx answer.
    async fn post(&self, person: &str) -> Result<(), String> {
        let now = unix_now();
        let ts = now.to_string();
        let body = webhook_body(person, now);
        let signature = sign(WEBHOOK_KEY, &ts, body.as_bytes());
        let response = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-cio-timestamp", ts)
            .header("x-cio-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        // Read the body so the connection goes back to the pool.
        let text = response.bytes().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{status}: {}", String::from_utf8_lossy(&text)))
        }
    }
}

/// What the README's Liquid template renders for `person`.
fn webhook_body(person: &str, occurred_at: i64) -> String {
    format!(
        r#"{{"segment_id":{SEGMENT},"action":"entered","occurred_at":{occurred_at},"campaign_id":"11","identifiers":{{"id":"{person}","cio_id":"c{person}","email":"{person}@example.com","phone":""}},"attributes":{{"first_name":"Ann","last_name":"Lee"}}}}"#
    )
}

/// Distinct person ids, so every webhook is a real insert.
#[derive(Clone)]
struct People {
    prefix: &'static str,
    next: Arc<AtomicU64>,
}

impl People {
    fn new(prefix: &'static str) -> People {
        People {
            prefix,
            next: Arc::new(AtomicU64::new(0)),
        }
    }

    fn next(&self) -> String {
        format!(
            "{}{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn add(&mut self, result: &Result<(), String>) {
        match result {
            Ok(()) => self.ok += 1,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.clone());
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

struct Saturation {
    tally: Tally,
    secs: f64,
}

impl Saturation {
    fn rate(&self) -> f64 {
        self.tally.ok as f64 / self.secs
    }
}

/// Closed loop: `CONNECTIONS` tasks each send as fast as answers come back.
async fn saturate(target: &Target, people: &People, run: Duration, label: &str) -> Saturation {
    let bar = spinner(label);
    let started = Instant::now();
    let deadline = started + run;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (target, people, bar) = (target.clone(), people.clone(), bar.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    tally.add(&target.post(&people.next()).await);
                    bar.inc(1);
                }
                tally
            })
        })
        .collect();
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.expect("load task"));
    }
    bar.finish_and_clear();
    Saturation {
        tally,
        secs: started.elapsed().as_secs_f64(),
    }
}

/// One open-loop request: when it was due, when the generator got to
/// send it, when its answer was read.
struct Sent {
    index: usize,
    scheduled: Instant,
    dispatched: Instant,
    acked: Instant,
    result: Result<(), String>,
}

/// Open loop, as wrk2 does it: request `i` is due at `start + i / rate`
/// whatever happened to earlier ones, and its latency counts from then, so
/// a stalled server shows (no coordinated omission). Connection `w` sends
/// requests w, w + CONNECTIONS, …: a fixed set of tasks keeps the
/// generator lean on 2 cores (no task per request).
async fn paced<F>(target: &Target, rate: f64, count: usize, person: F, label: &str) -> Vec<Sent>
where
    F: Fn(usize) -> String + Send + Sync + 'static,
{
    let bar = counter(count as u64, label);
    let person = Arc::new(person);
    let start = Instant::now() + Duration::from_millis(5);
    let connections = CONNECTIONS.min(count.max(1));
    let tasks: Vec<_> = (0..connections)
        .map(|first| {
            let (target, person, bar) = (target.clone(), person.clone(), bar.clone());
            tokio::spawn(async move {
                let mut sent = Vec::with_capacity(count / connections + 1);
                for index in (first..count).step_by(connections) {
                    let scheduled = start + Duration::from_secs_f64(index as f64 / rate);
                    if scheduled > Instant::now() {
                        tokio::time::sleep_until(scheduled.into()).await;
                    }
                    let dispatched = Instant::now();
                    let result = target.post(&person(index)).await;
                    let acked = Instant::now();
                    bar.inc(1);
                    sent.push(Sent {
                        index,
                        scheduled,
                        dispatched,
                        acked,
                        result,
                    });
                }
                sent
            })
        })
        .collect();
    let mut sent = Vec::with_capacity(count);
    for task in tasks {
        sent.extend(task.await.expect("paced task"));
    }
    bar.finish_and_clear();
    sent
}

fn spinner(label: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template(
            "{prefix:<44} {spinner} {pos} requests, {per_sec} [{elapsed}]",
        )
        .expect("template"),
    );
    bar.set_prefix(label.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn counter(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("{prefix:<44} {bar:30} {pos}/{len} [{elapsed}]")
            .expect("template"),
    );
    bar.set_prefix(label.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

// ---------------------------------------------------------------- statistics

/// Sorted latencies with nearest-rank percentiles.
struct Latencies(Vec<Duration>);

impl Latencies {
    fn new(mut v: Vec<Duration>) -> Latencies {
        v.sort_unstable();
        Latencies(v)
    }

    fn ms(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1].as_secs_f64() * 1000.0
    }
}

/// Ack latencies (scheduled → answer) of the 2xx answers, and the failures.
fn ack_latencies(sent: &[Sent]) -> (Latencies, Tally) {
    let mut tally = Tally::default();
    let mut v = Vec::with_capacity(sent.len());
    for s in sent {
        tally.add(&s.result);
        if s.result.is_ok() {
            v.push(s.acked - s.scheduled);
        }
    }
    (Latencies::new(v), tally)
}

// ---------------------------------------------------------------- 1 & 5: ingest, memory

const LOAD_LEVELS: [f64; 3] = [0.25, 0.5, 0.9];

struct Level {
    fraction: f64,
    rate: f64,
    latencies: Latencies,
    /// How late requests left (scheduled → dispatched).
    lag: Latencies,
    tally: Tally,
}

struct ServerRun {
    saturation: Saturation,
    levels: Vec<Level>,
    /// koala's own group-commit figures per step (not for the ceiling).
    commits: Vec<(String, GroupCommit)>,
    cpu: Option<CpuCost>,
}

/// Mean group size and commit time over a step, from koala's histograms
/// `koala_ingest_group_size` and `koala_ingest_commit_seconds`: they tell
/// whether the single writer or the HTTP side limits ingest.
#[derive(Clone, Copy)]
struct GroupCommit {
    groups: f64,
    webhooks: f64,
    commit_secs: f64,
}

impl GroupCommit {
    async fn read(http: &reqwest::Client, base: Option<&str>) -> Option<GroupCommit> {
        let text = http
            .get(format!("{}/metrics", base?))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        };
        Some(GroupCommit {
            groups: value("koala_ingest_group_size_count")?,
            webhooks: value("koala_ingest_group_size_sum")?,
            commit_secs: value("koala_ingest_commit_seconds_sum")?,
        })
    }

    fn since(self, before: GroupCommit) -> GroupCommit {
        GroupCommit {
            groups: self.groups - before.groups,
            webhooks: self.webhooks - before.webhooks,
            commit_secs: self.commit_secs - before.commit_secs,
        }
    }

    fn describe(self) -> String {
        let groups = self.groups.max(1.0);
        format!(
            "{:.1} × {:.2} ms",
            self.webhooks / groups,
            self.commit_secs / groups * 1000.0
        )
    }
}

/// Starts koala with one audience and no destination (the durable ingest
/// path alone); reads idle RSS, runs the ingest load against koala and the
/// ceiling, then reads koala's peak RSS.
async fn bench_ingest_and_memory(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let with_ingest = ctx.opts.only.contains(&Phase::Ingest);
    let with_memory = ctx.opts.only.contains(&Phase::Memory);
    eprintln!("== ingest{}", if with_memory { " + memory" } else { "" });
    let koala = Koala::start(ctx, &KoalaSetup::default()).await?;
    // Let start-up allocations settle before calling it idle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = koala.memory_mb("VmRSS");
    let people = People::new("i");
    let target = koala.target(&ctx.http);
    let koala_run = if with_ingest {
        let server = Server {
            who: "koala",
            pid: koala.child.id(),
            metrics: Some(&koala.base),
        };
        Some(measure_server(ctx, &target, &people, &server).await)
    } else {
        // Memory alone still needs the ingest load to have a peak.
        saturate(
            &target,
            &people,
            ctx.plan.saturate,
            "koala saturation (for memory)",
        )
        .await;
        None
    };
    let peak = koala.memory_mb("VmHWM");
    drop(koala);
    if let Some(koala_run) = koala_run {
        let ceiling = Ceiling::start()?;
        let target = Target::new(&ctx.http, &ceiling.base);
        let server = Server {
            who: "ceiling",
            pid: ceiling.child.id(),
            metrics: None,
        };
        let ceiling_run = measure_server(ctx, &target, &People::new("c"), &server).await;
        drop(ceiling);
        report_ingest(report, &koala_run, &ceiling_run);
    }
    if with_memory {
        report.num_opt("memory", "koala RSS idle after start (VmRSS)", idle, "MB");
        report.num_opt(
            "memory",
            "koala peak RSS after ingest load (VmHWM)",
            peak,
            "MB",
        );
    }
    Ok(())
}

/// The server under load, for the figures that explain its numbers.
struct Server<'a> {
    who: &'static str,
    pid: u32,
    /// koala's base URL, to read its group-commit figures per step.
    metrics: Option<&'a str>,
}

/// CPU per request at saturation, server and generator: on 2 shared cores
/// this is what sets the ratio between koala and the ceiling.
struct CpuCost {
    server_us: f64,
    generator_us: f64,
}

/// Saturation (after a warm-up), then paced load at fractions of it.
async fn measure_server(
    ctx: &Ctx,
    target: &Target,
    people: &People,
    server: &Server<'_>,
) -> ServerRun {
    let (plan, who, metrics) = (&ctx.plan, server.who, server.metrics);
    let mut commits = Vec::new();
    saturate(target, people, plan.warmup, &format!("{who} warm-up")).await;
    let before = GroupCommit::read(&ctx.http, metrics).await;
    let cpu_before = (cpu_secs(server.pid), cpu_secs(std::process::id()));
    let saturation = saturate(target, people, plan.saturate, &format!("{who} saturation")).await;
    let cpu_after = (cpu_secs(server.pid), cpu_secs(std::process::id()));
    let per_request =
        |a: Option<f64>, b: Option<f64>| Some((a? - b?) / saturation.tally.ok.max(1) as f64 * 1e6);
    let cpu = per_request(cpu_after.0, cpu_before.0)
        .zip(per_request(cpu_after.1, cpu_before.1))
        .map(|(server_us, generator_us)| CpuCost {
            server_us,
            generator_us,
        });
    let after = GroupCommit::read(&ctx.http, metrics).await;
    if let (Some(a), Some(b)) = (after, before) {
        commits.push(("saturation".to_owned(), a.since(b)));
    }
    eprintln!("{who}: {:.0} webhooks/s at saturation", saturation.rate());
    let mut levels = Vec::new();
    for fraction in LOAD_LEVELS {
        let before = GroupCommit::read(&ctx.http, metrics).await;
        let rate = (saturation.rate() * fraction).max(1.0);
        let count = (rate * plan.paced.as_secs_f64()).ceil() as usize;
        let label = format!("{who} paced {:.0}% ({rate:.0}/s)", fraction * 100.0);
        let people = people.clone();
        let sent = paced(target, rate, count, move |_| people.next(), &label).await;
        let (latencies, tally) = ack_latencies(&sent);
        let lag = Latencies::new(sent.iter().map(|s| s.dispatched - s.scheduled).collect());
        let after = GroupCommit::read(&ctx.http, metrics).await;
        if let (Some(a), Some(b)) = (after, before) {
            commits.push((format!("{:.0}% load", fraction * 100.0), a.since(b)));
        }
        eprintln!(
            "{label}: p50 {:.2} ms, p99 {:.2} ms",
            latencies.ms(50.0),
            latencies.ms(99.0)
        );
        levels.push(Level {
            fraction,
            rate,
            latencies,
            lag,
            tally,
        });
    }
    ServerRun {
        saturation,
        levels,
        commits,
        cpu,
    }
}

fn report_ingest(report: &mut Report, koala: &ServerRun, ceiling: &ServerRun) {
    for (who, run) in [("koala", koala), ("ceiling", ceiling)] {
        report.num(
            "ingest",
            format!("{who}: accepted webhooks/s at saturation ({CONNECTIONS} conns)"),
            run.saturation.rate(),
            "/s",
        );
        report.errors(
            "ingest",
            &format!("{who}: saturation"),
            &run.saturation.tally,
        );
        for level in &run.levels {
            report_level(report, who, level);
        }
        if let Some(cpu) = &run.cpu {
            let name = format!("{who}: server CPU per webhook at saturation");
            report.num("ingest", name, cpu.server_us, "µs");
            let name = format!("{who}: load generator CPU per webhook");
            report.num("ingest", name, cpu.generator_us, "µs");
        }
        for (step, commit) in &run.commits {
            let name = format!("{who}: group commit @ {step} (webhooks × time)");
            report.text("ingest", name, commit.describe());
        }
    }
    let ratio = koala.saturation.rate() / ceiling.saturation.rate() * 100.0;
    report.check(
        "ingest",
        "koala / ceiling at saturation",
        ratio,
        "%",
        ">= 50%",
        ratio >= 50.0,
    );
}

fn report_level(report: &mut Report, who: &str, level: &Level) {
    let at = format!(
        "{who}: ack @ {:.0}% ({:.0}/s)",
        level.fraction * 100.0,
        level.rate
    );
    let l = &level.latencies;
    report.num("ingest", format!("{at} p50"), l.ms(50.0), "ms");
    let p99 = l.ms(99.0);
    if who == "koala" && level.fraction == 0.5 {
        report.check(
            "ingest",
            format!("{at} p99"),
            p99,
            "ms",
            "< 25 ms",
            p99 < 25.0,
        );
    } else {
        report.num("ingest", format!("{at} p99"), p99, "ms");
    }
    report.num("ingest", format!("{at} p99.9"), l.ms(99.9), "ms");
    report.errors("ingest", &at, &level.tally);
    // Requests that left late waited for their connection (64 in all) or
    // for the generator's CPU: their latency counts from the schedule,
    // but say how late they left.
    let lag = level.lag.ms(99.0);
    if lag > 5.0 {
        report.num("ingest", format!("{at}: sent late, p99"), lag, "ms");
    }
}

// ---------------------------------------------------------------- 2: end-to-end

/// Webhook 2xx ack → the fake Meta receiving that person (by EXTERN_ID).
async fn bench_e2e(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("== end-to-end");
    let meta = FakeMeta::start().await;
    let koala = Koala::start(ctx, &meta_setup(&meta, 1000.0, 4)).await?;
    let target = koala.target(&ctx.http);
    let mut expected = 0;
    for (rate, p99_target) in [(100.0, 50.0), (1000.0, 250.0)] {
        let count = (rate * ctx.plan.e2e.as_secs_f64()) as usize;
        let name = move |i: usize| format!("e{rate}-{i}");
        let label = format!("e2e paced {rate:.0}/s");
        let sent = paced(&target, rate, count, name, &label).await;
        expected += count;
        wait_for_members(&meta, expected, Duration::from_secs(30)).await;
        let arrivals = arrivals(&meta.requests());
        let e2e = E2e::measure(&sent, &arrivals, name);
        eprintln!(
            "{label}: p50 {:.2} ms, p99 {:.2} ms",
            e2e.latencies.ms(50.0),
            e2e.latencies.ms(99.0)
        );
        e2e.report(report, rate, p99_target);
    }
    Ok(())
}

struct E2e {
    latencies: Latencies,
    tally: Tally,
    missing: usize,
    /// Arrived at Meta before the bench had read the ack (clamped to 0).
    early: usize,
}

impl E2e {
    fn measure(
        sent: &[Sent],
        arrivals: &HashMap<String, Instant>,
        name: impl Fn(usize) -> String,
    ) -> E2e {
        let mut e = E2e {
            latencies: Latencies(Vec::new()),
            tally: Tally::default(),
            missing: 0,
            early: 0,
        };
        let mut v = Vec::with_capacity(sent.len());
        for s in sent {
            e.tally.add(&s.result);
            if s.result.is_err() {
                continue;
            }
            match arrivals.get(&name(s.index)) {
                Some(&at) => {
                    e.early += usize::from(at < s.acked);
                    v.push(at.saturating_duration_since(s.acked));
                }
                None => e.missing += 1,
            }
        }
        e.latencies = Latencies::new(v);
        e
    }

    fn report(&self, report: &mut Report, rate: f64, p99_target: f64) {
        let at = format!("ack → Meta @ {rate:.0}/s");
        report.num("e2e", format!("{at} p50"), self.latencies.ms(50.0), "ms");
        let p99 = self.latencies.ms(99.0);
        report.check(
            "e2e",
            format!("{at} p99"),
            p99,
            "ms",
            &format!("<= {p99_target:.0} ms"),
            p99 <= p99_target,
        );
        report.errors("e2e", &at, &self.tally);
        if self.missing > 0 {
            report.num(
                "e2e",
                format!("{at}: never reached Meta"),
                self.missing as f64,
                "",
            );
        }
        if self.early > 0 {
            report.num(
                "e2e",
                format!("{at}: reached Meta before the ack was read"),
                self.early as f64,
                "",
            );
        }
    }
}

/// First arrival of each EXTERN_ID in successful adds.
fn arrivals(requests: &[RecordedRequest]) -> HashMap<String, Instant> {
    let mut first = HashMap::new();
    for r in requests
        .iter()
        .filter(|r| r.status < 300 && r.method == Method::POST)
    {
        let Some(col) = r.schema.iter().position(|k| k == "EXTERN_ID") else {
            continue;
        };
        for row in &r.rows {
            first.entry(row[col].clone()).or_insert(r.at);
        }
    }
    first
}

/// Bounded wait for the fake to hold `n` members.
async fn wait_for_members(meta: &FakeMeta, n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while meta.members(META_AUDIENCE).len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- multi: Meta, Google, TikTok at once

/// The three ad platforms, each with its own fake, in one koala: `meta`,
/// `google`, `tiktok`, each at `rps` requests/s.
fn multi_setup(
    meta: &FakeMeta,
    google: &fake_google::FakeGoogle,
    tiktok: &fake_tiktok::FakeTiktok,
    rps: [f64; 3],
) -> KoalaSetup {
    let engine = |rps: f64| {
        format!("requests_per_second = {rps:?}\nconcurrency = 4\nrequest_timeout = \"5s\"\nmin_linger = \"0s\"")
    };
    let mut destination = meta_setup(meta, rps[0], 4).destination;
    destination.push_str(&google.destination_toml(
        "google",
        &format!("{}\nproject_requests_per_minute = 1000000", engine(rps[1])),
    ));
    destination.push_str(&tiktok.destination_toml("tiktok", &engine(rps[2])));
    KoalaSetup {
        destination,
        sync: format!(
            r#"{{ destination = "meta", audience_id = "{META_AUDIENCE}" }},
               {{ destination = "google", audience_id = "{MULTI_GOOGLE_AUDIENCE}" }},
               {{ destination = "tiktok", audience_id = "{MULTI_TIKTOK_AUDIENCE}" }}"#
        ),
        ..Default::default()
    }
}

const MULTI_GOOGLE_AUDIENCE: &str = "5550001";
const MULTI_TIKTOK_AUDIENCE: &str = "7000001";

/// The member key Google's and TikTok's fakes hold for a bench person.
fn email_key(person: &str) -> String {
    koala::normalization::sha256_hex(&format!("{person}@example.com"))
}

/// One koala syncing one audience to Meta, Google and TikTok: end-to-end
/// latency per destination at 100 changes/s, then batch fill per
/// destination when each one's rate limit is the bottleneck.
async fn bench_multi(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("== three destinations");
    let (meta, google, tiktok) = (
        FakeMeta::start().await,
        fake_google::FakeGoogle::start().await,
        fake_tiktok::FakeTiktok::start().await,
    );
    let koala = Koala::start(ctx, &multi_setup(&meta, &google, &tiktok, [1000.0; 3])).await?;
    let target = koala.target(&ctx.http);
    let rate = 100.0;
    let count = (rate * ctx.plan.e2e.as_secs_f64()) as usize;
    let name = |i: usize| format!("m{i}");
    let sent = paced(&target, rate, count, name, "3 destinations @ 100/s").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (meta.members(META_AUDIENCE).len() < count
        || google.members(MULTI_GOOGLE_AUDIENCE).len() < count
        || tiktok.members(MULTI_TIKTOK_AUDIENCE).len() < count)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut first_google = HashMap::new();
    for r in google.successful_requests() {
        for k in &r.members {
            first_google.entry(k.clone()).or_insert(r.at);
        }
    }
    let mut first_tiktok = HashMap::new();
    for r in tiktok.mappings().iter().filter(|r| r.code == 0) {
        for k in &r.members {
            first_tiktok.entry(k.clone()).or_insert(r.at);
        }
    }
    let per_destination = [
        (
            "meta",
            E2e::measure(&sent, &arrivals(&meta.requests()), name),
        ),
        (
            "google",
            E2e::measure(&sent, &first_google, |i| email_key(&name(i))),
        ),
        (
            "tiktok",
            E2e::measure(&sent, &first_tiktok, |i| email_key(&name(i))),
        ),
    ];
    for (d, e2e) in &per_destination {
        let at = format!("3 destinations, ack → {d} @ 100/s");
        report.num("multi", format!("{at} p50"), e2e.latencies.ms(50.0), "ms");
        let p99 = e2e.latencies.ms(99.0);
        report.check(
            "multi",
            format!("{at} p99"),
            p99,
            "ms",
            "<= 50 ms",
            p99 <= 50.0,
        );
        if e2e.missing > 0 {
            report.num(
                "multi",
                format!("{at}: never arrived"),
                e2e.missing as f64,
                "",
            );
        }
    }
    drop(koala);

    // Each destination's rate limit is the bottleneck: 4,000 changes/s
    // arrive, Meta and Google may send 0.2 requests/s of 10,000 rows
    // (2,000/s), TikTok 2 requests/s of 1,000 rows (2,000/s).
    let (meta, google, tiktok) = (
        FakeMeta::start().await,
        fake_google::FakeGoogle::start().await,
        fake_tiktok::FakeTiktok::start().await,
    );
    let koala = Koala::start(ctx, &multi_setup(&meta, &google, &tiktok, [0.2, 0.2, 2.0])).await?;
    let target = koala.target(&ctx.http);
    let count = if ctx.opts.quick { 12_000 } else { 24_000 };
    let sent = paced(
        &target,
        4_000.0,
        count,
        |i| format!("f{i}"),
        "3 destinations, batch fill",
    )
    .await;
    let (_, tally) = ack_latencies(&sent);
    report.errors("multi", "batch fill load", &tally);
    let deadline = Instant::now() + Duration::from_secs(120);
    while (meta.members(META_AUDIENCE).len() < count
        || google.members(MULTI_GOOGLE_AUDIENCE).len() < count
        || tiktok.members(MULTI_TIKTOK_AUDIENCE).len() < count)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls = [
        (
            "meta",
            META_MAX_BATCH,
            meta.successful_requests()
                .iter()
                .map(|r| r.rows.len())
                .collect::<Vec<_>>(),
        ),
        (
            "google",
            10_000,
            google
                .successful_requests()
                .iter()
                .map(|r| r.members.len())
                .collect(),
        ),
        (
            "tiktok",
            fake_tiktok::MAX_ROWS,
            tiktok
                .mappings()
                .iter()
                .filter(|r| r.code == 0)
                .map(|r| r.rows)
                .collect(),
        ),
    ];
    for (d, max, rows) in calls {
        // The first call leaves at once (idle destination) and the last
        // carries what is left: the calls between them show the fill.
        let middle = rows.len().saturating_sub(2);
        let fill = if middle == 0 {
            0.0
        } else {
            rows[1..rows.len() - 1].iter().sum::<usize>() as f64 / (middle * max) as f64 * 100.0
        };
        let held: usize = rows.iter().sum();
        report.num(
            "multi",
            format!("{d}: calls ({held} rows)"),
            rows.len() as f64,
            "",
        );
        report.check(
            "multi",
            format!("{d}: batch fill while its rate limit is the bottleneck"),
            fill,
            "%",
            ">= 95%",
            fill >= 95.0,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- 3: batch efficiency

/// A destination allowed 1 request/s while changes arrive faster than one
/// a second: how full are the calls? The first call leaves at once on the
/// idle destination and is reported apart. Each load gets a fresh koala.
async fn bench_batch(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("== batch efficiency");
    for (count, rate) in ctx.plan.batch_loads {
        batch_run(ctx, report, count, rate).await?;
    }
    Ok(())
}

async fn batch_run(ctx: &Ctx, report: &mut Report, count: usize, rate: f64) -> anyhow::Result<()> {
    let rps = 1.0;
    let meta = FakeMeta::start().await;
    let koala = Koala::start(ctx, &meta_setup(&meta, rps, 2)).await?;
    let target = koala.target(&ctx.http);
    let label = format!("{}k @ {rate:.0}/s", count / 1000);
    let sent = paced(&target, rate, count, |i| format!("b{i}"), &label).await;
    let arrival_rate = sent.len() as f64 / sent_span(&sent).as_secs_f64();
    let settle = Instant::now();
    wait_for_members(&meta, count, Duration::from_secs(60)).await;
    let drained_after = settle.elapsed();
    let calls: Vec<usize> = meta
        .successful_requests()
        .iter()
        .map(|r| r.rows.len())
        .collect();
    let (_, tally) = ack_latencies(&sent);
    let load = BatchLoad {
        label,
        arrival_rate,
        rps,
        drained_after,
    };
    report_batch(report, &load, &calls, &tally);
    Ok(())
}

/// What a batch run sent, for its report.
struct BatchLoad {
    label: String,
    /// Measured: changes acked per second.
    arrival_rate: f64,
    rps: f64,
    drained_after: Duration,
}

fn sent_span(sent: &[Sent]) -> Duration {
    let first = sent.iter().map(|s| s.scheduled).min();
    let last = sent.iter().map(|s| s.acked).max();
    match (first, last) {
        (Some(a), Some(b)) if b > a => b - a,
        _ => Duration::from_secs(1),
    }
}

fn report_batch(report: &mut Report, load: &BatchLoad, calls: &[usize], tally: &Tally) {
    let s = "batch";
    let name = |what: &str| format!("{}: {what}", load.label);
    report.num(s, name("acked per second"), load.arrival_rate, "/s");
    report.errors(s, &load.label, tally);
    let Some((&first, rest)) = calls.split_first() else {
        report.text(s, name("calls"), "none reached the fake Meta".into());
        return;
    };
    let rows: usize = rest.iter().sum();
    report.num(
        s,
        name("first call rows (idle, leaves at once)"),
        first as f64,
        "",
    );
    report.num(s, name("calls after the first"), rest.len() as f64, "");
    let drained = load.drained_after.as_secs_f64();
    report.num(s, name("all delivered, after the last ack"), drained, "s");
    if rest.is_empty() || rows == 0 {
        return;
    }
    let per_10k = rest.len() as f64 * 10_000.0 / rows as f64;
    report.num(
        s,
        name("calls per 10,000 changes, after the first"),
        per_10k,
        "",
    );
    let fill = rows as f64 / rest.len() as f64 / META_MAX_BATCH as f64 * 100.0;
    // At `rps` requests/s a call can only carry what arrived meanwhile.
    let best = (load.arrival_rate / load.rps / META_MAX_BATCH as f64 * 100.0).min(100.0);
    if best >= 100.0 {
        // The rate limit is the bottleneck: the issue's target applies.
        report.check(
            s,
            name("mean batch fill, after the first"),
            fill,
            "%",
            ">= 95%",
            fill >= 95.0,
        );
    } else {
        // Arrivals are the bottleneck: no call can be full; what counts is
        // that each carries everything that arrived.
        report.num(s, name("mean batch fill, after the first"), fill, "%");
        report.num(s, name("best fill this arrival rate allows"), best, "%");
        let of_best = fill / best * 100.0;
        report.check(
            s,
            name("fill / best possible"),
            of_best,
            "%",
            ">= 95%",
            of_best >= 95.0,
        );
    }
}

// ---------------------------------------------------------------- prune

/// A metric's value summed over its label sets (0 when absent).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    match http.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// A store at `dir/koala.db` holding rows retention prunes: events and
/// dedupe keys that arrived 100 days ago (the keys random over the key
/// space, as real ones are), and sync rows of non-members a destination
/// confirmed out. Written with SQL in bulk (the schema is koala's own).
async fn preload_old_rows(
    dir: &std::path::Path,
    (events, keys, sync): (u64, u64, u64),
) -> anyhow::Result<()> {
    let url = format!("sqlite://{}", dir.join("koala.db").display());
    let store = koala::store::open(&url)
        .await
        .context("creating the store")?;
    let db = sqlx::SqlitePool::connect(&url).await?;
    let old = koala::store::now_ms() - 100 * 24 * 3600 * 1000;
    let rows = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)";
    sqlx::query(&format!(
        "{rows} INSERT INTO events (event_id, person_id, audience_id, source, kind, occurred_at, received_at, outcome, detail)
         SELECT i, 1 + (i * 7919) % 200000, NULL, 'reporting_webhook', 'email.opened', $2 + i, $2 + i, 'recorded',
                '{{\"delivery_id\":\"d\"}}' FROM n"
    ))
    .bind(events as i64)
    .bind(old)
    .execute(&db)
    .await?;
    sqlx::query(&format!(
        "{rows} INSERT INTO received (dedupe_key, received_at)
         SELECT 'reporting:' || lower(hex(randomblob(13))), $2 + i FROM n"
    ))
    .bind(keys as i64)
    .bind(old)
    .execute(&db)
    .await?;
    sqlx::query(&format!(
        "{rows} INSERT INTO sync_state (destination, audience_id, person_id, desired, desired_at, desired_received_at,
                                         acked, acked_at, pending)
         SELECT 'old-destination', 999, i, FALSE, $2, $2, FALSE, $2, FALSE FROM n"
    ))
    .bind(sync as i64)
    .bind(old)
    .execute(&db)
    .await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&db)
        .await?;
    db.close().await;
    drop(store);
    Ok(())
}

/// One koala on a copy of the preloaded store, under the ingest load.
struct PruneRun {
    saturation: Saturation,
    commit: Option<GroupCommit>,
    /// Bytes koala wrote per accepted webhook at saturation (pruning's
    /// own writes included when it runs).
    written_per_webhook: Option<f64>,
    paced_rate: f64,
    latencies: Latencies,
    tally: Tally,
    /// Rows pruning deleted from the start of the warm-up to the end.
    pruned: f64,
    /// A pass ended before the load did (then part of it ran unpruned).
    pass_ended: bool,
}

/// What each run prunes: its name and its `[retention]` keys. Off: no
/// pass within the run. The others: the first pass a second after start,
/// the default batch sizes, and the other tables' retention so long that
/// the pass finds nothing old there.
const PRUNE_RUNS: [(&str, &str); 4] = [
    ("pruning off", "interval = \"3650d\""),
    (
        "pruning events",
        "interval = \"1s\"\ncompact_acknowledged_non_members = false\ndedupe_keys = \"3650d\"",
    ),
    (
        "pruning dedupe keys",
        "interval = \"1s\"\ncompact_acknowledged_non_members = false\nevents = \"3650d\"",
    ),
    (
        "pruning sync rows",
        "interval = \"1s\"\nevents = \"3650d\"\ndedupe_keys = \"3650d\"",
    ),
];

async fn prune_run(
    ctx: &Ctx,
    template: &std::path::Path,
    (who, retention): (&str, &str),
    paced_rate: Option<f64>,
) -> anyhow::Result<PruneRun> {
    let pruning = paced_rate.is_some();
    let dir = tempfile::tempdir().context("temp dir")?;
    std::fs::copy(template.join("koala.db"), dir.path().join("koala.db"))?;
    let setup = KoalaSetup {
        retention: retention.into(),
        ..Default::default()
    };
    let koala = Koala::start_in(ctx, &setup, dir).await?;
    let base = koala.base.clone();
    let started = Instant::now();
    loop {
        let pruned = metric_sum(
            &metrics_text(&ctx.http, &base).await,
            "koala_store_pruned_rows_total",
        );
        if (pruning && pruned > 0.0) || (!pruning && started.elapsed() > Duration::from_secs(1)) {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!(
                "koala did not start pruning within 20 s:\n{}",
                koala.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_start = metric_sum(
        &metrics_text(&ctx.http, &base).await,
        "koala_store_pruned_rows_total",
    );
    let target = koala.target(&ctx.http);
    let people = People::new("p");
    saturate(
        &target,
        &people,
        ctx.plan.warmup,
        &format!("{who}: warm-up"),
    )
    .await;
    let before = GroupCommit::read(&ctx.http, Some(&base)).await;
    let written_before = written_bytes(koala.child.id());
    let saturation = saturate(
        &target,
        &people,
        ctx.plan.saturate,
        &format!("{who}: saturation"),
    )
    .await;
    let written_after = written_bytes(koala.child.id());
    let after = GroupCommit::read(&ctx.http, Some(&base)).await;
    eprintln!("{who}: {:.0} webhooks/s at saturation", saturation.rate());
    let rate = paced_rate.unwrap_or(saturation.rate() * 0.5).max(1.0);
    let count = (rate * ctx.plan.paced.as_secs_f64()).ceil() as usize;
    let label = format!("{who}: paced ({rate:.0}/s)");
    let p = people.clone();
    let sent = paced(&target, rate, count, move |_| p.next(), &label).await;
    let (latencies, tally) = ack_latencies(&sent);
    let text = metrics_text(&ctx.http, &base).await;
    Ok(PruneRun {
        written_per_webhook: written_after
            .zip(written_before)
            .map(|(a, b)| (a - b) as f64 / saturation.tally.ok.max(1) as f64),
        commit: after.zip(before).map(|(a, b)| a.since(b)),
        saturation,
        paced_rate: rate,
        latencies,
        tally,
        pruned: metric_sum(&text, "koala_store_pruned_rows_total") - at_start,
        pass_ended: metric_sum(&text, "koala_store_prune_last_pass_timestamp_seconds") > 0.0,
    })
}

/// Ingest while pruning runs, beside the same ingest with pruning off, on
/// the same preloaded store (so both write into b-trees of one size).
async fn bench_prune(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("== ingest while pruning");
    if ctx.opts.store.is_some() {
        report.text(
            "prune",
            "ingest while pruning",
            "skipped: needs the SQLite store".into(),
        );
        return Ok(());
    }
    let (events, keys, sync) = ctx.plan.prune_preload;
    let template = tempfile::tempdir().context("temp dir")?;
    let loading = Instant::now();
    preload_old_rows(template.path(), ctx.plan.prune_preload).await?;
    eprintln!(
        "preloaded {events} events, {keys} keys, {sync} sync rows in {:.1} s",
        loading.elapsed().as_secs_f64()
    );
    report.text(
        "prune",
        "old rows preloaded (events, dedupe keys, sync rows)",
        format!("{events} / {keys} / {sync}"),
    );
    let off = prune_run(ctx, template.path(), PRUNE_RUNS[0], None).await?;
    let off_rate = off.saturation.rate();
    let paced_rate = off.paced_rate;
    let mut runs = vec![(PRUNE_RUNS[0].0, off)];
    for run in &PRUNE_RUNS[1..] {
        let result = prune_run(ctx, template.path(), *run, Some(paced_rate)).await?;
        runs.push((run.0, result));
    }
    for (who, run) in &runs {
        report.num(
            "prune",
            format!("{who}: accepted webhooks/s at saturation"),
            run.saturation.rate(),
            "/s",
        );
        report.errors(
            "prune",
            &format!("{who}: saturation"),
            &run.saturation.tally,
        );
        if let Some(commit) = run.commit {
            report.text(
                "prune",
                format!("{who}: group commit (webhooks × time)"),
                commit.describe(),
            );
        }
        if let Some(bytes) = run.written_per_webhook {
            report.num(
                "prune",
                format!("{who}: bytes written per webhook at saturation"),
                bytes,
                "B",
            );
        }
        let at = format!("{who}: ack @ {:.0}/s", run.paced_rate);
        report.num("prune", format!("{at} p50"), run.latencies.ms(50.0), "ms");
        report.num("prune", format!("{at} p99"), run.latencies.ms(99.0), "ms");
        report.errors("prune", &at, &run.tally);
        if *who == PRUNE_RUNS[0].0 {
            continue;
        }
        report.num(
            "prune",
            format!("{who}: ingest / ingest with pruning off"),
            run.saturation.rate() / off_rate * 100.0,
            "%",
        );
        report.num(
            "prune",
            format!("{who}: rows pruned during the load"),
            run.pruned,
            "",
        );
        report.text(
            "prune",
            format!("{who}: pruning ran through the whole load"),
            if run.pass_ended {
                "no: the pass ended first".into()
            } else {
                "yes".into()
            },
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- warehouse

/// The PostgreSQL warehouse destination (issue 10: ≥ 20,000 membership
/// changes/s into its table). Two figures:
/// - direct: the destination alone, as the engine calls it (batches of
///   its default `max_batch`, its default 2 in flight), adds, then
///   attribute updates, then removes of the same people;
/// - through koala: webhooks are taken while the table is missing (the
///   destination pauses, `create_tables = false`, and keeps the work);
///   then the tables are created and the destination resumed, and the
///   time until the table holds everyone is the engine's drain rate
///   (claim from SQLite, send, acknowledge).
async fn bench_warehouse(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    use futures::StreamExt;
    use koala::audiences::{AudienceDef, AudienceMode, SyncOp};
    use koala::destinations::postgres_table::{
        schema, PostgresConfig, PostgresDestination, DELIVERY,
    };
    use koala::destinations::{Destination, MapConfig, Mapping, SendOutcome, SendTarget};
    eprintln!("== warehouse (PostgreSQL destination)");
    let s = "warehouse";
    let url = std::env::var("KOALA_BENCH_WAREHOUSE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = match sqlx::PgPool::connect(&url).await {
        Ok(p) => p,
        Err(e) => {
            report.text(
                s,
                "skipped",
                format!("PostgreSQL unreachable at {} ({e})", redact(&url)),
            );
            return Ok(());
        }
    };
    let map: MapConfig = toml::from_str(
        "ltv = { from = \"ltv\", type = \"number\" }\nplan = \"plan\"\nlast_order_at = { from = \"last_order\", type = \"timestamp\" }",
    )?;
    let mapping = Mapping::resolve(&[], true, &[&map]).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    let fresh = |schema: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(&pool)
                .await
        }
    };

    // Direct.
    let rows = if ctx.opts.quick { 50_000 } else { 200_000 };
    fresh("koala_bench_direct").await?;
    let dest = PostgresDestination::new(
        "wh",
        PostgresConfig::new(url.clone(), "koala_bench_direct"),
        DELIVERY,
    )?;
    let audience = AudienceDef {
        id: 1,
        name: AUDIENCE.into(),
        segment_id: SEGMENT as i64,
        mode: AudienceMode::Mirror,
        destinations: vec![],
    };
    let now_ms = unix_now() * 1000;
    let people = |ltv: f64| -> Vec<koala::person::PersonRecord> {
        (0..rows)
            .map(|i| {
                let mut attributes = serde_json::Map::new();
                attributes.insert("ltv".into(), json!(ltv + i as f64));
                attributes.insert("plan".into(), json!("gold"));
                attributes.insert("last_order".into(), json!(1_764_579_600));
                koala::person::PersonRecord {
                    person_id: i as i64,
                    customer_id: Some(format!("w{i}")),
                    cio_id: Some(format!("cw{i}")),
                    email: Some(format!("w{i}@example.com")),
                    phone: None,
                    attributes,
                }
            })
            .collect()
    };
    let changed_at = vec![now_ms; DELIVERY.max_batch];
    for (op, ltv) in [
        (SyncOp::Add, 1.0),
        (SyncOp::Update, 2.0),
        (SyncOp::Remove, 2.0),
    ] {
        let people = people(ltv);
        let started = Instant::now();
        let outcomes: Vec<SendOutcome> = futures::stream::iter(people.chunks(DELIVERY.max_batch))
            .map(|chunk| {
                let target = SendTarget {
                    audience: &audience,
                    platform_audience_id: AUDIENCE,
                    mapping: &mapping,
                    changed_at: &changed_at[..chunk.len()],
                };
                let dest = &dest;
                async move { dest.send(&target, op, chunk).await }
            })
            .buffer_unordered(DELIVERY.concurrency)
            .collect()
            .await;
        let took = started.elapsed().as_secs_f64();
        if let Some(bad) = outcomes
            .iter()
            .find(|o| !matches!(o, SendOutcome::Success { .. }))
        {
            report.text(
                s,
                format!("direct {}", op.as_str()),
                format!("failed: {bad:?}"),
            );
            continue;
        }
        let rate = rows as f64 / took;
        report.check(
            s,
            format!(
                "direct: {} {}k rows, changes per second",
                op.as_str(),
                rows / 1000
            ),
            rate,
            "/s",
            ">= 20,000",
            rate >= 20_000.0,
        );
    }
    let history: i64 =
        sqlx::query_scalar("SELECT count(*) FROM \"koala_bench_direct\".audience_changes")
            .fetch_one(&pool)
            .await?;
    report.num(s, "direct: history rows written", history as f64, "");
    fresh("koala_bench_direct").await?;

    // Through koala.
    let count = if ctx.opts.quick { 20_000 } else { 100_000 };
    fresh("koala_bench_engine").await?;
    let setup = KoalaSetup {
        destination: format!(
            r#"
[[destinations]]
name = "wh"
type = "postgres"
url = {url}
schema = "koala_bench_engine"
create_tables = false
map = {{ first_name = "first_name", last_name = "last_name" }}
"#,
            url = toml::Value::String(url.clone())
        ),
        sync: r#"{ destination = "wh" }"#.into(),
        ..Default::default()
    };
    let koala = Koala::start(ctx, &setup).await?;
    let target = koala.target(&ctx.http);
    let sent = paced(
        &target,
        8_000.0,
        count,
        |i| format!("e{i}"),
        "warehouse intake",
    )
    .await;
    let (_, tally) = ack_latencies(&sent);
    report.errors(s, "warehouse intake", &tally);
    let mut engine_config = PostgresConfig::new(url.clone(), "koala_bench_engine");
    engine_config.create_tables = false;
    let engine_map: MapConfig =
        toml::from_str("first_name = \"first_name\"\nlast_name = \"last_name\"")?;
    let engine_mapping =
        Mapping::resolve(&[], true, &[&engine_map]).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    sqlx::query("CREATE SCHEMA \"koala_bench_engine\"")
        .execute(&pool)
        .await?;
    for sql in [
        schema::members_table(&engine_config, &engine_mapping).create_sql(),
        schema::history_table(&engine_config).create_sql(),
    ] {
        sqlx::query(&sql).execute(&pool).await?;
    }
    let resumed = Instant::now();
    let answer = ctx
        .http
        .post(format!("{}/v1/destinations/wh/resume", koala.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    if !answer.status().is_success() {
        bail!("resume answered {}", answer.status());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut held = 0i64;
    while Instant::now() < deadline {
        held = sqlx::query_scalar("SELECT count(*) FROM \"koala_bench_engine\".audience_members")
            .fetch_one(&pool)
            .await?;
        if held as usize >= sent.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = resumed.elapsed().as_secs_f64();
    if (held as usize) < sent.len() {
        report.text(
            s,
            "through koala",
            format!("only {held} of {} rows after 120 s", sent.len()),
        );
    } else {
        let rate = held as f64 / took;
        report.check(
            s,
            format!(
                "through koala: {}k pending entries drained, changes per second",
                held / 1000
            ),
            rate,
            "/s",
            ">= 20,000",
            rate >= 20_000.0,
        );
    }
    drop(koala);
    fresh("koala_bench_engine").await?;
    Ok(())
}

// ---------------------------------------------------------------- 4: resync

/// Full resync of segment 42 from the fake App API: `POST
/// /v1/audiences/{name}/resync` → 202 `{"id":…}`, then `GET /v1/resyncs/{id}`
/// until its phase is `done` or `failed` (a koala without the endpoint, 404,
/// is reported as "not yet available"). A fresh koala per size keeps VmHWM
/// meaningful; koala has no destination here, so this is the App API →
/// store path alone. Then the two runs with phone lookups (`bench_enrich`,
/// `bench_enrich_replace`).
async fn bench_resync(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("== resync");
    let runs = &ctx.opts.resync_runs;
    let sizes: &[u64] = if runs.contains("sizes") {
        ctx.plan.resync_sizes
    } else {
        &[]
    };
    for &size in sizes {
        if !resync_size(ctx, report, size).await? {
            println!("resync: not yet available");
            report.text(
                "resync",
                "resync",
                "not yet available (POST /v1/audiences/{name}/resync answered 404)".into(),
            );
            return Ok(());
        }
    }
    if runs.contains("lookups") {
        bench_enrich(ctx, report).await?;
    }
    if runs.contains("replace") {
        bench_enrich_replace(ctx, report).await?;
    }
    Ok(())
}

fn size_label(size: u64) -> String {
    if size >= 1_000_000 {
        format!("{}M", size / 1_000_000)
    } else {
        format!("{}k", size / 1_000)
    }
}

/// koala with a Meta destination on Meta's default identifiers (phone
/// among them, which the membership listing lacks, so every new member is
/// looked up), against the fakes, at `app_api_rps` (koala's limit).
async fn enrich_koala(
    ctx: &Ctx,
    api: &FakeAppApi,
    meta: &FakeMeta,
    app_api_rps: u32,
) -> anyhow::Result<Koala> {
    // Meta's default concurrency (2); the fake answers at once.
    let mut setup = meta_setup(meta, 1000.0, 2);
    setup.customerio = format!(
        "app_api_key = \"{FAKE_APP_API_KEY}\"\napp_api_base_url = \"{}\"\napp_api_requests_per_second = {app_api_rps}",
        api.base_url()
    );
    Koala::start(ctx, &setup).await
}

/// (a) A first resync of members koala has never seen, with phone
/// lookups at the App API's documented 10 requests/s. The floor is what
/// the App API allows: (membership pages + bulk lookups) / 10 per second.
async fn bench_enrich(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let size = ctx.plan.enrich_size;
    let api = FakeAppApi::start().await;
    api.set_generated_segment_with_phones(SEGMENT, size, "m");
    let meta = FakeMeta::start().await;
    let koala = enrich_koala(ctx, &api, &meta, APP_API_RPS as u32).await?;
    let label = size_label(size);
    let name = |what: &str| format!("{label} all new + phone lookups: {what}");
    let limit = ctx.plan.enrich_timeout;
    let Some(run) = run_resync(
        ctx,
        &koala,
        size,
        "",
        limit,
        &format!("resync {label} + phones"),
    )
    .await?
    else {
        return Ok(());
    };
    let section = "resync";
    let pages = api.pages_served();
    let bulk = api.bulk_lookups().len();
    let floor = (pages + bulk) as f64 / APP_API_RPS;
    report_lookups(report, &run, &name(""));
    report.num(
        section,
        name("membership pages + bulk lookups"),
        (pages + bulk) as f64,
        "",
    );
    report.num(
        section,
        name("App API floor ((pages + lookups) / 10 req/s)"),
        floor,
        "s",
    );
    if run.phase == "done" {
        report.num(section, name("wall"), run.wall.as_secs_f64(), "s");
        let ratio = run.wall.as_secs_f64() / floor;
        report.check(
            section,
            name("wall / floor"),
            ratio,
            "x",
            "<= 1.5x",
            ratio <= 1.5,
        );
    } else {
        eprintln!("koala's log (last lines):\n{}", koala.log_tail());
        report.text(section, name("wall"), run.summary());
    }
    report.num_opt(
        section,
        name("peak RSS (VmHWM)"),
        koala.memory_mb("VmHWM"),
        "MB",
    );
    Ok(())
}

/// (b) 1M new members with phone lookups and a full replace to Meta
/// (`?replace=meta`), at a raised App API rate, for koala's peak memory;
/// then `GET /v1/audiences` timed at that size.
async fn bench_enrich_replace(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let size = plan.enrich_replace_size;
    let rps = plan.enrich_replace_rps;
    let api = FakeAppApi::start().await;
    api.set_generated_segment_with_phones(SEGMENT, size, "m");
    api.set_rate_limit(Some(rps as usize));
    api.set_keep_log(false);
    let meta = FakeMeta::start().await;
    // The platform audience exists, with someone koala never had.
    meta.set_members(META_AUDIENCE, &["stale-before-koala"]);
    let koala = enrich_koala(ctx, &api, &meta, rps).await?;
    let label = size_label(size);
    let name = |what: &str| format!("{label} + phones + replace: {what}");
    let section = "resync";
    report.text(
        section,
        name("App API rate used (koala and the fake)"),
        format!("{rps} req/s"),
    );
    let limit = plan.enrich_replace_timeout;
    let Some(run) = run_resync(
        ctx,
        &koala,
        size,
        "?replace=meta",
        limit,
        &format!("resync {label} + phones + replace"),
    )
    .await?
    else {
        return Ok(());
    };
    report_lookups(report, &run, &name(""));
    if run.phase == "done" {
        report.num(section, name("wall"), run.wall.as_secs_f64(), "s");
        let floor = (api.pages_served() + api.bulk_lookups().len()) as f64 / rps as f64;
        report.num(section, name("App API floor at that rate"), floor, "s");
    } else {
        eprintln!("koala's log (last lines):\n{}", koala.log_tail());
        report.text(section, name("wall"), run.summary());
    }
    let replaced = &run.last["replaced"][0];
    report.num(
        section,
        name("replace rows accepted"),
        replaced["rows"].as_f64().unwrap_or(f64::NAN),
        "",
    );
    match koala.memory_mb("VmHWM") {
        Some(mb) => report.check(
            section,
            name("peak RSS (VmHWM)"),
            mb,
            "MB",
            "<= 150 MB",
            mb <= 150.0,
        ),
        None => report.num_opt(section, name("peak RSS (VmHWM)"), None, "MB"),
    }
    // GET /v1/audiences with a million members.
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let response = ctx
            .http
            .get(format!("{}/v1/audiences", koala.base))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        let ok = response.status().is_success();
        let _ = response.bytes().await?;
        if !ok {
            bail!("GET /v1/audiences failed");
        }
        times.push(started.elapsed());
    }
    let l = Latencies::new(times);
    report.check(
        section,
        format!("GET /v1/audiences at {label} members: median"),
        l.ms(50.0),
        "ms",
        "< 50 ms",
        l.ms(50.0) < 50.0,
    );
    report.num(
        section,
        format!("GET /v1/audiences at {label} members: max of 20"),
        l.ms(100.0),
        "ms",
    );
    Ok(())
}

/// The lookup counts a run reported.
fn report_lookups(report: &mut Report, run: &ResyncRun, prefix: &str) {
    let l = &run.last["lookups"];
    let n = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    report.num(
        "resync",
        format!("{prefix}people looked up"),
        n(&l["found"]),
        "",
    );
    report.num(
        "resync",
        format!("{prefix}not looked up (any reason)"),
        n(&run.last["profiles_failed"]),
        "",
    );
}

/// One segment size: all-new resync, then an unchanged one. False when
/// koala has no resync endpoint.
async fn resync_size(ctx: &Ctx, report: &mut Report, size: u64) -> anyhow::Result<bool> {
    let api = FakeAppApi::start().await;
    api.set_generated_segment(SEGMENT, size, "m");
    let setup = KoalaSetup {
        customerio: format!(
            "app_api_key = \"{FAKE_APP_API_KEY}\"\napp_api_base_url = \"{}\"",
            api.base_url()
        ),
        ..KoalaSetup::default()
    };
    let koala = Koala::start(ctx, &setup).await?;
    let label = if size >= 1_000_000 {
        format!("{}M", size / 1_000_000)
    } else {
        format!("{}k", size / 1_000)
    };
    let limit = resync_limit(&ctx.plan, size);
    let Some(first) = run_resync(
        ctx,
        &koala,
        size,
        "",
        limit,
        &format!("resync {label}, all new"),
    )
    .await?
    else {
        return Ok(false);
    };
    let peak_first = koala.memory_mb("VmHWM");
    let is_1m = size >= 1_000_000;
    let section = "resync";
    let name = |what: &str| format!("{label}: {what}");
    first.report(report, &name("all new, wall"), is_1m.then_some(60.0));
    report.num_opt(
        section,
        name("peak RSS after all-new (VmHWM)"),
        peak_first,
        "MB",
    );
    if first.phase != "done" {
        eprintln!("koala's log (last lines):\n{}", koala.log_tail());
        let why = "not run: the all-new resync did not finish".to_owned();
        report.text(section, name("unchanged"), why);
        return Ok(true);
    }
    let Some(second) = run_resync(
        ctx,
        &koala,
        size,
        "",
        limit,
        &format!("resync {label}, unchanged"),
    )
    .await?
    else {
        return Ok(false);
    };
    let peak = koala.memory_mb("VmHWM");
    match peak {
        Some(mb) if is_1m => report.check(
            section,
            name("peak RSS after both runs (VmHWM)"),
            mb,
            "MB",
            "<= 250 MB",
            mb <= 250.0,
        ),
        _ => report.num_opt(
            section,
            name("peak RSS after both runs (VmHWM)"),
            peak,
            "MB",
        ),
    }
    second.report(report, &name("unchanged, wall"), None);
    let floor = size.div_ceil(RESYNC_PAGE) as f64 / APP_API_RPS;
    report.num(
        section,
        name("unchanged floor (pages / 10 req/s)"),
        floor,
        "s",
    );
    if second.phase == "done" {
        let ratio = second.wall.as_secs_f64() / floor;
        report.check(
            section,
            name("unchanged wall / floor"),
            ratio,
            "x",
            "<= 2x",
            ratio <= 2.0,
        );
    }
    Ok(true)
}

struct ResyncRun {
    wall: Duration,
    phase: String,
    members_seen: u64,
    last: Value,
}

impl ResyncRun {
    /// One line for a run that did not finish.
    fn summary(&self) -> String {
        let job = &self.last;
        let mut text = format!(
            "{} after {:.1} s ({} seen, {} pages)",
            self.phase,
            self.wall.as_secs_f64(),
            self.members_seen,
            job["pages_fetched"],
        );
        if let Some(e) = job["error"].as_str() {
            text.push_str(&format!(", error: {e}"));
        }
        text
    }

    fn report(&self, report: &mut Report, name: &str, limit_secs: Option<f64>) {
        let section = "resync";
        if self.phase != "done" {
            let target = limit_secs.map(|l| format!("<= {l:.0} s"));
            let outcome = target.as_deref().map(|t| (t, false));
            report.push(
                section,
                name.to_owned(),
                Shown::Text(self.summary()),
                outcome,
            );
            return;
        }
        let secs = self.wall.as_secs_f64();
        match limit_secs {
            Some(limit) => report.check(
                section,
                name,
                secs,
                "s",
                &format!("<= {limit:.0} s"),
                secs <= limit,
            ),
            None => report.num(section, name, secs, "s"),
        }
        report.num(
            section,
            format!("{name}: members seen"),
            self.members_seen as f64,
            "",
        );
    }
}

fn resync_limit(plan: &Plan, size: u64) -> Duration {
    if size >= 1_000_000 {
        plan.resync_timeout_1m
    } else {
        plan.resync_timeout
    }
}

/// Triggers a resync (`query` e.g. `?replace=meta`) and polls it to an
/// end, for at most `limit`. None on 404.
async fn run_resync(
    ctx: &Ctx,
    koala: &Koala,
    size: u64,
    query: &str,
    limit: Duration,
    label: &str,
) -> anyhow::Result<Option<ResyncRun>> {
    let started = Instant::now();
    let url = format!("{}/v1/audiences/{AUDIENCE}/resync{query}", koala.base);
    let response = ctx
        .http
        .post(url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({}))
        .send()
        .await?;
    let status = response.status();
    if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
        return Ok(None);
    }
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST resync answered {status}: {body}");
    }
    if status != StatusCode::ACCEPTED {
        eprintln!("{label}: POST resync answered {status}, not 202: {body}");
    }
    let id = match &body["id"] {
        Value::String(s) => s.clone(),
        Value::Null => bail!("POST resync answered 202 without an id: {body}"),
        other => other.to_string(),
    };
    // Members seen, then (with lookups) people looked up or accounted for.
    let bar = counter(size, label);
    let deadline = started + limit;
    let run = loop {
        let url = format!("{}/v1/resyncs/{id}", koala.base);
        let job: Value = ctx
            .http
            .get(url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?
            .json()
            .await?;
        let phase = job["phase"].as_str().unwrap_or("unknown").to_owned();
        let members_seen = job["members_seen"].as_u64().unwrap_or(0);
        let queued = job["lookups"]["queued"].as_u64().unwrap_or(0);
        if queued > 0 {
            let done = job["profiles_fetched"].as_u64().unwrap_or(0)
                + job["profiles_failed"].as_u64().unwrap_or(0);
            bar.set_length(size * 2);
            bar.set_position(members_seen + done);
        } else {
            bar.set_position(members_seen);
        }
        let timed_out = Instant::now() > deadline;
        if phase == "done" || phase == "failed" || timed_out {
            let phase = if timed_out && phase != "done" {
                format!("timed out ({phase})")
            } else {
                phase
            };
            break ResyncRun {
                wall: started.elapsed(),
                phase,
                members_seen,
                last: job,
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bar.finish_and_clear();
    eprintln!(
        "{label}: {} in {:.1} s, {} members seen",
        run.phase,
        run.wall.as_secs_f64(),
        run.members_seen
    );
    Ok(Some(run))
}

// ---------------------------------------------------------------- report

enum Shown {
    Num(f64, &'static str),
    Text(String),
}

struct Figure {
    section: &'static str,
    name: String,
    value: Shown,
    target: Option<String>,
    met: Option<bool>,
}

#[derive(Default)]
struct Report {
    figures: Vec<Figure>,
}

impl Report {
    fn push(
        &mut self,
        section: &'static str,
        name: String,
        value: Shown,
        target: Option<(&str, bool)>,
    ) {
        self.figures.push(Figure {
            section,
            name,
            value,
            target: target.map(|(t, _)| t.to_owned()),
            met: target.map(|(_, m)| m),
        });
    }

    fn num(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) {
        self.push(section, name.into(), Shown::Num(value, unit), None);
    }

    fn num_opt(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        value: Option<f64>,
        unit: &'static str,
    ) {
        match value {
            Some(v) => self.num(section, name, v, unit),
            None => self.text(section, name, "unavailable (no /proc status)".into()),
        }
    }

    fn check(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        target: &str,
        met: bool,
    ) {
        self.push(
            section,
            name.into(),
            Shown::Num(value, unit),
            Some((target, met)),
        );
    }

    fn text(&mut self, section: &'static str, name: impl Into<String>, text: String) {
        self.push(section, name.into(), Shown::Text(text), None);
    }

    /// Failed requests matter: a figure built on errors would mislead.
    fn errors(&mut self, section: &'static str, what: &str, tally: &Tally) {
        if tally.errors > 0 {
            let first = tally.first_error.as_deref().unwrap_or("");
            self.text(
                section,
                format!("{what}: failed requests"),
                format!("{} (first: {first})", tally.errors),
            );
        }
    }

    fn print(&self, ctx: &Ctx) {
        if self.figures.is_empty() {
            return;
        }
        let machine = Machine::read();
        println!();
        println!(
            "koala benchmark ({}) — store: {} — {} CPUs, {}, {:.1} GiB",
            if ctx.opts.quick { "quick" } else { "full" },
            ctx.opts
                .store
                .as_deref()
                .map_or("sqlite in a temp dir".to_owned(), redact),
            machine.cpus,
            machine.cpu_model,
            machine.memory_gib
        );
        println!();
        println!(
            "{:<8} {:<62} {:>14}  {:<11} result",
            "section", "figure", "value", "target"
        );
        println!("{}", "-".repeat(108));
        for f in &self.figures {
            let result = match f.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            };
            let target = f.target.as_deref().unwrap_or("");
            match &f.value {
                Shown::Num(v, unit) => {
                    println!(
                        "{:<8} {:<62} {:>14}  {target:<11} {result}",
                        f.section,
                        f.name,
                        show(*v, unit)
                    )
                }
                Shown::Text(t) => println!(
                    "{:<8} {:<62} {t:>14}  {target:<11} {result}",
                    f.section, f.name
                ),
            }
        }
    }

    fn to_json(&self, ctx: &Ctx) -> Value {
        let machine = Machine::read();
        let figures: Vec<Value> = self
            .figures
            .iter()
            .map(|f| {
                let (value, unit) = match &f.value {
                    Shown::Num(v, unit) => (json!(v.is_finite().then_some(*v)), json!(unit)),
                    Shown::Text(t) => (json!(t), Value::Null),
                };
                json!({
                    "section": f.section,
                    "name": f.name,
                    "value": value,
                    "unit": unit,
                    "target": f.target,
                    "met": f.met,
                })
            })
            .collect();
        json!({
            "mode": if ctx.opts.quick { "quick" } else { "full" },
            "store": ctx.opts.store.as_deref().map_or("sqlite (temp dir)".to_owned(), redact),
            "machine": {
                "cpus": machine.cpus,
                "cpu_model": machine.cpu_model,
                "memory_gib": machine.memory_gib,
            },
            "figures": figures,
        })
    }
}

fn show(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    match unit {
        "/s" => format!("{v:.0}/s"),
        "ms" => format!("{v:.2} ms"),
        "µs" => format!("{v:.1} µs"),
        "s" => format!("{v:.2} s"),
        "%" => format!("{v:.1}%"),
        "MB" => format!("{v:.1} MB"),
        "B" => format!("{v:.0} B"),
        "x" => format!("{v:.2}x"),
        _ if v.fract() == 0.0 => format!("{v:.0}"),
        _ => format!("{v:.2}"),
    }
}

struct Machine {
    cpus: usize,
    cpu_model: String,
    memory_gib: f64,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: f64 = meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0);
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_gib: mem_kb / 1024.0 / 1024.0,
        }
    }
}
