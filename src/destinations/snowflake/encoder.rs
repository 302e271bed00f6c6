//! People → SQL statements with bound parameters. No value is ever written
//! into the SQL text: every value is a `?` with a typed binding
//! (<https://docs.snowflake.com/en/developer-guide/sql-api/submitting-requests>),
//! and identifiers are only names that passed
//! [`config::valid_identifier`], quoted.
//!
//! One statement per chunk of a batch, a `MERGE` from a `VALUES` list:
//! adds and updates upsert the row (identifiers, one typed column per
//! mapped attribute, `entered_at`, `updated_at`); exits set `exited_at`
//! (`on_exit = "mark"`, inserting the row if it is missing so a late add
//! cannot bring the person back) or delete the row. Every branch is
//! guarded by `s.changed_at >= t.updated_at`, the row's clock:
//! Customer.io's time of the membership change (an attribute update keeps
//! it, so it passes). It only grows for a row (latest wins), so a
//! statement that lands late never undoes a newer one, and a statement
//! executed twice changes nothing the second time.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::config::{self, quote, Identifier, OnExit};
use crate::audiences::SyncOp;
use crate::destinations::mapping::MappedValue;
use crate::destinations::{FieldType, SendTarget};
use crate::person::PersonRecord;

/// A bound value, with the SQL API binding type it travels as.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    /// `TEXT`.
    Text(String),
    /// `REAL`.
    Real(f64),
    /// `BOOLEAN`.
    Boolean(bool),
    /// `FIXED`: milliseconds since the epoch, turned into a timestamp by
    /// `TO_TIMESTAMP_LTZ(…, 3)` in the statement.
    Millis(i64),
}

impl Bind {
    fn binding(&self) -> Value {
        let (ty, value) = match self {
            Bind::Text(s) => ("TEXT", s.clone()),
            Bind::Real(n) => ("REAL", n.to_string()),
            Bind::Boolean(b) => ("BOOLEAN", b.to_string()),
            Bind::Millis(ms) => ("FIXED", ms.to_string()),
        };
        json!({"type": ty, "value": value})
    }
}

/// A column of the statement's source rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Uppercase, valid.
    pub name: String,
    pub kind: FieldType,
    /// The mapped field it holds (attribute columns).
    pub field: Option<String>,
}

impl Column {
    fn new(name: &str, kind: FieldType) -> Self {
        Column {
            name: name.to_ascii_uppercase(),
            kind,
            field: None,
        }
    }

    /// `columnN::TYPE AS "NAME"` (timestamps from their milliseconds).
    fn select(&self, n: usize) -> String {
        let expr = match self.kind {
            FieldType::String => format!("column{n}::VARCHAR"),
            FieldType::Number => format!("column{n}::FLOAT"),
            FieldType::Boolean => format!("column{n}::BOOLEAN"),
            FieldType::Timestamp => format!("TO_TIMESTAMP_LTZ(column{n}, 3)"),
        };
        format!("{expr} AS {}", quote(&self.name))
    }
}

/// A column of the table as koala creates it: `not_null` when koala
/// always fills it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableColumn {
    /// Uppercase, valid.
    pub name: String,
    pub kind: FieldType,
    pub not_null: bool,
    /// A mapped attribute's column (else one koala always has).
    pub attribute: bool,
}

/// A column as `INFORMATION_SCHEMA.COLUMNS` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundColumn {
    pub name: String,
    /// `DATA_TYPE`: Snowflake's standard name (`TEXT` for a VARCHAR).
    pub data_type: String,
    pub nullable: bool,
    pub has_default: bool,
}

/// True when a column of `data_type` (as `INFORMATION_SCHEMA.COLUMNS`
/// names it: the standard type, `TEXT` for VARCHAR; UNCONFIRMED beyond
/// Snowflake's documentation of the view) takes what koala writes as
/// `kind`. Any timestamp takes `TO_TIMESTAMP_LTZ`; a NUMBER would cut a
/// FLOAT's fraction, so it does not fit.
pub fn fits(kind: FieldType, data_type: &str) -> bool {
    let t = data_type.trim().to_ascii_uppercase();
    match kind {
        FieldType::String => matches!(t.as_str(), "TEXT" | "VARCHAR" | "STRING"),
        FieldType::Number => matches!(t.as_str(), "FLOAT" | "DOUBLE" | "REAL"),
        FieldType::Boolean => t == "BOOLEAN",
        FieldType::Timestamp => {
            matches!(
                t.as_str(),
                "TIMESTAMP_LTZ" | "TIMESTAMP_TZ" | "TIMESTAMP_NTZ"
            )
        }
    }
}

/// What keeps a table with columns `found` from taking koala's
/// statements for this layout, each a sentence naming the column and the
/// fix: a column missing or of another type, NOT NULL where koala may
/// write NULL, or NOT NULL without a default where koala writes nothing.
pub fn drift(layout: &Layout, found: &[FoundColumn]) -> Vec<String> {
    let table = &layout.table;
    let plain = table.replace('"', "");
    let mut p = Vec::new();
    let expected = layout.table_columns();
    for c in &expected {
        let ty = config::column_type(c.kind);
        let Some(f) = found.iter().find(|f| f.name == c.name) else {
            let or_map = if c.attribute {
                " or take it out of map"
            } else {
                ""
            };
            p.push(format!(
                "snowflake table {plain} has no column {}, which koala writes: add it (ALTER TABLE {table} ADD COLUMN {} {ty}){or_map}",
                c.name,
                quote(&c.name)
            ));
            continue;
        };
        if !fits(c.kind, &f.data_type) {
            p.push(format!(
                "snowflake table {plain} column {} is {}, but koala writes {ty} there: change the column or the mapping's type",
                c.name, f.data_type
            ));
        } else if !f.nullable && !c.not_null {
            p.push(format!(
                "snowflake table {plain} column {} is NOT NULL, but koala leaves it empty when a person has no value: ALTER TABLE {table} ALTER COLUMN {} DROP NOT NULL",
                c.name,
                quote(&c.name)
            ));
        }
    }
    for f in found {
        if !f.nullable && !f.has_default && !expected.iter().any(|c| c.name == f.name) {
            p.push(format!(
                "snowflake table {plain} requires column {}, which koala does not write: give it a default or drop NOT NULL",
                f.name
            ));
        }
    }
    p
}

/// What the table holds for one destination and mapping.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `"DB"."SCHEMA"."TABLE"`.
    pub table: String,
    pub identifiers: Vec<Identifier>,
    /// Mapped attributes: column name (uppercase) and type.
    pub attributes: Vec<Column>,
    pub on_exit: OnExit,
}

impl Layout {
    /// The layout of `mapping`'s fields, or why two of them would be one
    /// column (`ltv` and `LTV`).
    pub fn new(
        c: &config::SnowflakeConfig,
        mapping: &crate::destinations::Mapping,
    ) -> Result<Self, String> {
        let mut attributes: Vec<Column> = Vec::new();
        for (field, kind) in mapping.typed_fields() {
            let col = Column {
                field: Some(field.to_owned()),
                ..Column::new(field, kind)
            };
            if let Some(other) = attributes.iter().find(|a| a.name == col.name) {
                return Err(format!(
                    "map.{field}: the same column as map.{} ({}); Snowflake reads both as one name",
                    other.field.as_deref().unwrap_or_default(),
                    col.name
                ));
            }
            attributes.push(col);
        }
        Ok(Layout {
            table: c.qualified_table(),
            identifiers: c.identifiers.clone(),
            attributes,
            on_exit: c.on_exit,
        })
    }

    /// The source columns of `op`'s statement, in order: the row's data
    /// (`AUDIENCE`, `PERSON_ID`, identifiers, on adds and updates the
    /// mapped attributes), the membership time (`ENTERED_AT` on adds and
    /// updates, `EXITED_AT` on exits that mark), then `CHANGED_AT`.
    pub fn columns(&self, op: SyncOp) -> Vec<Column> {
        let mut cols = self.data_columns(op);
        match (op.desired(), self.on_exit) {
            (true, _) => cols.push(Column::new("ENTERED_AT", FieldType::Timestamp)),
            (false, OnExit::Mark) => cols.push(Column::new("EXITED_AT", FieldType::Timestamp)),
            (false, OnExit::Delete) => {}
        }
        cols.push(Column::new("CHANGED_AT", FieldType::Timestamp));
        cols
    }

    fn data_columns(&self, op: SyncOp) -> Vec<Column> {
        let mut cols = vec![
            Column::new("AUDIENCE", FieldType::String),
            Column::new("PERSON_ID", FieldType::String),
        ];
        if op.desired() || self.on_exit == OnExit::Mark {
            cols.extend(
                self.identifiers
                    .iter()
                    .map(|i| Column::new(i.column(), FieldType::String)),
            );
        }
        if op.desired() {
            cols.extend(self.attributes.iter().cloned());
        }
        cols
    }

    /// Every column of the table this layout writes, in order.
    pub fn table_columns(&self) -> Vec<TableColumn> {
        let col = |name: &str, kind: FieldType, not_null: bool, attribute: bool| TableColumn {
            name: name.to_ascii_uppercase(),
            kind,
            not_null,
            attribute,
        };
        let mut cols = vec![
            col("AUDIENCE", FieldType::String, true, false),
            col("PERSON_ID", FieldType::String, true, false),
        ];
        cols.extend(
            self.identifiers
                .iter()
                .map(|i| col(i.column(), FieldType::String, false, false)),
        );
        cols.extend(
            self.attributes
                .iter()
                .map(|c| col(&c.name, c.kind, false, true)),
        );
        cols.push(col("ENTERED_AT", FieldType::Timestamp, false, false));
        cols.push(col("UPDATED_AT", FieldType::Timestamp, true, false));
        cols.push(col("EXITED_AT", FieldType::Timestamp, false, false));
        cols
    }

    /// `CREATE TABLE IF NOT EXISTS` with every column this layout writes.
    pub fn create_table(&self) -> String {
        let mut defs: Vec<String> = self
            .table_columns()
            .iter()
            .map(|c| {
                format!(
                    "{} {}{}",
                    quote(&c.name),
                    config::column_type(c.kind),
                    if c.not_null { " NOT NULL" } else { "" }
                )
            })
            .collect();
        defs.push("PRIMARY KEY (\"AUDIENCE\", \"PERSON_ID\")".into());
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.table,
            defs.join(", ")
        )
    }

    /// The statement's text for `rows` source rows, whose values are
    /// `Some` (a `?`) or `None` (`NULL`) in the order of
    /// [`Layout::columns`].
    fn sql(&self, op: SyncOp, rows: &[Vec<Option<Bind>>]) -> String {
        let cols = self.columns(op);
        let select: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| c.select(i + 1))
            .collect();
        let values: Vec<String> = rows
            .iter()
            .map(|r| {
                let cells: Vec<&str> = r
                    .iter()
                    .map(|v| if v.is_some() { "?" } else { "NULL" })
                    .collect();
                format!("({})", cells.join(", "))
            })
            .collect();
        let mut sql = format!(
            "MERGE INTO {} AS t USING (SELECT {} FROM VALUES {}) AS s ON t.\"AUDIENCE\" = s.\"AUDIENCE\" AND t.\"PERSON_ID\" = s.\"PERSON_ID\" WHEN MATCHED AND s.\"CHANGED_AT\" >= t.\"UPDATED_AT\" THEN ",
            self.table,
            select.join(", "),
            values.join(", ")
        );
        let data: Vec<String> = self
            .data_columns(op)
            .iter()
            .map(|c| quote(&c.name))
            .collect();
        let from_s: Vec<String> = data.iter().map(|n| format!("s.{n}")).collect();
        match (op.desired(), self.on_exit) {
            (true, _) => {
                let mut set: Vec<String> =
                    data[2..].iter().map(|n| format!("{n} = s.{n}")).collect();
                set.push("\"ENTERED_AT\" = CASE WHEN t.\"EXITED_AT\" IS NULL AND t.\"ENTERED_AT\" IS NOT NULL THEN t.\"ENTERED_AT\" ELSE s.\"ENTERED_AT\" END".into());
                set.push("\"EXITED_AT\" = NULL".into());
                set.push("\"UPDATED_AT\" = s.\"CHANGED_AT\"".into());
                sql.push_str(&format!(
                    "UPDATE SET {} WHEN NOT MATCHED THEN INSERT ({}, \"ENTERED_AT\", \"UPDATED_AT\", \"EXITED_AT\") VALUES ({}, s.\"ENTERED_AT\", s.\"CHANGED_AT\", NULL)",
                    set.join(", "),
                    data.join(", "),
                    from_s.join(", ")
                ));
            }
            (false, OnExit::Mark) => {
                sql.push_str(&format!(
                    "UPDATE SET \"EXITED_AT\" = s.\"EXITED_AT\", \"UPDATED_AT\" = s.\"CHANGED_AT\" WHEN NOT MATCHED THEN INSERT ({}, \"UPDATED_AT\", \"EXITED_AT\") VALUES ({}, s.\"CHANGED_AT\", s.\"EXITED_AT\")",
                    data.join(", "),
                    from_s.join(", ")
                ));
            }
            (false, OnExit::Delete) => sql.push_str("DELETE"),
        }
        sql
    }
}

fn identifier(p: &PersonRecord, i: Identifier) -> Option<String> {
    match i {
        Identifier::Id => p.customer_id.clone(),
        Identifier::CioId => p.cio_id.clone(),
        Identifier::Email => p.email.clone(),
        Identifier::Phone => p.phone.clone(),
    }
    .filter(|s| !s.is_empty())
}

fn mapped(v: MappedValue) -> Bind {
    match v {
        MappedValue::Text(s) => Bind::Text(s),
        MappedValue::Number(n) => Bind::Real(n),
        MappedValue::Boolean(b) => Bind::Boolean(b),
        MappedValue::Timestamp(ms) => Bind::Millis(ms),
    }
}

/// One statement, ready to submit.
#[derive(Debug, Clone)]
pub struct Statement {
    pub sql: String,
    pub bindings: Vec<Bind>,
    pub rows: usize,
}

impl Statement {
    /// `{"1": {"type", "value"}, …}`.
    pub fn bindings_json(&self) -> Value {
        let mut m = Map::new();
        for (i, b) in self.bindings.iter().enumerate() {
            m.insert((i + 1).to_string(), b.binding());
        }
        Value::Object(m)
    }

    /// The request id: a UUID (version 8, RFC 9562's form for a name
    /// computed by the application) of the SHA-256 of the destination, the
    /// account and everything the statement would execute — its text and
    /// its bindings, which hold the audience, the op's shape, every
    /// person's id, values and Customer.io change time. The same rows sent
    /// again make the same id, so Snowflake can answer the first
    /// execution's result instead of executing twice; any difference makes
    /// another id.
    pub fn request_id(&self, destination: &str, account: &str) -> uuid::Uuid {
        let mut h = Sha256::new();
        for part in [destination, account, &self.sql] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update(self.bindings_json().to_string().as_bytes());
        let digest = h.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }
}

/// How a batch is cut into statements.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_rows: usize,
    pub max_bindings: usize,
}

/// The statements for `people` (addressable ones; others are skipped):
/// rows sorted by `person_id` so a resent batch cuts the same way, one row
/// per `person_id` (the latest change wins), as many rows a statement as
/// both limits allow.
pub fn statements(
    layout: &Layout,
    destination: &str,
    target: &SendTarget<'_>,
    op: SyncOp,
    people: &[PersonRecord],
    limits: Limits,
) -> Vec<Statement> {
    let mut rows: std::collections::BTreeMap<&str, (i64, Vec<Option<Bind>>)> =
        std::collections::BTreeMap::new();
    let now = chrono::Utc::now().timestamp_millis();
    for (i, p) in people.iter().enumerate() {
        let Some(pid) = p.row_id() else { continue };
        // Customer.io's time of the membership change, the row's clock: it
        // only grows for a person in an audience (latest wins), so it
        // orders the statements of one row whatever order they land in.
        let membership = target
            .changed_at
            .get(i)
            .copied()
            .filter(|at| *at > 0)
            .unwrap_or(now);
        let clock = membership;
        if rows.get(pid).is_some_and(|(seen, _)| *seen > clock) {
            continue;
        }
        let mut row = vec![
            Some(Bind::Text(target.platform_audience_id.to_owned())),
            Some(Bind::Text(pid.to_owned())),
        ];
        if op.desired() || layout.on_exit == OnExit::Mark {
            row.extend(
                layout
                    .identifiers
                    .iter()
                    .map(|i| identifier(p, *i).map(Bind::Text)),
            );
        }
        if op.desired() {
            let mut values = target.mapping.values(p, destination);
            row.extend(
                layout
                    .attributes
                    .iter()
                    .map(|c| c.field.as_ref().and_then(|f| values.remove(f)).map(mapped)),
            );
        }
        if op.desired() || layout.on_exit == OnExit::Mark {
            row.push(Some(Bind::Millis(membership)));
        }
        row.push(Some(Bind::Millis(clock)));
        rows.insert(pid, (clock, row));
    }
    let width = layout.columns(op).len().max(1);
    let per = limits.max_rows.min(limits.max_bindings / width).max(1);
    let rows: Vec<Vec<Option<Bind>>> = rows.into_values().map(|(_, r)| r).collect();
    rows.chunks(per)
        .map(|chunk| Statement {
            sql: layout.sql(op, chunk),
            bindings: chunk.iter().flatten().flatten().cloned().collect(),
            rows: chunk.len(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audiences::AudienceDef;
    use crate::destinations::{MapConfig, Mapping};

    fn person(id: i64) -> PersonRecord {
        let mut attributes = Map::new();
        attributes.insert("ltv".into(), json!("12.5"));
        attributes.insert("vip".into(), json!(true));
        attributes.insert("last_order".into(), json!(1_764_579_600));
        PersonRecord {
            person_id: id,
            customer_id: Some(format!("u{id}")),
            cio_id: Some(format!("cio{id}")),
            email: Some(format!("u{id}@example.com")),
            phone: None,
            attributes,
        }
    }

    fn def() -> AudienceDef {
        AudienceDef {
            id: 1,
            name: "CIO__Cart".into(),
            segment_id: 42,
            mode: Default::default(),
            destinations: vec!["sf".into()],
        }
    }

    fn mapping() -> Mapping {
        let map: MapConfig = toml::from_str(
            "ltv = { from = \"ltv\", type = \"number\" }\nvip = { from = \"vip\", type = \"boolean\" }\nlast_order_at = { from = \"last_order\", type = \"timestamp\" }\nplan = \"plan\"",
        )
        .unwrap();
        Mapping::resolve(&[], true, &[&map]).unwrap()
    }

    fn layout(on_exit: OnExit) -> Layout {
        let mut c =
            config::SnowflakeConfig::new("xy12345", "koala", crate::secret::Secret::new(""));
        c.on_exit = on_exit;
        Layout::new(&c, &mapping()).unwrap()
    }

    /// The table as `create_table` makes it, as the information schema
    /// names its columns.
    fn as_found(l: &Layout) -> Vec<FoundColumn> {
        l.table_columns()
            .into_iter()
            .map(|c| FoundColumn {
                name: c.name,
                data_type: match c.kind {
                    FieldType::String => "TEXT".into(),
                    k => config::column_type(k).into(),
                },
                nullable: !c.not_null,
                has_default: false,
            })
            .collect()
    }

    #[test]
    fn a_table_that_fits_has_no_drift_and_each_difference_is_named() {
        let l = layout(OnExit::Mark);
        let mut found = as_found(&l);
        assert!(drift(&l, &found).is_empty());
        // Nullable where koala always writes is fine, as are extra columns
        // that are nullable or have a default.
        found.iter_mut().for_each(|f| f.nullable = true);
        found.push(FoundColumn {
            name: "NOTE".into(),
            data_type: "TEXT".into(),
            nullable: false,
            has_default: true,
        });
        assert!(drift(&l, &found).is_empty());
        found.retain(|f| f.name != "PLAN");
        found
            .iter_mut()
            .find(|f| f.name == "LTV")
            .unwrap()
            .data_type = "NUMBER".into();
        found
            .iter_mut()
            .find(|f| f.name == "EMAIL")
            .unwrap()
            .nullable = false;
        found.push(FoundColumn {
            name: "REGION".into(),
            data_type: "TEXT".into(),
            nullable: false,
            has_default: false,
        });
        let p = drift(&l, &found);
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].contains("column EMAIL is NOT NULL") && p[0].contains("ALTER TABLE \"KOALA\".\"PUBLIC\".\"AUDIENCE_MEMBERS\" ALTER COLUMN \"EMAIL\" DROP NOT NULL"), "{}", p[0]);
        assert!(
            p[1].contains(
                "KOALA.PUBLIC.AUDIENCE_MEMBERS column LTV is NUMBER, but koala writes FLOAT"
            ),
            "{}",
            p[1]
        );
        assert!(
            p[2].contains("has no column PLAN")
                && p[2].contains("ADD COLUMN \"PLAN\" VARCHAR) or take it out of map"),
            "{}",
            p[2]
        );
        assert!(p[3].contains("requires column REGION"), "{}", p[3]);
        for (kind, ok, not) in [
            (FieldType::String, "VARCHAR", "NUMBER"),
            (FieldType::Number, "FLOAT", "NUMBER"),
            (FieldType::Boolean, "BOOLEAN", "TEXT"),
            (FieldType::Timestamp, "TIMESTAMP_NTZ", "DATE"),
        ] {
            assert!(fits(kind, ok) && !fits(kind, not), "{kind:?}");
        }
    }

    const LIMITS: Limits = Limits {
        max_rows: 1000,
        max_bindings: 10_000,
    };

    #[test]
    fn an_upsert_binds_every_value_and_writes_none_into_the_sql() {
        let (def, mapping) = (def(), mapping());
        let at = [1_750_000_000_000, 1_750_000_000_001];
        let target = SendTarget {
            audience: &def,
            platform_audience_id: "CIO__Cart",
            mapping: &mapping,
            changed_at: &at,
        };
        let people = [person(2), person(1)];
        let l = layout(OnExit::Mark);
        let s = statements(&l, "sf", &target, SyncOp::Add, &people, LIMITS);
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!(s.rows, 2);
        assert!(!s.sql.contains('\''), "{}", s.sql);
        assert!(!s.sql.contains("example.com") && !s.sql.contains("u1"));
        assert_eq!(s.sql.matches('?').count(), s.bindings.len());
        assert!(s.sql.starts_with(
            "MERGE INTO \"KOALA\".\"PUBLIC\".\"AUDIENCE_MEMBERS\" AS t USING (SELECT column1::VARCHAR AS \"AUDIENCE\", column2::VARCHAR AS \"PERSON_ID\", column3::VARCHAR AS \"CIO_ID\", column4::VARCHAR AS \"EMAIL\", TO_TIMESTAMP_LTZ(column5, 3) AS \"LAST_ORDER_AT\", column6::FLOAT AS \"LTV\", column7::VARCHAR AS \"PLAN\", column8::BOOLEAN AS \"VIP\", TO_TIMESTAMP_LTZ(column9, 3) AS \"ENTERED_AT\", TO_TIMESTAMP_LTZ(column10, 3) AS \"CHANGED_AT\" FROM VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?), (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)) AS s"
        ), "{}", s.sql);
        assert!(s.sql.contains("WHEN MATCHED AND s.\"CHANGED_AT\" >= t.\"UPDATED_AT\" THEN UPDATE SET \"CIO_ID\" = s.\"CIO_ID\""));
        assert!(s.sql.ends_with("WHEN NOT MATCHED THEN INSERT (\"AUDIENCE\", \"PERSON_ID\", \"CIO_ID\", \"EMAIL\", \"LAST_ORDER_AT\", \"LTV\", \"PLAN\", \"VIP\", \"ENTERED_AT\", \"UPDATED_AT\", \"EXITED_AT\") VALUES (s.\"AUDIENCE\", s.\"PERSON_ID\", s.\"CIO_ID\", s.\"EMAIL\", s.\"LAST_ORDER_AT\", s.\"LTV\", s.\"PLAN\", s.\"VIP\", s.\"ENTERED_AT\", s.\"CHANGED_AT\", NULL)"), "{}", s.sql);
        // Sorted by person id: u1 first, with its own change time.
        let b = s.bindings_json();
        assert_eq!(b["2"], json!({"type": "TEXT", "value": "u1"}));
        assert_eq!(b["4"], json!({"type": "TEXT", "value": "u1@example.com"}));
        assert_eq!(b["5"], json!({"type": "FIXED", "value": "1764579600000"}));
        assert_eq!(b["6"], json!({"type": "REAL", "value": "12.5"}));
        assert_eq!(b["7"], json!({"type": "BOOLEAN", "value": "true"}));
        assert_eq!(b["8"], json!({"type": "FIXED", "value": "1750000000001"}));
        assert_eq!(b["9"], json!({"type": "FIXED", "value": "1750000000001"}));
        assert_eq!(b["11"], json!({"type": "TEXT", "value": "u2"}));

        // The same rows make the same request id; another change time not.
        let swapped = [at[1], at[0]];
        let t1 = SendTarget {
            changed_at: &swapped,
            ..target
        };
        let again = statements(&l, "sf", &t1, SyncOp::Add, &[person(1), person(2)], LIMITS);
        assert_eq!(
            again[0].request_id("sf", "xy12345"),
            s.request_id("sf", "xy12345")
        );
        assert_ne!(
            s.request_id("sf", "xy12345"),
            s.request_id("sf2", "xy12345")
        );
        let later = [1_750_000_000_000, 1_750_000_000_002];
        let t2 = SendTarget {
            changed_at: &later,
            ..target
        };
        let other = statements(&l, "sf", &t2, SyncOp::Add, &people, LIMITS);
        assert_ne!(
            other[0].request_id("sf", "xy12345"),
            s.request_id("sf", "xy12345")
        );
        assert_eq!(s.request_id("sf", "a").get_version_num(), 8);
    }

    #[test]
    fn exits_mark_or_delete() {
        let (def, mapping) = (def(), mapping());
        let at = [1_750_000_000_000];
        let target = SendTarget {
            audience: &def,
            platform_audience_id: "CIO__Cart",
            mapping: &mapping,
            changed_at: &at,
        };
        let mark = statements(
            &layout(OnExit::Mark),
            "sf",
            &target,
            SyncOp::Remove,
            &[person(1)],
            LIMITS,
        );
        assert!(mark[0].sql.contains("column4::VARCHAR AS \"EMAIL\", TO_TIMESTAMP_LTZ(column5, 3) AS \"EXITED_AT\", TO_TIMESTAMP_LTZ(column6, 3) AS \"CHANGED_AT\" FROM VALUES (?, ?, ?, ?, ?, ?)"), "{}", mark[0].sql);
        assert!(mark[0].sql.contains("THEN UPDATE SET \"EXITED_AT\" = s.\"EXITED_AT\", \"UPDATED_AT\" = s.\"CHANGED_AT\" WHEN NOT MATCHED THEN INSERT"));
        assert!(!mark[0].sql.contains("LTV"));
        let delete = statements(
            &layout(OnExit::Delete),
            "sf",
            &target,
            SyncOp::Remove,
            &[person(1)],
            LIMITS,
        );
        assert!(delete[0].sql.contains("SELECT column1::VARCHAR AS \"AUDIENCE\", column2::VARCHAR AS \"PERSON_ID\", TO_TIMESTAMP_LTZ(column3, 3) AS \"CHANGED_AT\" FROM VALUES (?, ?, ?))"));
        assert!(delete[0].sql.ends_with("THEN DELETE"), "{}", delete[0].sql);
        assert_eq!(delete[0].bindings.len(), 3);
    }

    #[test]
    fn batches_are_cut_to_the_row_and_binding_limits() {
        let (def, mapping) = (def(), mapping());
        let people: Vec<PersonRecord> = (0..25).map(person).collect();
        let at: Vec<i64> = vec![1_750_000_000_000; 25];
        let target = SendTarget {
            audience: &def,
            platform_audience_id: "CIO__Cart",
            mapping: &mapping,
            changed_at: &at,
        };
        let l = layout(OnExit::Mark);
        let s = statements(
            &l,
            "sf",
            &target,
            SyncOp::Add,
            &people,
            Limits {
                max_rows: 10,
                max_bindings: 10_000,
            },
        );
        assert_eq!(s.iter().map(|s| s.rows).collect::<Vec<_>>(), [10, 10, 5]);
        // 10 columns a row: 40 bindings hold 4 rows.
        let s = statements(
            &l,
            "sf",
            &target,
            SyncOp::Add,
            &people,
            Limits {
                max_rows: 10,
                max_bindings: 40,
            },
        );
        assert!(s.iter().all(|s| s.rows <= 4 && s.bindings.len() <= 40));
        assert_eq!(s.iter().map(|s| s.rows).sum::<usize>(), 25);
        // A person without any id is skipped (the engine never sends one).
        let mut anon = person(99);
        anon.customer_id = None;
        anon.cio_id = Some(String::new());
        assert!(statements(&l, "sf", &target, SyncOp::Add, &[anon], LIMITS).is_empty());
    }

    #[test]
    fn the_table_is_created_with_typed_columns() {
        assert_eq!(
            layout(OnExit::Mark).create_table(),
            "CREATE TABLE IF NOT EXISTS \"KOALA\".\"PUBLIC\".\"AUDIENCE_MEMBERS\" (\"AUDIENCE\" VARCHAR NOT NULL, \"PERSON_ID\" VARCHAR NOT NULL, \"CIO_ID\" VARCHAR, \"EMAIL\" VARCHAR, \"LAST_ORDER_AT\" TIMESTAMP_LTZ, \"LTV\" FLOAT, \"PLAN\" VARCHAR, \"VIP\" BOOLEAN, \"ENTERED_AT\" TIMESTAMP_LTZ, \"UPDATED_AT\" TIMESTAMP_LTZ NOT NULL, \"EXITED_AT\" TIMESTAMP_LTZ, PRIMARY KEY (\"AUDIENCE\", \"PERSON_ID\"))"
        );
    }
}
