use std::collections::HashMap;
use std::sync::Arc;

use super::AudienceMode;

/// An audience as the store and the engine see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudienceDef {
    /// The store's id, set once registered.
    pub id: i64,
    pub name: String,
    pub segment_id: i64,
    pub mode: AudienceMode,
    /// Destination names this audience syncs to.
    pub destinations: Vec<String>,
}

/// Which audiences a segment feeds; shared read-only by every request.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    audiences: Vec<Arc<AudienceDef>>,
    by_segment: HashMap<i64, Vec<Arc<AudienceDef>>>,
}

impl Catalog {
    pub fn new(defs: Vec<AudienceDef>) -> Self {
        let audiences: Vec<_> = defs.into_iter().map(Arc::new).collect();
        let mut by_segment: HashMap<i64, Vec<Arc<AudienceDef>>> = HashMap::new();
        for a in &audiences {
            by_segment.entry(a.segment_id).or_default().push(a.clone());
        }
        Catalog {
            audiences,
            by_segment,
        }
    }

    pub fn for_segment(&self, segment_id: i64) -> &[Arc<AudienceDef>] {
        self.by_segment
            .get(&segment_id)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<AudienceDef>> {
        self.audiences.iter().find(|a| a.name == name)
    }

    pub fn by_id(&self, id: i64) -> Option<&Arc<AudienceDef>> {
        self.audiences.iter().find(|a| a.id == id)
    }

    pub fn all(&self) -> &[Arc<AudienceDef>] {
        &self.audiences
    }
}
