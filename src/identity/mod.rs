//! A person's identifiers as types that cannot hold invalid values, and the
//! masking that keeps them out of logs and admin answers.

mod email;
mod phone;

pub use email::Email;
pub use phone::Phone;

use serde::{Deserialize, Serialize};

/// The identifiers Customer.io knows a person by. At least one is present:
/// construct through [`Identifiers::new`], which refuses an empty set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Identifiers {
    /// Customer.io's `id` (the workspace's own customer id).
    pub id: Option<String>,
    /// Customer.io's immutable `cio_id`.
    pub cio_id: Option<String>,
    pub email: Option<Email>,
    pub phone: Option<Phone>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentifierError {
    #[error("no identifier: give at least one of id, cio_id, email, phone")]
    Missing,
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Identifiers {
    /// Builds identifiers from raw strings; blank strings count as absent.
    pub fn new(
        id: Option<&str>,
        cio_id: Option<&str>,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Result<Self, IdentifierError> {
        let id = non_blank(id).map(str::to_owned);
        let cio_id = non_blank(cio_id).map(|c| c.strip_prefix("cio_").unwrap_or(c).to_owned());
        let email = non_blank(email)
            .map(|e| {
                Email::parse(e).map_err(|reason| IdentifierError::Invalid {
                    field: "email",
                    reason,
                })
            })
            .transpose()?;
        let phone = non_blank(phone)
            .map(|p| {
                Phone::parse(p).map_err(|reason| IdentifierError::Invalid {
                    field: "phone",
                    reason,
                })
            })
            .transpose()?;
        let ids = Identifiers {
            id,
            cio_id,
            email,
            phone,
        };
        if ids.is_empty() {
            return Err(IdentifierError::Missing);
        }
        Ok(ids)
    }

    pub fn is_empty(&self) -> bool {
        self.id.is_none() && self.cio_id.is_none() && self.email.is_none() && self.phone.is_none()
    }

    /// A stable key naming this person within one delivery, used for
    /// deduplication: the strongest identifier present.
    pub fn dedupe_key(&self) -> String {
        if let Some(id) = &self.id {
            format!("id:{id}")
        } else if let Some(cio) = &self.cio_id {
            format!("cio:{cio}")
        } else if let Some(email) = &self.email {
            format!("email:{}", email.sha256_hex())
        } else if let Some(phone) = &self.phone {
            format!("phone:{}", phone.sha256_hex())
        } else {
            String::from("none")
        }
    }

    /// A description safe for logs: ids in clear, email and phone masked.
    pub fn masked(&self) -> String {
        let mut parts = Vec::new();
        if let Some(id) = &self.id {
            parts.push(format!("id={id}"));
        }
        if let Some(cio) = &self.cio_id {
            parts.push(format!("cio_id={cio}"));
        }
        if let Some(e) = &self.email {
            parts.push(format!("email={}", e.masked()));
        }
        if let Some(p) = &self.phone {
            parts.push(format!("phone={}", p.masked()));
        }
        parts.join(" ")
    }
}

fn non_blank(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// Masks a free-text value (a name, say) to its first character.
pub fn mask_text(s: &str) -> String {
    match s.chars().next() {
        Some(c) => format!("{c}***"),
        None => String::new(),
    }
}

pub(crate) fn sha256_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_set_of_identifiers_is_refused() {
        assert_eq!(
            Identifiers::new(None, Some("  "), Some(""), None),
            Err(IdentifierError::Missing)
        );
    }

    #[test]
    fn cio_prefix_is_stripped_so_both_forms_match_one_person() {
        let a = Identifiers::new(None, Some("cio_03000010"), None, None).unwrap();
        let b = Identifiers::new(None, Some("03000010"), None, None).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn masked_never_shows_email_or_phone_in_clear() {
        let ids = Identifiers::new(
            Some("42"),
            None,
            Some("Jane.Doe@Example.com"),
            Some("+1 415 555 0100"),
        )
        .unwrap();
        let m = ids.masked();
        assert!(m.contains("id=42"));
        assert!(!m.contains("jane.doe"));
        assert!(!m.contains("4155550100"));
    }
}
