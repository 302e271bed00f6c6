//! Meta (Facebook/Instagram) customer-list Custom Audiences.
//!
//! `config` is the TOML table, `encoder` turns people into hashed rows,
//! `request` builds the Graph API calls and `service` sends them and
//! classifies the answers. Contract: shared reference, destination-apis §1.

mod config;
mod encoder;
mod request;
mod service;

use async_trait::async_trait;

pub use config::{CustomerFileSource, MetaConfig, MetaKey, DELIVERY, FIELDS, MAX_ROWS_PER_REQUEST};
pub use encoder::{Encoder, Payload};
pub use request::{Endpoints, MetaRequest};
pub use service::Service;

use super::{DeliverySettings, Destination, ReplaceSession, SendOutcome, SendTarget, UNMATCHED};
use crate::audiences::AudienceDef;
use crate::audiences::SyncOp;
use crate::person::PersonRecord;

pub struct MetaDestination {
    name: String,
    config: MetaConfig,
    delivery: DeliverySettings,
    encoder: Encoder,
    endpoints: Endpoints,
    service: Service,
}

impl MetaDestination {
    /// Fails on settings with problems (see [`MetaConfig::problems`] and
    /// [`DeliverySettings::problems`]).
    pub fn new(
        name: impl Into<String>,
        config: MetaConfig,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self> {
        let name = name.into();
        let mut problems = config.problems();
        problems.extend(delivery.problems(MAX_ROWS_PER_REQUEST));
        if !problems.is_empty() {
            anyhow::bail!("destination {name:?}: {}", problems.join("; "));
        }
        Ok(MetaDestination {
            encoder: Encoder::new(&name, &config.identifiers),
            endpoints: Endpoints::new(&config.base_url, &config.api_version)?,
            service: Service::new(delivery.request_timeout, config.access_token.clone())?,
            name,
            config,
            delivery,
        })
    }

    pub fn config(&self) -> &MetaConfig {
        &self.config
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }
}

#[async_trait]
impl Destination for MetaDestination {
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
        self.config
            .identifiers
            .iter()
            .any(|k| !matches!(k, MetaKey::ExternId | MetaKey::Email))
    }

    async fn create_audience(&self, audience: &AudienceDef) -> Result<String, SendOutcome> {
        let Some(account) = self.config.ad_account_number() else {
            return Err(SendOutcome::DestinationDown {
                reason: "ad_account_id is required to create audiences".into(),
            });
        };
        let description = format!(
            "Synced by koala from Customer.io segment {}",
            audience.segment_id
        );
        let req = self.endpoints.create_audience(
            account,
            &audience.name,
            &description,
            self.config.customer_file_source,
        );
        let result = self.service.create(req).await;
        tracing::debug!(
            destination = %self.name,
            audience = %audience.name,
            ok = result.is_ok(),
            "meta create audience"
        );
        result
    }

    /// People the encoder cannot address are left out and counted as
    /// invalid. A batch over Meta's 10,000-row limit goes in several
    /// requests; add and remove are idempotent, so a failure part-way is
    /// safe to retry whole.
    async fn send(
        &self,
        target: &SendTarget<'_>,
        op: SyncOp,
        people: &[PersonRecord],
    ) -> SendOutcome {
        let audience_id = target.platform_audience_id;
        let (mut received, mut invalid, mut sent) = (0, 0, 0);
        for chunk in people.chunks(MAX_ROWS_PER_REQUEST) {
            let (payload, skipped) = self.encoder.payload(chunk, target.mapping);
            received += skipped;
            invalid += skipped;
            if payload.data.is_empty() {
                continue;
            }
            let rows = payload.data.len();
            let req = self.endpoints.users(audience_id, op, &payload);
            let outcome = self.service.users(req, rows).await;
            tracing::debug!(
                destination = %self.name,
                audience_id,
                op = op.as_str(),
                rows,
                outcome = outcome.class(),
                "meta users batch"
            );
            match outcome {
                SendOutcome::Success {
                    received: r,
                    invalid: i,
                } => {
                    received += r;
                    invalid += i;
                    sent += rows;
                }
                other => return other,
            }
        }
        if sent == 0 && !people.is_empty() {
            return SendOutcome::Permanent {
                reason: UNMATCHED.into(),
            };
        }
        SendOutcome::Success { received, invalid }
    }

    fn supports_replace(&self) -> bool {
        true
    }

    /// One `usersreplace` request: a session's batch cannot be split here
    /// (its sequence number is the caller's), so more than 10,000 people
    /// or none addressable is refused without a request.
    async fn send_replace(
        &self,
        target: &SendTarget<'_>,
        session: &ReplaceSession,
        people: &[PersonRecord],
    ) -> SendOutcome {
        let audience_id = target.platform_audience_id;
        if people.len() > MAX_ROWS_PER_REQUEST {
            return SendOutcome::Permanent {
                reason: format!(
                    "a replace batch holds at most {MAX_ROWS_PER_REQUEST} people, not {}",
                    people.len()
                ),
            };
        }
        let (payload, skipped) = self.encoder.payload(people, target.mapping);
        if payload.data.is_empty() {
            return SendOutcome::Permanent {
                reason: UNMATCHED.into(),
            };
        }
        let rows = payload.data.len();
        let req = self.endpoints.users_replace(audience_id, session, &payload);
        let outcome = self.service.users(req, rows).await;
        tracing::debug!(
            destination = %self.name,
            audience_id,
            batch_seq = session.batch_seq,
            last_batch = session.last_batch,
            rows,
            outcome = outcome.class(),
            "meta usersreplace batch"
        );
        match outcome {
            SendOutcome::Success { received, invalid } => SendOutcome::Success {
                received: received + skipped,
                invalid: invalid + skipped,
            },
            other => other,
        }
    }
}

impl super::DestinationType for MetaConfig {
    const TYPE_NAME: &'static str = "meta_custom_audiences";
    const DELIVERY: DeliverySettings = DELIVERY;
    const MAX_BATCH: usize = MAX_ROWS_PER_REQUEST;
    const FIELDS: &'static [super::FieldSpec] = FIELDS;
    type Running = MetaDestination;

    fn check(&self) -> Vec<String> {
        MetaConfig::problems(self)
    }

    fn start(
        name: String,
        config: Self,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self::Running> {
        MetaDestination::new(name, config, delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::Mapping;
    use crate::secret::Secret;
    use std::time::Duration;

    #[test]
    fn limits_come_from_the_settings() {
        let c = MetaConfig::new(Secret::new("t"));
        let delivery = DeliverySettings {
            max_batch: 500,
            concurrency: 3,
            min_linger: Duration::from_secs(2),
            ..DELIVERY
        };
        let d = MetaDestination::new("meta", c, delivery).unwrap();
        let l = d.limits();
        assert_eq!(l.max_batch, 500);
        assert_eq!(l.concurrency, 3);
        assert_eq!(l.requests_per_second, 5.0);
        assert_eq!(l.min_linger, Duration::from_secs(2));
        assert_eq!(l.base_backoff, Duration::from_secs(1));
        assert_eq!(l.max_backoff, Duration::from_secs(300));
    }

    #[test]
    fn a_config_with_problems_is_refused() {
        let c = MetaConfig::new(Secret::new("t"));
        let delivery = DeliverySettings {
            max_batch: 0,
            ..DELIVERY
        };
        let e = MetaDestination::new("meta", c, delivery)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("max_batch"), "{e}");
    }

    #[tokio::test]
    async fn a_batch_of_unaddressable_people_is_unmatched_without_a_request() {
        let mut c = MetaConfig::new(Secret::new("t"));
        // Nothing listens here: a request would come back as a retry.
        c.base_url = "http://127.0.0.1:9".into();
        let d = MetaDestination::new("meta", c, DELIVERY).unwrap();
        let def = audience_def();
        let mapping = Mapping::default();
        let target = SendTarget {
            audience: &def,
            platform_audience_id: "1",
            mapping: &mapping,
            changed_at: &[],
        };
        let out = d
            .send(&target, SyncOp::Add, &[PersonRecord::default()])
            .await;
        assert_eq!(
            out,
            SendOutcome::Permanent {
                reason: UNMATCHED.into()
            }
        );
        assert_eq!(
            d.send(&target, SyncOp::Add, &[]).await,
            SendOutcome::Success {
                received: 0,
                invalid: 0
            }
        );
    }

    #[tokio::test]
    async fn a_replace_batch_that_cannot_be_sent_is_refused_without_a_request() {
        let mut c = MetaConfig::new(Secret::new("t"));
        c.base_url = "http://127.0.0.1:9".into();
        let d = MetaDestination::new("meta", c, DELIVERY).unwrap();
        assert!(d.supports_replace());
        let session = ReplaceSession {
            session_id: 1,
            batch_seq: 1,
            last_batch: true,
            estimated_total: 1,
        };
        let (def, mapping) = (audience_def(), Mapping::default());
        let target = SendTarget {
            audience: &def,
            platform_audience_id: "1",
            mapping: &mapping,
            changed_at: &[],
        };
        assert_eq!(
            d.send_replace(&target, &session, &[PersonRecord::default()])
                .await,
            SendOutcome::Permanent {
                reason: UNMATCHED.into()
            }
        );
        let many = vec![PersonRecord::default(); MAX_ROWS_PER_REQUEST + 1];
        assert_eq!(
            d.send_replace(&target, &session, &many).await.class(),
            "permanent"
        );
    }

    fn audience_def() -> AudienceDef {
        AudienceDef {
            id: 1,
            name: "a".into(),
            segment_id: 42,
            mode: Default::default(),
            destinations: vec!["meta".into()],
        }
    }

    #[tokio::test]
    async fn create_needs_an_ad_account() {
        let d = MetaDestination::new("meta", MetaConfig::new(Secret::new("t")), DELIVERY).unwrap();
        let def = audience_def();
        assert_eq!(
            d.create_audience(&def).await,
            Err(SendOutcome::DestinationDown {
                reason: "ad_account_id is required to create audiences".into()
            })
        );
    }
}
