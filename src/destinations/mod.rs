//! Destinations: one folder each, one trait between them and the delivery
//! engine. A destination turns a batch of people into its platform's
//! request, sends it, and classifies the answer; the engine owns batching,
//! limits, retries, dead letters and pausing.

pub mod bigquery;
pub mod file;
pub mod google_customer_match;
pub mod google_oauth;
pub mod mapping;
pub mod meta;
pub mod postgres_table;
pub mod segment;
mod settings;
pub mod signed_jwt;
pub mod snowflake;
pub mod tiktok_audiences;
pub mod webhook;

pub use mapping::{FieldSpec, FieldType, MapConfig, Mapping};
pub use settings::{DeliveryOverrides, DeliverySettings};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::audiences::AudienceDef;
use crate::audiences::SyncOp;
use crate::person::PersonRecord;

/// One row of a batch the platform refused on its own (the rest were
/// stored): `index` is its position in the `people` slice sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedRow {
    pub index: usize,
    pub reason: String,
}

/// What a batch is sent for.
#[derive(Debug, Clone, Copy)]
pub struct SendTarget<'a> {
    /// koala's audience (its name, segment and mode).
    pub audience: &'a AudienceDef,
    /// The platform's id for that audience (configured, recorded or created).
    pub platform_audience_id: &'a str,
    /// Which attributes feed which platform fields, for this audience.
    pub mapping: &'a Mapping,
    /// Customer.io's event time (ms) of each person's change, aligned with
    /// the `people` sent; empty when there is none (a full replace). Lets a
    /// platform name a change deterministically (an idempotency key that a
    /// retry repeats and a later change does not).
    pub changed_at: &'a [i64],
}

impl SendTarget<'_> {
    /// person id → change time, for the people sent with this target.
    pub fn change_times(&self, people: &[PersonRecord]) -> std::collections::HashMap<i64, i64> {
        people
            .iter()
            .zip(self.changed_at)
            .map(|(p, at)| (p.person_id, *at))
            .collect()
    }
}

/// How a destination answered a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    /// Stored by the destination. `invalid` rows were refused by it as
    /// unusable without saying which (Meta's `num_invalid_entries`):
    /// counted, not retried.
    Success { received: usize, invalid: usize },
    /// Stored, except the rows listed, which the platform refused one by
    /// one: each is dead-lettered alone with its reason, the rest are
    /// acknowledged.
    PartlyRefused { refused: Vec<RefusedRow> },
    /// Throttled or a passing failure: try the same rows again later,
    /// after `after` when the platform said how long.
    RetryLater {
        after: Option<Duration>,
        reason: String,
    },
    /// These rows can never succeed as they are: dead-letter them.
    Permanent { reason: String },
    /// Nothing will succeed until someone acts (expired token, missing
    /// permission): pause the destination, keep its work.
    DestinationDown { reason: String },
    /// Nothing will succeed before `until_ms` (a daily quota spent): pause
    /// the destination until then, keep its work, resume by itself.
    PausedUntil { until_ms: i64, reason: String },
}

impl SendOutcome {
    /// What an HTTP status alone says, for a platform whose body said
    /// nothing more specific (each destination refines it with its codes).
    pub fn from_status(
        class: crate::outbound::StatusClass,
        retry_after: Option<Duration>,
        reason: String,
    ) -> Self {
        use crate::outbound::StatusClass;
        match class {
            StatusClass::Success | StatusClass::Throttled | StatusClass::Transient => {
                SendOutcome::RetryLater {
                    after: retry_after,
                    reason,
                }
            }
            StatusClass::Unauthorized | StatusClass::Unexpected => {
                SendOutcome::DestinationDown { reason }
            }
            StatusClass::Refused => SendOutcome::Permanent { reason },
        }
    }

    /// A request that got no answer: always worth another try.
    pub fn transport(platform: &str, e: &reqwest::Error) -> Self {
        SendOutcome::RetryLater {
            after: None,
            reason: format!(
                "{platform} request {}",
                crate::outbound::describe_transport(e)
            ),
        }
    }

    /// The reason an outcome carries; the class for those without one.
    pub fn reason(&self) -> String {
        match self {
            SendOutcome::RetryLater { reason, .. }
            | SendOutcome::Permanent { reason }
            | SendOutcome::DestinationDown { reason }
            | SendOutcome::PausedUntil { reason, .. } => reason.clone(),
            other => other.class().to_owned(),
        }
    }

    pub fn class(&self) -> &'static str {
        match self {
            SendOutcome::Success { .. } => "success",
            SendOutcome::PartlyRefused { .. } => "partly_refused",
            SendOutcome::RetryLater { .. } => "retry",
            SendOutcome::Permanent { .. } => "permanent",
            SendOutcome::DestinationDown { .. } | SendOutcome::PausedUntil { .. } => {
                "destination_down"
            }
        }
    }
}

/// A person a destination cannot address (none of its identifiers).
pub const UNMATCHED: &str = "unmatched: none of this destination's identifiers";

/// Where one batch of a full replace stands in its session. A replace is
/// a sequence of batches under one client-chosen session id; the platform
/// swaps the audience's members for the session's rows after the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplaceSession {
    /// Chosen by koala, below 2^53 (JSON-number safe), one per replace.
    pub session_id: u64,
    /// 1-based position of this batch in the session.
    pub batch_seq: u32,
    /// True on the session's final batch.
    pub last_batch: bool,
    /// How many people the whole session is expected to carry.
    pub estimated_total: u64,
}

#[async_trait]
pub trait Destination: Send + Sync + 'static {
    fn name(&self) -> &str;

    /// The engine settings (batch size, concurrency, rate, linger,
    /// timeout, backoff) this destination was built with.
    fn limits(&self) -> DeliverySettings;

    /// True when this person carries at least one identifier the
    /// destination is configured to send.
    fn can_address(&self, person: &PersonRecord) -> bool;

    /// True when the destination uses person data beyond what Customer.io's
    /// segment membership listing carries (id, cio_id, email): a phone, or
    /// attributes. People first seen in a resync are then looked up.
    fn needs_profile(&self) -> bool {
        false
    }

    /// Creates the platform-side audience for `audience`; returns its id.
    /// Called only when no id is configured or recorded. A destination
    /// that cannot create audiences keeps this default, which pauses it
    /// with a reason naming the missing setting.
    async fn create_audience(&self, audience: &AudienceDef) -> Result<String, SendOutcome> {
        Err(SendOutcome::DestinationDown {
            reason: format!(
                "destination {:?} cannot create audiences: set audience_id in audience {:?}'s sync entry",
                self.name(),
                audience.name
            ),
        })
    }

    /// Sends one batch of addressable people (at most
    /// `limits().max_batch`) for `target`. A batch the platform refuses as
    /// a whole ([`SendOutcome::Permanent`]) is split by the engine and the
    /// halves sent again, until the bad rows are found alone.
    async fn send(
        &self,
        target: &SendTarget<'_>,
        op: SyncOp,
        people: &[PersonRecord],
    ) -> SendOutcome;

    /// Recent platform-side problems worth showing an operator that no
    /// send outcome carries (Google's asynchronous request statuses).
    fn platform_notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Read-only checks against the platform, for `koala check --online`:
    /// for example a warehouse table's columns against `mappings`, the
    /// mappings of every audience this destination syncs. Nothing is sent.
    /// Each problem is a sentence an operator can act on.
    async fn verify(&self, _mappings: &[&Mapping]) -> Vec<String> {
        Vec::new()
    }

    /// True when the destination can replace an audience's whole
    /// membership in one session ([`Destination::send_replace`]).
    fn supports_replace(&self) -> bool {
        false
    }

    /// Sends one batch of a full replace: after the session's last batch
    /// the platform audience holds exactly the people of all its batches.
    /// `people` must fit one request (at most `limits().max_batch`).
    async fn send_replace(
        &self,
        _target: &SendTarget<'_>,
        _session: &ReplaceSession,
        _people: &[PersonRecord],
    ) -> SendOutcome {
        SendOutcome::Permanent {
            reason: "this destination cannot replace an audience".into(),
        }
    }
}

/// A destination type as its config table describes it: what the engine
/// and `koala check` need to know of it. Implemented for every
/// [`DestinationType`]; registering a type is one variant of
/// `config::DestinationConfig` and its arm in `DestinationConfig::kind`.
pub trait DestinationKind {
    /// The `type` key's value.
    fn type_name(&self) -> &'static str;
    /// Engine settings unless the table overrides them.
    fn delivery_defaults(&self) -> DeliverySettings;
    /// Most rows the platform takes in one request.
    fn max_batch_limit(&self) -> usize;
    /// The fields a mapping may feed.
    fn fields(&self) -> &'static [FieldSpec];
    /// True for platforms that take fields they do not declare (analytics,
    /// warehouses); ad platforms take only their own.
    fn takes_any_field(&self) -> bool;
    /// Problems of the platform keys, each starting with its key.
    fn problems(&self) -> Vec<String>;
    /// Problems of a resolved mapping on this platform (a field name a
    /// warehouse cannot take as a column), each starting with `map.{field}`.
    fn mapping_problems(&self, mapping: &Mapping) -> Vec<String>;
    /// The running destination.
    fn build(
        &self,
        name: String,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Arc<dyn Destination>>;
}

/// What a destination type declares, in its own folder: its `type` name,
/// engine defaults, batch limit, mapping fields, config checks and how it
/// starts.
pub trait DestinationType: Clone {
    const TYPE_NAME: &'static str;
    const DELIVERY: DeliverySettings;
    /// Most rows the platform takes in one request.
    const MAX_BATCH: usize;
    const FIELDS: &'static [FieldSpec];
    /// True for platforms that take fields they do not declare.
    const TAKES_ANY_FIELD: bool = false;
    type Running: Destination;
    /// Problems of the platform keys, each starting with its key.
    fn check(&self) -> Vec<String>;
    /// Problems of a resolved mapping beyond what its fields declare.
    fn check_mapping(&self, _mapping: &Mapping) -> Vec<String> {
        Vec::new()
    }
    fn start(
        name: String,
        config: Self,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self::Running>;
}

impl<T: DestinationType> DestinationKind for T {
    fn type_name(&self) -> &'static str {
        T::TYPE_NAME
    }
    fn delivery_defaults(&self) -> DeliverySettings {
        T::DELIVERY
    }
    fn max_batch_limit(&self) -> usize {
        T::MAX_BATCH
    }
    fn fields(&self) -> &'static [FieldSpec] {
        T::FIELDS
    }
    fn takes_any_field(&self) -> bool {
        T::TAKES_ANY_FIELD
    }
    fn problems(&self) -> Vec<String> {
        self.check()
    }
    fn mapping_problems(&self, mapping: &Mapping) -> Vec<String> {
        self.check_mapping(mapping)
    }
    fn build(
        &self,
        name: String,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Arc<dyn Destination>> {
        Ok(Arc::new(T::start(name, self.clone(), delivery)?))
    }
}
