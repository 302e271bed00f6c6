//! The delivery engine: one dispatcher per destination turns pending
//! (desired ≠ acknowledged) rows into batched destination calls, within
//! the destination's concurrency and rate limits, and records each answer.

mod dispatcher;
mod engine;

pub use engine::{DestinationHandle, DestinationStatus, Engine};

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Notify;

/// Wakes a destination's dispatcher when new work was committed.
#[derive(Clone, Default)]
pub struct Wakers {
    by_destination: Arc<HashMap<String, Arc<Notify>>>,
}

impl Wakers {
    pub fn new<'a>(destinations: impl IntoIterator<Item = &'a str>) -> Self {
        Wakers {
            by_destination: Arc::new(
                destinations
                    .into_iter()
                    .map(|d| (d.to_owned(), Arc::new(Notify::new())))
                    .collect(),
            ),
        }
    }

    pub fn wake(&self, destination: &str) {
        if let Some(n) = self.by_destination.get(destination) {
            n.notify_one();
        }
    }

    pub fn wake_all(&self) {
        for n in self.by_destination.values() {
            n.notify_one();
        }
    }

    pub(crate) fn notifier(&self, destination: &str) -> Arc<Notify> {
        self.by_destination
            .get(destination)
            .cloned()
            .unwrap_or_default()
    }
}
