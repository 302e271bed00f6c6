//! The latest-wins rule. Every source of membership (segment webhooks now,
//! App API snapshots stamped with their fetch time later) goes through
//! [`decide`], so there is exactly one definition of "newer".

use std::cmp::Ordering;

/// Where a membership fact came from. At the same millisecond a webhook
/// outranks a snapshot: it names the exact change, a snapshot only a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    SegmentWebhook,
    Resync,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::SegmentWebhook => "segment_webhook",
            Source::Resync => "resync",
        }
    }
}

/// The ordering key of a membership fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// Customer.io's event time (or the snapshot's fetch time), ms.
    pub at_ms: i64,
    /// Tie-break rank; see [`Stamp::new`].
    pub rank: i32,
    /// Last tie-break: the delivery's dedupe key, so equal events order the
    /// same way on every replica and every replay.
    pub key: String,
}

impl Stamp {
    /// On a tie in time, an exit beats an entry (never keep advertising to
    /// someone who may have left; suppression errs on the safe side), and a
    /// webhook beats a snapshot.
    pub fn new(at_ms: i64, is_member: bool, source: Source, key: impl Into<String>) -> Self {
        let exit_bonus = if is_member { 0 } else { 2 };
        let source_bonus = match source {
            Source::SegmentWebhook => 1,
            Source::Resync => 0,
        };
        Stamp {
            at_ms,
            rank: exit_bonus + source_bonus,
            key: key.into(),
        }
    }

    fn cmp_key(&self) -> (i64, i32, &str) {
        (self.at_ms, self.rank, self.key.as_str())
    }
}

impl PartialOrd for Stamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Stamp {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_key().cmp(&other.cmp_key())
    }
}

/// What an incoming fact does to the stored membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Newer, and it changes in/out: apply, update desired states.
    Change,
    /// Newer, same state: move the stamp forward, keep `since`.
    Confirm,
    /// Older than what is stored: history only.
    Stale,
}

impl Decision {
    pub fn outcome(self) -> &'static str {
        match self {
            Decision::Change => "applied",
            Decision::Confirm => "unchanged",
            Decision::Stale => "stale",
        }
    }
}

/// What a person's stored state is worth against a new fact: the row's own
/// stamp, or the audience's last completed snapshot if that is newer (a
/// full snapshot at T asserted everyone's state at T, members or not).
pub fn effective_current(
    row: Option<(bool, Stamp)>,
    snapshot_at: Option<i64>,
) -> Option<(bool, Stamp)> {
    let is_member = row.as_ref().is_some_and(|(m, _)| *m);
    let floor = snapshot_at.map(|t| Stamp::new(t, is_member, Source::Resync, SNAPSHOT_KEY));
    match (row, floor) {
        (Some((m, stamp)), Some(floor)) => Some((m, stamp.max(floor))),
        (Some(row), None) => Some(row),
        (None, Some(floor)) => Some((false, floor)),
        (None, None) => None,
    }
}

/// The tie-break key of snapshot facts.
pub const SNAPSHOT_KEY: &str = "snapshot";

/// The rule. `current` is the stored (is_member, stamp), if any.
pub fn decide(current: Option<(bool, &Stamp)>, is_member: bool, incoming: &Stamp) -> Decision {
    match current {
        None => {
            // No state yet: an exit of someone never seen still records "out".
            if is_member {
                Decision::Change
            } else {
                Decision::Confirm
            }
        }
        Some((_, stored)) if incoming <= stored => Decision::Stale,
        Some((was, _)) if was == is_member => Decision::Confirm,
        Some(_) => Decision::Change,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(at: i64, member: bool) -> Stamp {
        Stamp::new(at, member, Source::SegmentWebhook, format!("k{at}"))
    }

    #[test]
    fn the_first_entry_is_a_change_and_a_first_exit_only_records_out() {
        assert_eq!(decide(None, true, &st(1, true)), Decision::Change);
        assert_eq!(decide(None, false, &st(1, false)), Decision::Confirm);
    }

    #[test]
    fn the_later_event_wins_whatever_the_arrival_order() {
        let entered = st(10, true);
        let exited = st(20, false);
        // exit arrives after entry: change
        assert_eq!(
            decide(Some((true, &entered)), false, &exited),
            Decision::Change
        );
        // entry arrives after the (newer) exit: stale
        assert_eq!(
            decide(Some((false, &exited)), true, &entered),
            Decision::Stale
        );
    }

    #[test]
    fn a_replayed_event_is_stale() {
        let s = st(10, true);
        assert_eq!(decide(Some((true, &s)), true, &s.clone()), Decision::Stale);
    }

    #[test]
    fn ties_break_towards_exit_then_webhook_then_key() {
        let enter = Stamp::new(10, true, Source::SegmentWebhook, "a");
        let exit = Stamp::new(10, false, Source::SegmentWebhook, "a");
        assert!(exit > enter);
        assert_eq!(decide(Some((true, &enter)), false, &exit), Decision::Change);
        assert_eq!(decide(Some((false, &exit)), true, &enter), Decision::Stale);
        let snap = Stamp::new(10, true, Source::Resync, "z");
        assert!(enter > snap);
    }

    #[test]
    fn a_member_with_an_older_stamp_is_always_confirmed_by_a_newer_entry() {
        // The resync's SQL shortcut relies on this.
        for rank_member in [true, false] {
            for source in [Source::SegmentWebhook, Source::Resync] {
                let stored = Stamp::new(99, rank_member, source, "zzzz");
                let incoming = Stamp::new(100, true, Source::Resync, "a");
                assert_eq!(
                    decide(Some((true, &stored)), true, &incoming),
                    Decision::Confirm
                );
            }
        }
    }

    #[test]
    fn a_completed_snapshot_makes_older_facts_stale_for_everyone() {
        // Never seen, snapshot at 100: an entry from before it is stale,
        // one after it applies.
        let current = effective_current(None, Some(100));
        let cur = current.as_ref().map(|(m, s)| (*m, s));
        assert_eq!(decide(cur, true, &st(50, true)), Decision::Stale);
        assert_eq!(decide(cur, true, &st(150, true)), Decision::Change);
        // A row newer than the snapshot keeps its own stamp.
        let row = Some((true, st(200, true)));
        assert_eq!(effective_current(row.clone(), Some(100)), row);
    }

    #[test]
    fn a_snapshot_fetched_later_overrides_an_older_webhook() {
        let webhook = Stamp::new(10, true, Source::SegmentWebhook, "a");
        let snap = Stamp::new(11, false, Source::Resync, "resync");
        assert_eq!(
            decide(Some((true, &webhook)), false, &snap),
            Decision::Change
        );
    }
}
