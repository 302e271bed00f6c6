//! The group commit's rules as pure steps, shared by every store backend:
//! a backend loads what a group of commands can touch, runs these steps,
//! and only executes the plan they return. Nothing here reads or writes a
//! database, so the rules are tested without one.
//!
//! 1. [`identify`]: every fresh command's person, in order, through the
//!    identity merge (`people::People`).
//! 2. [`plan`]: every command in order through the one membership rule
//!    (`audiences::membership::decide`), giving the history rows, the
//!    memberships that changed, the desired sync state per destination and
//!    the attribute updates (`audiences::updates`), and each command's
//!    outcome.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use super::people::People;
use super::{AudienceOutcome, IngestCommand, IngestOutcome};
use crate::audiences::membership::{decide, effective_current, Decision, Source, Stamp};
use crate::audiences::AttributeReaders;
use crate::customerio::reporting::SubscriptionChange;

/// One (audience, person) membership, as stored or as decided so far.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredMembership {
    pub is_member: bool,
    pub since: i64,
    pub stamp: Stamp,
    /// The event that set it.
    pub event_id: i64,
}

/// (audience id, person id).
pub(crate) type MembershipKey = (i64, i64);

/// One row of the event history.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EventRow {
    pub event_id: i64,
    pub person_id: i64,
    pub audience_id: Option<i64>,
    pub source: &'static str,
    pub kind: String,
    pub occurred_at: i64,
    /// applied | unchanged | stale | recorded
    pub outcome: &'static str,
    pub detail: Option<String>,
}

/// What a group of commands does, for the backend to write.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// One per command, in order.
    pub outcomes: Vec<IngestOutcome>,
    pub events: Vec<EventRow>,
    /// Memberships that changed (set, or confirmed with a newer stamp).
    pub memberships: BTreeMap<MembershipKey, StoredMembership>,
    /// (destination, audience id) → person id → (desired, Customer.io time).
    pub desired: BTreeMap<(String, i64), BTreeMap<i64, (bool, i64)>>,
    /// destination → people whose rows become pending as an update.
    pub updates: BTreeMap<String, Vec<i64>>,
}

/// Step 1: the person of every fresh command (`None` for a delivery seen
/// before), merging what each carries, in order.
pub(crate) fn identify(
    commands: &[IngestCommand],
    fresh: &[bool],
    people: &mut People,
) -> Vec<Option<usize>> {
    commands
        .iter()
        .zip(fresh)
        .map(|(command, fresh)| {
            fresh.then(|| match command {
                IngestCommand::Segment { event, .. } => people.merge(
                    &event.identifiers,
                    Some(&event.attributes),
                    event.occurred_at_ms,
                ),
                IngestCommand::Reporting(event) => {
                    people.merge(&event.identifiers, None, event.occurred_at_ms)
                }
            })
        })
        .collect()
}

/// How many history rows [`plan`] writes: the backend reserves that many
/// event ids before planning (a sequence, or the next ids of a single
/// writer).
pub(crate) fn events_needed(commands: &[IngestCommand], person_of: &[Option<usize>]) -> usize {
    commands
        .iter()
        .zip(person_of)
        .filter(|(_, p)| p.is_some())
        .map(|(c, _)| match c {
            IngestCommand::Segment { audiences, .. } => audiences.len(),
            IngestCommand::Reporting(_) => 1,
        })
        .sum()
}

/// What [`plan`] reads besides the commands.
pub(crate) struct Loaded<'a> {
    /// Each command's dedupe key.
    pub keys: &'a [String],
    pub person_of: &'a [Option<usize>],
    /// Stored memberships of every (audience, person) the group touches.
    pub memberships: HashMap<MembershipKey, StoredMembership>,
    /// Per audience the group touches, the time of its last snapshot
    /// (resync), below which older events cannot change membership.
    pub floors: &'a HashMap<i64, Option<i64>>,
    pub readers: &'a AttributeReaders,
}

/// Step 2: every command in order through the rules. `event_ids` yields at
/// least [`events_needed`] ids, in order.
pub(crate) fn plan(
    commands: &[IngestCommand],
    people: &mut People,
    loaded: Loaded<'_>,
    event_ids: &mut impl Iterator<Item = i64>,
) -> Plan {
    let mut memberships = loaded.memberships;
    let mut plan = Plan {
        outcomes: Vec::with_capacity(commands.len()),
        ..Plan::default()
    };
    let mut changed = Vec::new();
    let mut next_id = || event_ids.next().expect("enough event ids reserved");
    for (i, command) in commands.iter().enumerate() {
        let Some(p) = loaded.person_of[i] else {
            plan.outcomes.push(IngestOutcome::Duplicate);
            continue;
        };
        let person_id = people.rows[p].person_id;
        match command {
            IngestCommand::Segment { event, audiences } => {
                let is_member = event.action.is_member();
                let stamp = Stamp::new(
                    event.occurred_at_ms,
                    is_member,
                    Source::SegmentWebhook,
                    loaded.keys[i].clone(),
                );
                let detail = event
                    .campaign_id
                    .as_ref()
                    .map(|c| json!({ "campaign_id": c }).to_string());
                let mut per_audience = Vec::with_capacity(audiences.len());
                for audience in audiences {
                    let key = (audience.id, person_id);
                    let stored = memberships
                        .get(&key)
                        .map(|m| (m.is_member, m.stamp.clone()));
                    let floor = loaded.floors.get(&audience.id).copied().flatten();
                    let current = effective_current(stored, floor);
                    let decision =
                        decide(current.as_ref().map(|(m, s)| (*m, s)), is_member, &stamp);
                    let event_id = next_id();
                    plan.events.push(EventRow {
                        event_id,
                        person_id,
                        audience_id: Some(audience.id),
                        source: Source::SegmentWebhook.as_str(),
                        kind: event.action.as_str().to_owned(),
                        occurred_at: event.occurred_at_ms,
                        outcome: decision.outcome(),
                        detail: detail.clone(),
                    });
                    let mut touched = Vec::new();
                    match decision {
                        Decision::Stale => {}
                        Decision::Confirm => {
                            let entry = memberships.entry(key).or_insert(StoredMembership {
                                is_member,
                                since: event.occurred_at_ms,
                                stamp: stamp.clone(),
                                event_id,
                            });
                            entry.stamp = stamp.clone();
                            changed.push(key);
                        }
                        Decision::Change => {
                            memberships.insert(
                                key,
                                StoredMembership {
                                    is_member,
                                    since: event.occurred_at_ms,
                                    stamp: stamp.clone(),
                                    event_id,
                                },
                            );
                            changed.push(key);
                            if audience.mode.sends(is_member) {
                                for d in &audience.destinations {
                                    plan.desired
                                        .entry((d.clone(), audience.id))
                                        .or_default()
                                        .insert(person_id, (is_member, event.occurred_at_ms));
                                    touched.push(d.clone());
                                }
                            }
                        }
                    }
                    per_audience.push(AudienceOutcome {
                        audience: audience.name.clone(),
                        outcome: decision.outcome(),
                        destinations_touched: touched,
                    });
                }
                plan.outcomes.push(IngestOutcome::Accepted {
                    person_id,
                    audiences: per_audience,
                });
            }
            IngestCommand::Reporting(event) => {
                let outcome = match event.subscription_change() {
                    Some(change) => {
                        let subscribed = change == SubscriptionChange::Subscribed;
                        if people.set_subscription(p, subscribed, event.occurred_at_ms) {
                            "applied"
                        } else {
                            "stale"
                        }
                    }
                    None => "recorded",
                };
                plan.events.push(EventRow {
                    event_id: next_id(),
                    person_id,
                    audience_id: None,
                    source: "reporting_webhook",
                    kind: event.kind(),
                    occurred_at: event.occurred_at_ms,
                    outcome,
                    detail: (!event.detail.is_empty())
                        .then(|| Value::Object(event.detail.clone()).to_string()),
                });
                plan.outcomes.push(IngestOutcome::Accepted {
                    person_id,
                    audiences: Vec::new(),
                });
            }
        }
    }
    for key in changed {
        if let Some(m) = memberships.remove(&key) {
            plan.memberships.insert(key, m);
        }
    }
    // A member whose profile changed is sent it again by every
    // destination that holds what changed (`audiences::updates`): the row
    // becomes pending (an update when it was acknowledged in, see
    // `SyncOp::of_row`), and its version moves so a send in flight with
    // the old values is not taken for this one. A flurry of changes is one
    // pending row.
    for row in people.rows.iter().filter(|r| !r.is_new) {
        for destination in loaded.readers.readers_of(&row.changed) {
            plan.updates
                .entry(destination.to_owned())
                .or_default()
                .push(row.person_id);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audiences::{AudienceDef, AudienceMode};

    fn audience(id: i64, mode: AudienceMode) -> Arc<AudienceDef> {
        Arc::new(AudienceDef {
            id,
            name: format!("a{id}"),
            segment_id: 42,
            mode,
            destinations: vec!["meta".into()],
        })
    }

    const T0: i64 = 1_750_000_000;

    /// A segment event `at` seconds after T0.
    fn segment(
        person: &str,
        action: &str,
        at: i64,
        audiences: &[Arc<AudienceDef>],
    ) -> IngestCommand {
        let at_s = T0 + at;
        let body = json!({"segment_id": 42, "action": action, "occurred_at": at_s,
                          "identifiers": {"id": person}, "attributes": {"ltv": at_s}});
        let event =
            crate::customerio::segment::parse(body.to_string().as_bytes(), &Default::default())
                .expect("a valid segment event");
        IngestCommand::Segment {
            event,
            audiences: audiences.to_vec(),
        }
    }

    fn run(
        commands: &[IngestCommand],
        fresh: &[bool],
        stored: HashMap<MembershipKey, StoredMembership>,
    ) -> (Plan, People) {
        let mut people = People::new(vec![], 1);
        let person_of = identify(commands, fresh, &mut people);
        let keys: Vec<String> = (0..commands.len()).map(|i| format!("k{i}")).collect();
        let floors = HashMap::new();
        let readers = AttributeReaders::default();
        let needed = events_needed(commands, &person_of);
        let mut ids = 100..100 + needed as i64;
        let plan = plan(
            commands,
            &mut people,
            Loaded {
                keys: &keys,
                person_of: &person_of,
                memberships: stored,
                floors: &floors,
                readers: &readers,
            },
            &mut ids,
        );
        assert!(ids.next().is_none(), "every reserved id used");
        (plan, people)
    }

    #[test]
    fn an_entry_then_an_older_exit_keeps_the_entry_and_records_both() {
        let cart = audience(1, AudienceMode::Mirror);
        let (plan, _) = run(
            &[
                segment("u1", "entered", 20, std::slice::from_ref(&cart)),
                segment("u1", "exited", 10, &[cart]),
            ],
            &[true, true],
            HashMap::new(),
        );
        let outcomes: Vec<&str> = plan.events.iter().map(|e| e.outcome).collect();
        assert_eq!(outcomes, ["applied", "stale"]);
        assert_eq!(plan.events[0].event_id, 100);
        let m = &plan.memberships[&(1, 1)];
        assert!(m.is_member);
        assert_eq!(m.event_id, 100, "the entry set it");
        assert_eq!(
            plan.desired[&("meta".into(), 1)][&1],
            (true, (T0 + 20) * 1000)
        );
    }

    #[test]
    fn an_additive_audience_records_an_exit_but_never_removes_downstream() {
        let vip = audience(2, AudienceMode::Additive);
        let (plan, _) = run(
            &[
                segment("u1", "entered", 10, std::slice::from_ref(&vip)),
                segment("u1", "exited", 20, &[vip]),
            ],
            &[true, true],
            HashMap::new(),
        );
        assert!(!plan.memberships[&(2, 1)].is_member);
        assert_eq!(
            plan.desired[&("meta".into(), 2)][&1],
            (true, (T0 + 10) * 1000)
        );
    }

    #[test]
    fn a_duplicate_changes_nothing_and_uses_no_id() {
        let cart = audience(1, AudienceMode::Mirror);
        let (plan, _) = run(
            &[segment("u1", "entered", 10, &[cart])],
            &[false],
            HashMap::new(),
        );
        assert_eq!(plan.outcomes, [IngestOutcome::Duplicate]);
        assert!(plan.events.is_empty() && plan.memberships.is_empty() && plan.desired.is_empty());
    }

    #[test]
    fn a_repeat_of_the_stored_state_confirms_without_sending() {
        let cart = audience(1, AudienceMode::Mirror);
        let stored = HashMap::from([(
            (1, 1),
            StoredMembership {
                is_member: true,
                since: (T0 + 5) * 1000,
                stamp: Stamp::new((T0 + 5) * 1000, true, Source::SegmentWebhook, "old"),
                event_id: 7,
            },
        )]);
        let (plan, _) = run(&[segment("u1", "entered", 10, &[cart])], &[true], stored);
        assert_eq!(plan.events[0].outcome, "unchanged");
        let m = &plan.memberships[&(1, 1)];
        assert_eq!(
            (m.since, m.event_id),
            ((T0 + 5) * 1000, 7),
            "the stay and its event stay"
        );
        assert_eq!(m.stamp.at_ms, (T0 + 10) * 1000, "the newer stamp is kept");
        assert!(plan.desired.is_empty());
    }
}
