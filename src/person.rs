//! A person as destinations need them: identifiers and attributes, shared
//! by the store that keeps them and the destinations that send them.

use serde_json::{Map, Value};

/// An identity record as a destination needs it.
#[derive(Debug, Clone, Default)]
pub struct PersonRecord {
    pub person_id: i64,
    pub customer_id: Option<String>,
    pub cio_id: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub attributes: Map<String, Value>,
}

impl PersonRecord {
    /// The id a warehouse row names the person by: the Customer.io id, else
    /// the cio_id (empty counts as absent). Analysts join on Customer.io's
    /// own ids; koala's internal `person_id` means nothing outside it. A
    /// person known only by email has none and is unmatched there.
    pub fn row_id(&self) -> Option<&str> {
        [self.customer_id.as_deref(), self.cio_id.as_deref()]
            .into_iter()
            .flatten()
            .find(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_id_is_the_customer_id_else_the_cio_id() {
        let mut p = PersonRecord {
            customer_id: Some("u1".into()),
            cio_id: Some("c1".into()),
            ..Default::default()
        };
        assert_eq!(p.row_id(), Some("u1"));
        p.customer_id = Some(String::new());
        assert_eq!(p.row_id(), Some("c1"));
        p.cio_id = None;
        assert_eq!(p.row_id(), None);
    }
}
