//! One statement per batch: the rows travel as one array per column
//! (`UNNEST`), the membership change and its history row are written by
//! one statement (a data-modifying `WITH`), so a batch is applied whole or
//! not at all, and a retry of it changes nothing more: the upsert and the
//! delete are idempotent and history rows are keyed by `change_key`.

use chrono::{DateTime, Utc};

use super::config::{IdentifierColumn, OnExit};
use super::schema::{qualified, ColumnType};
use crate::audiences::SyncOp;
use crate::destinations::mapping::MappedValue;
use crate::destinations::SendTarget;
use crate::person::PersonRecord;

/// The values of one column, for every row of the batch.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnValues {
    Text(Vec<Option<String>>),
    Double(Vec<Option<f64>>),
    Boolean(Vec<Option<bool>>),
    Timestamp(Vec<Option<DateTime<Utc>>>),
}

impl ColumnValues {
    fn new(kind: ColumnType, rows: usize) -> Self {
        match kind {
            ColumnType::Text => ColumnValues::Text(Vec::with_capacity(rows)),
            ColumnType::Double => ColumnValues::Double(Vec::with_capacity(rows)),
            ColumnType::Boolean => ColumnValues::Boolean(Vec::with_capacity(rows)),
            ColumnType::Timestamp => ColumnValues::Timestamp(Vec::with_capacity(rows)),
        }
    }

    /// Appends a mapped value; one that does not suit the column (the
    /// mapping coerced it to the column's type, so only `None`) is NULL.
    fn push(&mut self, v: Option<MappedValue>) {
        match self {
            ColumnValues::Text(c) => c.push(v.map(|v| v.to_text())),
            ColumnValues::Double(c) => c.push(match v {
                Some(MappedValue::Number(n)) => Some(n),
                _ => None,
            }),
            ColumnValues::Boolean(c) => c.push(match v {
                Some(MappedValue::Boolean(b)) => Some(b),
                _ => None,
            }),
            ColumnValues::Timestamp(c) => c.push(match v {
                Some(MappedValue::Timestamp(ms)) => DateTime::from_timestamp_millis(ms),
                _ => None,
            }),
        }
    }
}

/// One named input column of the statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub name: String,
    pub kind: ColumnType,
    pub values: ColumnValues,
}

/// A batch as a statement and what it binds: `$1` the audience, `$2` the
/// change, then one array per input column.
#[derive(Debug)]
pub struct Statement {
    pub sql: String,
    pub audience: String,
    pub change: &'static str,
    pub inputs: Vec<Input>,
    /// Rows written (people without a `person_id` are left out).
    pub rows: usize,
}

pub struct Tables<'a> {
    pub schema: &'a str,
    pub members: &'a str,
    pub history: &'a str,
    pub identifiers: &'a [IdentifierColumn],
    pub on_exit: OnExit,
}

/// Builds the statement for one batch. `destination` names coercion
/// failures in the metrics.
pub fn statement(
    tables: &Tables<'_>,
    target: &SendTarget<'_>,
    op: SyncOp,
    people: &[PersonRecord],
    destination: &str,
) -> Statement {
    let audience = target.platform_audience_id.to_owned();
    let now = Utc::now().timestamp_millis();
    // One row per person_id: a batch never names a row twice (an upsert
    // cannot touch a row twice in one statement); the last one wins.
    let mut chosen: Vec<(usize, &str)> = Vec::with_capacity(people.len());
    let mut seen = std::collections::HashMap::new();
    for (i, p) in people.iter().enumerate() {
        let Some(id) = p.row_id() else { continue };
        match seen.get(id) {
            Some(&slot) => chosen[slot] = (i, id),
            None => {
                seen.insert(id, chosen.len());
                chosen.push((i, id));
            }
        }
    }
    let mapped: Vec<(&str, ColumnType)> = if op == SyncOp::Remove {
        Vec::new()
    } else {
        target
            .mapping
            .typed_fields()
            .map(|(f, k)| (f, ColumnType::of(k)))
            .collect()
    };
    let mut person = Vec::with_capacity(chosen.len());
    let mut key = Vec::with_capacity(chosen.len());
    let mut occurred = Vec::with_capacity(chosen.len());
    let mut ids: Vec<ColumnValues> = tables
        .identifiers
        .iter()
        .map(|_| ColumnValues::new(ColumnType::Text, chosen.len()))
        .collect();
    let mut values: Vec<ColumnValues> = mapped
        .iter()
        .map(|(_, k)| ColumnValues::new(*k, chosen.len()))
        .collect();
    for &(i, id) in &chosen {
        let p = &people[i];
        let changed_at = target.changed_at.get(i).copied().filter(|t| *t > 0);
        // An update keeps its membership change's time, so ordering the
        // history by time never puts an update after the exit that
        // followed it (an exit with an older time than the attribute
        // change can arrive after it, and still ends the stay).
        let at = changed_at.unwrap_or(now);
        let row_values = target.mapping.values(p, destination);
        key.push(Some(change_key(&audience, id, op, at, &row_values)));
        person.push(Some(id.to_owned()));
        occurred.push(DateTime::from_timestamp_millis(at));
        for (col, which) in ids.iter_mut().zip(tables.identifiers) {
            let v = match which {
                IdentifierColumn::CioId => p.cio_id.clone(),
                IdentifierColumn::Email => p.email.clone(),
                IdentifierColumn::Phone => p.phone.clone(),
            };
            col.push(v.map(MappedValue::Text));
        }
        for (col, (field, _)) in values.iter_mut().zip(&mapped) {
            col.push(row_values.get(*field).cloned());
        }
    }
    let rows = person.len();
    let mut inputs = vec![
        Input {
            name: "person_id".into(),
            kind: ColumnType::Text,
            values: ColumnValues::Text(person),
        },
        Input {
            name: "change_key".into(),
            kind: ColumnType::Text,
            values: ColumnValues::Text(key),
        },
        Input {
            name: "occurred_at".into(),
            kind: ColumnType::Timestamp,
            values: ColumnValues::Timestamp(occurred),
        },
    ];
    if op != SyncOp::Remove {
        for (col, which) in ids.into_iter().zip(tables.identifiers) {
            inputs.push(Input {
                name: which.column().into(),
                kind: ColumnType::Text,
                values: col,
            });
        }
        for (col, (field, kind)) in values.into_iter().zip(&mapped) {
            inputs.push(Input {
                name: (*field).to_owned(),
                kind: *kind,
                values: col,
            });
        }
    }
    Statement {
        sql: sql(tables, op, &inputs),
        audience,
        change: op.as_str(),
        inputs,
        rows,
    }
}

/// A change's name: the same on every retry of it, another for any other
/// change (a later entry, another value).
fn change_key(
    audience: &str,
    person_id: &str,
    op: SyncOp,
    at: i64,
    values: &std::collections::BTreeMap<String, MappedValue>,
) -> String {
    let mut text = format!("{audience}\n{person_id}\n{}\n{at}", op.as_str());
    for (k, v) in values {
        text.push('\n');
        text.push_str(k);
        text.push('=');
        text.push_str(&v.to_text());
    }
    crate::normalization::sha256_hex(&text)[..32].to_owned()
}

fn sql(tables: &Tables<'_>, op: SyncOp, inputs: &[Input]) -> String {
    let members = qualified(tables.schema, tables.members);
    let history = qualified(tables.schema, tables.history);
    let arrays: Vec<String> = inputs
        .iter()
        .enumerate()
        .map(|(n, i)| format!("${}::{}[]", n + 3, i.kind.sql()))
        .collect();
    let names: Vec<String> = inputs.iter().map(|i| format!("\"{}\"", i.name)).collect();
    let input = format!(
        "input AS (SELECT * FROM UNNEST({}) AS t({}))",
        arrays.join(", "),
        names.join(", ")
    );
    let mark = tables.on_exit == OnExit::Mark;
    let change = match op {
        SyncOp::Add | SyncOp::Update => {
            let written: Vec<&Input> = inputs.iter().skip(3).collect();
            let mut cols = vec!["\"audience\"".to_owned(), "\"person_id\"".to_owned()];
            let mut select = vec!["$1".to_owned(), "\"person_id\"".to_owned()];
            for i in &written {
                cols.push(format!("\"{}\"", i.name));
                select.push(format!("\"{}\"", i.name));
            }
            cols.extend(["\"entered_at\"".into(), "\"updated_at\"".into()]);
            select.extend(["\"occurred_at\"".into(), "now()".into()]);
            let mut set: Vec<String> = written
                .iter()
                .map(|i| format!("\"{0}\" = EXCLUDED.\"{0}\"", i.name))
                .collect();
            set.push("\"updated_at\" = EXCLUDED.\"updated_at\"".into());
            if mark {
                // A re-entry after an exit starts a new stay.
                set.push(format!(
                    "\"entered_at\" = CASE WHEN {members}.\"exited_at\" IS NULL THEN {members}.\"entered_at\" ELSE EXCLUDED.\"entered_at\" END"
                ));
                set.push("\"exited_at\" = NULL".into());
            }
            format!(
                "changed AS (INSERT INTO {members} ({}) SELECT {} FROM input ON CONFLICT (\"audience\", \"person_id\") DO UPDATE SET {} RETURNING 1)",
                cols.join(", "),
                select.join(", "),
                set.join(", ")
            )
        }
        SyncOp::Remove if mark => format!(
            "changed AS (UPDATE {members} m SET \"exited_at\" = i.\"occurred_at\", \"updated_at\" = now() FROM input i \
             WHERE m.\"audience\" = $1 AND m.\"person_id\" = i.\"person_id\" AND m.\"exited_at\" IS NULL RETURNING 1)"
        ),
        SyncOp::Remove => format!(
            "changed AS (DELETE FROM {members} m USING input i WHERE m.\"audience\" = $1 AND m.\"person_id\" = i.\"person_id\" RETURNING 1)"
        ),
    };
    format!(
        "WITH {input}, {change} INSERT INTO {history} (\"change_key\", \"audience\", \"person_id\", \"change\", \"occurred_at\", \"synced_at\") \
         SELECT \"change_key\", $1, \"person_id\", $2, \"occurred_at\", now() FROM input ON CONFLICT (\"change_key\") DO NOTHING"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audiences::{AudienceDef, AudienceMode};
    use crate::destinations::{MapConfig, Mapping};

    fn audience() -> AudienceDef {
        AudienceDef {
            id: 1,
            name: "cart".into(),
            segment_id: 7,
            mode: AudienceMode::Mirror,
            destinations: vec![],
        }
    }

    fn person(id: &str, ltv: serde_json::Value) -> PersonRecord {
        let mut attributes = serde_json::Map::new();
        attributes.insert("ltv".into(), ltv);
        PersonRecord {
            person_id: 1,
            customer_id: Some(id.into()),
            cio_id: Some(format!("cio-{id}")),
            email: Some(format!("{id}@example.com")),
            phone: None,
            attributes,
        }
    }

    const TABLES: Tables<'static> = Tables {
        schema: "koala",
        members: "audience_members",
        history: "audience_changes",
        identifiers: &[IdentifierColumn::CioId, IdentifierColumn::Email],
        on_exit: OnExit::Delete,
    };

    fn build(op: SyncOp, people: &[PersonRecord], changed_at: &[i64]) -> Statement {
        let map: MapConfig = toml::from_str("ltv = { from = \"ltv\", type = \"number\" }").unwrap();
        let mapping = Mapping::resolve(&[], true, &[&map]).unwrap();
        let a = audience();
        let target = SendTarget {
            audience: &a,
            platform_audience_id: "cart",
            mapping: &mapping,
            changed_at,
        };
        statement(&TABLES, &target, op, people, "wh")
    }

    #[test]
    fn an_add_binds_one_typed_array_per_column_and_no_value_in_the_sql() {
        let s = build(
            SyncOp::Add,
            &[person("u1", 12.5.into()), person("u2", "x".into())],
            &[1_000, 2_000],
        );
        assert_eq!(s.rows, 2);
        assert!(
            !s.sql.contains("u1") && !s.sql.contains("example.com"),
            "{}",
            s.sql
        );
        let names: Vec<&str> = s.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "person_id",
                "change_key",
                "occurred_at",
                "cio_id",
                "email",
                "ltv"
            ]
        );
        assert_eq!(
            s.inputs[5].values,
            ColumnValues::Double(vec![Some(12.5), None])
        );
        assert!(
            s.sql
                .contains("UNNEST($3::text[], $4::text[], $5::timestamptz[]"),
            "{}",
            s.sql
        );
        assert!(s
            .sql
            .contains("ON CONFLICT (\"audience\", \"person_id\") DO UPDATE SET"));
        assert!(s.sql.contains("ON CONFLICT (\"change_key\") DO NOTHING"));
    }

    #[test]
    fn the_change_key_repeats_on_a_retry_and_differs_for_another_change() {
        let key = |s: &Statement| match &s.inputs[1].values {
            ColumnValues::Text(v) => v[0].clone().unwrap(),
            other => panic!("{other:?}"),
        };
        let a = build(SyncOp::Add, &[person("u1", 1.into())], &[1_000]);
        let again = build(SyncOp::Add, &[person("u1", 1.into())], &[1_000]);
        assert_eq!(key(&a), key(&again));
        let later = build(SyncOp::Add, &[person("u1", 1.into())], &[2_000]);
        assert_ne!(key(&a), key(&later));
        let update = build(SyncOp::Update, &[person("u1", 2.into())], &[1_000]);
        assert_ne!(key(&a), key(&update));
        // An update keeps its membership change's time.
        match &update.inputs[2].values {
            ColumnValues::Timestamp(o) => assert_eq!(o[0].unwrap().timestamp_millis(), 1_000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_remove_carries_only_the_keys_and_people_without_an_id_are_left_out() {
        let mut nobody = person("x", 1.into());
        nobody.customer_id = None;
        nobody.cio_id = None;
        let s = build(SyncOp::Remove, &[person("u1", 1.into()), nobody], &[1, 2]);
        assert_eq!(s.rows, 1);
        assert_eq!(s.inputs.len(), 3);
        assert!(s
            .sql
            .contains("DELETE FROM \"koala\".\"audience_members\" m USING input i"));
        assert_eq!(s.change, "remove");
    }

    #[test]
    fn a_person_twice_in_a_batch_is_one_row() {
        let s = build(
            SyncOp::Add,
            &[person("u1", 1.into()), person("u1", 2.into())],
            &[1, 2],
        );
        assert_eq!(s.rows, 1);
        assert_eq!(s.inputs[5].values, ColumnValues::Double(vec![Some(2.0)]));
    }
}
