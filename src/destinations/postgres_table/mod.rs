//! A PostgreSQL warehouse table: current membership (one row per audience
//! and person, the configured identifiers and one typed column per mapped
//! attribute) and an append-only history of the changes, written in the
//! team's own database. The tables are created if missing and checked
//! before the first write of each mapping; a table that drifted from what
//! koala writes pauses the destination with a reason naming the column.

pub mod config;
pub mod schema;
pub mod writer;

pub use config::{PostgresConfig, DELIVERY};

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row;

use crate::audiences::{AudienceDef, SyncOp};
use crate::destinations::{
    DeliverySettings, Destination, Mapping, SendOutcome, SendTarget, UNMATCHED,
};
use crate::person::PersonRecord;
use schema::FoundColumns;
use writer::ColumnValues;

pub struct PostgresDestination {
    name: String,
    config: PostgresConfig,
    delivery: DeliverySettings,
    pool: PgPool,
    /// Mapping fingerprints whose columns were checked (and added); cleared
    /// when a write meets a schema error, so a resume checks again.
    verified: tokio::sync::Mutex<HashSet<String>>,
}

impl PostgresDestination {
    pub fn new(
        name: impl Into<String>,
        config: PostgresConfig,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self> {
        let timeout_ms = delivery.request_timeout.as_millis().max(1);
        let options: PgConnectOptions = config
            .url
            .expose()
            .parse()
            .map_err(|_| anyhow::anyhow!("url: not a postgres URL"))?;
        let options = options
            .application_name("koala")
            .options([("statement_timeout", format!("{timeout_ms}ms"))]);
        // Lazy: koala starts (and takes webhooks) while the warehouse is
        // down; sends wait and retry until it is back.
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size)
            .acquire_timeout(delivery.request_timeout.min(Duration::from_secs(10)))
            .connect_lazy_with(options);
        Ok(PostgresDestination {
            name: name.into(),
            config,
            delivery,
            pool,
            verified: tokio::sync::Mutex::new(HashSet::new()),
        })
    }

    fn tables(&self) -> writer::Tables<'_> {
        writer::Tables {
            schema: &self.config.schema,
            members: &self.config.members_table,
            history: &self.config.history_table,
            identifiers: &self.config.identifiers,
            on_exit: self.config.on_exit,
        }
    }

    /// The tables' columns as the database holds them.
    async fn found(&self) -> Result<(FoundColumns, FoundColumns), sqlx::Error> {
        let rows = sqlx::query(
            "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = $1 AND table_name = ANY($2)",
        )
        .bind(&self.config.schema)
        .bind(vec![
            self.config.members_table.clone(),
            self.config.history_table.clone(),
        ])
        .fetch_all(&self.pool)
        .await?;
        let mut members: Option<BTreeMap<String, String>> = None;
        let mut history: Option<BTreeMap<String, String>> = None;
        for r in rows {
            let table: String = r.get(0);
            let slot = if table == self.config.members_table {
                &mut members
            } else {
                &mut history
            };
            slot.get_or_insert_with(BTreeMap::new)
                .insert(r.get(1), r.get(2));
        }
        Ok((members, history))
    }

    /// What stands between the tables and `mappings`: the statements koala
    /// would run, or the drift that needs a person.
    async fn plan(
        &self,
        mappings: &[&Mapping],
    ) -> Result<Result<Vec<String>, String>, sqlx::Error> {
        let (members, history) = self.found().await?;
        let mut steps = Vec::new();
        for spec in std::iter::once(schema::history_table(&self.config)).chain(
            mappings
                .iter()
                .map(|m| schema::members_table(&self.config, m)),
        ) {
            let found = if spec.name == self.config.members_table {
                &members
            } else {
                &history
            };
            match schema::plan(&spec, found, self.config.create_tables) {
                Ok(s) => steps.extend(s),
                Err(drift) => return Ok(Err(drift)),
            }
        }
        steps.dedup();
        Ok(Ok(steps))
    }

    /// Checks (and when allowed, creates) the tables for `mapping`, once
    /// per mapping until a write says the schema moved.
    async fn ensure(&self, mapping: &Mapping) -> Result<(), SendOutcome> {
        let mut verified = self.verified.lock().await;
        if verified.contains(mapping.hash()) {
            return Ok(());
        }
        let steps = match self.plan(&[mapping]).await.map_err(|e| self.outcome(&e))? {
            Ok(steps) => steps,
            Err(drift) => return Err(self.down(drift)),
        };
        if !steps.is_empty() {
            let mut tx = self.pool.begin().await.map_err(|e| self.outcome(&e))?;
            // Replicas (or two destinations on one table) change the
            // schema one at a time.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(format!("koala:{}", self.config.schema))
                .execute(&mut *tx)
                .await
                .map_err(|e| self.outcome(&e))?;
            let create_schema = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.config.schema);
            for sql in std::iter::once(&create_schema).chain(&steps) {
                sqlx::query(sql)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.outcome(&e))?;
            }
            tx.commit().await.map_err(|e| self.outcome(&e))?;
            tracing::info!(destination = %self.name, steps = steps.len(), "warehouse tables brought up to the mapping");
        }
        verified.insert(mapping.hash().to_owned());
        Ok(())
    }

    fn down(&self, reason: String) -> SendOutcome {
        SendOutcome::DestinationDown {
            reason: format!("postgres destination {:?}: {reason}", self.name),
        }
    }

    /// How a database error answers the batch.
    fn outcome(&self, e: &sqlx::Error) -> SendOutcome {
        match classify(e) {
            ErrorClass::Schema(reason) => {
                if let Ok(mut v) = self.verified.try_lock() {
                    v.clear();
                }
                self.down(reason)
            }
            ErrorClass::Down(reason) => self.down(reason),
            ErrorClass::Rows(reason) => SendOutcome::Permanent {
                reason: format!("postgres: {reason}"),
            },
            ErrorClass::Passing(reason) => SendOutcome::RetryLater {
                after: None,
                reason: format!("postgres: {reason}"),
            },
        }
    }
}

/// What a database error means for koala.
#[derive(Debug, PartialEq)]
enum ErrorClass {
    /// The table is not what koala writes (a column or table gone or
    /// retyped): nothing will succeed until someone acts.
    Schema(String),
    /// Credentials or permissions.
    Down(String),
    /// These rows cannot be written (a value the column refuses): the
    /// engine splits the batch to find them.
    Rows(String),
    /// A passing condition (connection, timeout, deadlock, shutdown).
    Passing(String),
}

fn classify(e: &sqlx::Error) -> ErrorClass {
    let sqlx::Error::Database(db) = e else {
        return ErrorClass::Passing(match e {
            sqlx::Error::PoolTimedOut => "no connection to the warehouse within the timeout".into(),
            sqlx::Error::Io(io) => format!("connection failed ({})", io.kind()),
            sqlx::Error::Tls(_) => "TLS failed".into(),
            _ => "the connection failed".into(),
        });
    };
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    let reason = format!("{} (SQLSTATE {code})", scrub(db.message()));
    match code.as_str() {
        // undefined_table, undefined_column, datatype_mismatch,
        // invalid_schema_name, wrong_object_type
        "42P01" | "42703" | "42804" | "3F000" | "42809" => ErrorClass::Schema(reason),
        // insufficient_privilege, then invalid authorization
        "42501" => ErrorClass::Down(reason),
        c if c.starts_with("28") => ErrorClass::Down(reason),
        // data exceptions and integrity violations belong to rows
        c if c.starts_with("22") || c.starts_with("23") => ErrorClass::Rows(reason),
        _ => ErrorClass::Passing(reason),
    }
}

/// PostgreSQL quotes an offending value after a colon
/// (`invalid input syntax for type double precision: "…"`); what follows
/// is cut so no person's data reaches a log or the admin API.
fn scrub(message: &str) -> String {
    match message.find(": \"") {
        Some(i) => format!("{}: …", &message[..i]),
        None => message.to_owned(),
    }
}

#[async_trait]
impl Destination for PostgresDestination {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> DeliverySettings {
        self.delivery
    }

    fn can_address(&self, person: &PersonRecord) -> bool {
        person.row_id().is_some()
    }

    fn needs_profile(&self) -> bool {
        true
    }

    /// The table's `audience` column holds the koala audience name unless
    /// the sync target's `audience_id` names it otherwise.
    async fn create_audience(&self, audience: &AudienceDef) -> Result<String, SendOutcome> {
        Ok(audience.name.clone())
    }

    async fn send(
        &self,
        target: &SendTarget<'_>,
        op: SyncOp,
        people: &[PersonRecord],
    ) -> SendOutcome {
        if let Err(o) = self.ensure(target.mapping).await {
            return o;
        }
        let statement = writer::statement(&self.tables(), target, op, people, &self.name);
        if statement.rows == 0 {
            return SendOutcome::Permanent {
                reason: UNMATCHED.into(),
            };
        }
        let mut query = sqlx::query(&statement.sql)
            .bind(&statement.audience)
            .bind(statement.change);
        for input in &statement.inputs {
            query = match &input.values {
                ColumnValues::Text(v) => query.bind(v),
                ColumnValues::Double(v) => query.bind(v),
                ColumnValues::Boolean(v) => query.bind(v),
                ColumnValues::Timestamp(v) => query.bind(v),
            };
        }
        match query.execute(&self.pool).await {
            Ok(done) => {
                tracing::debug!(
                    destination = %self.name,
                    audience = %target.audience.name,
                    op = op.as_str(),
                    rows = statement.rows,
                    history = done.rows_affected(),
                    "postgres batch"
                );
                SendOutcome::Success {
                    received: people.len(),
                    invalid: people.len() - statement.rows,
                }
            }
            Err(e) => self.outcome(&e),
        }
    }

    async fn verify(&self, mappings: &[&Mapping]) -> Vec<String> {
        match self.plan(mappings).await {
            Ok(Ok(_)) => Vec::new(),
            Ok(Err(drift)) => vec![drift],
            Err(e) => vec![match classify(&e) {
                ErrorClass::Schema(r)
                | ErrorClass::Down(r)
                | ErrorClass::Rows(r)
                | ErrorClass::Passing(r) => format!("cannot read the tables: {r}"),
            }],
        }
    }
}

impl super::DestinationType for PostgresConfig {
    const TYPE_NAME: &'static str = "postgres";
    const DELIVERY: DeliverySettings = DELIVERY;
    const MAX_BATCH: usize = config::MAX_ROWS_LIMIT;
    const FIELDS: &'static [super::FieldSpec] = config::FIELDS;
    const TAKES_ANY_FIELD: bool = true;
    type Running = PostgresDestination;

    fn check(&self) -> Vec<String> {
        PostgresConfig::problems(self)
    }

    fn check_mapping(&self, mapping: &Mapping) -> Vec<String> {
        PostgresConfig::mapping_problems(mapping)
    }

    fn start(
        name: String,
        config: Self,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self::Running> {
        PostgresDestination::new(name, config, delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_quoted_by_postgres_never_reach_a_reason() {
        assert_eq!(
            scrub("invalid input syntax for type double precision: \"ann@example.com\""),
            "invalid input syntax for type double precision: …"
        );
        assert_eq!(
            scrub("column \"ltv\" of relation \"audience_members\" does not exist"),
            "column \"ltv\" of relation \"audience_members\" does not exist"
        );
    }
}
