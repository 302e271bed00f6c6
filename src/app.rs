//! Assembles koala: store, catalog, ingest writer, delivery engine and the
//! HTTP router, served on a listener the caller binds (tests bind port 0
//! and run many apps in one process).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::audiences::Catalog;
use crate::config::Config;
use crate::customerio::app_api::AppApiClient;
use crate::delivery::{Engine, Wakers};
use crate::destinations::Destination;
use crate::http::{self, AppState};
use crate::ingest::Ingestor;
use crate::resync::Resyncs;
use crate::store::Store;

/// A running koala. Dropping it does not stop it: call [`RunningApp::shutdown`].
pub struct RunningApp {
    addr: SocketAddr,
    stop: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    /// The pruning task (`pruning`); ends when `stop` fires.
    pruner: JoinHandle<()>,
    engine: Arc<Engine>,
    state: AppState,
}

impl RunningApp {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Graceful stop: no new webhooks, requests in flight answered,
    /// destination calls in flight finished within the grace period.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.server.await??;
        // A pruning batch in progress commits; no other one starts.
        self.pruner.await?;
        self.engine.shutdown().await;
        Ok(())
    }

    /// What a config reload needs, without holding the app.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            engine: self.engine.clone(),
        }
    }

    /// Waits until the server ends (after `stop` is triggered elsewhere).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.server.await??;
        self.pruner.await?;
        self.engine.shutdown().await;
        Ok(())
    }

    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// Applies a changed config to a running app.
#[derive(Clone)]
pub struct Reloader {
    engine: Arc<Engine>,
}

impl Reloader {
    /// Applies a changed config's destination settings (tokens, URLs) and
    /// resumes paused destinations. Audiences, limits, the listener and the
    /// store are read at start only.
    pub fn reload(&self, config: &Config) -> anyhow::Result<Vec<String>> {
        let destinations = config
            .destinations
            .iter()
            .map(|d| d.build())
            .collect::<anyhow::Result<Vec<Arc<dyn Destination>>>>()?;
        Ok(self.engine.reload(destinations))
    }
}

/// Starts koala on `listener` with `store`, using `destinations` (built
/// from config when `None`; tests may pass their own).
pub async fn start(
    config: Config,
    listener: TcpListener,
    store: Arc<dyn Store>,
) -> anyhow::Result<RunningApp> {
    let destinations = config
        .destinations
        .iter()
        .map(|d| d.build())
        .collect::<anyhow::Result<Vec<Arc<dyn Destination>>>>()?;
    start_with(config, listener, store, destinations).await
}

pub async fn start_with(
    config: Config,
    listener: TcpListener,
    store: Arc<dyn Store>,
    destinations: Vec<Arc<dyn Destination>>,
) -> anyhow::Result<RunningApp> {
    let metrics = crate::metrics::install();
    store.set_attribute_holders(config.attribute_readers());
    let catalog = Catalog::new(store.register_audiences(config.audience_defs()).await?);
    let wakers = Wakers::new(destinations.iter().map(|d| d.name()));
    let profile_destinations: std::collections::HashSet<String> = destinations
        .iter()
        .filter(|d| d.needs_profile())
        .map(|d| d.name().to_owned())
        .collect();
    let configured_ids: HashMap<(String, String), String> = config
        .audiences
        .iter()
        .flat_map(|a| {
            a.sync.iter().filter_map(move |s| {
                s.audience_id
                    .clone()
                    .map(|id| ((s.destination.clone(), a.name.clone()), id))
            })
        })
        .collect();
    let engine = Arc::new(
        Engine::start(
            store.clone(),
            catalog.clone(),
            destinations,
            configured_ids,
            config.mappings(),
            wakers.clone(),
            config.server.shutdown_grace,
        )
        .await?,
    );
    let ingestor = Ingestor::start(store.clone(), wakers.clone());
    let app_api = match &config.customerio.app_api_key {
        Some(_) => Some(AppApiClient::from_config(&config)?),
        None => None,
    };
    let needs_profiles = catalog
        .all()
        .iter()
        .filter(|a| {
            a.destinations
                .iter()
                .any(|d| profile_destinations.contains(d))
        })
        .map(|a| a.name.clone())
        .collect();
    let resyncs = Resyncs::new(
        app_api,
        config.customerio.app_api_page_size,
        needs_profiles,
        store.clone(),
        catalog.clone(),
        wakers,
        config.identity.phone_rules(),
    );
    let stop = CancellationToken::new();
    resyncs.schedule(
        config
            .audiences
            .iter()
            .filter_map(|a| a.reconcile_every.map(|every| (a.name.clone(), every)))
            .collect(),
        stop.clone(),
    );
    let pruner = crate::pruning::spawn(
        store.clone(),
        crate::store::retention::RetentionRules::from_config(&config),
        config.retention.interval,
        stop.clone(),
    );
    let state = AppState {
        phone_rules: config.identity.phone_rules(),
        config: Arc::new(config),
        catalog,
        store,
        ingestor,
        engine: engine.clone(),
        resyncs,
        metrics,
    };
    let router = http::router(state.clone());
    let addr = listener.local_addr()?;
    let stopped = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await
    });
    tracing::info!(%addr, "koala listening");
    Ok(RunningApp {
        addr,
        stop,
        server,
        pruner,
        engine,
        state,
    })
}
