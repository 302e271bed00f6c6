//! The `koala` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "koala",
    version,
    about = "Keeps ad-platform and warehouse audiences in step with Customer.io segments",
    long_about = "koala receives Customer.io segment and reporting webhooks, keeps audience \
membership durably and in Customer.io's event order, and pushes add/remove updates to \
destinations such as Meta Custom Audiences in batches, within their limits.\n\n\
Configuration is a TOML file; any key can be overridden by an environment variable \
KOALA_<SECTION>__<KEY> (for example KOALA_SERVER__LISTEN=0.0.0.0:8080), and secrets can be \
written as ${ENV_VAR} references."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: webhooks in, admin API, delivery to destinations.
    Serve {
        /// Path to the TOML config file.
        #[arg(long, short, env = "KOALA_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and print every problem with its key; exit 1 on error.
    Check {
        #[arg(long, short, env = "KOALA_CONFIG")]
        config: PathBuf,
        /// Also read each destination's side without changing it: a
        /// warehouse table's columns against the mappings that write it.
        /// Nothing is sent and nothing is created.
        #[arg(long)]
        online: bool,
    },
    /// Play Customer.io against a running koala: send signed entry (and some
    /// exit) webhooks for made-up people, then print the audience as koala
    /// holds it. For trying koala out and checking a deployment's wiring.
    Simulate {
        #[arg(long, short, env = "KOALA_CONFIG")]
        config: PathBuf,
        /// How many people enter the segment.
        #[arg(long, default_value_t = 1000)]
        people: usize,
        /// How many of them exit again afterwards.
        #[arg(long, default_value_t = 100)]
        exits: usize,
        /// The audience whose segment to use (default: the first one).
        #[arg(long)]
        audience: Option<String>,
        /// koala's base URL, if not reachable at server.listen.
        #[arg(long)]
        url: Option<String>,
    },
    /// Make an audience (and every destination it syncs to) exactly equal to
    /// its Customer.io segment, read from the App API. Asks the running koala
    /// (server.listen and server.admin_token from the config) to run the
    /// resync, shows its progress and prints a summary.
    Resync {
        /// The audience's name, as in the config.
        audience: String,
        #[arg(long, short, env = "KOALA_CONFIG")]
        config: PathBuf,
        /// Only report what would change (counts and masked examples).
        #[arg(long)]
        dry_run: bool,
        /// Afterwards, replace this destination's whole platform audience
        /// with koala's members (Meta: `usersreplace`). Everything the
        /// platform audience held before is dropped. Repeatable.
        #[arg(long, value_name = "DEST", conflicts_with = "dry_run")]
        replace: Vec<String>,
        /// koala's base URL, if not reachable at server.listen.
        #[arg(long)]
        url: Option<String>,
    },
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, online } => check(&config, online),
        Command::Serve { config } => serve(&config),
        Command::Simulate {
            config,
            people,
            exits,
            audience,
            url,
        } => with_config(&config, "simulate", |config| async move {
            let opts = crate::simulate::Options {
                people,
                exits,
                audience,
                url,
            };
            crate::simulate::run(&config, opts).await.map(|()| true)
        }),
        Command::Resync {
            audience,
            config,
            dry_run,
            replace,
            url,
        } => with_config(&config, "resync", |config| async move {
            crate::resync::cli::run(&config, &audience, dry_run, &replace, url).await
        }),
    }
}

/// Loads the config and runs an async client command; `Ok(false)` and
/// errors exit 1.
fn with_config<F, Fut>(path: &Path, name: &str, f: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(f(config)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("koala {name}: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprintln!("{}: {} problem(s)", path.display(), errors.0.len());
        for p in &errors.0 {
            eprintln!("  - {p}");
        }
        ExitCode::from(1)
    })
}

fn check(path: &Path, online: bool) -> ExitCode {
    let c = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!(
        "{}: ok ({} audience(s), {} destination(s), store {})",
        path.display(),
        c.audiences.len(),
        c.destinations.len(),
        c.store_url_redacted()
    );
    if !online {
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let problems = runtime.block_on(check_online(&c));
    if problems.is_empty() {
        println!("destinations: ok (read, nothing sent)");
        ExitCode::SUCCESS
    } else {
        eprintln!("destinations: {} problem(s)", problems.len());
        for p in &problems {
            eprintln!("  - {p}");
        }
        ExitCode::from(1)
    }
}

/// Each destination's read-only verification against the mappings of
/// the audiences it syncs; problems start with `destinations.{name}`.
async fn check_online(config: &Config) -> Vec<String> {
    let mappings = config.mappings();
    let mut problems = Vec::new();
    for entry in &config.destinations {
        let dest = match entry.build() {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("destinations.{}: {e:#}", entry.name()));
                continue;
            }
        };
        let mine: Vec<&crate::destinations::Mapping> = mappings
            .iter()
            .filter(|((d, _), _)| d == entry.name())
            .map(|(_, m)| m)
            .collect();
        for p in dest.verify(&mine).await {
            problems.push(format!("destinations.{}: {p}", entry.name()));
        }
    }
    problems
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KOALA_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn,sqlx=warn"));
    // Colour codes only on a terminal: a log file or collector gets plain
    // `key=value` text it can search.
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn serve(path: &Path) -> ExitCode {
    init_tracing();
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(serve_async(config, path.to_owned())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("koala: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn serve_async(config: Config, path: PathBuf) -> anyhow::Result<()> {
    use anyhow::Context;
    let store = crate::store::open(&config.store.url)
        .await
        .with_context(|| format!("opening store {}", config.store_url_redacted()))?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding server.listen {}", config.server.listen))?;
    let app = crate::app::start(config, listener, store).await?;
    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(app.reloader(), path));
    #[cfg(not(unix))]
    let _ = path;
    let stop = app.stop_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: no new webhooks, finishing deliveries in flight");
        stop.cancel();
    });
    app.wait().await
}

/// SIGHUP re-reads the config file: destination settings (a rotated
/// token, say) are applied and paused destinations resume. A config with
/// problems is refused, with every problem logged, and koala keeps running.
#[cfg(unix)]
async fn reload_on_sighup(app: crate::app::Reloader, path: PathBuf) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match Config::load(&path) {
            Ok(config) => match app.reload(&config) {
                Ok(names) => {
                    tracing::info!(destinations = ?names, "config reloaded; destinations resumed")
                }
                Err(e) => tracing::error!(error = %e, "config reload refused"),
            },
            Err(problems) => {
                for p in problems.0 {
                    tracing::error!(problem = %p, "config reload refused");
                }
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
