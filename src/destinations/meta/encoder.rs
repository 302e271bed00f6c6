//! PersonRecord → one multi-key payload row (reference §1.3/§1.4).

use serde::Serialize;

use super::config::MetaKey;
use crate::destinations::Mapping;
use crate::normalization::{meta as norm, sha256_hex};
use crate::person::PersonRecord;

/// `payload` of a `/users` request. `data` holds hashes and customer ids:
/// never log it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Payload {
    pub schema: Vec<&'static str>,
    pub is_raw: bool,
    pub data: Vec<Vec<String>>,
}

/// Turns people into rows for one configured schema. Names, address and
/// birth keys are read through the sync target's [`Mapping`] (fields `fn`,
/// `ln`, `ct`, `st`, `zip`, `country`, `gen`, `dob`).
#[derive(Debug, Clone)]
pub struct Encoder {
    /// The destination's name, for counting values that fail coercion.
    destination: String,
    keys: Vec<MetaKey>,
}

impl Encoder {
    /// Columns follow [`MetaKey`]'s fixed order, whatever the config order.
    pub fn new(destination: &str, identifiers: &[MetaKey]) -> Self {
        let mut keys = identifiers.to_vec();
        keys.sort();
        keys.dedup();
        Encoder {
            destination: destination.to_owned(),
            keys,
        }
    }

    pub fn schema(&self) -> Vec<&'static str> {
        self.keys.iter().map(|k| k.schema_name()).collect()
    }

    /// True when the person has a value for a key that can match alone
    /// (EXTERN_ID, EMAIL or PHONE); names and addresses only refine.
    pub fn can_address(&self, person: &PersonRecord) -> bool {
        let none = Mapping::default();
        self.keys
            .iter()
            .any(|k| k.matches_alone() && self.value(*k, person, &none).is_some())
    }

    /// The person's row in schema order, "" for a missing key; None when
    /// the person cannot be addressed.
    pub fn row(&self, person: &PersonRecord, mapping: &Mapping) -> Option<Vec<String>> {
        let values: Vec<Option<String>> = self
            .keys
            .iter()
            .map(|k| self.value(*k, person, mapping))
            .collect();
        let addressable = self
            .keys
            .iter()
            .zip(&values)
            .any(|(k, v)| k.matches_alone() && v.is_some());
        addressable.then(|| values.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// The payload for every addressable person, and how many were left out.
    pub fn payload(&self, people: &[PersonRecord], mapping: &Mapping) -> (Payload, usize) {
        let data: Vec<Vec<String>> = people.iter().filter_map(|p| self.row(p, mapping)).collect();
        let skipped = people.len() - data.len();
        let payload = Payload {
            schema: self.schema(),
            is_raw: true,
            data,
        };
        (payload, skipped)
    }

    /// The value sent for one key: hashed, except EXTERN_ID.
    fn value(&self, key: MetaKey, p: &PersonRecord, mapping: &Mapping) -> Option<String> {
        let attr = |field: &str| mapping.text(field, p, &self.destination);
        let normalized = match key {
            MetaKey::ExternId => {
                return p
                    .customer_id
                    .as_deref()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .or_else(|| p.cio_id.as_deref().map(str::trim).filter(|s| !s.is_empty()))
                    .map(str::to_owned);
            }
            MetaKey::Email => p.email.as_deref().and_then(norm::email),
            MetaKey::Phone => p.phone.as_deref().and_then(norm::phone),
            MetaKey::FirstName => attr("fn").and_then(|v| norm::first_name(&v)),
            MetaKey::LastName => attr("ln").and_then(|v| norm::last_name(&v)),
            MetaKey::City => attr("ct").and_then(|v| norm::city(&v)),
            MetaKey::State => attr("st").and_then(|v| norm::state(&v)),
            MetaKey::Zip => attr("zip").and_then(|v| norm::zip(&v)),
            MetaKey::Country => attr("country").and_then(|v| norm::country(&v)),
            MetaKey::Gender => attr("gen").and_then(|v| norm::gender(&v)),
            MetaKey::BirthYear | MetaKey::BirthMonth | MetaKey::BirthDay => {
                let dob = attr("dob").and_then(|v| norm::date_of_birth(&v))?;
                Some(match key {
                    MetaKey::BirthYear => dob.year,
                    MetaKey::BirthMonth => dob.month,
                    _ => dob.day,
                })
            }
        };
        normalized.map(|v| sha256_hex(&v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // printf 'test@example.com' | sha256sum ; printf '15551234567' | sha256sum
    const EMAIL_HASH: &str = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b";
    const PHONE_HASH: &str = "d6736136ea896c1bfdc553e0e86e702c70d060d805696ca3e4e9e0961353860a";
    // printf 'john' | sha256sum ; printf 'ca' | sha256sum ; printf '1990' | sha256sum
    const JOHN_HASH: &str = "96d9632f363564cc3032521409cf22a852f2032eec099ed5967c0d000cec607a";
    const CA_HASH: &str = "6959097001d10501ac7d54c0bdb8db61420f658f2922cc26e46d536119a31126";
    const Y1990_HASH: &str = "a7be8e1fe282a37cd666e0632b17d933fa13f21addf4798fc0455bc166e2488c";
    // printf '03' | sha256sum ; printf '07' | sha256sum
    const M03_HASH: &str = "0b8efa5a3bf104413a725c6ff0459a6be12b1fd33314cbb138745baf39504ae5";
    const D07_HASH: &str = "19b100ab7725c612f3d80ff203ca53cea5cadaafae3bf0f88f0fb4089fe08815";

    fn person() -> PersonRecord {
        PersonRecord {
            person_id: 1,
            customer_id: Some("cust-1".into()),
            cio_id: Some("a1b2".into()),
            email: Some("test@example.com".into()),
            phone: Some("+15551234567".into()),
            attributes: json!({
                "first_name": "John",
                "state": "California",
                "date_of_birth": "1990-03-07",
                "zip": 94107,
            })
            .as_object()
            .unwrap()
            .clone(),
        }
    }

    fn default_encoder() -> Encoder {
        Encoder::new("meta", &[MetaKey::ExternId, MetaKey::Email, MetaKey::Phone])
    }

    /// The default mapping (fn ← first_name, …, dob ← date_of_birth).
    fn defaults() -> Mapping {
        Mapping::resolve(super::super::FIELDS, false, &[]).unwrap()
    }

    #[test]
    fn the_default_row_is_extern_id_then_hashed_email_and_phone() {
        let e = default_encoder();
        assert_eq!(e.schema(), ["EXTERN_ID", "EMAIL", "PHONE"]);
        assert_eq!(
            e.row(&person(), &defaults()).unwrap(),
            ["cust-1", EMAIL_HASH, PHONE_HASH]
        );
    }

    #[test]
    fn schema_order_is_fixed_whatever_the_config_order() {
        let e = Encoder::new(
            "meta",
            &[
                MetaKey::Phone,
                MetaKey::FirstName,
                MetaKey::Email,
                MetaKey::Phone,
            ],
        );
        assert_eq!(e.schema(), ["EMAIL", "PHONE", "FN"]);
    }

    #[test]
    fn attributes_are_normalized_then_hashed_and_missing_ones_are_blank() {
        let e = Encoder::new(
            "meta",
            &[
                MetaKey::Email,
                MetaKey::FirstName,
                MetaKey::LastName,
                MetaKey::State,
                MetaKey::BirthYear,
                MetaKey::BirthMonth,
                MetaKey::BirthDay,
            ],
        );
        let row = e.row(&person(), &defaults()).unwrap();
        assert_eq!(
            row,
            [EMAIL_HASH, JOHN_HASH, "", CA_HASH, Y1990_HASH, M03_HASH, D07_HASH]
        );
    }

    #[test]
    fn numbers_and_renamed_attributes_are_read() {
        let born: crate::destinations::MapConfig = [(
            "dob".to_owned(),
            crate::destinations::mapping::FieldSource::From("born".into()),
        )]
        .into();
        let map = Mapping::resolve(super::super::FIELDS, false, &[&born]).unwrap();
        let e = Encoder::new("meta", &[MetaKey::Email, MetaKey::Zip, MetaKey::BirthYear]);
        let mut p = person();
        // date -u -d 1990-03-07T12:00:00Z +%s
        p.attributes.insert("born".into(), json!(636811200));
        let row = e.row(&p, &map).unwrap();
        assert_eq!(row[1], sha256_hex("94107"));
        assert_eq!(row[2], Y1990_HASH);
    }

    #[test]
    fn extern_id_falls_back_to_cio_id_and_is_never_hashed() {
        let e = Encoder::new("meta", &[MetaKey::ExternId]);
        let mut p = person();
        p.customer_id = None;
        assert_eq!(e.row(&p, &defaults()).unwrap(), ["a1b2"]);
        p.cio_id = Some("  ".into());
        assert_eq!(e.row(&p, &defaults()), None);
    }

    #[test]
    fn names_alone_do_not_make_a_person_addressable() {
        let e = Encoder::new(
            "meta",
            &[MetaKey::Email, MetaKey::Phone, MetaKey::FirstName],
        );
        let mut p = person();
        p.email = None;
        p.phone = None;
        assert!(!e.can_address(&p));
        assert_eq!(e.row(&p, &defaults()), None);
        p.phone = Some("+15551234567".into());
        assert!(e.can_address(&p));
        assert_eq!(e.row(&p, &defaults()).unwrap(), ["", PHONE_HASH, JOHN_HASH]);
    }

    #[test]
    fn the_payload_leaves_out_unaddressable_people_and_serializes_as_meta_wants() {
        let e = default_encoder();
        let nobody = PersonRecord::default();
        let (payload, skipped) = e.payload(&[person(), nobody], &defaults());
        assert_eq!(skipped, 1);
        assert_eq!(
            serde_json::to_value(&payload).unwrap(),
            json!({
                "schema": ["EXTERN_ID", "EMAIL", "PHONE"],
                "is_raw": true,
                "data": [["cust-1", EMAIL_HASH, PHONE_HASH]],
            })
        );
    }
}
