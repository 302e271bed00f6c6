//! The identity-merge rule, as a pure in-memory structure: a store loads
//! the people a group of commands can touch, applies every command here in
//! order, then writes back what changed in a few set-based statements.
//!
//! Rules: a person is found by id, then cio_id, then email, then phone;
//! email and phone never merge two different ids. cio_id is immutable, so a
//! cio_id match carrying a new id means Customer.io gave the person a new
//! id. Email, phone and attributes follow the newest event time.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::audiences::ChangedFields;
use crate::identity::{IdentifierKind, Identifiers, UnusableReason};

#[derive(Debug, Clone, Default)]
pub(crate) struct PersonRow {
    pub person_id: i64,
    pub customer_id: Option<String>,
    pub cio_id: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// The newest email given was unusable, and why.
    pub email_unusable: Option<UnusableReason>,
    /// The newest phone given was unusable, and why.
    pub phone_unusable: Option<UnusableReason>,
    pub attributes: Map<String, Value>,
    pub profile_at: i64,
    pub subscribed: Option<bool>,
    pub subscription_at: Option<i64>,
    /// Not in the store yet.
    pub is_new: bool,
    /// Changed since loaded.
    pub dirty: bool,
    /// What of a stored person's profile changed (attribute names and
    /// `identifiers.*`): destinations that hold one of them are sent an
    /// update (`audiences::updates`).
    pub changed: ChangedFields,
}

#[derive(Debug, Default)]
pub(crate) struct People {
    pub rows: Vec<PersonRow>,
    by_customer: HashMap<String, usize>,
    by_cio: HashMap<String, usize>,
    by_email: HashMap<String, Vec<usize>>,
    by_phone: HashMap<String, Vec<usize>>,
    next_person_id: i64,
}

impl People {
    /// `rows` must hold every stored person whose id, cio_id, email or
    /// phone equals a value the commands will carry.
    pub fn new(mut rows: Vec<PersonRow>, next_person_id: i64) -> Self {
        rows.sort_by_key(|r| r.person_id);
        rows.dedup_by_key(|r| r.person_id);
        let mut people = People {
            rows: Vec::with_capacity(rows.len()),
            next_person_id,
            ..Default::default()
        };
        for row in rows {
            people.push(row);
        }
        people
    }

    fn push(&mut self, row: PersonRow) -> usize {
        let i = self.rows.len();
        self.rows.push(row);
        self.index(i);
        i
    }

    fn index(&mut self, i: usize) {
        let r = &self.rows[i];
        if let Some(c) = &r.customer_id {
            self.by_customer.insert(c.clone(), i);
        }
        if let Some(c) = &r.cio_id {
            self.by_cio.insert(c.clone(), i);
        }
        if let Some(e) = &r.email {
            let v = self.by_email.entry(e.clone()).or_default();
            if !v.contains(&i) {
                v.push(i);
            }
        }
        if let Some(p) = &r.phone {
            let v = self.by_phone.entry(p.clone()).or_default();
            if !v.contains(&i) {
                v.push(i);
            }
        }
    }

    fn find(&self, ids: &Identifiers) -> Option<usize> {
        if let Some(i) = ids.id.as_ref().and_then(|id| self.by_customer.get(id)) {
            return Some(*i);
        }
        if let Some(i) = ids.cio_id.as_ref().and_then(|c| self.by_cio.get(c)) {
            return Some(*i);
        }
        // The oldest person with that email (or phone), unless it holds a
        // different id: email and phone never merge two ids.
        let weak = |candidates: Option<&Vec<usize>>, matches: &dyn Fn(&PersonRow) -> bool| {
            let i = candidates?
                .iter()
                .copied()
                .filter(|&i| matches(&self.rows[i]))
                .min_by_key(|&i| self.rows[i].person_id)?;
            let r = &self.rows[i];
            let id_conflict = matches!((&ids.id, &r.customer_id), (Some(a), Some(b)) if a != b);
            let cio_conflict = matches!((&ids.cio_id, &r.cio_id), (Some(a), Some(b)) if a != b);
            (!id_conflict && !cio_conflict).then_some(i)
        };
        if let Some(e) = &ids.email {
            let e = e.as_str();
            if let Some(i) = weak(self.by_email.get(e), &|r| r.email.as_deref() == Some(e)) {
                return Some(i);
            }
        }
        let p = ids.phone.as_ref()?.e164();
        weak(self.by_phone.get(p), &|r| r.phone.as_deref() == Some(p))
    }

    /// Finds or creates the person and merges what the event carries.
    /// Returns the row's index.
    pub fn merge(
        &mut self,
        ids: &Identifiers,
        attributes: Option<&Map<String, Value>>,
        occurred_at: i64,
    ) -> usize {
        let email = ids.email.as_ref().map(|e| e.as_str().to_owned());
        let phone = ids.phone.as_ref().map(|p| p.e164().to_owned());
        let Some(i) = self.find(ids) else {
            let person_id = self.next_person_id;
            self.next_person_id += 1;
            return self.push(PersonRow {
                person_id,
                customer_id: ids.id.clone(),
                cio_id: ids.cio_id.clone(),
                email,
                phone,
                email_unusable: ids.unusable(IdentifierKind::Email),
                phone_unusable: ids.unusable(IdentifierKind::Phone),
                attributes: attributes.cloned().unwrap_or_default(),
                profile_at: occurred_at,
                is_new: true,
                dirty: true,
                ..Default::default()
            });
        };
        // Never take an id another person holds.
        let new_customer = ids
            .id
            .as_ref()
            .filter(|id| {
                self.rows[i].customer_id.as_ref() != Some(*id)
                    && !self.by_customer.contains_key(*id)
            })
            .cloned();
        let new_cio = ids
            .cio_id
            .as_ref()
            .filter(|c| self.rows[i].cio_id.is_none() && !self.by_cio.contains_key(*c))
            .cloned();
        if new_customer.is_some() {
            if let Some(old) = &self.rows[i].customer_id {
                self.by_customer.remove(old);
            }
        }
        let row = &mut self.rows[i];
        let before = (
            row.customer_id.clone(),
            row.cio_id.clone(),
            row.email.clone(),
            row.phone.clone(),
            row.profile_at,
            (row.email_unusable, row.phone_unusable),
        );
        if let Some(c) = new_customer {
            row.customer_id = Some(c);
        }
        if let Some(c) = new_cio {
            row.cio_id = Some(c);
        }
        let newer = occurred_at >= row.profile_at;
        merge_identifier(
            &mut row.email,
            &mut row.email_unusable,
            email,
            ids.unusable(IdentifierKind::Email),
            newer,
        );
        merge_identifier(
            &mut row.phone,
            &mut row.phone_unusable,
            phone,
            ids.unusable(IdentifierKind::Phone),
            newer,
        );
        let mut attrs_changed = false;
        if let Some(incoming) = attributes {
            for (k, v) in incoming {
                if (newer || !row.attributes.contains_key(k)) && row.attributes.get(k) != Some(v) {
                    row.attributes.insert(k.clone(), v.clone());
                    row.changed.insert(k.clone());
                    attrs_changed = true;
                }
            }
        }
        row.profile_at = row.profile_at.max(occurred_at);
        let after = (
            row.customer_id.clone(),
            row.cio_id.clone(),
            row.email.clone(),
            row.phone.clone(),
            row.profile_at,
            (row.email_unusable, row.phone_unusable),
        );
        for (field, was, is) in [
            ("identifiers.id", &before.0, &after.0),
            ("identifiers.email", &before.2, &after.2),
            ("identifiers.phone", &before.3, &after.3),
        ] {
            if was != is {
                row.changed.insert(field.to_owned());
            }
        }
        if before != after || attrs_changed {
            row.dirty = true;
            self.index(i);
        }
        i
    }

    /// Latest wins; false when a newer subscription change is stored.
    pub fn set_subscription(&mut self, i: usize, subscribed: bool, at: i64) -> bool {
        let row = &mut self.rows[i];
        if row.subscription_at.is_some_and(|t| t > at) {
            return false;
        }
        row.subscribed = Some(subscribed);
        row.subscription_at = Some(at);
        row.dirty = true;
        true
    }
}

/// One email or phone: a newer usable value replaces the stored one and
/// clears any unusable note; a newer unusable one is noted but never drops
/// a usable value; an older event only fills a gap.
fn merge_identifier(
    stored: &mut Option<String>,
    stored_unusable: &mut Option<UnusableReason>,
    incoming: Option<String>,
    incoming_unusable: Option<UnusableReason>,
    newer: bool,
) {
    match (incoming, incoming_unusable) {
        (Some(value), _) if newer || stored.is_none() => {
            *stored = Some(value);
            *stored_unusable = None;
        }
        (None, Some(reason)) if newer || (stored.is_none() && stored_unusable.is_none()) => {
            *stored_unusable = Some(reason);
        }
        _ => {}
    }
}

/// Whether a profile lookup changed what destinations are sent of a
/// person: their email, phone or attributes. Only then are destinations
/// that already acknowledged the person sent them again. Why: a lookup of
/// someone koala already holds in full (a second resync, an id looked up
/// twice) would otherwise cost one needless destination call per person,
/// thousands per resync. Ids and timestamps are not sent as such, so a
/// change to them alone (profile_at moving) does not count.
pub(crate) fn lookup_changed_record(before: &PersonRow, after: &PersonRow) -> bool {
    before.email != after.email
        || before.phone != after.phone
        || before.attributes != after.attributes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(email: Option<&str>, phone: Option<&str>, plan: Option<&str>) -> PersonRow {
        let mut attributes = Map::new();
        if let Some(p) = plan {
            attributes.insert("plan".into(), p.into());
        }
        PersonRow {
            person_id: 1,
            customer_id: Some("u1".into()),
            email: email.map(Into::into),
            phone: phone.map(Into::into),
            attributes,
            ..Default::default()
        }
    }

    #[test]
    fn a_lookup_that_adds_or_changes_email_phone_or_attributes_changed_the_record() {
        let base = row(Some("a@example.com"), None, None);
        assert!(lookup_changed_record(
            &base,
            &row(Some("a@example.com"), Some("+14155550100"), None)
        ));
        assert!(lookup_changed_record(
            &base,
            &row(Some("b@example.com"), None, None)
        ));
        assert!(lookup_changed_record(
            &base,
            &row(Some("a@example.com"), None, Some("gold"))
        ));
        let with_plan = row(Some("a@example.com"), None, Some("basic"));
        assert!(lookup_changed_record(
            &with_plan,
            &row(Some("a@example.com"), None, Some("gold"))
        ));
    }

    #[test]
    fn a_lookup_that_finds_what_koala_holds_changed_nothing() {
        let held = row(Some("a@example.com"), Some("+14155550100"), Some("gold"));
        let mut same = held.clone();
        // Only the profile time moved, and the row was rewritten.
        same.profile_at = 99;
        same.dirty = true;
        assert!(!lookup_changed_record(&held, &same));
    }

    fn ids(id: Option<&str>, cio: Option<&str>, email: Option<&str>) -> Identifiers {
        Identifiers::new(id, cio, email, None).unwrap()
    }

    #[test]
    fn the_same_person_in_one_group_is_created_once() {
        let mut p = People::new(vec![], 1);
        let a = p.merge(&ids(Some("u1"), None, Some("a@example.com")), None, 10);
        let b = p.merge(&ids(None, Some("c1"), Some("a@example.com")), None, 11);
        let c = p.merge(&ids(Some("u1"), Some("c1"), None), None, 12);
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.rows[0].cio_id.as_deref(), Some("c1"));
    }

    #[test]
    fn email_never_merges_two_ids() {
        let mut p = People::new(vec![], 1);
        p.merge(&ids(Some("u1"), None, Some("shared@example.com")), None, 10);
        p.merge(&ids(Some("u2"), None, Some("shared@example.com")), None, 10);
        assert_eq!(p.rows.len(), 2);
    }

    #[test]
    fn older_events_fill_gaps_but_do_not_overwrite() {
        let mut p = People::new(vec![], 1);
        let mut attrs = Map::new();
        attrs.insert("plan".into(), "gold".into());
        p.merge(
            &ids(Some("u1"), None, Some("new@example.com")),
            Some(&attrs),
            20,
        );
        let mut old = Map::new();
        old.insert("plan".into(), "basic".into());
        old.insert("city".into(), "Oslo".into());
        p.merge(
            &ids(Some("u1"), None, Some("old@example.com")),
            Some(&old),
            10,
        );
        let r = &p.rows[0];
        assert_eq!(r.email.as_deref(), Some("new@example.com"));
        assert_eq!(r.attributes["plan"], "gold");
        assert_eq!(r.attributes["city"], "Oslo");
    }

    #[test]
    fn a_stored_person_notes_what_changed_and_nothing_else() {
        let mut attrs = Map::new();
        attrs.insert("plan".into(), "gold".into());
        attrs.insert("ltv".into(), 10.into());
        let stored = PersonRow {
            person_id: 3,
            customer_id: Some("u1".into()),
            email: Some("a@example.com".into()),
            attributes: attrs.clone(),
            profile_at: 10,
            ..Default::default()
        };
        let mut p = People::new(vec![stored], 4);
        // The same profile again: nothing changed.
        p.merge(
            &ids(Some("u1"), None, Some("a@example.com")),
            Some(&attrs),
            20,
        );
        assert!(p.rows[0].changed.is_empty());
        attrs.insert("ltv".into(), 42.into());
        p.merge(
            &ids(Some("u1"), None, Some("b@example.com")),
            Some(&attrs),
            30,
        );
        let changed: Vec<&str> = p.rows[0].changed.iter().map(|s| s.as_str()).collect();
        assert_eq!(changed, ["identifiers.email", "ltv"]);
    }

    #[test]
    fn a_cio_id_match_with_a_new_id_takes_the_new_id() {
        let stored = PersonRow {
            person_id: 5,
            customer_id: Some("old".into()),
            cio_id: Some("c1".into()),
            ..Default::default()
        };
        let mut p = People::new(vec![stored], 6);
        let i = p.merge(&ids(Some("new"), Some("c1"), None), None, 10);
        assert_eq!(p.rows[i].person_id, 5);
        assert_eq!(p.rows[i].customer_id.as_deref(), Some("new"));
        assert!(p.rows[i].dirty);
    }

    #[test]
    fn an_unusable_phone_is_noted_and_never_replaces_a_usable_one() {
        let with_phone =
            |phone: &str| Identifiers::new(Some("u1"), None, None, Some(phone)).unwrap();
        let mut p = People::new(vec![], 1);
        let i = p.merge(&with_phone("5551234567"), None, 10);
        assert_eq!(p.rows[i].phone, None);
        assert_eq!(
            p.rows[i].phone_unusable,
            Some(UnusableReason::NoCountryCode)
        );
        // A usable phone arrives: it is kept and the note goes.
        p.merge(&with_phone("+14155550100"), None, 20);
        assert_eq!(p.rows[i].phone.as_deref(), Some("+14155550100"));
        assert_eq!(p.rows[i].phone_unusable, None);
        // A newer unusable one is noted, the usable phone stays.
        p.merge(&with_phone("555"), None, 30);
        assert_eq!(p.rows[i].phone.as_deref(), Some("+14155550100"));
        assert!(p.rows[i].phone_unusable.is_some());
        assert!(p.rows[i].dirty);
    }

    #[test]
    fn subscription_is_latest_wins() {
        let mut p = People::new(vec![], 1);
        let i = p.merge(&ids(Some("u1"), None, None), None, 10);
        assert!(p.set_subscription(i, false, 20));
        assert!(!p.set_subscription(i, true, 10));
        assert_eq!(p.rows[i].subscribed, Some(false));
    }
}
