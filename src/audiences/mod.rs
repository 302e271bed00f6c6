//! Audiences: the catalog built from config (which segment feeds which
//! audience and destinations) and the one rule that orders membership.

mod catalog;
pub mod membership;
mod mode;
pub mod updates;

pub use catalog::{AudienceDef, Catalog};
pub use membership::{decide, effective_current, Decision, Source, Stamp};
pub use mode::{AudienceMode, SyncOp};
pub use updates::{AttributeReaders, ChangedFields};
