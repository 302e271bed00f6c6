//! Retention: which stored rows may be deleted, and when. The rules are
//! pure (times in, answers out) so every store backend applies the same
//! ones; a backend's SQL only has to select the rows these functions
//! accept (the SQLite store's tests check its SQL against them row by
//! row, and a PostgreSQL store reuses the same checks).
//!
//! What is kept, and why:
//! - **Dedupe keys** (`received`) answer a repeated delivery as a duplicate.
//!   Customer.io retries a webhook for up to 7 days, and a captured request
//!   can be replayed for as long as its signature timestamp is accepted
//!   (`customerio.timestamp_tolerance`): a key pruned before either ends
//!   lets that delivery be applied twice. So keys live at least
//!   `max(7 days, timestamp_tolerance)` (a smaller setting is a config
//!   error).
//! - **Events** (the history) are kept for `retention.events` after they
//!   arrived, except the event each membership points at (`set_by_event`:
//!   "each membership keeps the event that set it", so the person view can
//!   always say why someone is in or out), and the newest event of all
//!   (new ids continue from the largest one, so an id is never reused).
//! - **Sync rows** of a person who is not a member, that the destination
//!   confirmed out (or that were never sent), with nothing pending, in
//!   flight, dead or unanswered, are deleted: a missing row means exactly
//!   "never sent, not a member" everywhere (`set_desired` creates the row
//!   again on re-entry, pending as an add), so deleting such a row changes
//!   nothing but the disk.

use std::time::Duration;

use crate::config::{Config, ReportingEventStorage};
use crate::customerio::reporting::ReportingEvent;

/// The shortest dedupe-key retention: how long Customer.io retries a
/// webhook. A retry arriving after its key was pruned would be applied as
/// a new delivery.
pub const DEDUPE_KEYS_FLOOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest event retention (a day of history to explain a change).
pub const EVENTS_FLOOR: Duration = Duration::from_secs(24 * 3600);

/// The retention settings as the pruning pass needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRules {
    pub dedupe_keys: Duration,
    pub events: Duration,
    pub compact_non_members: bool,
    /// Most rows per batch (one short transaction each; the pruning task
    /// sizes batches below this to the time they hold the writer).
    pub batch_size: usize,
}

impl RetentionRules {
    /// The rules a config asks for (it passed [`Config::problems`]).
    pub fn from_config(config: &Config) -> RetentionRules {
        RetentionRules {
            dedupe_keys: config.dedupe_key_retention(),
            events: config.retention.events,
            compact_non_members: config.retention.compact_acknowledged_non_members,
            batch_size: config.retention.batch_size.max(1),
        }
    }

    /// What is old enough to go at `now_ms`. Cutoffs never go below 0, so
    /// a clock near the epoch (tests) prunes nothing by accident.
    pub fn cutoffs(&self, now_ms: i64) -> Cutoffs {
        let before = |keep: Duration| (now_ms - keep.as_millis() as i64).max(0);
        Cutoffs {
            dedupe_keys_before: before(self.dedupe_keys),
            events_received_before: before(self.events),
        }
    }

    /// The tables a pass walks, in order. Sync rows first: an operator
    /// sees them (the person view), and a walk over them is cheap.
    pub fn tables(&self) -> Vec<PruneTable> {
        let mut t = Vec::with_capacity(3);
        if self.compact_non_members {
            t.push(PruneTable::SyncRows);
        }
        t.push(PruneTable::Events);
        t.push(PruneTable::DedupeKeys);
        t
    }
}

/// Rows stored before these times (ms since the epoch, koala's clock) are
/// old enough to be pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    pub dedupe_keys_before: i64,
    /// By arrival (`received_at`), not by Customer.io's event time: an old
    /// event that arrives late is kept its full period (it explains a
    /// `stale` outcome), and arrival order is what the ids follow, so the
    /// old events are one range at the start of the table.
    pub events_received_before: i64,
}

/// What a pruning pass deletes from; the label of
/// `koala_store_pruned_rows_total{table}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PruneTable {
    DedupeKeys,
    Events,
    SyncRows,
}

impl PruneTable {
    pub fn as_str(self) -> &'static str {
        match self {
            PruneTable::DedupeKeys => "received",
            PruneTable::Events => "events",
            PruneTable::SyncRows => "sync_state",
        }
    }
}

/// Where a batch starts: the previous batch's end, in the order the table
/// is walked (ids for events and sync rows, keys for dedupe keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PruneCursor {
    #[default]
    Start,
    Id(i64),
    Key(String),
}

impl PruneCursor {
    pub fn id(&self) -> i64 {
        match self {
            PruneCursor::Id(id) => *id,
            _ => 0,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            PruneCursor::Key(key) => key,
            _ => "",
        }
    }
}

/// A dedupe key may go once it is older than the retention.
pub fn dedupe_key_expired(received_at: i64, cutoffs: &Cutoffs) -> bool {
    received_at < cutoffs.dedupe_keys_before
}

/// What decides whether one history event may go.
#[derive(Debug, Clone, Copy)]
pub struct EventFacts {
    pub received_at: i64,
    /// A membership's `event_id` is this event (it set the current state).
    pub sets_a_membership: bool,
    /// No stored event has a larger id.
    pub is_newest: bool,
}

pub fn event_expired(e: &EventFacts, cutoffs: &Cutoffs) -> bool {
    // The membership's event explains the current state: kept as long as
    // the membership points at it (a later change moves the pointer, and
    // the old event then ages out like any other).
    // The newest is kept so ids keep growing (new ids are max + 1).
    e.received_at < cutoffs.events_received_before && !e.sets_a_membership && !e.is_newest
}

/// What decides whether one sync row (destination, audience, person) may
/// be compacted.
#[derive(Debug, Clone, Copy)]
pub struct SyncRowFacts {
    pub desired: bool,
    /// `None`: never sent.
    pub acked: Option<bool>,
    pub pending: bool,
    /// A send got no definitive answer: the destination may hold it.
    pub uncertain: bool,
    pub dead: bool,
    /// Claimed by a dispatcher (in flight); its acknowledgement will
    /// update this very row.
    pub leased: bool,
    pub is_newest: bool,
}

/// A row may go when deleting it is indistinguishable from keeping it: the
/// person is not wanted there, the destination does not hold them as far
/// as koala knows for sure (acknowledged out, or never sent), and nothing
/// is waiting on the row.
pub fn sync_row_compactable(r: &SyncRowFacts) -> bool {
    // `desired`: the person is wanted there; the row drives the add.
    // `acked = Some(true)`: the destination holds them; the row is what
    //   knows a remove is owed if `desired` were false (then pending).
    // `pending`: work is owed. `uncertain`: the last send went unanswered,
    //   so the destination may hold the person although `acked` says out;
    //   a missing row would be read as "certainly out" and a later change
    //   back to out would never be sent.
    // `dead`: an operator reads and redrives dead letters.
    // `leased`: in flight; a desired change while in flight can leave the
    //   row not pending, and the acknowledgement must still find it.
    // `is_newest`: ids are max + 1; keeping the largest means a sync id is
    //   never reused.
    !r.desired
        && r.acked != Some(true)
        && !r.pending
        && !r.uncertain
        && !r.dead
        && !r.leased
        && !r.is_newest
}

/// [`sync_row_compactable`] in SQL over `sync_state` (without the newest
/// rule, which a backend adds with its own id bound). Portable: SQLite and
/// PostgreSQL read it the same way.
pub const SYNC_ROW_COMPACTABLE_SQL: &str = "NOT desired AND acked IS NOT TRUE AND NOT pending \
     AND NOT uncertain AND dead_reason IS NULL AND lease_until = 0";

/// Whether a reporting event is stored (history, dedupe key, the person's
/// identifiers) or only counted. Only subscription changes are used by a
/// rule (`subscribed` / `unsubscribed` set the person's subscription); an
/// open or a click changes nothing koala decides, and at volume they
/// would be most of the store.
pub fn stores_reporting_event(setting: ReportingEventStorage, event: &ReportingEvent) -> bool {
    match setting {
        ReportingEventStorage::All => true,
        ReportingEventStorage::Used => event.subscription_change().is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 24 * 3600 * 1000;

    fn rules() -> RetentionRules {
        RetentionRules {
            dedupe_keys: DEDUPE_KEYS_FLOOR,
            events: Duration::from_secs(90 * 24 * 3600),
            compact_non_members: true,
            batch_size: 5_000,
        }
    }

    #[test]
    fn cutoffs_are_now_minus_each_retention() {
        let now = 1_000 * DAY_MS;
        let c = rules().cutoffs(now);
        assert_eq!(c.dedupe_keys_before, now - 7 * DAY_MS);
        assert_eq!(c.events_received_before, now - 90 * DAY_MS);
    }

    #[test]
    fn a_clock_near_the_epoch_prunes_nothing() {
        let c = rules().cutoffs(DAY_MS);
        assert_eq!(
            c,
            Cutoffs {
                dedupe_keys_before: 0,
                events_received_before: 0
            }
        );
        assert!(!dedupe_key_expired(0, &c));
    }

    #[test]
    fn a_dedupe_key_lives_its_full_retention() {
        let now = 100 * DAY_MS;
        let c = rules().cutoffs(now);
        // A retry on the last moment of the 7 days still finds its key.
        assert!(!dedupe_key_expired(now - 7 * DAY_MS, &c));
        assert!(dedupe_key_expired(now - 7 * DAY_MS - 1, &c));
        assert!(!dedupe_key_expired(now - DAY_MS, &c));
    }

    #[test]
    fn old_events_go_unless_a_membership_points_at_them_or_they_are_the_newest() {
        let now = 200 * DAY_MS;
        let c = rules().cutoffs(now);
        let old = now - 91 * DAY_MS;
        let e = |received_at, sets_a_membership, is_newest| EventFacts {
            received_at,
            sets_a_membership,
            is_newest,
        };
        assert!(event_expired(&e(old, false, false), &c));
        assert!(
            !event_expired(&e(old, true, false), &c),
            "the membership's event stays"
        );
        assert!(!event_expired(&e(old, false, true), &c), "ids keep growing");
        assert!(!event_expired(&e(now - 89 * DAY_MS, false, false), &c));
    }

    fn gone() -> SyncRowFacts {
        SyncRowFacts {
            desired: false,
            acked: Some(false),
            pending: false,
            uncertain: false,
            dead: false,
            leased: false,
            is_newest: false,
        }
    }

    #[test]
    fn a_settled_non_member_row_is_compacted_and_nothing_else() {
        assert!(sync_row_compactable(&gone()));
        assert!(
            sync_row_compactable(&SyncRowFacts {
                acked: None,
                ..gone()
            }),
            "never sent, not wanted: the same as no row"
        );
        for (why, row) in [
            (
                "wanted",
                SyncRowFacts {
                    desired: true,
                    acked: Some(true),
                    ..gone()
                },
            ),
            (
                "held by the destination",
                SyncRowFacts {
                    acked: Some(true),
                    pending: true,
                    ..gone()
                },
            ),
            (
                "pending",
                SyncRowFacts {
                    pending: true,
                    ..gone()
                },
            ),
            (
                "uncertain",
                SyncRowFacts {
                    uncertain: true,
                    ..gone()
                },
            ),
            (
                "dead letter",
                SyncRowFacts {
                    dead: true,
                    ..gone()
                },
            ),
            (
                "in flight",
                SyncRowFacts {
                    leased: true,
                    ..gone()
                },
            ),
            (
                "newest id",
                SyncRowFacts {
                    is_newest: true,
                    ..gone()
                },
            ),
        ] {
            assert!(!sync_row_compactable(&row), "{why}");
        }
    }

    #[test]
    fn of_every_row_shape_only_the_settled_non_member_is_compacted() {
        // Exhaustive over the six flags and the three acknowledgements:
        // exactly two shapes qualify (acknowledged out, never sent).
        let mut compactable = Vec::new();
        for bits in 0..64u32 {
            for acked in [None, Some(false), Some(true)] {
                let b = |i: u32| bits & (1 << i) != 0;
                let row = SyncRowFacts {
                    desired: b(0),
                    acked,
                    pending: b(1),
                    uncertain: b(2),
                    dead: b(3),
                    leased: b(4),
                    is_newest: b(5),
                };
                if sync_row_compactable(&row) {
                    compactable.push((bits, acked));
                }
            }
        }
        assert_eq!(compactable, vec![(0, None), (0, Some(false))]);
    }

    #[test]
    fn a_pass_walks_sync_rows_only_when_compaction_is_on() {
        assert_eq!(
            rules().tables(),
            vec![
                PruneTable::SyncRows,
                PruneTable::Events,
                PruneTable::DedupeKeys
            ]
        );
        let off = RetentionRules {
            compact_non_members: false,
            ..rules()
        };
        assert_eq!(
            off.tables(),
            vec![PruneTable::Events, PruneTable::DedupeKeys]
        );
    }

    #[test]
    fn only_subscription_changes_are_stored_when_asked_for_used() {
        let event = |object_type: &str, metric: &str| ReportingEvent {
            event_id: "e1".into(),
            object_type: object_type.into(),
            metric: metric.into(),
            occurred_at_ms: 0,
            identifiers: crate::identity::Identifiers::new(Some("u1"), None, None, None).unwrap(),
            detail: Default::default(),
        };
        let opened = event("email", "opened");
        let unsubscribed = event("customer", "unsubscribed");
        assert!(stores_reporting_event(ReportingEventStorage::All, &opened));
        assert!(!stores_reporting_event(
            ReportingEventStorage::Used,
            &opened
        ));
        assert!(stores_reporting_event(
            ReportingEventStorage::Used,
            &unsubscribed
        ));
        assert!(stores_reporting_event(
            ReportingEventStorage::Used,
            &event("customer", "subscribed")
        ));
    }
}
