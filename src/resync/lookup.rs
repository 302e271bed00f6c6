//! Profile lookups of the people a resync creates. The membership listing
//! carries id, cio_id and email only; when a destination needs more (Meta's
//! default `phone`, mapped attributes), each new person is looked up with
//! Customer.io's bulk lookup, 100 per request
//! (<https://docs.customer.io/integrations/api/app/tag/customers/getPeopleById/>).
//!
//! The lookups stream beside the membership pages: as each page is applied,
//! its new people are handed over a bounded channel to a worker, which
//! looks them up while later pages are still being fetched (both share the
//! client's one rate limiter). The worker keeps what is waiting as runs of
//! consecutive person ids (a chunk's new people get consecutive ids), so
//! its memory stays flat whatever the segment's size. Nobody is skipped
//! silently: whoever could not be looked up is counted by reason, with
//! their customer ids up to a bound.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::job::JobState;
use crate::customerio::app_api::{AppApiClient, AppApiError, Customer, IdType, MAX_BULK_LOOKUP};
use crate::delivery::Wakers;
use crate::identity::{Email, Phone, PhoneRules};
use crate::store::{Enriched, PersonKey, ProfileLookup, Store};

/// Pages' worth of new people in flight between the applier and the worker.
pub(super) const HANDOFF_QUEUE: usize = 16;
/// Ids of people not looked up kept in the report; the rest are counted.
pub const NOT_LOOKED_UP_IDS: usize = 100;
/// Bulk requests failing in a row (each after the client's own retries)
/// before the worker stops asking: the App API is down or refusing.
const GIVE_UP_AFTER: u32 = 5;

/// Why a new person was not looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotLookedUpReason {
    /// Customer.io's answer left them out: no such person there (any more).
    NotFound,
    /// Their bulk request failed after the client's retries.
    LookupFailed,
    /// The App API kept failing (or refused the key), so lookups stopped.
    GaveUp,
    /// koala holds neither a Customer.io id nor a cio_id for them.
    NoCustomerId,
    /// The answer came, but storing it failed.
    StoreFailed,
}

/// Counts of people not looked up, by reason.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReasonCounts {
    pub not_found: u64,
    pub lookup_failed: u64,
    pub gave_up: u64,
    pub no_customer_id: u64,
    pub store_failed: u64,
}

impl ReasonCounts {
    fn add(&mut self, reason: NotLookedUpReason, n: u64) {
        let slot = match reason {
            NotLookedUpReason::NotFound => &mut self.not_found,
            NotLookedUpReason::LookupFailed => &mut self.lookup_failed,
            NotLookedUpReason::GaveUp => &mut self.gave_up,
            NotLookedUpReason::NoCustomerId => &mut self.no_customer_id,
            NotLookedUpReason::StoreFailed => &mut self.store_failed,
        };
        *slot += n;
    }

    pub fn total(&self) -> u64 {
        self.not_found + self.lookup_failed + self.gave_up + self.no_customer_id + self.store_failed
    }
}

/// One person not looked up. `id` is the Customer.io id, `cio_id:…` for
/// someone known by cio_id only, or `person:…` (koala's id) for someone
/// with neither; never an email or phone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotLookedUp {
    pub id: String,
    pub reason: NotLookedUpReason,
}

/// How the profile lookups of a resync went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LookupReport {
    /// New people handed to the lookup so far.
    pub queued: u64,
    /// Bulk requests sent (up to 100 people each), failed ones included.
    pub requests: u64,
    /// Found at Customer.io and merged.
    pub found: u64,
    /// Of those, people whose email, phone or attributes the lookup
    /// changed: sent once more (or first sent with the fuller record).
    pub changed: u64,
    /// New people waiting for their lookup.
    pub waiting: u64,
    /// People not looked up, by reason.
    pub not_looked_up: ReasonCounts,
    /// The first of them (up to 100) with their reason.
    pub not_looked_up_ids: Vec<NotLookedUp>,
    /// People not looked up beyond that list (counted only).
    pub not_looked_up_ids_left_off: u64,
}

impl LookupReport {
    fn not_looked_up(&mut self, id: String, reason: NotLookedUpReason) {
        self.not_looked_up.add(reason, 1);
        if self.not_looked_up_ids.len() < NOT_LOOKED_UP_IDS {
            self.not_looked_up_ids.push(NotLookedUp { id, reason });
        } else {
            self.not_looked_up_ids_left_off += 1;
        }
    }
}

/// Person ids waiting for a lookup, as runs of consecutive ids. A chunk's
/// new people get consecutive ids, and chunks follow each other, so a whole
/// first resync is usually one run: memory does not grow with the segment.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    runs: VecDeque<(i64, i64)>,
    len: u64,
}

impl Waiting {
    /// Adds ids (any order, repeats ignored within the call).
    pub fn push(&mut self, mut ids: Vec<i64>) {
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            match self.runs.back_mut() {
                Some((_, last)) if *last + 1 == id => *last = id,
                Some((_, last)) if *last >= id => continue, // already waiting
                _ => self.runs.push_back((id, id)),
            }
            self.len += 1;
        }
    }

    /// Up to `n` ids, oldest first.
    pub fn take(&mut self, n: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(n.min(self.len as usize));
        while out.len() < n {
            let Some((first, last)) = self.runs.front_mut() else {
                break;
            };
            let room = (n - out.len()) as i64;
            let upto = (*first + room - 1).min(*last);
            out.extend(*first..=upto);
            if upto == *last {
                self.runs.pop_front();
            } else {
                *first = upto + 1;
            }
        }
        self.len -= out.len() as u64;
        out
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[cfg(test)]
    fn runs(&self) -> usize {
        self.runs.len()
    }
}

/// How a person is asked for: by Customer.io id when koala has it, else by
/// cio_id (Customer.io's own, immutable id); the bulk endpoint takes ids
/// of one type per request, so the two go in separate batches.
pub(crate) fn lookup_key(key: &PersonKey) -> Option<(IdType, String)> {
    if let Some(id) = key.customer_id.as_deref().filter(|s| !s.trim().is_empty()) {
        return Some((IdType::Id, id.to_owned()));
    }
    key.cio_id
        .as_deref()
        .map(crate::customerio::app_api::bare_cio_id)
        .filter(|s| !s.trim().is_empty())
        .map(|c| (IdType::CioId, c.to_owned()))
}

/// How a person is named in the report: never by email or phone.
fn report_id(key: &PersonKey) -> String {
    match lookup_key(key) {
        Some((IdType::Id, id)) => id,
        Some((_, cio)) => format!("cio_id:{cio}"),
        None => format!("person:{}", key.person_id),
    }
}

/// What koala keeps of a looked-up customer: email and phone parsed at the
/// edge (a value that does not parse is left out, not an error), and the
/// scalar attributes other than the identifiers.
pub(crate) fn profile_from(
    person_id: i64,
    customer: Customer,
    phone_rules: &PhoneRules,
) -> ProfileLookup {
    let email = customer
        .attribute("email")
        .and_then(|e| Email::parse(&e).ok());
    let phone = customer
        .attribute("phone")
        .and_then(|p| Phone::parse_with(&p, phone_rules).ok());
    let attributes: Map<String, Value> = customer
        .attributes
        .into_iter()
        .filter(|(k, v)| {
            !matches!(k.as_str(), "id" | "cio_id" | "email" | "phone")
                && (v.is_string() || v.is_number() || v.is_boolean())
        })
        .collect();
    ProfileLookup {
        person_id,
        email,
        phone,
        attributes,
    }
}

/// The lookup worker of one resync.
pub(super) struct Worker {
    pub client: AppApiClient,
    pub store: Arc<dyn Store>,
    pub wakers: Wakers,
    pub destinations: Vec<String>,
    pub state: Arc<Mutex<JobState>>,
    /// The snapshot's time: looked-up facts merge as of it.
    pub at_ms: i64,
    /// How phones without a country code are read.
    pub phone_rules: PhoneRules,
}

/// People resolved to their key, waiting for a full batch of their type.
type Batch = Vec<(String, PersonKey)>;

impl Worker {
    fn report(&self, f: impl FnOnce(&mut LookupReport)) {
        let mut s = self.state.lock().expect("job lock");
        f(&mut s.lookups);
        s.profiles_fetched = s.lookups.found;
        s.profiles_failed = s.lookups.not_looked_up.total();
    }

    /// Runs until the applier has closed `rx` and everyone handed over is
    /// looked up or accounted for.
    pub async fn run(self, mut rx: mpsc::Receiver<Vec<i64>>) {
        let mut waiting = Waiting::default();
        let mut by_id: Batch = Vec::new();
        let mut by_cio: Batch = Vec::new();
        let mut open = true;
        let mut failures = 0u32;
        let mut gave_up = false;
        loop {
            // Keep the handoff free, so the applier never waits on lookups.
            while open {
                match rx.try_recv() {
                    Ok(ids) => self.accept(&mut waiting, ids),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            if gave_up {
                self.give_up(&mut waiting, &mut by_id, &mut by_cio).await;
                if !open {
                    break;
                }
                match rx.recv().await {
                    Some(ids) => self.accept(&mut waiting, ids),
                    None => open = false,
                }
                continue;
            }
            // Resolve waiting people to their keys until a batch is full.
            while by_id.len() < MAX_BULK_LOOKUP
                && by_cio.len() < MAX_BULK_LOOKUP
                && !waiting.is_empty()
            {
                let pids = waiting.take(MAX_BULK_LOOKUP);
                self.resolve(pids, &mut by_id, &mut by_cio).await;
            }
            let ready = if by_id.len() >= MAX_BULK_LOOKUP || (!open && !by_id.is_empty()) {
                Some((IdType::Id, &mut by_id))
            } else if by_cio.len() >= MAX_BULK_LOOKUP || (!open && !by_cio.is_empty()) {
                Some((IdType::CioId, &mut by_cio))
            } else {
                None
            };
            if let Some((id_type, buffer)) = ready {
                let n = buffer.len().min(MAX_BULK_LOOKUP);
                let batch: Batch = buffer.drain(..n).collect();
                match self.lookup(id_type, batch).await {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        if failures >= GIVE_UP_AFTER
                            || matches!(e, AppApiError::Unauthorized { .. })
                        {
                            tracing::error!(status = ?e.status(), failures, "Customer.io profile lookups keep failing; the rest are not looked up");
                            gave_up = true;
                        }
                    }
                }
                self.report(|r| r.waiting = waiting.len() + (by_id.len() + by_cio.len()) as u64);
                continue;
            }
            if !open {
                break; // nothing left anywhere
            }
            // A partial batch waits for the next page's people.
            match rx.recv().await {
                Some(ids) => self.accept(&mut waiting, ids),
                None => open = false,
            }
        }
        self.report(|r| r.waiting = 0);
    }

    fn accept(&self, waiting: &mut Waiting, ids: Vec<i64>) {
        let before = waiting.len();
        waiting.push(ids);
        let added = waiting.len() - before;
        self.report(|r| {
            r.queued += added;
            r.waiting += added;
        });
    }

    async fn resolve(&self, pids: Vec<i64>, by_id: &mut Batch, by_cio: &mut Batch) {
        let keys = match self.store.person_keys(&pids).await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, "reading people to look up failed");
                self.report(|r| {
                    for pid in &pids {
                        r.not_looked_up(format!("person:{pid}"), NotLookedUpReason::StoreFailed);
                    }
                });
                return;
            }
        };
        // Created by this resync moments ago, so not expected: counted.
        let gone: Vec<i64> = pids
            .iter()
            .copied()
            .filter(|pid| !keys.iter().any(|k| k.person_id == *pid))
            .collect();
        for key in keys {
            match lookup_key(&key) {
                Some((IdType::Id, id)) => by_id.push((id, key)),
                Some((_, cio)) => by_cio.push((cio, key)),
                None => {
                    let id = report_id(&key);
                    self.report(|r| r.not_looked_up(id, NotLookedUpReason::NoCustomerId));
                }
            }
        }
        if !gone.is_empty() {
            self.report(|r| {
                for pid in gone {
                    r.not_looked_up(format!("person:{pid}"), NotLookedUpReason::NoCustomerId);
                }
            });
        }
    }

    /// One bulk request and its merge. Err only for the request failing.
    async fn lookup(&self, id_type: IdType, batch: Batch) -> Result<(), AppApiError> {
        let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
        self.report(|r| r.requests += 1);
        let customers = match self.client.customers_attributes(&ids, id_type).await {
            Ok(c) => c,
            Err(e) => {
                // The error's text may quote the answer: only its status.
                tracing::warn!(status = ?e.status(), people = ids.len(), "a bulk profile lookup failed after retries");
                self.report(|r| {
                    for (_, key) in &batch {
                        r.not_looked_up(report_id(key), NotLookedUpReason::LookupFailed);
                    }
                });
                return Err(e);
            }
        };
        let mut answers: HashMap<String, Customer> = customers
            .into_iter()
            .filter_map(|c| Some((c.key(id_type)?, c)))
            .collect();
        let mut lookups = Vec::with_capacity(batch.len());
        let mut not_found = Vec::new();
        for (id, key) in &batch {
            match answers.remove(id) {
                Some(c) => lookups.push(profile_from(key.person_id, c, &self.phone_rules)),
                None => not_found.push(report_id(key)),
            }
        }
        let outcomes = self.store.enrich_people(&lookups, self.at_ms).await;
        let name = |pid: i64| {
            batch
                .iter()
                .find(|(_, k)| k.person_id == pid)
                .map_or_else(|| format!("person:{pid}"), |(_, k)| report_id(k))
        };
        let mut changed = 0;
        self.report(|r| {
            for id in not_found {
                r.not_looked_up(id, NotLookedUpReason::NotFound);
            }
            match &outcomes {
                Ok(outcomes) => {
                    for (lookup, outcome) in lookups.iter().zip(outcomes) {
                        match outcome {
                            Enriched::Changed => {
                                r.found += 1;
                                changed += 1;
                            }
                            Enriched::Unchanged => r.found += 1,
                            // Left the store since: nobody to merge into.
                            Enriched::Gone => {
                                r.not_looked_up(name(lookup.person_id), NotLookedUpReason::NotFound)
                            }
                        }
                    }
                    r.changed += changed;
                }
                Err(_) => {
                    for lookup in &lookups {
                        r.not_looked_up(name(lookup.person_id), NotLookedUpReason::StoreFailed);
                    }
                }
            }
        });
        if let Err(e) = &outcomes {
            tracing::warn!(error = %e, "storing looked-up profiles failed");
        }
        if changed > 0 {
            for d in &self.destinations {
                self.wakers.wake(d);
            }
        }
        Ok(())
    }

    /// Accounts for everyone still waiting after the worker gave up.
    async fn give_up(&self, waiting: &mut Waiting, by_id: &mut Batch, by_cio: &mut Batch) {
        for (_, key) in by_id.drain(..).chain(by_cio.drain(..)) {
            self.report(|r| r.not_looked_up(report_id(&key), NotLookedUpReason::GaveUp));
        }
        while !waiting.is_empty() {
            let room = {
                let s = self.state.lock().expect("job lock");
                NOT_LOOKED_UP_IDS.saturating_sub(s.lookups.not_looked_up_ids.len())
            };
            if room == 0 {
                let n = waiting.len();
                waiting.take(n as usize);
                self.report(|r| {
                    r.not_looked_up.add(NotLookedUpReason::GaveUp, n);
                    r.not_looked_up_ids_left_off += n;
                });
                break;
            }
            // Name the first ones (their keys are one read away).
            let pids = waiting.take(room.min(MAX_BULK_LOOKUP));
            let keys = self.store.person_keys(&pids).await.unwrap_or_default();
            self.report(|r| {
                for pid in &pids {
                    let id = keys
                        .iter()
                        .find(|k| k.person_id == *pid)
                        .map_or_else(|| format!("person:{pid}"), report_id);
                    r.not_looked_up(id, NotLookedUpReason::GaveUp);
                }
            });
        }
        self.report(|r| r.waiting = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_ids_are_kept_as_runs_and_taken_in_order() {
        let mut w = Waiting::default();
        w.push((1..=250).collect());
        w.push((251..=400).rev().collect());
        assert_eq!(w.runs(), 1, "consecutive pages make one run");
        w.push(vec![500, 502, 501, 501]);
        assert_eq!(w.runs(), 2);
        assert_eq!(w.len(), 403);
        let first = w.take(100);
        assert_eq!(first, (1..=100).collect::<Vec<_>>());
        let rest = w.take(1000);
        assert_eq!(rest.len(), 303);
        assert_eq!(rest[..3], [101, 102, 103]);
        assert_eq!(rest[rest.len() - 3..], [500, 501, 502]);
        assert!(w.is_empty());
        assert!(w.take(10).is_empty());
    }

    #[test]
    fn a_million_new_people_wait_in_one_run() {
        let mut w = Waiting::default();
        for page in 0..34 {
            let start = page * 30_000 + 1;
            w.push((start..start + 30_000).collect());
        }
        assert_eq!(w.len(), 1_020_000);
        assert_eq!(w.runs(), 1);
    }

    fn key(id: Option<&str>, cio: Option<&str>) -> PersonKey {
        PersonKey {
            person_id: 7,
            customer_id: id.map(Into::into),
            cio_id: cio.map(Into::into),
            has_email: true,
        }
    }

    #[test]
    fn people_are_asked_for_by_id_else_by_cio_id() {
        assert_eq!(
            lookup_key(&key(Some("u1"), Some("c1"))),
            Some((IdType::Id, "u1".into()))
        );
        assert_eq!(
            lookup_key(&key(None, Some("cio_c1"))),
            Some((IdType::CioId, "c1".into()))
        );
        assert_eq!(lookup_key(&key(None, None)), None);
        assert_eq!(report_id(&key(None, Some("c1"))), "cio_id:c1");
        assert_eq!(report_id(&key(None, None)), "person:7");
    }

    #[test]
    fn a_profile_keeps_parsed_identifiers_and_scalar_attributes() {
        let c: Customer = serde_json::from_value(serde_json::json!({
            "id": "u1",
            "attributes": {"id": "u1", "cio_id": "c1", "email": "A@Example.com",
                "phone": "+14155550100", "plan": "gold", "n": 3, "vip": true,
                "tags": ["x"], "blank": null}
        }))
        .unwrap();
        let p = profile_from(9, c, &PhoneRules::default());
        assert_eq!(p.person_id, 9);
        assert_eq!(p.email.unwrap().as_str(), "a@example.com");
        assert_eq!(p.phone.unwrap().e164(), "+14155550100");
        let mut keys: Vec<&str> = p.attributes.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["n", "plan", "vip"]);

        let bad: Customer = serde_json::from_value(serde_json::json!({
            "attributes": {"email": "not an email", "phone": "call me"}
        }))
        .unwrap();
        let p = profile_from(1, bad, &PhoneRules::default());
        assert!(p.email.is_none() && p.phone.is_none());
    }

    #[test]
    fn the_report_names_the_first_hundred_and_counts_the_rest() {
        let mut r = LookupReport::default();
        for i in 0..150 {
            r.not_looked_up(format!("u{i}"), NotLookedUpReason::NotFound);
        }
        r.not_looked_up("u150".into(), NotLookedUpReason::GaveUp);
        assert_eq!(r.not_looked_up_ids.len(), NOT_LOOKED_UP_IDS);
        assert_eq!(r.not_looked_up_ids_left_off, 51);
        assert_eq!(r.not_looked_up.not_found, 150);
        assert_eq!(r.not_looked_up.gave_up, 1);
        assert_eq!(r.not_looked_up.total(), 151);
    }
}
