use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AudienceMode {
    /// Exits remove members from destinations.
    #[default]
    Mirror,
    /// Never remove (Meta refuses removals on small audiences).
    Additive,
}

impl AudienceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AudienceMode::Mirror => "mirror",
            AudienceMode::Additive => "additive",
        }
    }
}

/// add (desired in) or remove (desired out): the two changes a
/// destination is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncOp {
    Add,
    Remove,
}

impl SyncOp {
    pub fn from_desired(desired: bool) -> Self {
        if desired {
            SyncOp::Add
        } else {
            SyncOp::Remove
        }
    }
    pub fn desired(self) -> bool {
        self == SyncOp::Add
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SyncOp::Add => "add",
            SyncOp::Remove => "remove",
        }
    }
}
