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
    /// Whether a membership change to `is_member` is sent to the
    /// audience's destinations: entries always; exits only when mirroring.
    /// Why: an additive audience is one a platform must never shrink (Meta
    /// refuses removals that would leave a small audience), so its exits
    /// are recorded in koala and go no further.
    pub fn sends(self, is_member: bool) -> bool {
        is_member || self == AudienceMode::Mirror
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AudienceMode::Mirror => "mirror",
            AudienceMode::Additive => "additive",
        }
    }
}

/// The three kinds of work a destination is sent: add (desired in, not
/// yet held), remove (desired out), and update (a member it already
/// holds whose attributes changed). Destinations that keep only
/// membership (the ad platforms) treat an update as an add again, which
/// they take idempotently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncOp {
    Add,
    Remove,
    Update,
}

impl SyncOp {
    /// The work a pending row asks for: its desired state, and whether the
    /// destination already acknowledged it in (then only attributes moved).
    pub fn of_row(desired: bool, acked: Option<bool>) -> Self {
        match (desired, acked) {
            (false, _) => SyncOp::Remove,
            (true, Some(true)) => SyncOp::Update,
            (true, _) => SyncOp::Add,
        }
    }
    /// The membership the work leaves the destination holding.
    pub fn desired(self) -> bool {
        self != SyncOp::Remove
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SyncOp::Add => "add",
            SyncOp::Remove => "remove",
            SyncOp::Update => "update",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_additive_audience_sends_entries_only() {
        assert!(AudienceMode::Mirror.sends(true) && AudienceMode::Mirror.sends(false));
        assert!(AudienceMode::Additive.sends(true) && !AudienceMode::Additive.sends(false));
    }

    #[test]
    fn a_member_already_held_is_an_update() {
        assert_eq!(SyncOp::of_row(true, None), SyncOp::Add);
        assert_eq!(SyncOp::of_row(true, Some(false)), SyncOp::Add);
        assert_eq!(SyncOp::of_row(true, Some(true)), SyncOp::Update);
        assert_eq!(SyncOp::of_row(false, Some(true)), SyncOp::Remove);
        assert!(SyncOp::Update.desired());
    }
}
