//! Segment (and Segment-compatible: RudderStack, Jitsu) through the HTTP
//! Tracking API's `/v1/batch`
//! (<https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/>),
//! with Engage's audience conventions
//! (<https://segment.com/docs/engage/using-engage-data/>): each change is an
//! `Audience Entered`/`Audience Exited` track and an identify setting the
//! audience key trait. An attribute update of a present member is an
//! identify alone (no track: nobody entered or left).

pub mod config;
pub mod encoder;
pub mod request;
pub mod service;

pub use config::{SegmentConfig, DELIVERY};

use async_trait::async_trait;

use crate::audiences::{AudienceDef, SyncOp};
use crate::destinations::{DeliverySettings, Destination, RefusedRow, SendOutcome, SendTarget};
use crate::person::PersonRecord;
use crate::secret::Secret;

pub struct SegmentDestination {
    name: String,
    url: url::Url,
    auth: (&'static str, Secret),
    user_id: config::UserId,
    delivery: DeliverySettings,
    service: service::Service,
}

impl SegmentDestination {
    pub fn new(
        name: impl Into<String>,
        config: SegmentConfig,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self> {
        let url = config.batch_url()?;
        Ok(SegmentDestination {
            name: name.into(),
            url,
            auth: request::auth(config.auth, &config.write_key),
            user_id: config.user_id,
            service: service::Service::new(delivery.request_timeout)?,
            delivery,
        })
    }
}

#[async_trait]
impl Destination for SegmentDestination {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> DeliverySettings {
        self.delivery
    }

    /// Everyone is handed to `send`, which refuses (dead-letters, with the
    /// reason) a person without the configured `userId` rather than let
    /// the row vanish as unmatched: Segment itself would answer 200 and
    /// drop such events.
    fn can_address(&self, _person: &PersonRecord) -> bool {
        true
    }

    fn needs_profile(&self) -> bool {
        true
    }

    /// Engage's audience key: the koala audience name in snake_case.
    async fn create_audience(&self, audience: &AudienceDef) -> Result<String, SendOutcome> {
        Ok(encoder::snake_case(&audience.name))
    }

    async fn send(
        &self,
        target: &SendTarget<'_>,
        op: SyncOp,
        people: &[PersonRecord],
    ) -> SendOutcome {
        let change = encoder::Change {
            destination: &self.name,
            audience_key: target.platform_audience_id,
            user_id: self.user_id,
            op,
        };
        let mut refused = Vec::new();
        let mut sendable = Vec::with_capacity(people.len());
        for (index, p) in people.iter().enumerate() {
            let at = target.changed_at.get(index).copied().unwrap_or(0);
            match encoder::events(&change, target, p, at).and_then(|e| encoder::serialize(&e)) {
                Ok(events) => sendable.push(events),
                Err(reason) => refused.push(RefusedRow { index, reason }),
            }
        }
        let sent = sendable.len();
        for body in encoder::pack(sendable) {
            let bytes = body.len();
            let outcome = self
                .service
                .call(request::build(&self.url, &self.auth, body))
                .await;
            tracing::debug!(
                destination = %self.name,
                audience = %target.audience.name,
                op = op.as_str(),
                bytes,
                ok = outcome.is_ok(),
                "segment batch"
            );
            if let Err(o) = outcome {
                return o;
            }
        }
        if refused.is_empty() {
            SendOutcome::Success {
                received: sent,
                invalid: 0,
            }
        } else {
            SendOutcome::PartlyRefused { refused }
        }
    }
}

impl super::DestinationType for SegmentConfig {
    const TYPE_NAME: &'static str = "segment";
    const DELIVERY: DeliverySettings = DELIVERY;
    const MAX_BATCH: usize = config::MAX_MEMBERS_LIMIT;
    const FIELDS: &'static [super::FieldSpec] = config::FIELDS;
    const TAKES_ANY_FIELD: bool = true;
    type Running = SegmentDestination;

    fn check(&self) -> Vec<String> {
        SegmentConfig::problems(self)
    }

    fn start(
        name: String,
        config: Self,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self::Running> {
        SegmentDestination::new(name, config, delivery)
    }
}
