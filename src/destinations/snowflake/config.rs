//! `[[destinations]] type = "snowflake"`: audience membership as rows of
//! one table in Snowflake, written through the SQL API
//! (<https://docs.snowflake.com/en/developer-guide/sql-api/index>) with a
//! key-pair JWT
//! (<https://docs.snowflake.com/en/developer-guide/sql-api/authenticating>).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::destinations::signed_jwt::RsaSigningKey;
use crate::destinations::{DeliverySettings, FieldSpec, FieldType};
use crate::secret::Secret;

/// The most people koala allows in one `send` (it splits them into
/// statements that fit `max_rows_per_statement` and
/// `max_bindings_per_statement` itself).
pub const MAX_MEMBERS_LIMIT: usize = 10_000;

/// A warehouse takes any mapped attribute, one typed column each.
pub const FIELDS: &[FieldSpec] = &[];

/// Engine defaults: 1,000 people a batch, one statement in flight (every
/// statement writes the same table, which Snowflake locks for DML), 5
/// statements/s, and 60 s a statement: a synchronous answer may take 45 s
/// before Snowflake answers 202 and koala polls.
pub const DELIVERY: DeliverySettings = DeliverySettings {
    max_batch: 1000,
    concurrency: 1,
    requests_per_second: 5.0,
    min_linger: Duration::ZERO,
    request_timeout: Duration::from_secs(60),
    base_backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(300),
};

/// Default rows in one MERGE (UNCONFIRMED: Snowflake documents no limit
/// for a `VALUES` list under the SQL API that koala could find; this is a
/// conservative choice).
pub const DEFAULT_MAX_ROWS: usize = 1000;
/// Default `?` bindings in one statement (UNCONFIRMED, conservative, as
/// above).
pub const DEFAULT_MAX_BINDINGS: usize = 10_000;
/// Longest a JWT may live: Snowflake refuses tokens valid for more than an
/// hour.
pub const MAX_JWT_LIFETIME: Duration = Duration::from_secs(3600);

/// The columns koala itself writes; a mapped field cannot be one of them.
pub const RESERVED_COLUMNS: &[&str] = &[
    "AUDIENCE",
    "PERSON_ID",
    "CUSTOMER_ID",
    "CIO_ID",
    "EMAIL",
    "PHONE",
    "ENTERED_AT",
    "UPDATED_AT",
    "EXITED_AT",
    "CHANGED_AT",
];

/// What an exit does to the person's row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExit {
    /// Keep the row and set `exited_at` (a re-entry clears it). A late
    /// statement can never bring back someone who left since.
    #[default]
    Mark,
    /// Delete the row: the table holds current members only.
    Delete,
}

/// An identifier column the table carries besides `person_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Identifier {
    /// The Customer.io id, as `CUSTOMER_ID`.
    Id,
    /// Customer.io's own id, as `CIO_ID`.
    CioId,
    Email,
    Phone,
}

impl Identifier {
    pub fn column(self) -> &'static str {
        match self {
            Identifier::Id => "CUSTOMER_ID",
            Identifier::CioId => "CIO_ID",
            Identifier::Email => "EMAIL",
            Identifier::Phone => "PHONE",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnowflakeConfig {
    /// The account identifier as in its URL: `myorg-myaccount`, or an
    /// account locator with its region (`xy12345.us-east-1`).
    #[serde(default)]
    pub account: String,
    /// `https://{account}.snowflakecomputing.com` unless set (proxies,
    /// private links, tests).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Lets `base_url` be plain http (tests).
    #[serde(default)]
    pub allow_http: bool,
    /// The Snowflake user the public key is set on.
    #[serde(default)]
    pub user: String,
    /// An unencrypted RSA private key in PEM (PKCS#8 or PKCS#1) in a file…
    #[serde(default)]
    pub private_key_path: Option<PathBuf>,
    /// …or inline (`${SNOWFLAKE_PRIVATE_KEY}`).
    #[serde(default)]
    pub private_key: Option<Secret>,
    #[serde(default)]
    pub database: String,
    #[serde(default)]
    pub schema: String,
    #[serde(default)]
    pub warehouse: String,
    /// Unset: the user's default role.
    #[serde(default)]
    pub role: Option<String>,
    /// The membership table, in `database`.`schema`.
    #[serde(default)]
    pub table: String,
    /// Identifier columns besides `person_id`.
    #[serde(default = "default_identifiers")]
    pub identifiers: Vec<Identifier>,
    #[serde(default)]
    pub on_exit: OnExit,
    /// `CREATE TABLE IF NOT EXISTS` before the first statement of each
    /// mapping.
    #[serde(default)]
    pub create_table: bool,
    /// Snowflake cancels a statement that runs longer (the body's
    /// `timeout`).
    #[serde(default = "default_statement_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// How often a statement still running (202) is asked about.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(default = "default_max_rows")]
    pub max_rows_per_statement: usize,
    #[serde(default = "default_max_bindings")]
    pub max_bindings_per_statement: usize,
    /// How long a signed JWT is valid (at most 1 hour).
    #[serde(default = "default_jwt_lifetime", with = "humantime_serde")]
    pub jwt_lifetime: Duration,
    /// A JWT is signed anew this long before it expires.
    #[serde(default = "default_jwt_margin", with = "humantime_serde")]
    pub jwt_refresh_margin: Duration,
}

fn default_identifiers() -> Vec<Identifier> {
    vec![Identifier::CioId, Identifier::Email]
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_rows() -> usize {
    DEFAULT_MAX_ROWS
}
fn default_max_bindings() -> usize {
    DEFAULT_MAX_BINDINGS
}
fn default_jwt_lifetime() -> Duration {
    Duration::from_secs(59 * 60)
}
fn default_jwt_margin() -> Duration {
    Duration::from_secs(5 * 60)
}

/// True for an identifier koala accepts: a letter or `_`, then letters,
/// digits, `_` or `$`, at most 255 characters — Snowflake's rule for
/// unquoted identifiers, so a name means what it would mean unquoted.
pub fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && s.len() <= 255
}

/// An identifier as Snowflake stores an unquoted one (uppercase), quoted.
/// Only for names [`valid_identifier`] accepted: they hold no `"`.
pub fn quote(s: &str) -> String {
    debug_assert!(valid_identifier(s));
    format!("\"{}\"", s.to_ascii_uppercase())
}

/// The column a mapped field of `kind` is written to.
pub fn column_type(kind: FieldType) -> &'static str {
    match kind {
        FieldType::String => "VARCHAR",
        FieldType::Number => "FLOAT",
        FieldType::Boolean => "BOOLEAN",
        FieldType::Timestamp => "TIMESTAMP_LTZ",
    }
}

/// Problems of a resolved mapping, each starting with `map.{field}`: a
/// field that is no usable column name, one named like a column koala
/// writes, two that Snowflake reads as one name (`ltv` and `LTV`).
pub fn mapping_problems(mapping: &crate::destinations::Mapping) -> Vec<String> {
    let mut p = Vec::new();
    let mut columns: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for (field, _) in mapping.typed_fields() {
        if let Some(why) = field_problem(field) {
            p.push(format!("map.{field}: {why}"));
        } else if let Some(other) = columns.insert(field.to_ascii_uppercase(), field) {
            p.push(format!(
                "map.{field}: the same column as map.{other} ({}): Snowflake reads both as one name",
                field.to_ascii_uppercase()
            ));
        }
    }
    p
}

/// Why a mapped field cannot be a column, or `None`.
pub fn field_problem(field: &str) -> Option<String> {
    if !valid_identifier(field) {
        return Some(
            "not a usable Snowflake column name (a letter or _, then letters, digits, _ or $)"
                .into(),
        );
    }
    let upper = field.to_ascii_uppercase();
    RESERVED_COLUMNS.contains(&upper.as_str()).then(|| {
        format!("{upper} is a column koala writes itself; map the attribute under another name")
    })
}

impl SnowflakeConfig {
    /// A config for `account`/`user` writing `table` (tests, examples).
    pub fn new(account: &str, user: &str, private_key: Secret) -> Self {
        SnowflakeConfig {
            account: account.into(),
            base_url: None,
            allow_http: false,
            user: user.into(),
            private_key_path: None,
            private_key: Some(private_key),
            database: "KOALA".into(),
            schema: "PUBLIC".into(),
            warehouse: "KOALA_WH".into(),
            role: None,
            table: "AUDIENCE_MEMBERS".into(),
            identifiers: default_identifiers(),
            on_exit: OnExit::Mark,
            create_table: false,
            statement_timeout: default_statement_timeout(),
            poll_interval: default_poll_interval(),
            max_rows_per_statement: DEFAULT_MAX_ROWS,
            max_bindings_per_statement: DEFAULT_MAX_BINDINGS,
            jwt_lifetime: default_jwt_lifetime(),
            jwt_refresh_margin: default_jwt_margin(),
        }
    }

    /// `{base_url}` or `https://{account}.snowflakecomputing.com`.
    pub fn base_url(&self) -> String {
        match &self.base_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!(
                "https://{}.snowflakecomputing.com",
                self.account.trim().to_ascii_lowercase()
            ),
        }
    }

    /// The private key's PEM text, from the file or the inline secret.
    pub fn key_pem(&self) -> Result<Secret, String> {
        match (&self.private_key_path, &self.private_key) {
            (Some(_), Some(_)) => {
                Err("private_key_path: give either private_key_path or private_key, not both".into())
            }
            (None, None) => Err(
                "private_key_path: required (or private_key): the RSA key whose public half is set on the user"
                    .into(),
            ),
            (Some(path), None) => std::fs::read_to_string(path)
                .map(Secret::new)
                .map_err(|e| {
                    format!(
                        "private_key_path: cannot read {}: {}",
                        path.display(),
                        e.kind()
                    )
                }),
            (None, Some(pem)) => Ok(pem.clone()),
        }
    }

    /// The signing key, or a problem naming the key it came from.
    pub fn signing_key(&self) -> Result<RsaSigningKey, String> {
        let pem = self.key_pem()?;
        let key_name = if self.private_key_path.is_some() {
            "private_key_path"
        } else {
            "private_key"
        };
        RsaSigningKey::from_pem(pem.expose()).map_err(|e| format!("{key_name}: {e}"))
    }

    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.account.trim().is_empty() {
            p.push(
                "account: required: the account identifier as in your URL (myorg-myaccount, or xy12345.us-east-1)"
                    .into(),
            );
        } else if !self
            .account
            .trim()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            p.push("account: only letters, digits, '-', '_' and '.' (the part before .snowflakecomputing.com)".into());
        }
        if self.user.trim().is_empty() {
            p.push("user: required: the Snowflake user the public key is set on".into());
        } else if self.user.contains(['.', '"']) || self.user.chars().any(char::is_whitespace) {
            p.push(
                "user: must not contain '.', '\"' or spaces (it becomes part of the JWT's issuer)"
                    .into(),
            );
        }
        for (key, value) in [
            ("database", &self.database),
            ("schema", &self.schema),
            ("warehouse", &self.warehouse),
            ("table", &self.table),
        ] {
            if value.trim().is_empty() {
                p.push(format!("{key}: required"));
            } else if !valid_identifier(value) {
                p.push(format!(
                    "{key}: {value:?} is not a usable identifier (a letter or _, then letters, digits, _ or $; koala uses it as Snowflake reads it unquoted, in uppercase)"
                ));
            }
        }
        if let Some(role) = &self.role {
            if !valid_identifier(role) {
                p.push(format!(
                    "role: {role:?} is not a usable identifier (a letter or _, then letters, digits, _ or $)"
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, id) in self.identifiers.iter().enumerate() {
            if !seen.insert(id) {
                p.push(format!("identifiers[{i}]: listed twice"));
            }
        }
        if let Some(url) = &self.base_url {
            match url::Url::parse(url) {
                Ok(u) if u.scheme() == "https" && u.has_host() => {}
                Ok(u) if u.scheme() == "http" && u.has_host() => {
                    if !self.allow_http {
                        p.push("base_url: must be https (set allow_http = true for tests)".into());
                    }
                }
                _ => p.push("base_url: not an http(s) URL".into()),
            }
        }
        if let Err(e) = self.signing_key() {
            p.push(e);
        }
        if self.statement_timeout < Duration::from_secs(1) {
            p.push("statement_timeout: at least 1s".into());
        }
        if self.poll_interval.is_zero() {
            p.push("poll_interval: must be greater than 0s".into());
        }
        if self.max_rows_per_statement == 0 {
            p.push("max_rows_per_statement: must be at least 1".into());
        }
        let widest_row = 2 + 4 + 1; // audience, person_id, identifiers, changed_at
        if self.max_bindings_per_statement < widest_row {
            p.push(format!(
                "max_bindings_per_statement: must be at least {widest_row} (one row's bindings)"
            ));
        }
        if self.jwt_lifetime.is_zero() || self.jwt_lifetime > MAX_JWT_LIFETIME {
            p.push(
                "jwt_lifetime: between 1s and 1h (Snowflake refuses longer-lived tokens)".into(),
            );
        } else if self.jwt_refresh_margin >= self.jwt_lifetime {
            p.push("jwt_refresh_margin: must be shorter than jwt_lifetime".into());
        }
        p
    }

    /// `"DATABASE"."SCHEMA"."TABLE"`.
    pub fn qualified_table(&self) -> String {
        format!(
            "{}.{}.{}",
            quote(&self.database),
            quote(&self.schema),
            quote(&self.table)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DestinationConfig;

    const PRIVATE: &str = include_str!("../../../tests/fixtures/test-rsa-private.pem");

    fn snowflake(table: &str) -> (Option<SnowflakeConfig>, Vec<String>) {
        match crate::config::parse_destination(table) {
            Ok(entry) => {
                let problems = entry.problems();
                match entry.platform {
                    DestinationConfig::Snowflake(s) => (Some(s), problems),
                    other => panic!("not a snowflake destination: {}", other.type_name()),
                }
            }
            Err(problems) => (None, problems),
        }
    }

    fn inline_key() -> String {
        format!("private_key = \"\"\"{PRIVATE}\"\"\"")
    }

    #[test]
    fn a_minimal_snowflake_takes_the_defaults() {
        let (s, p) = snowflake(&format!(
            "[[destinations]]\nname = \"sf\"\ntype = \"snowflake\"\naccount = \"xy12345.us-east-1\"\nuser = \"koala\"\ndatabase = \"analytics\"\nschema = \"crm\"\nwarehouse = \"koala_wh\"\ntable = \"audience_members\"\n{}",
            inline_key()
        ));
        assert!(p.is_empty(), "{p:?}");
        let s = s.unwrap();
        assert_eq!(
            s.base_url(),
            "https://xy12345.us-east-1.snowflakecomputing.com"
        );
        assert_eq!(s.on_exit, OnExit::Mark);
        assert_eq!(s.identifiers, [Identifier::CioId, Identifier::Email]);
        assert_eq!(
            s.qualified_table(),
            r#""ANALYTICS"."CRM"."AUDIENCE_MEMBERS""#
        );
        assert!(
            !format!("{s:?}").contains("MII"),
            "the key is never printed"
        );
    }

    #[test]
    fn every_missing_or_bad_key_is_named() {
        let (_, p) = snowflake("[[destinations]]\nname = \"sf\"\ntype = \"snowflake\"");
        for key in [
            "account: required",
            "user: required",
            "database: required",
            "schema: required",
            "warehouse: required",
            "table: required",
            "private_key_path: required",
        ] {
            assert!(
                p.iter().any(|x| x.starts_with(&format!("destinations[0].{key}"))
                    || x.starts_with(key)),
                "{key}: {p:?}"
            );
        }
        let (_, p) = snowflake(
            "[[destinations]]\nname = \"sf\"\ntype = \"snowflake\"\naccount = \"a b\"\nuser = \"k\"\ndatabase = \"db\"\nschema = \"my-schema\"\nwarehouse = \"w\"\ntable = \"t;drop\"\nrole = \"r r\"\nprivate_key_path = \"/nonexistent/key.p8\"\njwt_lifetime = \"2h\"\nidentifiers = [\"email\", \"email\"]",
        );
        for key in [
            "account: only",
            "schema: \"my-schema\" is not a usable identifier",
            "table: \"t;drop\" is not",
            "role: \"r r\"",
            "private_key_path: cannot read /nonexistent/key.p8",
            "jwt_lifetime: between 1s and 1h",
            "identifiers[1]: listed twice",
        ] {
            assert!(p.iter().any(|x| x.contains(key)), "{key}: {p:?}");
        }
        let (_, p) = snowflake(
            "[[destinations]]\nname = \"sf\"\ntype = \"snowflake\"\naccount = \"a\"\nuser = \"k\"\ndatabase = \"db\"\nschema = \"s\"\nwarehouse = \"w\"\ntable = \"t\"\nprivate_key = \"-----BEGIN PRIVATE KEY-----\\nnot a key\\n-----END PRIVATE KEY-----\"",
        );
        assert!(
            p.iter()
                .any(|x| x.contains("private_key: the private key is not an RSA key")),
            "{p:?}"
        );
        assert!(p.iter().all(|x| !x.contains("not a key")), "{p:?}");
    }

    #[test]
    fn mapped_fields_must_be_usable_columns() {
        let base = format!(
            "[[destinations]]\nname = \"sf\"\ntype = \"snowflake\"\naccount = \"a\"\nuser = \"k\"\ndatabase = \"db\"\nschema = \"s\"\nwarehouse = \"w\"\ntable = \"t\"\n{}\n",
            inline_key()
        );
        let (_, p) = snowflake(&(base.clone() + "map = { \"bad name\" = \"x\", email = \"e\", ltv = { from = \"ltv\", type = \"number\" } }"));
        assert!(
            p.iter()
                .any(|x| x.contains("map.bad name: not a usable Snowflake column name")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|x| x.contains("map.email: EMAIL is a column koala writes")),
            "{p:?}"
        );
        assert_eq!(p.len(), 2, "{p:?}");
        let (_, p) = snowflake(&(base + "map = { ltv = \"a\", LTV = \"b\" }"));
        assert!(
            p.iter()
                .any(|x| x.contains("map.ltv: the same column as map.LTV (LTV)")),
            "{p:?}"
        );
    }

    #[test]
    fn identifiers_are_quoted_as_snowflake_stores_unquoted_ones() {
        assert!(valid_identifier("audience_members"));
        assert!(valid_identifier("_x$1"));
        for bad in ["", "1a", "a-b", "a\"b", "a b", "a;b", "é"] {
            assert!(!valid_identifier(bad), "{bad}");
        }
        assert_eq!(quote("ltv"), "\"LTV\"");
        assert_eq!(
            field_problem("changed_at").unwrap(),
            "CHANGED_AT is a column koala writes itself; map the attribute under another name"
        );
    }
}
