//! The table koala appends to: fixed columns for the change, identifier
//! columns as configured, one typed column per mapped attribute; the
//! `tables.insert` bodies of the table and of the current-membership view
//! (<https://cloud.google.com/bigquery/docs/reference/rest/v2/tables/insert>).

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
}
