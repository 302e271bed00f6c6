//! BigQuery: every membership change is one append-only row, streamed
//! with `tabledata.insertAll`
//! (<https://cloud.google.com/bigquery/docs/reference/rest/v2/tabledata/insertAll>)
//! under a deterministic `insertId`; a view gives current membership.
//!
//! `config` is the TOML table and the service account key, `schema` the
//! table's columns and the view, `encoder` turns people into rows and
//! packs them into requests, `request` names the endpoints, `service`
//! sends (with the shared [`google_oauth`](super::google_oauth) token
//! cache) and classifies.

pub mod config;
pub mod encoder;
pub mod request;
pub mod schema;
pub mod service;

pub use config::{BigQueryConfig, Identifier, DELIVERY};

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::google_oauth::{Grant, TokenSource};
use super::{DeliverySettings, Destination, Mapping, RefusedRow, SendOutcome, SendTarget};
use crate::audiences::{AudienceDef, SyncOp};
use crate::person::PersonRecord;
use service::{Failure, Lookup, Service, Verdict};

/// A table koala just created may answer 404 to streaming for a while
/// (UNCONFIRMED how long): within this window a 404 is retried.
const FRESH_TABLE: Duration = Duration::from_secs(300);

pub struct BigQueryDestination {
    name: String,
    config: BigQueryConfig,
    delivery: DeliverySettings,
    endpoints: request::Endpoints,
    service: Service,
    /// The service account koala acts as (named in `koala check --online`).
    client_email: String,
    /// Mapping fingerprints whose table and view are known to exist
    /// (with `create_table`), and when koala created the table.
    ensured: tokio::sync::Mutex<(HashSet<String>, Option<Instant>)>,
}

impl BigQueryDestination {
    /// Fails on settings with problems (see [`BigQueryConfig::problems`]).
    pub fn new(
        name: impl Into<String>,
        config: BigQueryConfig,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self> {
        let name = name.into();
        let mut problems = config.problems();
        problems.extend(delivery.problems(config::MAX_ROWS_LIMIT));
        if !problems.is_empty() {
            anyhow::bail!("destination {name:?}: {}", problems.join("; "));
        }
        let account = config.service_account().map_err(anyhow::Error::msg)?;
        let client = crate::outbound::client(delivery.request_timeout)?;
        let client_email = account.client_email.clone();
        let tokens = TokenSource::new(
            client.clone(),
            config.token_endpoint(&account),
            Grant::ServiceAccount {
                client_email: account.client_email,
                key: account.key,
                scope: config::SCOPE.into(),
            },
            config.token_refresh_margin,
        );
        Ok(BigQueryDestination {
            endpoints: request::Endpoints::new(
                &config.base_url,
                &config.project,
                &config.dataset,
                &config.table,
            )?,
            service: Service::new(client, tokens),
            client_email,
            ensured: Default::default(),
            name,
            config,
            delivery,
        })
    }

    fn table_label(&self) -> String {
        format!("table {}", self.config.table_path())
    }

    /// With `create_table`: creates the table for this mapping's columns
    /// and the view, once per mapping; an existing one (409) is fine.
    async fn ensure_table(&self, mapping: &Mapping) -> Result<(), SendOutcome> {
        if !self.config.create_table {
            return Ok(());
        }
        let mut ensured = self.ensured.lock().await;
        if ensured.0.contains(mapping.hash()) {
            return Ok(());
        }
        let c = &self.config;
        let columns = schema::columns(&c.identifiers, c.hash_identifiers, mapping);
        let table = schema::table_body(&c.project, &c.dataset, &c.table, &columns);
        let dataset = format!("{}.{}", c.project, c.dataset);
        let created = self
            .service
            .create(
                &self.endpoints.tables,
                &table,
                &self.table_label(),
                &dataset,
            )
            .await?;
        if created {
            tracing::info!(destination = %self.name, table = %c.table_path(), columns = columns.len(), "created bigquery table");
            ensured.1 = Some(Instant::now());
        }
        let view_name = c.view_name();
        let view = schema::view_body(&c.project, &c.dataset, &view_name, &c.table);
        let view_label = format!("view {}.{}.{view_name}", c.project, c.dataset);
        if self
            .service
            .create(&self.endpoints.tables, &view, &view_label, &dataset)
            .await?
        {
            tracing::info!(destination = %self.name, view = %view_label, "created bigquery view");
        }
        ensured.0.insert(mapping.hash().to_owned());
        Ok(())
    }

    /// A 404 from insertAll: retried shortly after koala created the
    /// table, else a pause (and the table is created again on resume).
    async fn not_found(&self, outcome: SendOutcome) -> SendOutcome {
        let mut ensured = self.ensured.lock().await;
        if ensured.1.is_some_and(|at| at.elapsed() < FRESH_TABLE) {
            return SendOutcome::RetryLater {
                after: Some(Duration::from_secs(5)),
                reason: format!(
                    "bigquery does not stream into {} yet (created moments ago)",
                    self.table_label()
                ),
            };
        }
        ensured.0.clear();
        outcome
    }

    fn drift(&self, field: Option<String>, message: String, mapping: &Mapping) -> SendOutcome {
        let c = &self.config;
        let path = c.table_path();
        let reason = match field {
            Some(f) if message.to_ascii_lowercase().contains("missing required field") => format!(
                "bigquery table {path} requires column {f}, which koala does not write: make it NULLABLE (or drop it), then resume"
            ),
            Some(f) => {
                let known = schema::columns(&c.identifiers, c.hash_identifiers, mapping)
                    .into_iter()
                    .find(|col| col.name.eq_ignore_ascii_case(&f));
                match known {
                    Some(col) => format!(
                        "bigquery table {path} has no column {f}: add it (ALTER TABLE `{path}` ADD COLUMN {f} {}) or take it out of map, then resume",
                        col.kind.as_str()
                    ),
                    None => format!("bigquery table {path} has no column {f} ({message}): fix the table or map, then resume"),
                }
            }
            None => format!("bigquery table {path} does not match the rows koala writes ({message}): fix the table or map, then resume"),
        };
        SendOutcome::DestinationDown { reason }
    }
}

#[async_trait]
impl Destination for BigQueryDestination {
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

    /// Rows name the audience; without an `audience_id`, koala's name.
    async fn create_audience(&self, audience: &AudienceDef) -> Result<String, SendOutcome> {
        Ok(audience.name.clone())
    }

    /// Rows too big for a request alone are refused before sending; the
    /// rest go in requests that fit the limits, each all-or-nothing. Rows
    /// BigQuery refuses are refused alone and the request's other rows
    /// sent again at once.
    async fn send(
        &self,
        target: &SendTarget<'_>,
        op: SyncOp,
        people: &[PersonRecord],
    ) -> SendOutcome {
        if let Err(o) = self.ensure_table(target.mapping).await {
            return o;
        }
        let c = &self.config;
        let enc = encoder::Encoder {
            destination: &self.name,
            identifiers: &c.identifiers,
            hashed: c.hash_identifiers,
        };
        let synced_at =
            encoder::timestamp(chrono::Utc::now().timestamp_millis()).unwrap_or_default();
        let mut refused = Vec::new();
        // (index in `people`, serialized row)
        let mut rows: Vec<(usize, Vec<u8>)> = Vec::with_capacity(people.len());
        for (index, p) in people.iter().enumerate() {
            let at = target.changed_at.get(index).copied().unwrap_or(0);
            match enc.row(target, op, p, at, &synced_at) {
                Ok(row) if encoder::alone(&row) > c.max_request_bytes => refused.push(RefusedRow {
                    index,
                    reason: format!(
                        "too large for BigQuery: a row of {} bytes does not fit max_request_bytes ({}) even alone; map fewer or shorter attributes",
                        row.len(),
                        c.max_request_bytes
                    ),
                }),
                Ok(row) => rows.push((index, row)),
                Err(reason) => refused.push(RefusedRow { index, reason }),
            }
        }
        let sizes: Vec<usize> = rows.iter().map(|(_, r)| r.len()).collect();
        let table = self.table_label();
        let mut stored = 0;
        for group in encoder::pack(&sizes, c.max_rows_per_request, c.max_request_bytes) {
            let mut pending: Vec<usize> = group.collect();
            while !pending.is_empty() {
                let body = encoder::body(pending.iter().map(|i| rows[*i].1.as_slice()));
                let bytes = body.len();
                let answer = self
                    .service
                    .insert_all(&self.endpoints.insert_all, body, &table)
                    .await;
                tracing::debug!(
                    destination = %self.name,
                    audience = %target.audience.name,
                    op = op.as_str(),
                    rows = pending.len(),
                    bytes,
                    ok = answer.as_ref().is_ok_and(Vec::is_empty),
                    "bigquery insertAll"
                );
                let errors = match answer {
                    Ok(errors) => errors,
                    Err(Failure::NotFound(o)) => return self.not_found(o).await,
                    Err(Failure::Other(o)) => return o,
                };
                if errors.is_empty() {
                    stored += pending.len();
                    break;
                }
                match service::verdict(&errors) {
                    Verdict::SchemaDrift { field, message } => {
                        return self.drift(field, message, target.mapping)
                    }
                    Verdict::Refused(bad) if bad.is_empty() => {
                        return SendOutcome::RetryLater {
                            after: None,
                            reason: "bigquery stopped the rows without naming one at fault".into(),
                        }
                    }
                    Verdict::Refused(bad) => {
                        let mut at_fault = HashSet::new();
                        for (i, reason) in bad {
                            if let Some(row) = pending.get(i) {
                                at_fault.insert(*row);
                                refused.push(RefusedRow {
                                    index: rows[*row].0,
                                    reason,
                                });
                            }
                        }
                        if at_fault.is_empty() {
                            return SendOutcome::RetryLater {
                                after: None,
                                reason: "bigquery refused rows the request did not hold".into(),
                            };
                        }
                        pending.retain(|r| !at_fault.contains(r));
                    }
                }
            }
        }
        if refused.is_empty() {
            SendOutcome::Success {
                received: stored,
                invalid: 0,
            }
        } else {
            refused.sort_by_key(|r| r.index);
            SendOutcome::PartlyRefused { refused }
        }
    }

    /// The table's columns (`tables.get`) against those koala writes for
    /// `mappings`; nothing is sent or created.
    async fn verify(&self, mappings: &[&Mapping]) -> Vec<String> {
        self.check_table(mappings).await
    }
}

impl BigQueryDestination {
    /// `koala check --online`: `tables.get` of the table, its columns
    /// against those koala writes for each mapping. Reads only.
    async fn check_table(&self, mappings: &[&Mapping]) -> Vec<String> {
        let c = &self.config;
        let path = c.table_path();
        let dataset = format!("{}.{}", c.project, c.dataset);
        let lookup = self
            .service
            .get_table(&self.endpoints.table, &self.table_label(), &dataset)
            .await;
        let table = match lookup {
            Ok(Lookup::Found(table)) => table,
            Ok(Lookup::Missing { dataset: true }) => {
                return vec![format!(
                    "bigquery dataset {dataset} does not exist: create it (koala creates the table and the view, not the dataset)"
                )]
            }
            // Created at the first send.
            Ok(Lookup::Missing { .. }) if c.create_table => return Vec::new(),
            Ok(Lookup::Missing { .. }) => {
                return vec![format!(
                    "bigquery table {path} does not exist: create it (see the README's schema) or set create_table = true"
                )]
            }
            Err(SendOutcome::RetryLater { reason, .. }) => {
                return vec![format!(
                    "could not reach BigQuery to read table {path}: {reason}; try again"
                )]
            }
            Err(o) => {
                return vec![format!(
                    "service account {} could not read table {path}: {}",
                    self.client_email,
                    o.reason()
                )]
            }
        };
        if table["type"].as_str().is_some_and(|t| t != "TABLE") {
            return vec![format!(
                "bigquery {path} is a {}, not a table koala can stream into: set table to a table",
                table["type"].as_str().unwrap_or_default()
            )];
        }
        let found = schema::found_fields(&table);
        let none = Mapping::default();
        let mappings: Vec<&Mapping> = if mappings.is_empty() {
            vec![&none]
        } else {
            mappings.to_vec()
        };
        let mut problems: Vec<String> = Vec::new();
        for m in mappings {
            let columns = schema::columns(&c.identifiers, c.hash_identifiers, m);
            for p in schema::drift(&path, &columns, &found) {
                if !problems.contains(&p) {
                    problems.push(p);
                }
            }
        }
        problems
    }
}

impl super::DestinationType for BigQueryConfig {
    const TYPE_NAME: &'static str = "bigquery";
    const DELIVERY: DeliverySettings = DELIVERY;
    const MAX_BATCH: usize = config::MAX_ROWS_LIMIT;
    const FIELDS: &'static [super::FieldSpec] = config::FIELDS;
    const TAKES_ANY_FIELD: bool = true;
    type Running = BigQueryDestination;

    fn check(&self) -> Vec<String> {
        BigQueryConfig::problems(self)
    }

    fn check_mapping(&self, mapping: &Mapping) -> Vec<String> {
        schema::mapping_problems(&self.identifiers, self.hash_identifiers, mapping)
    }

    fn start(
        name: String,
        config: Self,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self::Running> {
        BigQueryDestination::new(name, config, delivery)
    }
}
