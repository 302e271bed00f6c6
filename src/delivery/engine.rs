use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::dispatcher::Dispatcher;
use super::Wakers;
use crate::audiences::Catalog;
use crate::destinations::{Destination, Mapping};
use crate::store::Store;

/// What the admin API shows of a destination.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DestinationStatus {
    pub paused: bool,
    pub paused_reason: Option<String>,
    pub paused_at: Option<i64>,
    /// A pause that lifts by itself (a daily quota's reset), ms.
    pub resume_at: Option<i64>,
    pub last_success_at: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
}

/// Shared between a dispatcher, the admin API and config reloads.
pub(crate) struct Control {
    pub status: Mutex<DestinationStatus>,
    pub resumed: tokio::sync::Notify,
    /// Rows in requests this process has in flight, per koala audience id.
    in_flight: Mutex<HashMap<i64, i64>>,
    /// The destination's request rate: every request to it, from the
    /// dispatcher or a full replace, takes a token.
    pub limiter: Arc<governor::DefaultDirectRateLimiter>,
    /// Swapped by a config reload (a rotated token, say).
    destination: RwLock<Arc<dyn Destination>>,
}

impl Control {
    fn new(destination: Arc<dyn Destination>) -> Self {
        Control {
            limiter: Arc::new(super::dispatcher::rate_limiter(
                destination.limits().requests_per_second,
            )),
            status: Mutex::new(DestinationStatus::default()),
            resumed: tokio::sync::Notify::new(),
            in_flight: Mutex::new(HashMap::new()),
            destination: RwLock::new(destination),
        }
    }

    pub fn snapshot(&self) -> DestinationStatus {
        self.status.lock().expect("status lock").clone()
    }

    pub fn destination(&self) -> Arc<dyn Destination> {
        self.destination.read().expect("destination lock").clone()
    }

    /// Lifts a pause; true when the destination was paused.
    pub fn resume(&self) -> bool {
        let was = {
            let mut s = self.status.lock().expect("status lock");
            let was = s.paused;
            s.paused = false;
            s.paused_reason = None;
            s.paused_at = None;
            s.resume_at = None;
            was
        };
        let name = self.destination().name().to_owned();
        metrics::gauge!("koala_destination_paused", "destination" => name).set(0.0);
        self.resumed.notify_waiters();
        was
    }

    /// `rows` more (or, negative, fewer) rows of `audience_id` in flight.
    pub fn add_in_flight(&self, audience_id: i64, rows: i64) {
        let mut m = self.in_flight.lock().expect("in-flight lock");
        let n = m.entry(audience_id).or_default();
        *n += rows;
        if *n <= 0 {
            m.remove(&audience_id);
        }
    }
}

/// A destination as the engine runs it, for work outside the dispatcher
/// (a full replace): the settings as last reloaded (SIGHUP) and the rate
/// limit every request to it shares.
#[derive(Clone)]
pub struct DestinationHandle(Arc<Control>);

impl DestinationHandle {
    /// The destination with its current settings (a rotated token, say).
    pub fn current(&self) -> Arc<dyn Destination> {
        self.0.destination()
    }

    /// Waits for one token of the destination's request rate.
    pub async fn until_ready(&self) {
        self.0.limiter.until_ready().await
    }
}

/// Runs one dispatcher per destination until shut down.
pub struct Engine {
    controls: HashMap<String, Arc<Control>>,
    wakers: Wakers,
    cancel: CancellationToken,
    tasks: Mutex<Option<JoinSet<()>>>,
    grace: Duration,
}

impl Engine {
    /// `configured_ids` maps (destination, audience name) to the platform
    /// audience id given in config, if any; `mappings` to the sync
    /// target's attribute mapping.
    pub async fn start(
        store: Arc<dyn Store>,
        catalog: Catalog,
        destinations: Vec<Arc<dyn Destination>>,
        configured_ids: HashMap<(String, String), String>,
        mappings: HashMap<(String, String), Mapping>,
        wakers: Wakers,
        grace: Duration,
    ) -> anyhow::Result<Engine> {
        if store.is_exclusive() {
            // Leases left by a killed run: nobody else can hold them.
            store.release_all_leases().await?;
        }
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut controls = HashMap::new();
        for destination in destinations {
            let name = destination.name().to_owned();
            let control = Arc::new(Control::new(destination.clone()));
            metrics::gauge!("koala_destination_paused", "destination" => name.clone()).set(0.0);
            let audience_ids = catalog
                .all()
                .iter()
                .filter_map(|a| {
                    configured_ids
                        .get(&(name.clone(), a.name.clone()))
                        .map(|ext| (a.id, ext.clone()))
                })
                .collect();
            let mut by_audience = HashMap::new();
            for a in catalog.all() {
                let Some(m) = mappings.get(&(name.clone(), a.name.clone())) else {
                    continue;
                };
                let requeued = store
                    .set_mapping(&name, a.id, m.hash(), crate::store::now_ms())
                    .await?;
                if requeued > 0 {
                    tracing::info!(destination = %name, audience = %a.name, members = requeued, "attribute mapping changed: members are sent once more");
                }
                by_audience.insert(a.id, Arc::new(m.clone()));
            }
            let dispatcher = Dispatcher {
                store: store.clone(),
                catalog: catalog.clone(),
                control: control.clone(),
                wake: wakers.notifier(&name),
                cancel: cancel.clone(),
                audience_ids: Arc::new(tokio::sync::Mutex::new(audience_ids)),
                grace,
                mappings: by_audience,
            };
            tasks.spawn(dispatcher.run());
            controls.insert(name, control);
        }
        Ok(Engine {
            controls,
            wakers,
            cancel,
            tasks: Mutex::new(Some(tasks)),
            grace,
        })
    }

    pub fn status(&self, destination: &str) -> Option<DestinationStatus> {
        self.controls.get(destination).map(|c| c.snapshot())
    }

    /// The running destination named `name`.
    pub fn handle(&self, name: &str) -> Option<DestinationHandle> {
        self.controls.get(name).cloned().map(DestinationHandle)
    }

    /// Rows of an audience in requests to `destination` right now.
    pub fn in_flight(&self, destination: &str, audience_id: i64) -> i64 {
        self.controls.get(destination).map_or(0, |c| {
            c.in_flight
                .lock()
                .expect("in-flight lock")
                .get(&audience_id)
                .copied()
                .unwrap_or(0)
        })
    }

    /// Takes new settings for known destinations (a rotated token, a fixed
    /// permission) and resumes them. Returns the names taken; limits and new
    /// destinations take effect at the next start.
    pub fn reload(&self, destinations: Vec<Arc<dyn Destination>>) -> Vec<String> {
        let mut taken = Vec::new();
        for d in destinations {
            let name = d.name().to_owned();
            match self.controls.get(&name) {
                Some(control) => {
                    *control.destination.write().expect("destination lock") = d;
                    self.resume(&name);
                    taken.push(name);
                }
                None => {
                    tracing::warn!(destination = %name, "a new destination starts with the next restart")
                }
            }
        }
        taken
    }

    /// Resumes a paused destination; false when there is no such one.
    pub fn resume(&self, destination: &str) -> bool {
        let Some(control) = self.controls.get(destination) else {
            return false;
        };
        control.resume();
        self.wakers.wake(destination);
        true
    }

    /// Wakes every dispatcher (after a redrive, say).
    pub fn wake_all(&self) {
        self.wakers.wake_all();
    }

    /// Stops claiming work and waits (up to the grace period) for requests
    /// in flight. Rows still leased are released at the next start.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let tasks = self.tasks.lock().expect("tasks lock").take();
        if let Some(mut tasks) = tasks {
            let drained = tokio::time::timeout(self.grace + Duration::from_secs(1), async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!("delivery did not finish within the shutdown grace period");
                tasks.abort_all();
            }
        }
    }
}
