//! The warehouse tables as koala expects them, and what it takes to get
//! there from what the database holds: a pure plan, so the rules (create
//! what is missing when allowed, add missing mapped columns, never drop or
//! retype, name the drift otherwise) are tested without a database.

use std::collections::BTreeMap;

use super::config::{IdentifierColumn, OnExit, PostgresConfig};
use crate::destinations::{FieldType, Mapping};

/// A column type koala writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Double,
    Boolean,
    Timestamp,
}

impl ColumnType {
    pub fn of(kind: FieldType) -> Self {
        match kind {
            FieldType::String => ColumnType::Text,
            FieldType::Number => ColumnType::Double,
            FieldType::Boolean => ColumnType::Boolean,
            FieldType::Timestamp => ColumnType::Timestamp,
        }
    }

    /// The type in DDL, and for `UNNEST($n::…[])`.
    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Double => "double precision",
            ColumnType::Boolean => "boolean",
            ColumnType::Timestamp => "timestamptz",
        }
    }

    /// True when a column of `data_type` (as `information_schema.columns`
    /// names it) takes this type's values without loss. A team may widen
    /// or narrow a column by hand; only what would fail or lose data is
    /// drift.
    pub fn fits(self, data_type: &str) -> bool {
        match self {
            ColumnType::Text => matches!(data_type, "text" | "character varying"),
            ColumnType::Double => matches!(data_type, "double precision" | "numeric"),
            ColumnType::Boolean => data_type == "boolean",
            ColumnType::Timestamp => matches!(
                data_type,
                "timestamp with time zone" | "timestamp without time zone"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub kind: ColumnType,
    pub not_null: bool,
}

fn column(name: &str, kind: ColumnType, not_null: bool) -> Column {
    Column {
        name: name.to_owned(),
        kind,
        not_null,
    }
}

/// One table as koala writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    pub primary_key: Vec<&'static str>,
}

/// `"schema"."name"`; both were checked to be plain identifiers.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("\"{schema}\".\"{name}\"")
}

impl TableSpec {
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    /// `CREATE TABLE IF NOT EXISTS …`.
    pub fn create_sql(&self) -> String {
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                format!(
                    "\"{}\" {}{}",
                    c.name,
                    c.kind.sql(),
                    if c.not_null { " NOT NULL" } else { "" }
                )
            })
            .collect();
        let key: Vec<String> = self
            .primary_key
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect();
        parts.push(format!("PRIMARY KEY ({})", key.join(", ")));
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {}\n)",
            self.qualified(),
            parts.join(",\n  ")
        )
    }
}

/// Current membership: who is in which audience, with the configured
/// identifiers and one column per mapped field.
pub fn members_table(config: &PostgresConfig, mapping: &Mapping) -> TableSpec {
    let mut columns = vec![
        column("audience", ColumnType::Text, true),
        column("person_id", ColumnType::Text, true),
    ];
    for id in identifier_columns(config) {
        columns.push(column(id.column(), ColumnType::Text, false));
    }
    for (field, kind) in mapping.typed_fields() {
        columns.push(column(field, ColumnType::of(kind), false));
    }
    columns.push(column("entered_at", ColumnType::Timestamp, true));
    columns.push(column("updated_at", ColumnType::Timestamp, true));
    if config.on_exit == OnExit::Mark {
        columns.push(column("exited_at", ColumnType::Timestamp, false));
    }
    TableSpec {
        schema: config.schema.clone(),
        name: config.members_table.clone(),
        columns,
        primary_key: vec!["audience", "person_id"],
    }
}

/// The append-only history. `change_key` names a change
/// deterministically, so a retried statement adds nothing twice.
pub fn history_table(config: &PostgresConfig) -> TableSpec {
    TableSpec {
        schema: config.schema.clone(),
        name: config.history_table.clone(),
        columns: vec![
            column("change_key", ColumnType::Text, true),
            column("audience", ColumnType::Text, true),
            column("person_id", ColumnType::Text, true),
            column("change", ColumnType::Text, true),
            column("occurred_at", ColumnType::Timestamp, true),
            column("synced_at", ColumnType::Timestamp, true),
        ],
        primary_key: vec!["change_key"],
    }
}

/// The configured identifier columns in a fixed order.
pub fn identifier_columns(config: &PostgresConfig) -> Vec<IdentifierColumn> {
    let mut ids = config.identifiers.clone();
    ids.sort();
    ids.dedup();
    ids
}

/// What the database holds of one table: column name → `data_type`;
/// `None` when the table does not exist.
pub type FoundColumns = Option<BTreeMap<String, String>>;

/// The statements that bring `found` to `spec`, or why it cannot be done
/// without someone deciding (a column of another type, or something
/// missing while koala may not create it).
pub fn plan(spec: &TableSpec, found: &FoundColumns, create: bool) -> Result<Vec<String>, String> {
    let table = format!("{}.{}", spec.schema, spec.name);
    let Some(found) = found else {
        if !create {
            return Err(format!(
                "table {table} does not exist (create it, or set create_tables = true)"
            ));
        }
        return Ok(vec![spec.create_sql()]);
    };
    let mut steps = Vec::new();
    for c in &spec.columns {
        match found.get(&c.name) {
            Some(data_type) if c.kind.fits(data_type) => {}
            Some(data_type) => {
                return Err(format!(
                    "table {table} column {} is {data_type}, but koala writes {} there: change the column or the mapping's type",
                    c.name,
                    c.kind.sql()
                ))
            }
            None if !create => {
                return Err(format!(
                    "table {table} has no column {} ({}): add it, or set create_tables = true",
                    c.name,
                    c.kind.sql()
                ))
            }
            // NOT NULL columns koala adds late would fail on the rows
            // already there; they are in the table from its creation.
            None if c.not_null => {
                return Err(format!(
                    "table {table} has no column {} ({} NOT NULL), which koala cannot add to a table that has rows: add it by hand",
                    c.name,
                    c.kind.sql()
                ))
            }
            None => steps.push(format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS \"{}\" {}",
                spec.qualified(),
                c.name,
                c.kind.sql()
            )),
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::MapConfig;

    fn mapping(toml_map: &str) -> Mapping {
        let map: MapConfig = toml::from_str(toml_map).unwrap();
        Mapping::resolve(&[], true, &[&map]).unwrap()
    }

    fn config() -> PostgresConfig {
        PostgresConfig::new("postgres://h/db", "koala")
    }

    #[test]
    fn the_members_table_has_a_typed_column_per_mapped_field() {
        let spec = members_table(
            &config(),
            &mapping("ltv = { from = \"ltv\", type = \"number\" }\nplan = \"plan\"\nlast_order_at = { from = \"last_order\", type = \"timestamp\" }"),
        );
        let sql = spec.create_sql();
        assert!(
            sql.starts_with("CREATE TABLE IF NOT EXISTS \"koala\".\"audience_members\""),
            "{sql}"
        );
        for part in [
            "\"audience\" text NOT NULL",
            "\"cio_id\" text,",
            "\"ltv\" double precision,",
            "\"plan\" text,",
            "\"last_order_at\" timestamptz,",
            "\"entered_at\" timestamptz NOT NULL",
            "PRIMARY KEY (\"audience\", \"person_id\")",
        ] {
            assert!(sql.contains(part), "{part} in {sql}");
        }
        assert!(
            !sql.contains("exited_at"),
            "delete on exit keeps no exited_at"
        );
        let mut mark = config();
        mark.on_exit = OnExit::Mark;
        assert!(members_table(&mark, &Mapping::default())
            .create_sql()
            .contains("\"exited_at\" timestamptz,"));
    }

    fn found(cols: &[(&str, &str)]) -> FoundColumns {
        Some(
            cols.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    fn history_found() -> FoundColumns {
        found(&[
            ("change_key", "text"),
            ("audience", "text"),
            ("person_id", "character varying"),
            ("change", "text"),
            ("occurred_at", "timestamp with time zone"),
            ("synced_at", "timestamp with time zone"),
        ])
    }

    #[test]
    fn a_missing_table_is_created_only_when_allowed() {
        let spec = history_table(&config());
        assert_eq!(plan(&spec, &None, true).unwrap(), vec![spec.create_sql()]);
        let err = plan(&spec, &None, false).unwrap_err();
        assert!(
            err.contains("koala.audience_changes does not exist"),
            "{err}"
        );
        assert!(plan(&spec, &history_found(), false).unwrap().is_empty());
    }

    #[test]
    fn a_new_mapped_field_adds_its_column_and_a_retyped_one_is_drift() {
        let spec = members_table(
            &config(),
            &mapping("ltv = { from = \"ltv\", type = \"number\" }"),
        );
        let mut cols = vec![
            ("audience", "text"),
            ("person_id", "text"),
            ("cio_id", "text"),
            ("email", "text"),
            ("phone", "text"),
            ("entered_at", "timestamp with time zone"),
            ("updated_at", "timestamp with time zone"),
        ];
        let steps = plan(&spec, &found(&cols), true).unwrap();
        assert_eq!(
            steps,
            ["ALTER TABLE \"koala\".\"audience_members\" ADD COLUMN IF NOT EXISTS \"ltv\" double precision"]
        );
        let err = plan(&spec, &found(&cols), false).unwrap_err();
        assert!(
            err.contains("has no column ltv (double precision)"),
            "{err}"
        );
        cols.push(("ltv", "text"));
        let err = plan(&spec, &found(&cols), true).unwrap_err();
        assert!(
            err.contains("column ltv is text, but koala writes double precision"),
            "{err}"
        );
        cols.pop();
        cols.push(("ltv", "numeric"));
        assert!(plan(&spec, &found(&cols), true).unwrap().is_empty());
        // A required column is never added to a table with rows.
        cols.retain(|(c, _)| *c != "entered_at");
        assert!(plan(&spec, &found(&cols), true)
            .unwrap_err()
            .contains("entered_at"));
    }
}
