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
