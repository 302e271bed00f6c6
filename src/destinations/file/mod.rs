//! Audiences as local files: `{directory}/{audience}.jsonl` gets one JSON
//! line per change (`{"op": "add"|"remove", "id", "cio_id", "email",
//! "phone", "attributes", "at"}`) and `{directory}/{audience}.members.json`
//! holds the current members, replaced atomically after each batch — what
//! a team uploads by hand to a platform koala has no destination for, and
//! the quickstart's destination that needs no account.
//! An attribute update of a present member is an `"op": "update"` line and
//! rewrites that member in the members file.

pub mod config;
pub mod writer;

pub use config::FileConfig;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::audiences::{AudienceDef, SyncOp};
use crate::destinations::{DeliverySettings, Destination, SendOutcome, SendTarget, UNMATCHED};
use crate::person::PersonRecord;

pub use config::DELIVERY;

pub struct FileDestination {
    name: String,
    directory: PathBuf,
    delivery: DeliverySettings,
    /// One batch at a time touches the files, whatever `concurrency` says.
    lock: Arc<Mutex<()>>,
}

impl FileDestination {
    pub fn new(name: impl Into<String>, config: FileConfig, delivery: DeliverySettings) -> Self {
        FileDestination {
            name: name.into(),
            directory: PathBuf::from(config.directory),
            delivery,
            lock: Arc::new(Mutex::new(())),
        }
    }

    fn member(&self, p: &PersonRecord, target: &SendTarget<'_>) -> Map<String, Value> {
        let attributes: Map<String, Value> = target
            .mapping
            .values(p, &self.name)
            .into_iter()
            .map(|(k, v)| (k, v.to_json()))
            .collect();
        let mut m = Map::new();
        m.insert("id".into(), json!(p.customer_id));
        m.insert("cio_id".into(), json!(p.cio_id));
        m.insert("email".into(), json!(p.email));
        m.insert("phone".into(), json!(p.phone));
        m.insert("attributes".into(), Value::Object(attributes));
        m
    }
}

#[async_trait]
impl Destination for FileDestination {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> DeliverySettings {
        self.delivery
    }

    fn can_address(&self, person: &PersonRecord) -> bool {
        person.customer_id.is_some() || person.cio_id.is_some()
    }

    fn needs_profile(&self) -> bool {
        true
    }

    /// Files need no platform audience: the audience name stands for it.
    async fn create_audience(&self, audience: &AudienceDef) -> Result<String, SendOutcome> {
        Ok(audience.name.clone())
    }

    async fn send(
        &self,
        target: &SendTarget<'_>,
        op: SyncOp,
        people: &[PersonRecord],
    ) -> SendOutcome {
        let changes: Vec<(String, writer::Member)> = people
            .iter()
            .filter_map(|p| {
                let m = self.member(p, target);
                Some((writer::key_of(&m)?, m))
            })
            .collect();
        let invalid = people.len() - changes.len();
        if changes.is_empty() && !people.is_empty() {
            return SendOutcome::Permanent {
                reason: UNMATCHED.into(),
            };
        }
        let dir = self.directory.clone();
        let stem = config::file_stem(&target.audience.name);
        let audience = target.audience.name.clone();
        let lock = self.lock.clone();
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let result = tokio::task::spawn_blocking(move || {
            let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
            writer::apply(&dir, &stem, &audience, op, &changes, &at)
        })
        .await;
        match result {
            Ok(Ok(changed)) => {
                tracing::debug!(
                    destination = %self.name,
                    audience = %target.audience.name,
                    op = op.as_str(),
                    rows = people.len(),
                    changed,
                    "file destination batch"
                );
                SendOutcome::Success {
                    received: people.len(),
                    invalid,
                }
            }
            Ok(Err(reason)) => SendOutcome::DestinationDown {
                reason: format!("file destination: {reason}"),
            },
            Err(e) => SendOutcome::RetryLater {
                after: None,
                reason: format!("file destination: the write task failed: {e}"),
            },
        }
    }
}

impl super::DestinationType for FileConfig {
    const TYPE_NAME: &'static str = "file";
    const DELIVERY: DeliverySettings = DELIVERY;
    const MAX_BATCH: usize = config::MAX_ROWS_LIMIT;
    const FIELDS: &'static [super::FieldSpec] = config::FIELDS;
    const TAKES_ANY_FIELD: bool = true;
    type Running = FileDestination;

    fn check(&self) -> Vec<String> {
        FileConfig::problems(self)
    }

    fn start(
        name: String,
        config: Self,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self::Running> {
        Ok(FileDestination::new(name, config, delivery))
    }
}
