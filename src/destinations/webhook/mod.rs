//! A signed generic webhook: each batch of membership changes is one JSON
//! POST to `url`, signed the Standard Webhooks way
//! (<https://www.standardwebhooks.com/>). For receivers koala has no
//! destination type for (a CDP, a warehouse loader, an in-house service).
//! Add and remove only; attribute updates of present members are not sent.

pub mod config;
pub mod encoder;
pub mod request;
pub mod service;

pub use config::WebhookConfig;

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::audiences::{AudienceDef, SyncOp};
use crate::destinations::{DeliverySettings, Destination, SendOutcome, SendTarget, UNMATCHED};
use crate::person::PersonRecord;

pub use config::DELIVERY;

pub struct WebhookDestination {
    name: String,
    url: url::Url,
    keys: Vec<Vec<u8>>,
    include_pii: bool,
    delivery: DeliverySettings,
    service: service::Service,
}

impl WebhookDestination {
    pub fn new(
        name: impl Into<String>,
        config: WebhookConfig,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self> {
        let url = url::Url::parse(&config.url).map_err(|_| anyhow::anyhow!("url: not a URL"))?;
        let keys = config.keys()?;
        if keys.is_empty() {
            anyhow::bail!("secrets: must list at least one secret");
        }
        Ok(WebhookDestination {
            name: name.into(),
            url,
            keys,
            include_pii: config.include_pii,
            service: service::Service::new(delivery.request_timeout)?,
            delivery,
        })
    }
}

#[async_trait]
impl Destination for WebhookDestination {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> DeliverySettings {
        self.delivery
    }

    fn can_address(&self, person: &PersonRecord) -> bool {
        encoder::can_address(person)
    }

    fn needs_profile(&self) -> bool {
        // Mapped attributes, and the phone with include_pii.
        true
    }

    /// A webhook has no audiences of its own to create: the receiver is
    /// told koala's audience name, which stands for the id.
    async fn create_audience(&self, audience: &AudienceDef) -> Result<String, SendOutcome> {
        Ok(audience.name.clone())
    }

    async fn send(
        &self,
        target: &SendTarget<'_>,
        op: SyncOp,
        people: &[PersonRecord],
    ) -> SendOutcome {
        let sendable: Vec<PersonRecord> = people
            .iter()
            .filter(|p| encoder::can_address(p))
            .cloned()
            .collect();
        let invalid = people.len() - sendable.len();
        if sendable.is_empty() {
            return if people.is_empty() {
                SendOutcome::Success {
                    received: 0,
                    invalid: 0,
                }
            } else {
                SendOutcome::Permanent {
                    reason: UNMATCHED.into(),
                }
            };
        }
        let mut received = invalid;
        let changed_at = target.change_times(people);
        for chunk in sendable.chunks(self.delivery.max_batch.max(1)) {
            let mut body = encoder::content(target, op, chunk, &self.name, self.include_pii);
            let id = encoder::webhook_id(&self.name, chunk, &changed_at, &body);
            let now = chrono::Utc::now();
            body.insert(
                "sent_at".into(),
                json!(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            );
            let bytes = serde_json::to_vec(&Value::Object(body)).expect("serializable");
            let req = request::build(&self.url, &self.keys, id, now.timestamp(), bytes);
            let outcome = self.service.call(req).await;
            tracing::debug!(
                destination = %self.name,
                audience = %target.audience.name,
                op = op.as_str(),
                members = chunk.len(),
                ok = outcome.is_ok(),
                "webhook delivery"
            );
            if let Err(o) = outcome {
                return o;
            }
            received += chunk.len();
        }
        SendOutcome::Success { received, invalid }
    }
}

impl super::DestinationType for WebhookConfig {
    const TYPE_NAME: &'static str = "webhook";
    const DELIVERY: DeliverySettings = DELIVERY;
    const MAX_BATCH: usize = config::MAX_MEMBERS_LIMIT;
    const FIELDS: &'static [super::FieldSpec] = config::FIELDS;
    const TAKES_ANY_FIELD: bool = true;
    type Running = WebhookDestination;

    fn check(&self) -> Vec<String> {
        WebhookConfig::problems(self)
    }

    fn start(
        name: String,
        config: Self,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self::Running> {
        WebhookDestination::new(name, config, delivery)
    }
}
