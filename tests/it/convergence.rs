//! One audience synced to every kind of destination at once — Meta, the
//! signed webhook, Segment, the PostgreSQL warehouse table, BigQuery and
//! Snowflake — through a stream of entries, exits, re-entries and
//! attribute changes delivered out of order and partly twice, while
//! destinations fail: the webhook receiver applies batches and then
//! answers 503 (a lost acknowledgement) or 500; Segment throttles and
//! fails after applying; BigQuery stores rows and answers 503, and
//! throttles; Snowflake executes and answers 503, throttles, and answers
//! 202 until polled; Meta throttles. Every destination must end up
//! holding exactly Customer.io's final membership with each member's
//! newest mapped value, with nothing left pending or dead.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::app::*;
use crate::support::fake_bigquery::FakeBigQuery;
use crate::support::fake_meta::{FakeMeta, ScriptedResponse};
use crate::support::fake_segment::{FakeSegment, Mode};
use crate::support::fake_snowflake::FakeSnowflake;
use crate::support::fake_webhook_receiver::FakeWebhookReceiver;
use crate::support::postgres::scratch;

const T0: i64 = 1_750_000_000;
const META_AUDIENCE: &str = "23850000000000777";
const SEGMENT_KEY: &str = "cart_abandoners";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const LTV_MAP: &str = r#"map = { lifetime_value = { from = "ltv", type = "number" } }"#;

/// A fixed pseudo-random sequence (no dependency on the seed's crate).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

struct Event {
    person: String,
    entered: bool,
    ltv: u64,
    at: i64,
}

/// 300 events over 40 people, each with its own Customer.io time.
fn stream() -> Vec<Event> {
    let mut rng = Lcg(7);
    (0..300)
        .map(|i| Event {
            person: format!("c{:02}", rng.next(40)),
            entered: rng.next(3) > 0,
            ltv: rng.next(1000),
            at: T0 + i,
        })
        .collect()
}

/// Customer.io's final state: person → newest ltv, for current members.
fn expected(events: &[Event]) -> BTreeMap<String, f64> {
    let mut latest: BTreeMap<&str, &Event> = BTreeMap::new();
    for e in events {
        if latest.get(e.person.as_str()).is_none_or(|l| l.at < e.at) {
            latest.insert(&e.person, e);
        }
    }
    latest
        .into_iter()
        .filter(|(_, e)| e.entered)
        .map(|(p, e)| (p.to_owned(), e.ltv as f64))
        .collect()
}

fn body(e: &Event) -> Value {
    json!({"segment_id": CART_SEGMENT, "action": if e.entered { "entered" } else { "exited" },
           "occurred_at": e.at,
           "identifiers": {"id": e.person, "email": format!("{}@example.com", e.person)},
           "attributes": {"ltv": e.ltv, "page": format!("/p{}", e.at)}})
}

#[tokio::test]
async fn convergence_every_destination_holds_the_final_membership_despite_faults() {
    let Some(db) = scratch("convergence_all").await else {
        return;
    };
    let meta = FakeMeta::start().await;
    let rx = FakeWebhookReceiver::start(&[SECRET]).await;
    let segment = FakeSegment::start(Mode::Basic).await;
    let bigquery = FakeBigQuery::start().await;
    let snowflake = FakeSnowflake::start().await;
    let fast = "max_batch = 7\nbase_backoff = \"20ms\"\nmax_backoff = \"100ms\"";
    let cfg = base_config("")
        + &meta.destination_toml("meta", "max_batch = 7")
        + &rx.destination_toml("hook", &[SECRET], &format!("{LTV_MAP}\nmax_batch = 7"))
        + &segment.destination_toml("segment", &format!("{LTV_MAP}\nmax_batch = 7"))
        + &db.destination_toml("warehouse", &format!("{LTV_MAP}\n{fast}"))
        + &bigquery.destination_toml(
            "bigquery",
            "changes",
            &format!("{LTV_MAP}\nmax_batch = 7\ncreate_table = true"),
        )
        + &snowflake.destination_toml(
            "snowflake",
            &format!("{LTV_MAP}\nmax_batch = 7\ncreate_table = true"),
        )
        + &cart_audience(
            &format!(
                r#"{{ destination = "meta", audience_id = "{META_AUDIENCE}" }}, {{ destination = "hook" }}, {{ destination = "segment", audience_id = "{SEGMENT_KEY}" }}, {{ destination = "warehouse" }}, {{ destination = "bigquery" }}, {{ destination = "snowflake" }}"#
            ),
            "mirror",
        );
    // Faults: lost acknowledgements and failures at the webhook receiver,
    // throttles and a lost acknowledgement at Segment, throttles at Meta.
    for _ in 0..3 {
        rx.push_after_applying(503);
        rx.push(500, None);
        segment.push(429, Some(0));
        meta.push_response(ScriptedResponse::throttle());
    }
    segment.push_after_applying(500);
    segment.push_after_applying(500);
    bigquery.fail_next_after_storing(2, 503);
    bigquery.fail_next(2, 429);
    snowflake.fail_next_after_executing(503);
    snowflake.throttle_next(429, 0);
    snowflake.async_next(2);
    snowflake.fail_next_after_executing(500);

    let app = TestApp::start_with(&cfg).await;
    let events = stream();
    // Delivered out of order within windows of five, and every tenth
    // event delivered twice (a Customer.io retry).
    let mut order: Vec<usize> = (0..events.len()).collect();
    for w in order.chunks_mut(5) {
        w.reverse();
    }
    for i in order {
        let (status, answer) = app.segment_webhook(&body(&events[i])).await;
        assert_eq!(status, 200, "{answer}");
        if i % 10 == 0 {
            app.segment_webhook(&body(&events[i])).await;
        }
    }
    let want = expected(&events);
    let members: BTreeSet<String> = want.keys().cloned().collect();
    assert!(members.len() > 5 && members.len() < 40, "{members:?}");

    // What each destination holds, against Customer.io's final state.
    let mismatches = || async {
        let table: BTreeMap<String, f64> = db
            .rows("audience_members", "person_id")
            .await
            .iter()
            .map(|r| {
                (
                    r["person_id"].as_str().unwrap().to_owned(),
                    r["lifetime_value"].as_f64().unwrap_or(-1.0),
                )
            })
            .collect();
        let hook: BTreeMap<String, f64> = rx
            .members(CART)
            .into_iter()
            .map(|id| {
                let v = rx.member(CART, &id).unwrap()["attributes"]["lifetime_value"]
                    .as_f64()
                    .unwrap_or(-1.0);
                (id, v)
            })
            .collect();
        let segment_traits: BTreeMap<String, f64> = segment
            .members(SEGMENT_KEY)
            .into_iter()
            .map(|id| {
                let v = segment
                    .traits(&id)
                    .and_then(|t| t.get("lifetime_value").and_then(Value::as_f64))
                    .unwrap_or(-1.0);
                (id, v)
            })
            .collect();
        let bq: BTreeMap<String, f64> = bigquery
            .members("changes")
            .into_iter()
            .filter(|((audience, _), _)| audience == CART)
            .map(|((_, id), r)| {
                (
                    id,
                    r.get("lifetime_value")
                        .and_then(Value::as_f64)
                        .unwrap_or(-1.0),
                )
            })
            .collect();
        let sf: BTreeMap<String, f64> = snowflake
            .members(CART)
            .into_iter()
            .map(|id| {
                let v = snowflake
                    .row(CART, &id)
                    .and_then(|r| r.get("LIFETIME_VALUE").and_then(Value::as_f64))
                    .unwrap_or(-1.0);
                (id, v)
            })
            .collect();
        let mut wrong = Vec::new();
        // Settled too: nothing pending or in flight (a batch applied but
        // not yet acknowledged is still to be retried).
        let d = app.audience(CART).await;
        for dest in d["destinations"].as_array().unwrap() {
            if dest["pending_adds"] != 0 || dest["pending_removes"] != 0 || dest["in_flight"] != 0 {
                wrong.push(format!("{} not settled", dest["destination"]));
            }
        }
        if meta.members(META_AUDIENCE) != members {
            wrong.push(format!("meta: {:?}", meta.members(META_AUDIENCE)));
        }
        for (name, held) in [
            ("warehouse", &table),
            ("webhook", &hook),
            ("segment", &segment_traits),
            ("bigquery", &bq),
            ("snowflake", &sf),
        ] {
            if *held != want {
                wrong.push(format!("{name}: {held:?}"));
            }
        }
        wrong
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let wrong = mismatches().await;
        if wrong.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let d = app.audience(CART).await;
            panic!(
                "not converged after 60 s:\nwant {want:?}\n{}\n{d:#}",
                wrong.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let d = app.audience(CART).await;
    for dest in d["destinations"].as_array().unwrap() {
        assert_eq!(dest["pending_adds"], 0, "{dest}");
        assert_eq!(dest["pending_removes"], 0, "{dest}");
        assert_eq!(dest["dead_letters"], 0, "{dest}");
    }
    assert_eq!(d["members"], members.len(), "{d}");
    // The faults happened: the receiver's and Segment's scripted answers
    // were all given, so convergence was reached through them.
    let answered =
        |statuses: Vec<u16>, status: u16| statuses.iter().filter(|s| **s == status).count();
    let rx_statuses: Vec<u16> = rx.deliveries().iter().map(|d| d.status).collect();
    assert_eq!(answered(rx_statuses.clone(), 503), 3, "{rx_statuses:?}");
    assert_eq!(answered(rx_statuses, 500), 3);
    let seg_statuses: Vec<u16> = segment.requests().iter().map(|r| r.status).collect();
    assert_eq!(answered(seg_statuses.clone(), 429), 3, "{seg_statuses:?}");
    assert_eq!(answered(seg_statuses, 500), 2);
    let bq_statuses: Vec<u16> = bigquery.requests().iter().map(|r| r.status).collect();
    assert_eq!(answered(bq_statuses.clone(), 503), 2, "{bq_statuses:?}");
    assert_eq!(answered(bq_statuses, 429), 2);
    let sf_statuses: Vec<u16> = snowflake.requests().iter().map(|r| r.status).collect();
    assert_eq!(answered(sf_statuses.clone(), 503), 1, "{sf_statuses:?}");
    assert_eq!(answered(sf_statuses.clone(), 429), 1);
    assert!(answered(sf_statuses, 202) >= 1);
    assert!(bigquery.rejected().is_empty(), "{:?}", bigquery.rejected());
    assert!(
        snowflake.rejected().is_empty(),
        "{:?}",
        snowflake.rejected()
    );
    app.stop().await;
    db.drop().await;
}
