//! Meta (Facebook/Instagram) customer-list Custom Audiences.
//! Placeholder: filled in by the Meta destination work.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Destination, Limits, SendOutcome};
use crate::audiences::AudienceDef;
use crate::config::Secret;
use crate::store::{PersonRecord, SyncOp};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetaConfig {
    pub name: String,
    pub access_token: Secret,
}

impl MetaConfig {
    pub fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

pub struct MetaDestination {
    config: MetaConfig,
}

impl MetaDestination {
    pub fn new(config: MetaConfig) -> anyhow::Result<Self> {
        Ok(MetaDestination { config })
    }
}

#[async_trait]
impl Destination for MetaDestination {
    fn name(&self) -> &str {
        &self.config.name
    }
    fn limits(&self) -> Limits {
        Limits {
            max_batch: 10_000,
            concurrency: 1,
            requests_per_second: 1.0,
            min_linger: std::time::Duration::ZERO,
            max_backoff: std::time::Duration::from_secs(300),
            base_backoff: std::time::Duration::from_secs(1),
        }
    }
    fn can_address(&self, _person: &PersonRecord) -> bool {
        false
    }
    async fn create_audience(&self, _audience: &AudienceDef) -> Result<String, SendOutcome> {
        Err(SendOutcome::Permanent {
            reason: "not built".into(),
        })
    }
    async fn send(&self, _audience_id: &str, _op: SyncOp, _people: &[PersonRecord]) -> SendOutcome {
        SendOutcome::Permanent {
            reason: "not built".into(),
        }
    }
}
