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
use crate::destinations::{DeliverySettings, Destination, Mapping, SendOutcome, SendTarget};
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

impl SnowflakeDestination {
    /// `koala check --online`: the table's columns from the database's
    /// information schema (a `SELECT` with the schema and table bound),
    /// against the columns koala writes for each mapping. Reads only.
    async fn check_table(&self, mappings: &[&Mapping]) -> Vec<String> {
        let c = &self.config;
        let plain = c.qualified_table().replace('"', "");
        let sql = format!(
            "SELECT COLUMN_NAME, DATA_TYPE, IS_NULLABLE, COLUMN_DEFAULT FROM {}.INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            config::quote(&c.database)
        );
        let text = |v: &str| serde_json::json!({"type": "TEXT", "value": v.to_ascii_uppercase()});
        let bindings = serde_json::json!({"1": text(&c.schema), "2": text(&c.table)});
        let rows = match self.service.query(&sql, bindings).await {
            Ok(rows) => rows,
            Err(SendOutcome::RetryLater { reason, .. }) => {
                return vec![format!(
                    "could not reach Snowflake to read the columns of table {plain}: {reason}; try again"
                )]
            }
            Err(o) => {
                return vec![format!(
                    "user {} could not read the columns of table {plain}: {}",
                    c.user.to_ascii_uppercase(),
                    o.reason()
                )]
            }
        };
        if rows.is_empty() {
            if c.create_table {
                // Created before the first statement.
                return Vec::new();
            }
            return vec![format!(
                "snowflake table {plain} does not exist, or the role cannot see it: create it (the README's Snowflake section shows the DDL) or set create_table = true"
            )];
        }
        let cell = |r: &std::collections::HashMap<String, Option<String>>, k: &str| {
            r.get(k).cloned().flatten().unwrap_or_default()
        };
        let found: Vec<encoder::FoundColumn> = rows
            .iter()
            .map(|r| encoder::FoundColumn {
                name: cell(r, "COLUMN_NAME"),
                data_type: cell(r, "DATA_TYPE"),
                nullable: !cell(r, "IS_NULLABLE").eq_ignore_ascii_case("NO"),
                has_default: r.get("COLUMN_DEFAULT").is_some_and(Option::is_some),
            })
            .collect();
        let none = Mapping::default();
        let mappings: Vec<&Mapping> = if mappings.is_empty() {
            vec![&none]
        } else {
            mappings.to_vec()
        };
        let mut problems: Vec<String> = Vec::new();
        for m in mappings {
            let found_problems = match encoder::Layout::new(c, m) {
                Ok(layout) => encoder::drift(&layout, &found),
                Err(reason) => vec![format!("snowflake: {reason}")],
            };
            for p in found_problems {
                if !problems.contains(&p) {
                    problems.push(p);
                }
            }
        }
        problems
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

    /// The table's columns (information schema) against those koala
    /// writes for `mappings`; no statement but one `SELECT` is run.
    async fn verify(&self, mappings: &[&Mapping]) -> Vec<String> {
        self.check_table(mappings).await
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
