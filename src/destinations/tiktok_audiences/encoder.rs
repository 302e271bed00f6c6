//! PersonRecord → one positional `batch_data` row: one cell per
//! `id_schema` entry, `{}` for an identifier the person lacks.

use serde_json::{json, Value};

use super::config::TiktokKey;
use crate::normalization::sha256_hex;
use crate::normalization::tiktok::{self as norm, PhoneFormat};
use crate::person::PersonRecord;

#[derive(Debug, Clone)]
pub struct Encoder {
    keys: Vec<TiktokKey>,
    phone_format: PhoneFormat,
}

impl Encoder {
    pub fn new(identifiers: &[TiktokKey], phone_format: PhoneFormat) -> Self {
        let mut keys = identifiers.to_vec();
        keys.sort();
        keys.dedup();
        Encoder { keys, phone_format }
    }

    /// `["EMAIL_SHA256", "PHONE_SHA256"]` for the configured keys.
    pub fn id_schema(&self) -> Vec<&'static str> {
        self.keys.iter().map(|k| k.id_type()).collect()
    }

    fn hash(&self, key: TiktokKey, p: &PersonRecord) -> Option<String> {
        let v = match key {
            TiktokKey::Email => p.email.as_deref().and_then(norm::email),
            TiktokKey::Phone => p
                .phone
                .as_deref()
                .and_then(|ph| norm::phone(ph, self.phone_format)),
        }?;
        Some(sha256_hex(&v))
    }

    pub fn can_address(&self, p: &PersonRecord) -> bool {
        self.keys.iter().any(|k| self.hash(*k, p).is_some())
    }

    /// The person's row for `audience_id`, or None when not addressable.
    /// Holds hashes: never log it.
    pub fn row(&self, p: &PersonRecord, audience_id: &str) -> Option<Vec<Value>> {
        let hashes: Vec<Option<String>> = self.keys.iter().map(|k| self.hash(*k, p)).collect();
        if hashes.iter().all(Option::is_none) {
            return None;
        }
        Some(
            hashes
                .into_iter()
                .map(|h| match h {
                    Some(id) => json!({"id": id, "audience_ids": [audience_id]}),
                    None => json!({}),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_positional_with_empty_cells() {
        let e = Encoder::new(&[TiktokKey::Phone, TiktokKey::Email], PhoneFormat::Digits);
        assert_eq!(e.id_schema(), ["EMAIL_SHA256", "PHONE_SHA256"]);
        let p = PersonRecord {
            email: Some("Test@Example.com".into()),
            ..Default::default()
        };
        assert_eq!(
            e.row(&p, "9").unwrap(),
            vec![
                json!({"id": "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b", "audience_ids": ["9"]}),
                json!({}),
            ]
        );
        let p = PersonRecord {
            phone: Some("+15551234567".into()),
            ..Default::default()
        };
        assert_eq!(
            e.row(&p, "9").unwrap()[1]["id"],
            "d6736136ea896c1bfdc553e0e86e702c70d060d805696ca3e4e9e0961353860a"
        );
        assert_eq!(e.row(&PersonRecord::default(), "9"), None);
    }
}
