//! TikTok audiences through the API for Business audience segment API
//! (<https://business-api.tiktok.com/portal/docs?id=1739940583739393>).
//!
//! `config` is the TOML table, `encoder` builds positional hashed rows,
//! `request` the calls, and `service` sends and classifies the HTTP-200
//! answers by their body `code`.

mod config;
mod encoder;
mod request;
mod service;

use async_trait::async_trait;
use serde_json::Value;

pub use config::{TiktokConfig, TiktokKey, DELIVERY, FIELDS, MAX_ROWS_LIMIT};
pub use encoder::Encoder;
pub use service::CodeTable;

use super::{DeliverySettings, Destination, SendOutcome, SendTarget, UNMATCHED};
use crate::audiences::AudienceDef;
use crate::audiences::SyncOp;
use crate::person::PersonRecord;
use request::Endpoints;
use service::Service;

pub struct TiktokDestination {
    name: String,
    config: TiktokConfig,
    delivery: DeliverySettings,
    encoder: Encoder,
    endpoints: Endpoints,
    service: Service,
}

impl TiktokDestination {
    /// Fails on settings with problems (see [`TiktokConfig::problems`]
    /// and [`DeliverySettings::problems`]).
    pub fn new(
        name: impl Into<String>,
        config: TiktokConfig,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self> {
        let name = name.into();
        let mut problems = config.problems();
        problems.extend(delivery.problems(MAX_ROWS_LIMIT));
        if !problems.is_empty() {
            anyhow::bail!("destination {name:?}: {}", problems.join("; "));
        }
        Ok(TiktokDestination {
            encoder: Encoder::new(&config.identifiers, config.phone_format),
            endpoints: Endpoints::new(&config.base_url, &config.advertiser_id)?,
            service: Service::new(
                delivery.request_timeout,
                config.access_token.clone(),
                CodeTable {
                    retry: config.retry_codes.clone(),
                    auth: config.auth_codes.clone(),
                },
            )?,
            name,
            config,
            delivery,
        })
    }

    pub fn config(&self) -> &TiktokConfig {
        &self.config
    }
}

#[async_trait]
impl Destination for TiktokDestination {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> DeliverySettings {
        self.delivery
    }

    fn can_address(&self, person: &PersonRecord) -> bool {
        self.encoder.can_address(person)
    }

    fn needs_profile(&self) -> bool {
        self.config.identifiers.contains(&TiktokKey::Phone)
    }

    /// `POST /segment/audience/` with the first configured id type;
    /// answers `data.audience_id`.
    async fn create_audience(&self, audience: &AudienceDef) -> Result<String, SendOutcome> {
        let id_type = self.encoder.id_schema()[0];
        let req = self.endpoints.create(&audience.name, id_type);
        let data = self.service.call(req).await?;
        match &data["audience_id"] {
            Value::String(id) if !id.is_empty() => Ok(id.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(SendOutcome::DestinationDown {
                reason: "tiktok answered the create without data.audience_id".into(),
            }),
        }
    }

    /// One `/segment/mapping/` request per `max_batch` rows. TikTok stores
    /// a batch whole or refuses it whole (as far as is known), so a refusal
    /// is Permanent for the batch and the engine splits it.
    async fn send(
        &self,
        target: &SendTarget<'_>,
        op: SyncOp,
        people: &[PersonRecord],
    ) -> SendOutcome {
        let action = match op {
            SyncOp::Add | SyncOp::Update => "add",
            SyncOp::Remove => self.config.remove_action.as_str(),
        };
        let schema = self.encoder.id_schema();
        let (mut received, mut invalid) = (0, 0);
        for chunk in people.chunks(self.limits().max_batch) {
            let rows: Vec<Vec<Value>> = chunk
                .iter()
                .filter_map(|p| self.encoder.row(p, target.platform_audience_id))
                .collect();
            let skipped = chunk.len() - rows.len();
            received += skipped;
            invalid += skipped;
            if rows.is_empty() {
                continue;
            }
            let n = rows.len();
            let req = self.endpoints.mapping(action, &schema, rows);
            let outcome = self.service.call(req).await;
            tracing::debug!(
                destination = %self.name,
                audience_id = target.platform_audience_id,
                op = op.as_str(),
                rows = n,
                ok = outcome.is_ok(),
                "tiktok segment mapping"
            );
            if let Err(o) = outcome {
                return o;
            }
            received += n;
        }
        if received == invalid && !people.is_empty() {
            return SendOutcome::Permanent {
                reason: UNMATCHED.into(),
            };
        }
        SendOutcome::Success { received, invalid }
    }
}

impl super::DestinationType for TiktokConfig {
    const TYPE_NAME: &'static str = "tiktok_audiences";
    const DELIVERY: DeliverySettings = DELIVERY;
    const MAX_BATCH: usize = MAX_ROWS_LIMIT;
    const FIELDS: &'static [super::FieldSpec] = FIELDS;
    type Running = TiktokDestination;

    fn check(&self) -> Vec<String> {
        TiktokConfig::problems(self)
    }

    fn start(
        name: String,
        config: Self,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self::Running> {
        TiktokDestination::new(name, config, delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[tokio::test]
    async fn unaddressable_people_are_unmatched_without_a_request() {
        let mut c = TiktokConfig::new(Secret::new("t"), "7001");
        c.base_url = "http://127.0.0.1:9".into();
        let d = TiktokDestination::new("tt", c, DELIVERY).unwrap();
        let def = AudienceDef {
            id: 1,
            name: "a".into(),
            segment_id: 42,
            mode: Default::default(),
            destinations: vec!["tt".into()],
        };
        let mapping = crate::destinations::Mapping::resolve(FIELDS, false, &[]).unwrap();
        let target = SendTarget {
            audience: &def,
            platform_audience_id: "9",
            mapping: &mapping,
            changed_at: &[],
        };
        assert_eq!(
            d.send(&target, SyncOp::Add, &[PersonRecord::default()])
                .await,
            SendOutcome::Permanent {
                reason: UNMATCHED.into()
            }
        );
        assert!(d.needs_profile());
    }
}
