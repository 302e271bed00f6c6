//! Snowflake (<https://docs.snowflake.com/en/developer-guide/sql-api/index>):
//! audience membership as rows of one table, kept by `MERGE` statements
//! with bound parameters through the SQL API v2, authenticated by a
//! key-pair JWT. Adds and attribute updates upsert a person's row, exits
//! mark or delete it; each statement's `requestId` is derived from its
//! content, so a batch sent again is not executed twice.

pub mod auth;
pub mod config;
pub mod encoder;
pub mod request;
pub mod service;

pub use config::{SnowflakeConfig, DELIVERY};

use std::collections::HashSet;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::audiences::{AudienceDef, SyncOp};
use crate::destinations::{DeliverySettings, Destination, SendOutcome, SendTarget};
use crate::person::PersonRecord;

pub struct SnowflakeDestination {
    name: String,
    config: SnowflakeConfig,
    delivery: DeliverySettings,
    service: service::Service,
    /// Mappings (by fingerprint) whose `CREATE TABLE IF NOT EXISTS` ran.
    created: Mutex<HashSet<String>>,
}

impl SnowflakeDestination {
    pub fn new(
        name: impl Into<String>,
        config: SnowflakeConfig,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self> {
        let key = config.signing_key().map_err(|e| anyhow::anyhow!(e))?;
        let auth = auth::KeyPairAuth::new(
            key,
            &config.account,
            &config.user,
            config.jwt_lifetime,
            config.jwt_refresh_margin,
        );
        let service = service::Service::new(
            config.base_url(),
            auth,
            &config.user,
            request::Context::of(&config),
            config.poll_interval,
            delivery.request_timeout,
        )?;
        Ok(SnowflakeDestination {
            name: name.into(),
            config,
            delivery,
            service,
            created: Mutex::new(HashSet::new()),
        })
    }

    async fn ensure_table(
        &self,
        layout: &encoder::Layout,
        mapping_hash: &str,
    ) -> Result<(), SendOutcome> {
        if !self.config.create_table || self.created.lock().expect("created").contains(mapping_hash)
        {
            return Ok(());
        }
        // DDL is idempotent (IF NOT EXISTS): a fresh request id each time.
        self.service
            .execute(&layout.create_table(), None, uuid::Uuid::new_v4())
            .await?;
        self.created
            .lock()
            .expect("created")
            .insert(mapping_hash.to_owned());
        Ok(())
    }
}

#[async_trait]
impl Destination for SnowflakeDestination {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> DeliverySettings {
        self.delivery
    }

    /// A row is keyed by the Customer.io id, else `cio_id`.
    fn can_address(&self, person: &PersonRecord) -> bool {
        person.row_id().is_some()
    }

    fn needs_profile(&self) -> bool {
        true
    }

    /// The `audience` column holds the koala audience name unless the
    /// sync entry gives an `audience_id`.
    async fn create_audience(&self, audience: &AudienceDef) -> Result<String, SendOutcome> {
        Ok(audience.name.clone())
    }

    async fn send(
        &self,
        target: &SendTarget<'_>,
        op: SyncOp,
        people: &[PersonRecord],
    ) -> SendOutcome {
        let layout = match encoder::Layout::new(&self.config, target.mapping) {
            Ok(l) => l,
            Err(reason) => {
                return SendOutcome::DestinationDown {
                    reason: format!("snowflake: {reason}"),
                }
            }
        };
        if let Err(o) = self.ensure_table(&layout, target.mapping.hash()).await {
            return o;
        }
        let limits = encoder::Limits {
            max_rows: self.config.max_rows_per_statement,
            max_bindings: self.config.max_bindings_per_statement,
        };
        for stmt in encoder::statements(&layout, &self.name, target, op, people, limits) {
            let id = stmt.request_id(&self.name, &self.config.account);
            let outcome = self
                .service
                .execute(&stmt.sql, Some(stmt.bindings_json()), id)
                .await;
            tracing::debug!(
                destination = %self.name,
                audience = %target.audience.name,
                op = op.as_str(),
                rows = stmt.rows,
                request_id = %id,
                ok = outcome.is_ok(),
                "snowflake statement"
            );
            if let Err(o) = outcome {
                return o;
            }
        }
        SendOutcome::Success {
            received: people.len(),
            invalid: 0,
        }
    }
}

impl super::DestinationType for SnowflakeConfig {
    const TYPE_NAME: &'static str = "snowflake";
    const DELIVERY: DeliverySettings = DELIVERY;
    const MAX_BATCH: usize = config::MAX_MEMBERS_LIMIT;
    const FIELDS: &'static [super::FieldSpec] = config::FIELDS;
    const TAKES_ANY_FIELD: bool = true;
    type Running = SnowflakeDestination;

    fn check(&self) -> Vec<String> {
        SnowflakeConfig::problems(self)
    }

    fn check_mapping(&self, mapping: &super::Mapping) -> Vec<String> {
        config::mapping_problems(mapping)
    }

    fn start(
        name: String,
        config: Self,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self::Running> {
        SnowflakeDestination::new(name, config, delivery)
    }
}
