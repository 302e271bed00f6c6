//! `[[destinations]] type = "bigquery"`: membership changes streamed as
//! append-only rows into one BigQuery table through `tabledata.insertAll`
//! (<https://cloud.google.com/bigquery/docs/reference/rest/v2/tabledata/insertAll>),
//! authenticated as a service account
//! (<https://developers.google.com/identity/protocols/oauth2/service-account#httprest>).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::destinations::signed_jwt::RsaSigningKey;
use crate::destinations::{DeliverySettings, FieldSpec};
use crate::secret::Secret;

/// The most people koala allows in one `send` (it splits them into
/// requests that fit `max_rows_per_request` and `max_request_bytes`).
pub const MAX_ROWS_LIMIT: usize = 50_000;

/// BigQuery's documented ceiling on rows in one insertAll request
/// (UNCONFIRMED: see the README), and the size it recommends.
pub const MAX_ROWS_PER_REQUEST: usize = 50_000;
pub const DEFAULT_ROWS_PER_REQUEST: usize = 500;
/// The HTTP request size limit as commonly cited, 10 MB (UNCONFIRMED;
/// decimal, so it holds whichever MB is meant).
pub const DEFAULT_REQUEST_BYTES: usize = 10_000_000;
/// The most `max_request_bytes` may say: 10 MiB.
pub const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;
/// The least: a request must hold at least one ordinary row.
pub const MIN_REQUEST_BYTES: usize = 1_000;

pub const DEFAULT_BASE_URL: &str = "https://bigquery.googleapis.com";
pub const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The OAuth scope the assertion asks for.
pub const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

/// Any mapped attribute becomes a column (`takes_any_field`).
pub const FIELDS: &[FieldSpec] = &[];

/// Engine defaults: 500 people a batch (one request at BigQuery's
/// recommended size), 2 in flight, 10 requests/s (streaming quotas are
/// per table and far above what one audience needs).
pub const DELIVERY: DeliverySettings = DeliverySettings {
    max_batch: DEFAULT_ROWS_PER_REQUEST,
    concurrency: 2,
    requests_per_second: 10.0,
    min_linger: Duration::ZERO,
    request_timeout: Duration::from_secs(30),
    base_backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(300),
};

/// An identifier column besides the ids (which every row has).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Identifier {
    Email,
    Phone,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BigQueryConfig {
    /// `https://bigquery.googleapis.com` unless set (proxies, tests).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// The Google Cloud project holding the dataset.
    #[serde(default)]
    pub project: String,
    #[serde(default)]
    pub dataset: String,
    /// The table the change rows are appended to.
    #[serde(default)]
    pub table: String,
    /// A service account key file (JSON, as the Cloud console downloads
    /// it). Exactly one of `key_file` and `key_json`.
    #[serde(default)]
    pub key_file: Option<String>,
    /// The same key's JSON inline, best as `${ENV_VAR}`.
    #[serde(default)]
    pub key_json: Option<Secret>,
    /// The OAuth token endpoint; unset: the key's `token_uri`, else
    /// Google's. It is also the assertion's `aud`.
    #[serde(default)]
    pub token_url: Option<String>,
    /// Refresh the access token this long before it expires.
    #[serde(default = "default_token_margin", with = "humantime_serde")]
    pub token_refresh_margin: Duration,
    /// Identifier columns: `email`, `phone`.
    #[serde(default = "default_identifiers")]
    pub identifiers: Vec<Identifier>,
    /// True: the identifier columns hold the SHA-256 (lowercase hex) of
    /// the value normalized Google's way, named `email_sha256` and
    /// `phone_sha256`. False (default): the values in clear.
    #[serde(default)]
    pub hash_identifiers: bool,
    /// Create the table (and the current-membership view) on first use
    /// if missing.
    #[serde(default)]
    pub create_table: bool,
    /// The view's name (with `create_table`); unset: `{table}_members`.
    #[serde(default)]
    pub view: Option<String>,
    #[serde(default = "default_rows_per_request")]
    pub max_rows_per_request: usize,
    #[serde(default = "default_request_bytes")]
    pub max_request_bytes: usize,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.into()
}
fn default_token_margin() -> Duration {
    Duration::from_secs(300)
}
fn default_identifiers() -> Vec<Identifier> {
    vec![Identifier::Email, Identifier::Phone]
}
fn default_rows_per_request() -> usize {
    DEFAULT_ROWS_PER_REQUEST
}
fn default_request_bytes() -> usize {
    DEFAULT_REQUEST_BYTES
}

/// What koala reads of a service account key file.
pub struct ServiceAccount {
    pub client_email: String,
    pub key: RsaSigningKey,
    pub token_uri: Option<String>,
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    token_uri: Option<String>,
}

impl ServiceAccount {
    /// Reads the key JSON; errors name the part at fault, never a value.
    pub fn parse(json: &str) -> Result<ServiceAccount, String> {
        let k: KeyFile = serde_json::from_str(json)
            .map_err(|_| "not a service account key (JSON with client_email and private_key)")?;
        if let Some(kind) = k.kind.as_deref().filter(|k| *k != "service_account") {
            return Err(format!(
                "type: a {kind:?} key, not a \"service_account\" key"
            ));
        }
        let client_email = k
            .client_email
            .filter(|e| e.contains('@'))
            .ok_or("client_email: missing or not an email")?;
        let pem = k.private_key.ok_or("private_key: missing")?;
        let key = RsaSigningKey::from_pem(&pem).map_err(|e| format!("private_key: {e}"))?;
        Ok(ServiceAccount {
            client_email,
            key,
            token_uri: k.token_uri.filter(|u| !u.trim().is_empty()),
        })
    }
}

impl BigQueryConfig {
    /// A config with every default, for code and tests that build one.
    pub fn new(
        project: impl Into<String>,
        dataset: impl Into<String>,
        table: impl Into<String>,
        key_json: Secret,
    ) -> Self {
        BigQueryConfig {
            base_url: default_base_url(),
            project: project.into(),
            dataset: dataset.into(),
            table: table.into(),
            key_file: None,
            key_json: Some(key_json),
            token_url: None,
            token_refresh_margin: default_token_margin(),
            identifiers: default_identifiers(),
            hash_identifiers: false,
            create_table: false,
            view: None,
            max_rows_per_request: default_rows_per_request(),
            max_request_bytes: default_request_bytes(),
        }
    }

    /// The service account from `key_file` or `key_json`; the error
    /// starts with the key at fault.
    pub fn service_account(&self) -> Result<ServiceAccount, String> {
        match (&self.key_file, &self.key_json) {
            (Some(_), Some(_)) => {
                Err("key_file: give either key_file or key_json, not both".into())
            }
            (None, None) => Err(
                "key_file: a service account key is needed (key_file = PATH or key_json = \"${ENV_VAR}\")"
                    .into(),
            ),
            (Some(path), None) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("key_file: cannot read {path:?}: {}", io_kind(&e)))?;
                ServiceAccount::parse(&text).map_err(|e| format!("key_file: {e}"))
            }
            (None, Some(json)) => {
                ServiceAccount::parse(json.expose()).map_err(|e| format!("key_json: {e}"))
            }
        }
    }

    /// The token endpoint: `token_url`, the key's `token_uri`, or Google's.
    pub fn token_endpoint(&self, account: &ServiceAccount) -> String {
        self.token_url
            .clone()
            .or_else(|| account.token_uri.clone())
            .unwrap_or_else(|| DEFAULT_TOKEN_URL.into())
    }

    pub fn view_name(&self) -> String {
        self.view
            .clone()
            .unwrap_or_else(|| format!("{}_members", self.table))
    }

    /// `project.dataset.table`, as SQL and reasons name it.
    pub fn table_path(&self) -> String {
        format!("{}.{}.{}", self.project, self.dataset, self.table)
    }

    /// Problems serde cannot catch, each starting with its key. Reads the
    /// key file; sends nothing.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let urls = [
            ("base_url", Some(&self.base_url)),
            ("token_url", self.token_url.as_ref()),
        ];
        for (key, url) in urls {
            let Some(url) = url else { continue };
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base() => {}
                _ => p.push(format!("{key}: not an http(s) URL: {url:?}")),
            }
        }
        if let Some(why) = project_problem(&self.project) {
            p.push(format!("project: {why}"));
        }
        if let Some(why) = dataset_problem(&self.dataset) {
            p.push(format!("dataset: {why}"));
        }
        if let Some(why) = table_problem(&self.table) {
            p.push(format!("table: {why}"));
        }
        if let Some(view) = &self.view {
            if let Some(why) = table_problem(view) {
                p.push(format!("view: {why}"));
            } else if *view == self.table {
                p.push("view: must differ from table".into());
            }
            if !self.create_table {
                p.push("view: only used with create_table = true".into());
            }
        } else if self.create_table && self.table.chars().count() > 1024 - "_members".len() {
            p.push("table: too long to name its view {table}_members: set view".into());
        }
        match self.service_account() {
            Ok(account) => {
                if self.token_url.is_none() {
                    if let Some(uri) = &account.token_uri {
                        if !matches!(url::Url::parse(uri), Ok(u) if matches!(u.scheme(), "http" | "https"))
                        {
                            let key = if self.key_file.is_some() {
                                "key_file"
                            } else {
                                "key_json"
                            };
                            p.push(format!("{key}: token_uri: not an http(s) URL"));
                        }
                    }
                }
            }
            Err(e) => p.push(e),
        }
        if self.token_refresh_margin >= crate::destinations::google_oauth::MAX_ASSERTION_LIFETIME {
            p.push("token_refresh_margin: must be under 1h (tokens live an hour)".into());
        }
        let mut seen = std::collections::HashSet::new();
        for i in &self.identifiers {
            if !seen.insert(i) {
                p.push(format!("identifiers: {i:?} listed twice"));
            }
        }
        if !(1..=MAX_ROWS_PER_REQUEST).contains(&self.max_rows_per_request) {
            p.push(format!(
                "max_rows_per_request: must be between 1 and {MAX_ROWS_PER_REQUEST} (BigQuery recommends {DEFAULT_ROWS_PER_REQUEST})"
            ));
        }
        if !(MIN_REQUEST_BYTES..=MAX_REQUEST_BYTES).contains(&self.max_request_bytes) {
            p.push(format!(
                "max_request_bytes: must be between {MIN_REQUEST_BYTES} and {MAX_REQUEST_BYTES}"
            ));
        }
        p
    }
}

fn io_kind(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Project ids: lowercase letters, digits, hyphens (a domain-scoped
/// project also `example.com:` before them).
fn project_problem(s: &str) -> Option<&'static str> {
    if s.trim().is_empty() {
        return Some("missing: the Google Cloud project id");
    }
    let ok = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':'));
    (!ok).then_some("not a project id (lowercase letters, digits, hyphens)")
}

/// Dataset ids: letters, digits, underscores, at most 1,024.
fn dataset_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("missing: the dataset id");
    }
    let ok = s.len() <= 1024 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    (!ok).then_some("not a dataset id (letters, digits, underscores; at most 1024)")
}

/// Table ids: koala keeps to letters, digits, underscores and hyphens
/// (BigQuery allows more, but these need no quoting anywhere), at most
/// 1,024 characters.
pub(crate) fn table_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("missing: the table id");
    }
    let ok = s.len() <= 1024
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    (!ok).then_some(
        "not a table id koala accepts (letters, digits, underscores, hyphens; at most 1024)",
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::DestinationConfig;

    pub const PRIVATE: &str = include_str!("../../../tests/fixtures/test-rsa-private.pem");

    /// A service account key JSON around the test key.
    pub fn key_json(token_uri: &str) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": "fake-project",
            "private_key_id": "k1",
            "private_key": PRIVATE,
            "client_email": "koala@fake-project.iam.gserviceaccount.com",
            "token_uri": token_uri,
        })
        .to_string()
    }

    fn bigquery(text: &str) -> Result<(BigQueryConfig, DeliverySettings), Vec<String>> {
        let entry = crate::config::parse_destination(text)?;
        let delivery = entry.delivery();
        match entry.platform {
            DestinationConfig::Bigquery(b) => Ok((b, delivery)),
            other => panic!("not a bigquery destination: {}", other.type_name()),
        }
    }

    fn table(extra: &str, key_file: &std::path::Path) -> String {
        format!(
            "[[destinations]]\nname = \"bq\"\ntype = \"bigquery\"\nproject = \"my-proj\"\ndataset = \"marketing\"\ntable = \"audience_changes\"\nkey_file = {:?}\n{extra}",
            key_file.display().to_string()
        )
    }

    #[test]
    fn a_minimal_bigquery_destination_takes_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sa.json");
        std::fs::write(&key, key_json("https://oauth2.googleapis.com/token")).unwrap();
        let (b, l) = bigquery(&table("", &key)).unwrap();
        assert_eq!(b.base_url, DEFAULT_BASE_URL);
        assert_eq!(b.identifiers, [Identifier::Email, Identifier::Phone]);
        assert!(!b.hash_identifiers && !b.create_table);
        assert_eq!(b.view_name(), "audience_changes_members");
        assert_eq!(b.table_path(), "my-proj.marketing.audience_changes");
        assert_eq!(
            (b.max_rows_per_request, b.max_request_bytes),
            (500, 10_000_000)
        );
        assert_eq!((l.max_batch, l.concurrency), (500, 2));
        let account = b.service_account().unwrap();
        assert_eq!(
            account.client_email,
            "koala@fake-project.iam.gserviceaccount.com"
        );
        assert_eq!(
            b.token_endpoint(&account),
            "https://oauth2.googleapis.com/token"
        );
        assert!(!format!("{b:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn inline_keys_and_a_token_url_override() {
        std::env::set_var("KOALA_TEST_BQ_KEY", key_json("http://127.0.0.1:9/token"));
        let (b, _) = bigquery(
            "[[destinations]]\nname = \"bq\"\ntype = \"bigquery\"\nproject = \"p\"\ndataset = \"d\"\ntable = \"t\"\nkey_json = \"${KOALA_TEST_BQ_KEY}\"\ncreate_table = true\nview = \"members_now\"\nhash_identifiers = true\nidentifiers = [\"email\"]",
        )
        .unwrap();
        let account = b.service_account().unwrap();
        assert_eq!(b.token_endpoint(&account), "http://127.0.0.1:9/token");
        assert_eq!(b.view_name(), "members_now");
        assert!(!format!("{b:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn problems_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let e = bigquery(&format!(
            "[[destinations]]\nname = \"bq\"\ntype = \"bigquery\"\nkey_file = {:?}\nmax_rows_per_request = 50001\nmax_request_bytes = 20000000\nview = \"v\"\nidentifiers = [\"phone\", \"phone\"]\nbase_url = \"nope\"",
            missing.display().to_string()
        ))
        .unwrap_err();
        for key in [
            "base_url",
            "project: missing",
            "dataset: missing",
            "table: missing",
            "key_file: cannot read",
            "max_rows_per_request",
            "max_request_bytes",
            "view: only used with create_table",
            "identifiers",
        ] {
            let want = format!("destinations[0].{key}");
            assert!(e.iter().any(|p| p.starts_with(&want)), "{want}: {e:?}");
        }

        // A key that is not RSA, one with a field missing, not JSON, both given.
        let bad = dir.path().join("bad.json");
        for (content, want) in [
            (
                key_json("https://oauth2.googleapis.com/token")
                    .replace("BEGIN PRIVATE KEY", "BEGIN EC PRIVATE KEY"),
                "key_file: private_key: the private key is not an RSA key",
            ),
            (
                r#"{"type":"service_account","private_key":"x"}"#.into(),
                "key_file: client_email",
            ),
            ("not json".into(), "key_file: not a service account key"),
            (
                r#"{"type":"authorized_user","client_email":"a@b","private_key":"x"}"#.into(),
                "key_file: type",
            ),
        ] {
            std::fs::write(&bad, content).unwrap();
            let e = bigquery(&table("", &bad)).unwrap_err();
            assert!(
                e.iter()
                    .any(|p| p.starts_with(&format!("destinations[0].{want}"))),
                "{want}: {e:?}"
            );
            assert!(e.iter().all(|p| !p.contains("MII")), "{e:?}");
        }
        std::fs::write(&bad, key_json("x")).unwrap();
        let e = bigquery(&table("key_json = \"{}\"", &bad)).unwrap_err();
        assert!(e.iter().any(|p| p.contains("not both")), "{e:?}");
        let e = bigquery(&table("", &bad)).unwrap_err();
        assert!(e.iter().any(|p| p.contains("token_uri")), "{e:?}");
        let e = bigquery(
            &table("dataset = \"has-hyphen\"", &bad).replace("dataset = \"marketing\"\n", ""),
        )
        .unwrap_err();
        assert!(
            e.iter()
                .any(|p| p.starts_with("destinations[0].dataset: not a dataset id")),
            "{e:?}"
        );
    }
}
