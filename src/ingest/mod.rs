//! Group commit: requests hand their validated command to one writer task,
//! which applies everything waiting in one transaction and answers each
//! request only after that transaction is durable. Under load one fsync
//! covers many webhooks; at low load a lone webhook commits at once.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::delivery::Wakers;
use crate::store::{now_ms, IngestCommand, IngestOutcome, Store, StoreError};

/// Most commands one transaction carries.
const MAX_GROUP: usize = 512;

struct Job {
    command: IngestCommand,
    reply: oneshot::Sender<Result<IngestOutcome, StoreError>>,
}

#[derive(Clone)]
pub struct Ingestor {
    tx: mpsc::Sender<Job>,
}

impl Ingestor {
    /// Starts the writer task. It ends when every `Ingestor` is dropped.
    pub fn start(store: Arc<dyn Store>, wakers: Wakers) -> Self {
        let (tx, rx) = mpsc::channel(MAX_GROUP * 8);
        tokio::spawn(write_loop(store, wakers, rx));
        Ingestor { tx }
    }

    /// Applies one command durably; returns once it is committed.
    pub async fn submit(&self, command: IngestCommand) -> Result<IngestOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { command, reply })
            .await
            .map_err(|_| StoreError::Other("ingest writer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Other("ingest writer dropped the request".into()))?
    }
}

async fn write_loop(store: Arc<dyn Store>, wakers: Wakers, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut jobs, MAX_GROUP).await > 0 {
        let started = Instant::now();
        let (commands, replies): (Vec<_>, Vec<_>) =
            jobs.drain(..).map(|j| (j.command, j.reply)).unzip();
        metrics::histogram!("koala_ingest_group_size").record(commands.len() as f64);
        match store.apply_batch(&commands, now_ms()).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    if let Ok(IngestOutcome::Accepted { audiences, .. }) = &result {
                        for a in audiences {
                            for d in &a.destinations_touched {
                                wakers.wake(d);
                            }
                        }
                    }
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed");
                let text = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Other(text.clone())));
                }
            }
        }
        metrics::histogram!("koala_ingest_commit_seconds").record(started.elapsed().as_secs_f64());
    }
}
