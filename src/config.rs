//! Configuration: a TOML file, overridden by `KOALA_`-prefixed environment
//! variables (`KOALA_SERVER__LISTEN=0.0.0.0:8080`; `__` separates levels).
//! Secrets may be written as `${ENV_VAR}` so they never sit in the file.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};

use crate::audiences::{AudienceDef, AudienceMode};
use crate::destinations::{
    DeliveryOverrides, DeliverySettings, Destination, DestinationKind, MapConfig, Mapping,
};
use crate::secret::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    pub customerio: CustomerIoConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub audiences: Vec<AudienceConfig>,
    #[serde(default)]
    pub destinations: Vec<DestinationEntry>,
    #[serde(default)]
    pub retention: RetentionConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token for the admin API (`/v1/*`).
    pub admin_token: Secret,
    /// Largest webhook body accepted; larger answers 413.
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: usize,
    /// How long a graceful shutdown waits for in-flight destination calls.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://path/to/file.db` (embedded). A PostgreSQL store is not
    /// built yet; `postgres://…` passes validation and is refused at start.
    #[serde(default = "default_store_url")]
    pub url: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: default_store_url(),
        }
    }
}

/// How long the store keeps what it no longer needs (`store::retention`
/// holds the rules; `pruning` runs them).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// How long a delivery's dedupe key is kept. Unset: the larger of 7
    /// days (Customer.io's retries) and `customerio.timestamp_tolerance`
    /// (how long a captured request could be replayed).
    #[serde(default, with = "humantime_serde")]
    pub dedupe_keys: Option<Duration>,
    /// How long the event history is kept after arrival (each
    /// membership's own event is kept as long as the membership).
    #[serde(default = "default_events_retention", with = "humantime_serde")]
    pub events: Duration,
    /// Delete the sync rows of non-members that the destination confirmed
    /// out (or that were never sent) and that nothing waits on.
    #[serde(default = "default_true")]
    pub compact_acknowledged_non_members: bool,
    /// Most rows per delete (one short transaction each, sized to hold
    /// the writer a few milliseconds; the writer is released between them).
    #[serde(default = "default_prune_batch")]
    pub batch_size: usize,
    /// How often a pruning pass starts.
    #[serde(default = "default_prune_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// `all`: every reporting event is stored (history, dedupe key,
    /// identifiers). `used`: only those a rule uses (subscription
    /// changes); the rest are counted, not stored.
    #[serde(default)]
    pub store_reporting_events: ReportingEventStorage,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            dedupe_keys: None,
            events: default_events_retention(),
            compact_acknowledged_non_members: true,
            batch_size: default_prune_batch(),
            interval: default_prune_interval(),
            store_reporting_events: ReportingEventStorage::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportingEventStorage {
    #[default]
    All,
    Used,
}

impl ReportingEventStorage {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportingEventStorage::All => "all",
            ReportingEventStorage::Used => "used",
        }
    }
}

/// How identifiers are read.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// ISO 3166 alpha-2 code (`US`, `GB`, …) of the country a phone number
    /// without its country code belongs to. Unset: such numbers are kept
    /// as unusable and the person is synced by their other identifiers.
    #[serde(default)]
    pub default_phone_country: Option<String>,
}

impl IdentityConfig {
    fn country(&self) -> Result<Option<phonenumber::country::Id>, String> {
        match self.default_phone_country.as_deref().map(str::trim) {
            None => Ok(None),
            Some(code) => code
                .to_ascii_uppercase()
                .parse::<phonenumber::country::Id>()
                .map(Some)
                .map_err(|_| {
                    format!(
                        "identity.default_phone_country: {code:?} is not an ISO 3166 alpha-2 country code (like \"US\" or \"GB\")"
                    )
                }),
        }
    }

    /// The phone rules this config asks for (a bad code was refused by
    /// [`Config::problems`]).
    pub fn phone_rules(&self) -> crate::identity::PhoneRules {
        crate::identity::PhoneRules {
            default_country: self.country().ok().flatten(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    Us,
    Eu,
}

impl Region {
    pub fn app_api_base_url(self) -> &'static str {
        match self {
            Region::Us => "https://api.customer.io",
            Region::Eu => "https://api-eu.customer.io",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerIoConfig {
    #[serde(default = "default_region")]
    pub region: Region,
    /// Keys for "Send webhook" actions; several allow rotation.
    #[serde(default)]
    pub webhook_signing_keys: Vec<Secret>,
    /// Keys for reporting webhooks.
    #[serde(default)]
    pub reporting_signing_keys: Vec<Secret>,
    /// Reject a signed request whose `X-CIO-Timestamp` is further than this
    /// from now. Customer.io retries for 7 days, so the default is 8 days;
    /// replays are stopped by deduplication, not by this window.
    #[serde(default = "default_timestamp_tolerance", with = "humantime_serde")]
    pub timestamp_tolerance: Duration,
    /// App API key (Bearer), used by resync and reconciliation.
    #[serde(default)]
    pub app_api_key: Option<Secret>,
    /// Overrides the region's App API base URL (proxies, tests).
    #[serde(default)]
    pub app_api_base_url: Option<String>,
    /// Client-side App API limit shared by every caller.
    #[serde(default = "default_app_api_rps")]
    pub app_api_requests_per_second: u32,
    /// Members per membership page (Customer.io allows up to 30,000).
    #[serde(default = "default_app_api_page_size")]
    pub app_api_page_size: u32,
    /// Attempts per App API request (429, 5xx and network errors retried).
    #[serde(default = "default_app_api_max_attempts")]
    pub app_api_max_attempts: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceConfig {
    pub name: String,
    pub segment_id: u64,
    #[serde(default)]
    pub mode: AudienceMode,
    #[serde(default)]
    pub sync: Vec<SyncTarget>,
    /// Optional scheduled reconciliation against the App API, e.g. "6h".
    #[serde(default, with = "humantime_serde")]
    pub reconcile_every: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncTarget {
    pub destination: String,
    /// The destination's audience id; omitted → koala creates the audience
    /// and records its id.
    #[serde(default)]
    pub audience_id: Option<String>,
    /// Attribute mapping for this audience at this destination, over the
    /// destination's own `map`.
    #[serde(default)]
    pub map: MapConfig,
}

/// One `[[destinations]]` table: its name, the engine settings every
/// destination has (the same flat keys whatever the type, see
/// [`DeliveryOverrides::KEYS`]) and the platform's own keys (`type` and the
/// rest, see [`DestinationConfig`]).
#[derive(Debug, Clone)]
pub struct DestinationEntry {
    pub name: String,
    pub delivery: DeliveryOverrides,
    /// Attribute mapping for every audience synced here (a sync target's
    /// own `map` overrides it).
    pub map: MapConfig,
    pub platform: DestinationConfig,
}

impl<'de> Deserialize<'de> for DestinationEntry {
    /// Splits the table: `name`, the shared engine keys, and the rest for
    /// the platform's type (each part refusing keys it does not know).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let name = match table.remove("name") {
            Some(serde_json::Value::String(name)) => name,
            Some(_) => return Err(D::Error::custom("name: expected a string")),
            None => return Err(D::Error::missing_field("name")),
        };
        let shared: serde_json::Map<_, _> = DeliveryOverrides::KEYS
            .iter()
            .filter_map(|k| table.remove(*k).map(|v| ((*k).to_owned(), v)))
            .collect();
        let delivery =
            serde_json::from_value(serde_json::Value::Object(shared)).map_err(D::Error::custom)?;
        let map = match table.remove("map") {
            Some(m) => {
                serde_json::from_value(m).map_err(|e| D::Error::custom(format!("map: {e}")))?
            }
            None => MapConfig::new(),
        };
        let platform =
            serde_json::from_value(serde_json::Value::Object(table)).map_err(D::Error::custom)?;
        Ok(DestinationEntry {
            name,
            delivery,
            map,
            platform,
        })
    }
}

impl DestinationEntry {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn type_name(&self) -> &'static str {
        self.platform.type_name()
    }

    /// The type's defaults with this table's overrides.
    pub fn delivery(&self) -> DeliverySettings {
        self.platform
            .kind()
            .delivery_defaults()
            .with(&self.delivery)
    }

    /// Problems, each starting with its key within the table.
    pub fn problems(&self) -> Vec<String> {
        let kind = self.platform.kind();
        let mut p = self.delivery().problems(kind.max_batch_limit());
        p.extend(kind.problems());
        if let Err(map) = self.mapping(&MapConfig::new()) {
            p.extend(map);
        }
        p
    }

    /// The running destination this table describes.
    pub fn build(&self) -> anyhow::Result<std::sync::Arc<dyn Destination>> {
        self.platform
            .kind()
            .build(self.name.clone(), self.delivery())
    }

    /// The mapping for an audience whose sync target says `target`.
    pub fn mapping(&self, target: &MapConfig) -> Result<Mapping, Vec<String>> {
        let kind = self.platform.kind();
        let mapping =
            Mapping::resolve(kind.fields(), kind.takes_any_field(), &[&self.map, target])?;
        match kind.mapping_problems(&mapping) {
            problems if problems.is_empty() => Ok(mapping),
            problems => Err(problems),
        }
    }
}

/// The platform part of a destination, by `type`. Adding a destination
/// type adds a variant here and its arm in each method below.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DestinationConfig {
    MetaCustomAudiences(crate::destinations::meta::MetaConfig),
    GoogleCustomerMatch(crate::destinations::google_customer_match::GoogleConfig),
    TiktokAudiences(crate::destinations::tiktok_audiences::TiktokConfig),
    Webhook(crate::destinations::webhook::WebhookConfig),
    Segment(crate::destinations::segment::SegmentConfig),
    File(crate::destinations::file::FileConfig),
    Postgres(crate::destinations::postgres_table::PostgresConfig),
    Bigquery(crate::destinations::bigquery::BigQueryConfig),
    Snowflake(crate::destinations::snowflake::SnowflakeConfig),
}

impl DestinationConfig {
    /// The registration: each type's config, as the seam sees it.
    pub fn kind(&self) -> &dyn DestinationKind {
        match self {
            DestinationConfig::MetaCustomAudiences(c) => c,
            DestinationConfig::GoogleCustomerMatch(c) => c,
            DestinationConfig::TiktokAudiences(c) => c,
            DestinationConfig::Webhook(c) => c,
            DestinationConfig::Segment(c) => c,
            DestinationConfig::File(c) => c,
            DestinationConfig::Postgres(c) => c,
            DestinationConfig::Bigquery(c) => c,
            DestinationConfig::Snowflake(c) => c,
        }
    }

    pub fn type_name(&self) -> &'static str {
        self.kind().type_name()
    }
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("valid default")
}
fn default_body_limit() -> usize {
    1024 * 1024
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_store_url() -> String {
    "sqlite://data/koala.db".into()
}
fn default_region() -> Region {
    Region::Us
}
fn default_timestamp_tolerance() -> Duration {
    Duration::from_secs(8 * 24 * 3600)
}
fn default_app_api_rps() -> u32 {
    10
}
fn default_app_api_page_size() -> u32 {
    30_000
}
fn default_app_api_max_attempts() -> u32 {
    5
}
fn default_true() -> bool {
    true
}
fn default_events_retention() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}
fn default_prune_batch() -> usize {
    5_000
}
fn default_prune_interval() -> Duration {
    Duration::from_secs(600)
}
/// Largest `retention.batch_size`: a bigger delete holds the writer (and
/// so every webhook) for too long.
const MAX_PRUNE_BATCH: usize = 100_000;

/// Every problem found in a config, each naming its key.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Loads the file, applies `KOALA_*` overrides, then validates.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        if !path.exists() {
            return Err(ConfigErrors(vec![format!(
                "{}: no such config file",
                path.display()
            )]));
        }
        Self::from_figment(
            Figment::new().merge(Toml::file_exact(path)).merge(
                // Only sectioned keys: KOALA_LOG and KOALA_CONFIG are not config.
                Env::prefixed("KOALA_")
                    .filter(|k| k.as_str().contains("__") || k.as_str().contains('.'))
                    .split("__"),
            ),
        )
    }

    /// Parses a config held in a string (tests), with no env overrides.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        Self::from_figment(Figment::new().merge(Toml::string(text)))
    }

    fn from_figment(figment: Figment) -> Result<Config, ConfigErrors> {
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigErrors(e.into_iter().map(describe_figment_error).collect()))?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// Semantic checks that serde cannot express. Every problem names its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.server.admin_token.expose().len() < 16 {
            p.push("server.admin_token: must be at least 16 characters".into());
        }
        if self.server.body_limit_bytes == 0 {
            p.push("server.body_limit_bytes: must be greater than 0".into());
        }
        if !(self.store.url.starts_with("sqlite:") || self.store.url.starts_with("postgres")) {
            p.push(format!(
                "store.url: unsupported store {:?} (expected sqlite://PATH or postgres://…)",
                self.store_url_redacted()
            ));
        }
        if let Err(problem) = self.identity.country() {
            p.push(problem);
        }
        let cio = &self.customerio;
        if cio.webhook_signing_keys.is_empty() {
            p.push("customerio.webhook_signing_keys: at least one key is needed to accept segment webhooks".into());
        }
        for (field, keys) in [
            ("webhook_signing_keys", &cio.webhook_signing_keys),
            ("reporting_signing_keys", &cio.reporting_signing_keys),
        ] {
            for (i, k) in keys.iter().enumerate() {
                if k.expose().is_empty() {
                    p.push(format!("customerio.{field}[{i}]: empty key"));
                }
            }
        }
        if !(1..=30_000).contains(&cio.app_api_page_size) {
            p.push("customerio.app_api_page_size: must be between 1 and 30000".into());
        }
        if cio.app_api_max_attempts == 0 {
            p.push("customerio.app_api_max_attempts: must be at least 1".into());
        }
        if cio.app_api_requests_per_second == 0 {
            p.push("customerio.app_api_requests_per_second: must be greater than 0".into());
        }
        if let Some(url) = &cio.app_api_base_url {
            if url::Url::parse(url).is_err() {
                p.push(format!("customerio.app_api_base_url: not a URL: {url:?}"));
            }
        }

        p.extend(self.retention_problems());

        let mut dest_names = HashSet::new();
        for (i, d) in self.destinations.iter().enumerate() {
            if d.name().is_empty() {
                p.push(format!("destinations[{i}].name: must not be empty"));
            }
            if !dest_names.insert(d.name()) {
                p.push(format!(
                    "destinations[{i}].name: duplicate destination {:?}",
                    d.name()
                ));
            }
            for problem in d.problems() {
                p.push(format!("destinations[{i}].{problem}"));
            }
        }

        let mut names = HashSet::new();
        for (i, a) in self.audiences.iter().enumerate() {
            if a.name.trim().is_empty() {
                p.push(format!("audiences[{i}].name: must not be empty"));
            }
            if a.name.contains('/') {
                p.push(format!("audiences[{i}].name: must not contain '/'"));
            }
            if !names.insert(a.name.as_str()) {
                p.push(format!(
                    "audiences[{i}].name: duplicate audience {:?}",
                    a.name
                ));
            }
            if a.reconcile_every.is_some() && cio.app_api_key.is_none() {
                p.push(format!(
                    "audiences[{i}].reconcile_every: needs customerio.app_api_key"
                ));
            }
            if let Some(every) = a.reconcile_every {
                if every < Duration::from_secs(1) {
                    p.push(format!("audiences[{i}].reconcile_every: at least 1s"));
                }
            }
            let mut seen = HashSet::new();
            for (j, s) in a.sync.iter().enumerate() {
                if !dest_names.contains(s.destination.as_str()) {
                    p.push(format!(
                        "audiences[{i}].sync[{j}].destination: no destination named {:?}",
                        s.destination
                    ));
                }
                if !seen.insert(s.destination.as_str()) {
                    p.push(format!(
                        "audiences[{i}].sync[{j}].destination: {:?} listed twice",
                        s.destination
                    ));
                }
                if !s.map.is_empty() {
                    if let Some(Err(problems)) =
                        self.destination(&s.destination).map(|d| d.mapping(&s.map))
                    {
                        for problem in problems {
                            p.push(format!("audiences[{i}].sync[{j}].{problem}"));
                        }
                    }
                }
            }
        }
        p
    }

    /// How long dedupe keys are kept: the configured value, or the larger
    /// of Customer.io's 7 days of retries and the signature window.
    pub fn dedupe_key_retention(&self) -> Duration {
        self.retention.dedupe_keys.unwrap_or_else(|| {
            crate::store::retention::DEDUPE_KEYS_FLOOR.max(self.customerio.timestamp_tolerance)
        })
    }

    fn retention_problems(&self) -> Vec<String> {
        use crate::store::retention::{DEDUPE_KEYS_FLOOR, EVENTS_FLOOR};
        let r = &self.retention;
        let mut p = Vec::new();
        let human = |d: Duration| humantime::format_duration(d).to_string();
        if let Some(keys) = r.dedupe_keys {
            if keys < DEDUPE_KEYS_FLOOR {
                p.push(format!(
                    "retention.dedupe_keys: at least {} (Customer.io retries a webhook for 7 days; a retry arriving after its key was pruned would be applied twice)",
                    human(DEDUPE_KEYS_FLOOR)
                ));
            } else if keys < self.customerio.timestamp_tolerance {
                p.push(format!(
                    "retention.dedupe_keys: at least customerio.timestamp_tolerance ({}): a request replayed within the signature window after its key was pruned would be applied twice",
                    human(self.customerio.timestamp_tolerance)
                ));
            }
        }
        if r.events < EVENTS_FLOOR {
            p.push(format!(
                "retention.events: at least {} (the history that explains a change)",
                human(EVENTS_FLOOR)
            ));
        }
        if !(1..=MAX_PRUNE_BATCH).contains(&r.batch_size) {
            p.push(format!(
                "retention.batch_size: must be between 1 and {MAX_PRUNE_BATCH}"
            ));
        }
        if r.interval < Duration::from_secs(1) {
            p.push("retention.interval: at least 1s".into());
        }
        p
    }

    pub fn audience(&self, name: &str) -> Option<&AudienceConfig> {
        self.audiences.iter().find(|a| a.name == name)
    }

    /// The audiences as the store and the engine see them, ids unset (0).
    pub fn audience_defs(&self) -> Vec<AudienceDef> {
        self.audiences
            .iter()
            .map(|a| AudienceDef {
                id: 0,
                name: a.name.clone(),
                segment_id: a.segment_id as i64,
                mode: a.mode,
                destinations: a.sync.iter().map(|s| s.destination.clone()).collect(),
            })
            .collect()
    }

    pub fn destination(&self, name: &str) -> Option<&DestinationEntry> {
        self.destinations.iter().find(|d| d.name == name)
    }

    /// The mapping of every sync target, by (destination, audience name).
    /// A config that passed [`Config::problems`] resolves every one.
    pub fn mappings(&self) -> HashMap<(String, String), Mapping> {
        self.audiences
            .iter()
            .flat_map(|a| {
                a.sync.iter().filter_map(move |s| {
                    let mapping = self.destination(&s.destination)?.mapping(&s.map).ok()?;
                    Some(((s.destination.clone(), a.name.clone()), mapping))
                })
            })
            .collect()
    }

    /// The destinations that hold attributes, each with what its mappings
    /// read over every audience it syncs.
    pub fn attribute_readers(&self) -> crate::audiences::AttributeReaders {
        let mappings = self.mappings();
        crate::audiences::AttributeReaders::new(
            self.destinations
                .iter()
                .filter(|d| d.platform.kind().takes_any_field())
                .map(|d| {
                    let reads: Vec<String> = mappings
                        .iter()
                        .filter(|((dest, _), _)| *dest == d.name)
                        .flat_map(|(_, m)| m.reads())
                        .collect();
                    (d.name.clone(), reads)
                }),
        )
    }

    /// The store URL with any password replaced, for messages and logs.
    pub fn store_url_redacted(&self) -> String {
        match url::Url::parse(&self.store.url) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            _ => self.store.url.clone(),
        }
    }

    /// Where a client on this machine reaches koala (CLI commands).
    pub fn local_base_url(&self) -> String {
        let a = self.server.listen;
        let host = if a.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            a.ip().to_string()
        };
        format!("http://{host}:{}", a.port())
    }

    pub fn app_api_base_url(&self) -> String {
        self.customerio
            .app_api_base_url
            .clone()
            .unwrap_or_else(|| self.customerio.region.app_api_base_url().to_owned())
    }
}

/// The one `[[destinations]]` table `table` holds, parsed inside a minimal
/// valid config (for the destination types' config tests).
#[cfg(test)]
pub(crate) fn parse_destination(table: &str) -> Result<DestinationEntry, Vec<String>> {
    let base = r#"
        [server]
        admin_token = "0123456789abcdef"
        [customerio]
        webhook_signing_keys = ["k1"]
    "#;
    let c = Config::from_toml(&format!("{base}\n{table}")).map_err(|e| e.0)?;
    Ok(c.destinations
        .into_iter()
        .next()
        .expect("a [[destinations]] table"))
}

fn describe_figment_error(e: figment::Error) -> String {
    let path = e.path.join(".");
    let kind = e.kind.to_string();
    if path.is_empty() {
        kind
    } else {
        format!("{path}: {kind}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [server]
        admin_token = "0123456789abcdef"
        [customerio]
        webhook_signing_keys = ["k1"]
        [[audiences]]
        name = "CIO__CartAbandon__0-4h__NoPurchase"
        segment_id = 42
    "#;

    #[test]
    fn a_minimal_config_takes_the_documented_defaults() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.store.url, "sqlite://data/koala.db");
        assert_eq!(c.server.body_limit_bytes, 1 << 20);
        assert_eq!(c.customerio.region, Region::Us);
        assert_eq!(c.audiences[0].mode, AudienceMode::Mirror);
        assert_eq!(c.identity.phone_rules().default_country, None);
    }

    #[test]
    fn the_default_phone_country_is_an_iso_code() {
        let c = Config::from_toml(&MINIMAL.replace(
            "[[audiences]]",
            "[identity]\ndefault_phone_country = \"gb\"\n[[audiences]]",
        ))
        .unwrap();
        assert_eq!(
            c.identity.phone_rules().default_country,
            Some(phonenumber::country::Id::GB)
        );
        let e = Config::from_toml(&MINIMAL.replace(
            "[[audiences]]",
            "[identity]\ndefault_phone_country = \"USA\"\n[[audiences]]",
        ))
        .unwrap_err();
        assert!(
            e.0.iter()
                .any(|p| p.starts_with("identity.default_phone_country")),
            "{e}"
        );
    }

    #[test]
    fn retention_defaults_keep_keys_through_retries_and_the_signature_window() {
        let c = Config::from_toml(MINIMAL).unwrap();
        let day = Duration::from_secs(24 * 3600);
        // The 8-day signature window is longer than the 7 days of retries.
        assert_eq!(c.dedupe_key_retention(), 8 * day);
        assert_eq!(c.retention.events, 90 * day);
        assert!(c.retention.compact_acknowledged_non_members);
        assert_eq!(c.retention.batch_size, 5_000);
        assert_eq!(c.retention.interval, Duration::from_secs(600));
        assert_eq!(
            c.retention.store_reporting_events,
            ReportingEventStorage::All
        );
        let tight = Config::from_toml(&MINIMAL.replace(
            "[customerio]",
            "[retention]\ndedupe_keys = \"7d\"\n[customerio]\ntimestamp_tolerance = \"1h\"",
        ))
        .unwrap();
        assert_eq!(tight.dedupe_key_retention(), 7 * day);
    }

    #[test]
    fn retention_below_its_floor_is_an_error_naming_the_key_and_why() {
        let with = |retention: &str| {
            Config::from_toml(&MINIMAL.replace(
                "[customerio]",
                &format!("[retention]\n{retention}\n[customerio]"),
            ))
        };
        let e = with("dedupe_keys = \"3d\"").unwrap_err().0;
        assert!(
            e.iter()
                .any(|p| p.starts_with("retention.dedupe_keys") && p.contains("applied twice")),
            "{e:?}"
        );
        // 7 days is the floor, but the default signature window is 8 days.
        let e = with("dedupe_keys = \"7d\"").unwrap_err().0;
        assert!(
            e.iter().any(
                |p| p.starts_with("retention.dedupe_keys") && p.contains("timestamp_tolerance")
            ),
            "{e:?}"
        );
        let e = with("events = \"2h\"\nbatch_size = 0\ninterval = \"10ms\"")
            .unwrap_err()
            .0;
        for key in [
            "retention.events",
            "retention.batch_size",
            "retention.interval",
        ] {
            assert!(e.iter().any(|p| p.starts_with(key)), "{key}: {e:?}");
        }
        let e = with("store_reporting_events = \"some\"").unwrap_err();
        assert!(e.to_string().contains("store_reporting_events"), "{e}");
        let c = with("events = \"30d\"\nstore_reporting_events = \"used\"").unwrap();
        assert_eq!(
            c.retention.store_reporting_events,
            ReportingEventStorage::Used
        );
    }

    #[test]
    fn a_store_password_never_appears_in_messages() {
        let mut c = Config::from_toml(MINIMAL).unwrap();
        c.store.url = "postgres://koala:s3cret@db:5432/koala".into();
        assert_eq!(c.store_url_redacted(), "postgres://koala:***@db:5432/koala");
        c.store.url = "mysql://koala:s3cret@db/koala".into();
        assert!(c.problems().iter().all(|p| !p.contains("s3cret")));
    }

    #[test]
    fn unknown_keys_are_an_error_naming_the_key() {
        let e =
            Config::from_toml(&MINIMAL.replace("segment_id = 42", "segment_id = 42\nsegmnet = 1"))
                .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("segmnet"), "{text}");
    }

    #[test]
    fn secrets_come_from_the_environment() {
        std::env::set_var("KOALA_TEST_SECRET_A", "from-env-0123456789");
        let c = Config::from_toml(&MINIMAL.replace("0123456789abcdef", "${KOALA_TEST_SECRET_A}"))
            .unwrap();
        assert_eq!(c.server.admin_token.expose(), "from-env-0123456789");
        assert_eq!(format!("{:?}", c.server.admin_token), "***");
    }

    #[test]
    fn a_missing_environment_variable_names_the_key() {
        let e = Config::from_toml(&MINIMAL.replace("\"k1\"", "\"${KOALA_TEST_UNSET_VAR}\""))
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("webhook_signing_keys"), "{text}");
        assert!(text.contains("KOALA_TEST_UNSET_VAR"), "{text}");
    }

    #[test]
    fn every_semantic_problem_is_reported_with_its_key() {
        let text = r#"
            [server]
            admin_token = "short"
            [customerio]
            [[audiences]]
            name = "a"
            segment_id = 1
            sync = [{ destination = "nowhere" }]
            [[audiences]]
            name = "a"
            segment_id = 2
        "#;
        let e = Config::from_toml(text).unwrap_err().0;
        assert!(
            e.iter().any(|p| p.starts_with("server.admin_token")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|p| p.starts_with("customerio.webhook_signing_keys")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|p| p.starts_with("audiences[0].sync[0].destination")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|p| p.starts_with("audiences[1].name")),
            "{e:?}"
        );
    }
}
