//! Retention with a simulated clock: twelve days of traffic are written
//! through the store's own group commit at their simulated arrival times
//! (ending now), a pruning pass runs at the end of each day, and what an
//! operator or Customer.io then sees is checked: duplicates within the
//! window still answered as duplicates, old history gone except each
//! membership's own event, settled non-member rows compacted yet a
//! re-entry still sent, every maintained count exact, and a file that
//! stops growing once the retention windows are full.

use std::collections::BTreeMap;
use std::time::Duration;

use koala::store::retention::{PruneTable, RetentionRules};
use koala::store::IngestCommand;
use serde_json::{json, Value};
use sqlx::{Row, SqlitePool};

use crate::support::app::*;
use crate::support::wait::until;

const DAY_MS: i64 = 24 * 3600 * 1000;
const DAYS: i64 = 12;
const PEOPLE: i64 = 300;
const LONG: Duration = Duration::from_secs(60);

fn config(out: &std::path::Path, retention: &str) -> String {
    base_config(&format!(
        r#"
[retention]
{retention}
[[destinations]]
name = "files"
type = "file"
directory = "{}"
"#,
        out.display()
    )) + &cart_audience(r#"{ destination = "files" }"#, "mirror")
}

fn segment_command(app: &TestApp, person: &str, action: &str, at_ms: i64) -> IngestCommand {
    let state = app.app.as_ref().unwrap().state();
    let body =
        serde_json::to_vec(&segment_body(CART_SEGMENT, person, action, at_ms / 1000)).unwrap();
    let event = koala::customerio::segment::parse(&body, &state.phone_rules).unwrap();
    IngestCommand::Segment {
        audiences: state.catalog.for_segment(CART_SEGMENT).to_vec(),
        event,
    }
}

fn opened(app: &TestApp, n: i64, person: &str, at_ms: i64) -> IngestCommand {
    let state = app.app.as_ref().unwrap().state();
    let body = serde_json::to_vec(&reporting_body(
        &format!("open-{n}"),
        "email",
        "opened",
        person,
        at_ms / 1000,
    ))
    .unwrap();
    IngestCommand::Reporting(
        koala::customerio::reporting::parse(&body, &state.phone_rules).unwrap(),
    )
}

fn reporting_body(id: &str, object_type: &str, metric: &str, person: &str, at: i64) -> Value {
    json!({"event_id": id, "object_type": object_type, "metric": metric, "timestamp": at,
           "data": {"identifiers": {"id": person}, "delivery_id": format!("d-{id}")}})
}

/// Commits `commands` as webhooks arriving at `received_at_ms`, the way the
/// ingest writer does, then wakes the engine.
async fn arrive(app: &TestApp, commands: &[IngestCommand], received_at_ms: i64) {
    let state = app.app.as_ref().unwrap().state();
    for chunk in commands.chunks(500) {
        for r in state
            .store
            .apply_batch(chunk, received_at_ms)
            .await
            .unwrap()
        {
            r.unwrap();
        }
    }
    state.engine.wake_all();
}

async fn settled(app: &TestApp) {
    until("the file destination caught up", LONG, || async {
        let a = app.audience(CART).await;
        let d = &a["destinations"][0];
        d["pending_adds"] == 0 && d["pending_removes"] == 0 && d["in_flight"] == 0
    })
    .await;
}

async fn db(app: &TestApp) -> SqlitePool {
    let path = app.dir.path().join("koala.db");
    SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .unwrap()
}

async fn one(db: &SqlitePool, sql: &str) -> i64 {
    sqlx::query(sql).fetch_one(db).await.unwrap().get(0)
}

fn log(out: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(out.join(format!("{CART}.jsonl")))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Everything `GET /v1/audiences` says that a pass must leave unchanged.
async fn audiences(app: &TestApp) -> Value {
    app.admin_get("/v1/audiences").await.1
}

#[tokio::test]
async fn twelve_days_of_traffic_are_pruned_to_their_retention_and_every_count_stays_exact() {
    let out = tempfile::tempdir().unwrap();
    // Events kept 2 days; dedupe keys the default 8 (the signature window).
    let app = TestApp::start_with(&config(out.path(), "events = \"2d\"")).await;
    let state = app.app.as_ref().unwrap().state();
    let rules = RetentionRules::from_config(&state.config);
    assert_eq!(rules.dedupe_keys, Duration::from_secs(8 * 24 * 3600));
    // Whole seconds: webhooks carry their time in seconds.
    let end = koala::store::now_ms() / 1000 * 1000;
    let day_start = |d: i64| end - (DAYS - d) * DAY_MS;
    let db = db(&app).await;

    // Day d: 100 people enter and 60 others exit (a rotating window over
    // 300 people), 2,000 email opens are reported; "steady" enters on day
    // 0 and never changes again. A pass runs at the end of every day.
    let mut pages = Vec::new();
    let mut sent: BTreeMap<i64, Vec<(String, &str, i64)>> = BTreeMap::new();
    for d in 0..DAYS {
        let t = day_start(d);
        let mut commands = Vec::new();
        if d == 0 {
            commands.push(segment_command(&app, "steady", "entered", t));
        }
        for k in 0..100 {
            let person = format!("p{}", (d * 50 + k) % PEOPLE);
            let at = t + k * 1000;
            commands.push(segment_command(&app, &person, "entered", at));
            sent.entry(d).or_default().push((person, "entered", at));
        }
        for k in 0..60 {
            let person = format!("p{}", (d * 50 + 150 + k) % PEOPLE);
            let at = t + 3_600_000 + k * 1000;
            commands.push(segment_command(&app, &person, "exited", at));
            sent.entry(d).or_default().push((person, "exited", at));
        }
        for n in 0..2_000 {
            commands.push(opened(
                &app,
                d * 10_000 + n,
                &format!("p{}", n % PEOPLE),
                t + 7_200_000,
            ));
        }
        arrive(&app, &commands, t + 7_200_000).await;
        settled(&app).await;
        let report = koala::pruning::run_pass(&*state.store, &rules, t + DAY_MS - 1, None)
            .await
            .unwrap();
        if d >= 3 {
            assert!(
                report.deleted(PruneTable::Events) > 0,
                "day {d}: {report:?}"
            );
        }
        pages.push(one(&db, "SELECT page_count FROM pragma_page_count()").await);
    }

    // The last pass, at the end of the simulated time (now).
    let before = audiences(&app).await;
    let report = koala::pruning::run_pass(&*state.store, &rules, end, None)
        .await
        .unwrap();
    let cutoffs = rules.cutoffs(end);

    // Every maintained count is what it was, and what a recount says.
    assert_eq!(audiences(&app).await, before, "a pass changes no count");
    let cart = app.audience(CART).await;
    let members = one(
        &db,
        "SELECT COUNT(*) FROM memberships m JOIN audiences a USING (audience_id)
                            WHERE a.name LIKE 'CIO__Cart%' AND m.is_member",
    )
    .await;
    assert_eq!(cart["members"], members);
    let with_email = one(&db, "SELECT COUNT(*) FROM memberships m JOIN people p USING (person_id)
                               JOIN audiences a USING (audience_id)
                               WHERE a.name LIKE 'CIO__Cart%' AND m.is_member AND p.email IS NOT NULL").await;
    assert_eq!(cart["identifier_coverage"]["with_email"], with_email);
    let files = &cart["destinations"][0];
    assert_eq!(files["acknowledged_members"], members, "{cart}");
    assert_eq!(
        one(&db, "SELECT COUNT(*) FROM sync_state WHERE acked").await,
        members
    );
    assert_eq!(files["pending_adds"], 0);
    assert_eq!(files["dead_letters"], 0);

    // Dedupe keys: none older than the cutoff; those within it answer.
    assert_eq!(
        one(
            &db,
            &format!(
                "SELECT COUNT(*) FROM received WHERE received_at < {}",
                cutoffs.dedupe_keys_before
            )
        )
        .await,
        0
    );
    assert_eq!(
        report.deleted(PruneTable::Events),
        0,
        "the day's pass left nothing: {report:?}"
    );
    let (person, action, at) = sent[&(DAYS - 3)][7].clone();
    let (status, again) = app
        .segment_event(CART_SEGMENT, &person, action, at / 1000)
        .await;
    assert_eq!(
        (status, again["status"].as_str()),
        (200, Some("duplicate")),
        "{again}"
    );
    // A delivery from 11 days ago is past every retry and signature
    // window: its key is gone, and koala takes it as new (here: stale,
    // the person has changed since).
    let (person, action, at) = sent[&1][0].clone();
    let (_, late) = app
        .segment_event(CART_SEGMENT, &person, action, at / 1000)
        .await;
    assert_eq!(late["status"], "accepted", "{late}");
    assert_eq!(late["audiences"][0]["outcome"], "stale", "{late}");

    // Events: nothing older than the cutoff but each membership's own.
    let stray = one(
        &db,
        &format!(
            "SELECT COUNT(*) FROM events e WHERE e.received_at < {}
               AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.audience_id = e.audience_id
                               AND m.person_id = e.person_id AND m.event_id = e.event_id)
               AND e.event_id < (SELECT MAX(event_id) FROM events)",
            cutoffs.events_received_before
        ),
    )
    .await;
    assert_eq!(stray, 0);
    let (_, steady) = app.admin_get("/v1/people/steady").await;
    let set_by = steady["memberships"][0]["set_by_event"].clone();
    assert_eq!(steady["memberships"][0]["is_member"], true);
    let history = steady["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{steady}");
    assert_eq!(history[0]["event_id"], set_by);
    assert_eq!(history[0]["kind"], "entered");
    assert_eq!(history[0]["occurred_at"], day_start(0));
    // The changes endpoint says from when its history is whole.
    let (_, changes) = app
        .admin_get(&format!("/v1/audiences/{CART}/changes?since=14d&bucket=1d"))
        .await;
    let kept_since = changes["history_kept_since"].as_i64().unwrap();
    assert!(
        (kept_since - (koala::store::now_ms() - 2 * DAY_MS)).abs() < 60_000,
        "{changes}"
    );

    // Sync rows: non-members the destination removed have none left.
    let non_member_rows = one(
        &db,
        "SELECT COUNT(*) FROM sync_state s JOIN memberships m
           ON m.audience_id = s.audience_id AND m.person_id = s.person_id
         WHERE NOT m.is_member AND s.sync_id < (SELECT MAX(sync_id) FROM sync_state)",
    )
    .await;
    assert_eq!(non_member_rows, 0);
    let gone: String = sqlx::query(
        "SELECT p.customer_id FROM memberships m JOIN people p USING (person_id)
         WHERE NOT m.is_member AND NOT EXISTS (SELECT 1 FROM sync_state s WHERE s.person_id = m.person_id)
         ORDER BY p.person_id LIMIT 1",
    )
    .fetch_one(&db)
    .await
    .unwrap()
    .get(0);
    let (_, view) = app.admin_get(&format!("/v1/people/{gone}")).await;
    assert_eq!(view["destinations"], json!([]), "{view}");
    assert_eq!(view["memberships"][0]["is_member"], false);
    // … and a re-entry is still sent to the destination as an add.
    let adds_before = log(out.path())
        .iter()
        .filter(|l| l["op"] == "add" && l["id"] == gone.as_str())
        .count();
    let (_, entered) = app
        .segment_event(CART_SEGMENT, &gone, "entered", end / 1000)
        .await;
    assert_eq!(entered["audiences"][0]["outcome"], "applied", "{entered}");
    until(
        "the re-entry reaches the file destination",
        LONG,
        || async {
            log(out.path())
                .iter()
                .filter(|l| l["op"] == "add" && l["id"] == gone.as_str())
                .count()
                == adds_before + 1
        },
    )
    .await;
    settled(&app).await;
    let cart = app.audience(CART).await;
    assert_eq!(cart["members"], members + 1);
    assert_eq!(cart["destinations"][0]["acknowledged_members"], members + 1);

    // Disk: once the windows are full (8 days of keys), deleted pages are
    // reused and the file stops growing. Day 1 shows what a day adds when
    // nothing is old enough to go yet.
    let unpruned_day = pages[1] - pages[0];
    let free = one(&db, "SELECT freelist_count FROM pragma_freelist_count()").await;
    eprintln!("page_count by day: {pages:?}; free pages now {free}");
    assert!(unpruned_day > 50, "{pages:?}");
    assert!(
        pages[DAYS as usize - 1] - pages[8] < unpruned_day / 2,
        "after day 8 three days of traffic grow the file by less than half a day's: {pages:?}"
    );
    let auto_vacuum = one(&db, "SELECT auto_vacuum FROM pragma_auto_vacuum()").await;
    assert_eq!(
        auto_vacuum, 0,
        "no auto-vacuum: freed pages are reused, the file never shrinks"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_background_task_prunes_every_interval_and_reports_it() {
    let out = tempfile::tempdir().unwrap();
    let app = TestApp::start_with(&config(
        out.path(),
        "events = \"1d\"\ninterval = \"1s\"\nbatch_size = 7",
    ))
    .await;
    // A hundred opens that arrived 30 days ago, and one today.
    let old = koala::store::now_ms() - 30 * DAY_MS;
    let commands: Vec<_> = (0..100).map(|n| opened(&app, n, "u1", old)).collect();
    arrive(&app, &commands, old).await;
    arrive(
        &app,
        &[opened(&app, 1_000, "u1", koala::store::now_ms())],
        koala::store::now_ms(),
    )
    .await;
    until(
        "the opens of 30 days ago and their keys are pruned",
        LONG,
        || async {
            let m = app.metrics().await;
            let pruned =
                |table| metric_value(&m, "koala_store_pruned_rows_total", &[("table", table)]);
            pruned("events") == 100.0 && pruned("received") == 100.0
        },
    )
    .await;
    let (_, person) = app.admin_get("/v1/people/u1").await;
    assert_eq!(person["history"].as_array().unwrap().len(), 1, "{person}");
    let m = app.metrics().await;
    assert!(
        metric_value(&m, "koala_store_prune_last_pass_timestamp_seconds", &[]) > 0.0,
        "{m}"
    );
    assert!(metric_value(&m, "koala_store_size_bytes", &[]) > 0.0);
    app.stop().await;
}

#[tokio::test]
async fn with_used_only_reporting_events_a_rule_uses_are_stored() {
    let out = tempfile::tempdir().unwrap();
    let app = TestApp::start_with(&config(out.path(), "store_reporting_events = \"used\"")).await;
    let at = koala::store::now_ms() / 1000;
    let (status, open) = app
        .reporting_webhook(&reporting_body("r1", "email", "opened", "u1", at))
        .await;
    assert_eq!(
        (status, open["status"].as_str()),
        (200, Some("ignored")),
        "{open}"
    );
    assert!(
        open["reason"].as_str().unwrap().contains("email.opened"),
        "{open}"
    );
    // Not stored: nothing to deduplicate either, it is counted again.
    app.reporting_webhook(&reporting_body("r1", "email", "opened", "u1", at))
        .await;
    assert_eq!(
        app.admin_get("/v1/people/u1").await.0,
        404,
        "no person from an open"
    );
    let (_, unsubscribed) = app
        .reporting_webhook(&reporting_body("r2", "customer", "unsubscribed", "u1", at))
        .await;
    assert_eq!(unsubscribed["status"], "accepted");
    let (_, person) = app.admin_get("/v1/people/u1").await;
    assert_eq!(person["subscription"]["subscribed"], false);
    assert_eq!(person["history"].as_array().unwrap().len(), 1, "{person}");
    let m = app.metrics().await;
    let labels = [("object_type", "email"), ("metric", "opened")];
    assert_eq!(
        metric_value(&m, "koala_reporting_events_not_stored_total", &labels),
        2.0
    );
    assert_eq!(
        metric_value(&m, "koala_reporting_events_total", &labels),
        0.0
    );
    app.stop().await;
}
