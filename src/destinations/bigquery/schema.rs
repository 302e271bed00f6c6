//! The table koala appends to: fixed columns for the change, identifier
//! columns as configured, one typed column per mapped attribute; the
//! `tables.insert` bodies of the table and of the current-membership view
//! (<https://cloud.google.com/bigquery/docs/reference/rest/v2/tables/insert>);
//! and how a table's schema as `tables.get` gives it
//! (<https://cloud.google.com/bigquery/docs/reference/rest/v2/tables/get>)
//! differs from what koala writes, a pure comparison for
//! `koala check --online`.

use serde_json::{json, Value};

use super::config::Identifier;
use crate::destinations::{FieldType, Mapping};

/// A BigQuery column type koala writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Float64,
    Bool,
    Timestamp,
}

impl ColumnType {
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::String => "STRING",
            ColumnType::Float64 => "FLOAT64",
            ColumnType::Bool => "BOOL",
            ColumnType::Timestamp => "TIMESTAMP",
        }
    }

    /// True when a column BigQuery calls `found` (a `TableFieldSchema`
    /// type: legacy `FLOAT`/`BOOLEAN` or standard `FLOAT64`/`BOOL`) takes
    /// what koala writes as this type. NUMERIC does not fit a FLOAT64:
    /// it refuses fractions beyond 9 digits.
    pub fn fits(self, found: &str) -> bool {
        let found = found.to_ascii_uppercase();
        match self {
            ColumnType::String => found == "STRING",
            ColumnType::Float64 => matches!(found.as_str(), "FLOAT64" | "FLOAT"),
            ColumnType::Bool => matches!(found.as_str(), "BOOL" | "BOOLEAN"),
            ColumnType::Timestamp => found == "TIMESTAMP",
        }
    }

    /// A mapping type's column: numbers are FLOAT64 (a mapped number is a
    /// double already; NUMERIC would refuse fractions beyond 9 digits).
    pub fn of(kind: FieldType) -> Self {
        match kind {
            FieldType::String => ColumnType::String,
            FieldType::Number => ColumnType::Float64,
            FieldType::Boolean => ColumnType::Bool,
            FieldType::Timestamp => ColumnType::Timestamp,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub kind: ColumnType,
    pub required: bool,
    pub description: String,
}

impl Column {
    fn new(name: &str, kind: ColumnType, required: bool, description: &str) -> Self {
        Column {
            name: name.into(),
            kind,
            required,
            description: description.into(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.kind.as_str(),
            "mode": if self.required { "REQUIRED" } else { "NULLABLE" },
            "description": self.description,
        })
    }
}

/// The column the view ranks rows by; no mapped field may take it.
pub const RANK_COLUMN: &str = "koala_rank";

/// The columns every row has, in order.
pub fn fixed_columns() -> Vec<Column> {
    use ColumnType::*;
    vec![
        Column::new("change_id", String, true, "koala's id of this change: the insertId it was streamed with (repeats when a retry delivered a row twice)"),
        Column::new("audience", String, true, "the audience: the sync entry's audience_id, else koala's audience name"),
        Column::new("person_id", String, true, "the Customer.io id (id), else cio_id"),
        Column::new("cio_id", String, false, "Customer.io's cio_id"),
        Column::new("change", String, true, "add, remove, or update (attributes of a current member)"),
        Column::new("occurred_at", Timestamp, false, "Customer.io's time of the membership change"),
        Column::new("synced_at", Timestamp, true, "when koala sent the row"),
    ]
}

/// The identifier columns' names.
pub fn identifier_column(i: Identifier, hashed: bool) -> &'static str {
    match (i, hashed) {
        (Identifier::Email, false) => "email",
        (Identifier::Email, true) => "email_sha256",
        (Identifier::Phone, false) => "phone",
        (Identifier::Phone, true) => "phone_sha256",
    }
}

/// Every column of the table for one mapping.
pub fn columns(identifiers: &[Identifier], hashed: bool, mapping: &Mapping) -> Vec<Column> {
    let mut cols = fixed_columns();
    for i in identifiers {
        let what = match (i, hashed) {
            (Identifier::Email, false) => "email address",
            (Identifier::Email, true) => "SHA-256 (hex) of the email normalized Google's way",
            (Identifier::Phone, false) => "phone number, E.164",
            (Identifier::Phone, true) => "SHA-256 (hex) of the phone in E.164",
        };
        cols.push(Column::new(
            identifier_column(*i, hashed),
            ColumnType::String,
            false,
            what,
        ));
    }
    for (field, kind) in mapping.typed_fields() {
        cols.push(Column::new(
            field,
            ColumnType::of(kind),
            false,
            "mapped attribute",
        ));
    }
    cols
}

/// BigQuery's rule for column names (letters, digits, underscores, not
/// starting with a digit, at most 300) and its reserved prefixes.
pub fn column_name_problem(name: &str) -> Option<String> {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || name.len() > 300 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Some(
            "not a BigQuery column name (letters, digits, underscores; not starting with a digit; at most 300)"
                .into(),
        );
    }
    let upper = name.to_ascii_uppercase();
    const RESERVED: &[&str] = &[
        "_TABLE_",
        "_FILE_",
        "_PARTITION",
        "_ROW_TIMESTAMP",
        "__ROOT__",
        "_COLIDENTIFIER",
        "_CHANGE_SEQUENCE_NUMBER",
        "_CHANGE_TYPE",
        "_CHANGE_TIMESTAMP",
    ];
    RESERVED
        .iter()
        .find(|p| upper.starts_with(*p))
        .map(|p| format!("BigQuery reserves column names starting with {p}"))
}

/// Problems of a mapping as columns, each starting with `map.{field}`.
pub fn mapping_problems(
    identifiers: &[Identifier],
    hashed: bool,
    mapping: &Mapping,
) -> Vec<String> {
    let mut taken: Vec<String> = fixed_columns().into_iter().map(|c| c.name).collect();
    taken.push(RANK_COLUMN.into());
    for i in [Identifier::Email, Identifier::Phone] {
        if identifiers.contains(&i) {
            taken.push(identifier_column(i, hashed).into());
        }
    }
    let mut p = Vec::new();
    let mut mapped: Vec<&str> = Vec::new();
    for field in mapping.fields() {
        if let Some(why) = column_name_problem(field) {
            p.push(format!("map.{field}: {why}"));
        } else if taken.iter().any(|t| t.eq_ignore_ascii_case(field)) {
            p.push(format!(
                "map.{field}: koala writes a column of that name itself (column names are case-insensitive)"
            ));
        } else if let Some(other) = mapped.iter().find(|m| m.eq_ignore_ascii_case(field)) {
            p.push(format!(
                "map.{field}: the same column as map.{other} (column names are case-insensitive)"
            ));
        }
        mapped.push(field);
    }
    p
}

/// The `tables.insert` body of the change table: partitioned by day of
/// `synced_at`, clustered by audience and person (what the view reads).
pub fn table_body(project: &str, dataset: &str, table: &str, columns: &[Column]) -> Value {
    json!({
        "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
        "description": "Audience membership changes written by koala: one append-only row per change",
        "schema": {"fields": columns.iter().map(Column::to_json).collect::<Vec<_>>()},
        "timePartitioning": {"type": "DAY", "field": "synced_at"},
        "clustering": {"fields": ["audience", "person_id"]},
    })
}

/// Current membership: each (audience, person)'s latest change, kept when
/// it is not a remove. Latest is the newest Customer.io time, then the
/// newest send (an update repeats its membership change's time).
pub fn view_sql(project: &str, dataset: &str, table: &str) -> String {
    format!(
        "SELECT * EXCEPT ({RANK_COLUMN})
FROM (
  SELECT *, ROW_NUMBER() OVER (
    PARTITION BY audience, person_id
    ORDER BY occurred_at DESC, synced_at DESC
  ) AS {RANK_COLUMN}
  FROM `{project}.{dataset}.{table}`
)
WHERE {RANK_COLUMN} = 1 AND change != 'remove'"
    )
}

pub fn view_body(project: &str, dataset: &str, view: &str, table: &str) -> Value {
    json!({
        "tableReference": {"projectId": project, "datasetId": dataset, "tableId": view},
        "description": format!("Current audience members: the latest change per audience and person in {table}, unless it is a remove (koala)"),
        "view": {"query": view_sql(project, dataset, table), "useLegacySql": false},
    })
}

/// A column as `tables.get` describes it (`schema.fields[]`); `mode`
/// absent is NULLABLE.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct FoundField {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub mode: Option<String>,
}

impl FoundField {
    fn mode(&self) -> String {
        self.mode
            .as_deref()
            .unwrap_or("NULLABLE")
            .to_ascii_uppercase()
    }
}

/// The top-level columns of a `tables.get` resource.
pub fn found_fields(table: &Value) -> Vec<FoundField> {
    serde_json::from_value(table["schema"]["fields"].clone()).unwrap_or_default()
}

/// What keeps the table at `path` (with columns `found`) from taking the
/// rows koala writes with `columns`, each a sentence naming the column
/// and the fix. Names compare case-insensitively, as BigQuery's do. A
/// column koala always fills may be NULLABLE in the table; one koala may
/// leave empty must not be REQUIRED, and nor may a column koala does not
/// write.
pub fn drift(path: &str, columns: &[Column], found: &[FoundField]) -> Vec<String> {
    let mut p = Vec::new();
    for c in columns {
        let kind = c.kind.as_str();
        let Some(f) = found.iter().find(|f| f.name.eq_ignore_ascii_case(&c.name)) else {
            p.push(format!(
                "bigquery table {path} has no column {}, which koala writes: add it (ALTER TABLE `{path}` ADD COLUMN {} {kind}) or take it out of map",
                c.name, c.name
            ));
            continue;
        };
        let mode = f.mode();
        if !c.kind.fits(&f.kind) || mode == "REPEATED" {
            let repeated = if mode == "REPEATED" { " REPEATED" } else { "" };
            p.push(format!(
                "bigquery table {path} column {} is {}{repeated}, but koala writes {kind} there: change the column or the mapping's type",
                f.name, f.kind
            ));
        } else if mode == "REQUIRED" && !c.required {
            p.push(format!(
                "bigquery table {path} column {} is REQUIRED, but koala leaves it empty when a person has no value: make it NULLABLE (ALTER TABLE `{path}` ALTER COLUMN {} DROP NOT NULL)",
                f.name, f.name
            ));
        }
    }
    for f in found {
        let written = columns.iter().any(|c| c.name.eq_ignore_ascii_case(&f.name));
        if !written && f.mode() == "REQUIRED" {
            p.push(format!(
                "bigquery table {path} requires column {}, which koala does not write: make it NULLABLE (or drop it)",
                f.name
            ));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::MapConfig;

    fn mapping(text: &str) -> Mapping {
        let map: MapConfig = toml::from_str(text).unwrap();
        Mapping::resolve(&[], true, &[&map]).unwrap()
    }

    #[test]
    fn columns_follow_the_identifiers_and_the_mapping_types() {
        let m = mapping(
            "plan = \"plan\"\nltv = { from = \"ltv\", type = \"number\" }\nvip = { from = \"vip\", type = \"boolean\" }\nlast_order_at = { from = \"lo\", type = \"timestamp\" }",
        );
        let cols = columns(&[Identifier::Email, Identifier::Phone], false, &m);
        let shape: Vec<(&str, &str, bool)> = cols
            .iter()
            .map(|c| (c.name.as_str(), c.kind.as_str(), c.required))
            .collect();
        assert_eq!(
            shape,
            [
                ("change_id", "STRING", true),
                ("audience", "STRING", true),
                ("person_id", "STRING", true),
                ("cio_id", "STRING", false),
                ("change", "STRING", true),
                ("occurred_at", "TIMESTAMP", false),
                ("synced_at", "TIMESTAMP", true),
                ("email", "STRING", false),
                ("phone", "STRING", false),
                ("last_order_at", "TIMESTAMP", false),
                ("ltv", "FLOAT64", false),
                ("plan", "STRING", false),
                ("vip", "BOOL", false),
            ]
        );
        let hashed = columns(&[Identifier::Phone], true, &Mapping::default());
        assert_eq!(hashed.last().unwrap().name, "phone_sha256");
        let body = table_body("p", "d", "t", &cols);
        assert_eq!(body["tableReference"]["tableId"], "t");
        assert_eq!(body["schema"]["fields"][2]["mode"], "REQUIRED");
        assert_eq!(body["timePartitioning"]["field"], "synced_at");
    }

    #[test]
    fn mapped_names_must_be_columns_koala_does_not_write() {
        let m = mapping("\"9lives\" = \"a\"\n\"has-dash\" = \"b\"\nEmail = \"c\"\n_PARTITIONTIME = \"d\"\nkoala_rank = \"e\"\nok_name = \"f\"\nphone = \"g\"\nOK_NAME = \"h\"");
        let p = mapping_problems(&[Identifier::Email], false, &m);
        for f in [
            "9lives",
            "has-dash",
            "Email",
            "_PARTITIONTIME",
            "koala_rank",
        ] {
            assert!(
                p.iter().any(|x| x.starts_with(&format!("map.{f}:"))),
                "{f}: {p:?}"
            );
        }
        // phone is free when it is not an identifier column; email_sha256 when clear.
        assert_eq!(p.len(), 6, "{p:?}");
        let m = mapping("email = \"e\"");
        assert!(mapping_problems(&[Identifier::Email], true, &m).is_empty());
    }

    #[test]
    fn the_view_keeps_the_latest_change_unless_a_remove() {
        let sql = view_sql("p", "d", "t");
        assert!(sql.contains("FROM `p.d.t`"), "{sql}");
        assert!(sql.contains("PARTITION BY audience, person_id"));
        assert!(sql.ends_with("WHERE koala_rank = 1 AND change != 'remove'"));
        let v = view_body("p", "d", "t_members", "t");
        assert_eq!(v["view"]["useLegacySql"], false);
        assert_eq!(v["tableReference"]["tableId"], "t_members");
    }

    fn found(cols: &[Column]) -> Vec<FoundField> {
        cols.iter()
            .map(|c| FoundField {
                name: c.name.to_ascii_uppercase(),
                // tables.get may answer the legacy names.
                kind: match c.kind {
                    ColumnType::Float64 => "FLOAT".into(),
                    ColumnType::Bool => "BOOLEAN".into(),
                    k => k.as_str().into(),
                },
                mode: c.required.then(|| "REQUIRED".into()),
            })
            .collect()
    }

    #[test]
    fn a_table_that_fits_has_no_drift_and_each_difference_is_named() {
        let m = mapping("plan = \"plan\"\nltv = { from = \"ltv\", type = \"number\" }");
        let cols = columns(&[Identifier::Email], false, &m);
        let mut table = found(&cols);
        assert!(
            drift("p.d.t", &cols, &table).is_empty(),
            "case-insensitive, legacy type names"
        );
        // Extra NULLABLE columns are fine; REQUIRED ones koala never fills are not.
        table.push(FoundField {
            name: "note".into(),
            kind: "STRING".into(),
            mode: None,
        });
        assert!(drift("p.d.t", &cols, &table).is_empty());
        table.push(FoundField {
            name: "region".into(),
            kind: "STRING".into(),
            mode: Some("REQUIRED".into()),
        });
        table.retain(|f| f.name != "PLAN");
        let ltv = table.iter_mut().find(|f| f.name == "LTV").unwrap();
        ltv.kind = "NUMERIC".into();
        let cio = table.iter_mut().find(|f| f.name == "CIO_ID").unwrap();
        cio.mode = Some("REQUIRED".into());
        let p = drift("p.d.t", &cols, &table);
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(
            p[0].contains("column CIO_ID is REQUIRED") && p[0].contains("DROP NOT NULL"),
            "{}",
            p[0]
        );
        assert!(
            p[1].contains("column LTV is NUMERIC, but koala writes FLOAT64"),
            "{}",
            p[1]
        );
        assert!(
            p[2].contains("has no column plan") && p[2].contains("ADD COLUMN plan STRING"),
            "{}",
            p[2]
        );
        assert!(p[3].contains("requires column region"), "{}", p[3]);
        // A REQUIRED column koala always fills is fine NULLABLE, and REPEATED never fits.
        let mut relaxed = found(&cols);
        relaxed.iter_mut().for_each(|f| f.mode = None);
        assert!(drift("p.d.t", &cols, &relaxed).is_empty());
        relaxed[0].mode = Some("REPEATED".into());
        assert!(drift("p.d.t", &cols, &relaxed)[0].contains("is STRING REPEATED"));
    }

    #[test]
    fn the_fields_of_a_tables_get_resource() {
        let table = json!({"kind": "bigquery#table", "schema": {"fields": [
            {"name": "a", "type": "STRING", "mode": "REQUIRED"},
            {"name": "b", "type": "FLOAT"}]}});
        let f = found_fields(&table);
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].mode(), "NULLABLE");
        assert!(found_fields(&json!({"kind": "bigquery#table"})).is_empty());
    }
}
