//! The Snowflake destination through the real app against a fake of the SQL
//! API: adds, updates and exits converge in the membership table with typed
//! values; a statement resent after a lost answer keeps its requestId and
//! is not executed twice; a long statement is polled, then resubmitted;
//! the JWT is signed anew before it expires and after a 401; a table that
//! does not match the mapping pauses with Snowflake's words; exits mark or
//! delete; batches are cut to the statement limits; `koala check` names
//! every bad key without sending anything, and `koala check --online`
//! reads the table's columns without writing. First, the fake itself.

use std::time::Duration;

use koala::destinations::signed_jwt::RsaSigningKey;
use koala::destinations::snowflake::auth;
use serde_json::{json, Value};

use crate::support::app::*;
use crate::support::fake_snowflake::*;
use crate::support::wait::until;

const T0: i64 = 1_750_000_000;
const LONG: Duration = Duration::from_secs(30);
const PRIVATE_KEY: &str = include_str!("../fixtures/test-rsa-private.pem");
/// A P-256 key made for this test: a private key that is not RSA.
const EC_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgPYkPBZiBb+5cY2MK
S+3UG/bKXL4gR8ImgLeCtivD/9ShRANCAARETKOLg+nTaB3tW4sonkiY78dgycy8
rimrUrTA8WfZtvSjhUaoevleX/+qoySx8ElSNyVv5uhh7y8Eq8+UYMhy
-----END PRIVATE KEY-----";

fn config(fake: &FakeSnowflake, extra: &str) -> String {
    base_config("")
        + &fake.destination_toml("sf", extra)
        + &cart_audience(r#"{ destination = "sf" }"#, "mirror")
}

const MAP: &str = r#"map = { plan = "plan", ltv = { from = "ltv", type = "number" }, vip = { from = "vip", type = "boolean" }, last_order_at = { from = "last_order", type = "timestamp" } }"#;

fn person_body(person: &str, action: &str, at: i64, attributes: Value) -> Value {
    let mut b = segment_body(CART_SEGMENT, person, action, at);
    b["attributes"] = attributes;
    b
}

async fn acknowledged(app: &TestApp) -> i64 {
    app.audience(CART).await["destinations"][0]["acknowledged_members"]
        .as_i64()
        .unwrap_or(-1)
}

async fn paused_reason(app: &TestApp) -> Option<String> {
    let (_, d) = app.admin_get("/v1/destinations").await;
    let s = &d["destinations"][0]["status"];
    (s["paused"] == true).then(|| s["paused_reason"].as_str().unwrap_or_default().to_owned())
}

fn token(account: &str, user: &str, lifetime: u64) -> String {
    let key = RsaSigningKey::from_pem(PRIVATE_KEY).unwrap();
    let now = chrono::Utc::now().timestamp() as u64;
    let c = auth::claims(
        account,
        user,
        key.fingerprint(),
        now,
        Duration::from_secs(lifetime),
    );
    key.sign(&c).unwrap()
}

async fn submit(
    fake: &FakeSnowflake,
    query: &str,
    jwt: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/api/v2/statements{query}", fake.base_url()))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("user-agent", "koala-test/1")
        .header("x-snowflake-authorization-token-type", "KEYPAIR_JWT")
        .body(body.to_string());
    if let Some(jwt) = jwt {
        req = req.bearer_auth(jwt);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn body(statement: &str, bindings: Value) -> Value {
    json!({"statement": statement, "timeout": 60, "database": DATABASE, "schema": SCHEMA,
           "warehouse": WAREHOUSE, "bindings": bindings})
}

const MERGE: &str = "MERGE INTO \"ANALYTICS\".\"CRM\".\"AUDIENCE_MEMBERS\" AS t USING (SELECT column1::VARCHAR AS \"AUDIENCE\", column2::VARCHAR AS \"PERSON_ID\", TO_TIMESTAMP_LTZ(column3, 3) AS \"CHANGED_AT\" FROM VALUES (?, ?, ?)) AS s ON t.\"AUDIENCE\" = s.\"AUDIENCE\" AND t.\"PERSON_ID\" = s.\"PERSON_ID\" WHEN MATCHED AND s.\"CHANGED_AT\" >= t.\"UPDATED_AT\" THEN DELETE";

fn merge_bindings(person: &str) -> Value {
    json!({"1": {"type": "TEXT", "value": "aud"}, "2": {"type": "TEXT", "value": person},
           "3": {"type": "FIXED", "value": "1750000000000"}})
}

#[tokio::test]
async fn snowflake_the_fake_enforces_the_documented_contract() {
    let fake = FakeSnowflake::start().await;
    fake.create_table(QUALIFIED, &[]);
    let id = uuid::Uuid::new_v4();
    let q = format!("?requestId={id}");
    let good = token(ACCOUNT, USER, 3540);
    let ok = body(MERGE, merge_bindings("p1"));
    assert_eq!(submit(&fake, &q, None, &ok).await.0, 401, "no token");
    assert_eq!(
        submit(&fake, &q, Some(&token("OTHER", USER, 3540)), &ok)
            .await
            .0,
        401,
        "another account's issuer"
    );
    assert_eq!(
        submit(&fake, &q, Some(&token(ACCOUNT, USER, 7200)), &ok)
            .await
            .0,
        401,
        "valid for more than an hour"
    );
    assert_eq!(
        submit(&fake, "", Some(&good), &ok).await.0,
        400,
        "no requestId"
    );
    let literal = MERGE.replace("column2::VARCHAR", "'ann@example.com'");
    assert_eq!(
        submit(
            &fake,
            &q,
            Some(&good),
            &body(&literal, merge_bindings("p1"))
        )
        .await
        .0,
        400,
        "a value written into the SQL"
    );
    let mut short = merge_bindings("p1");
    short.as_object_mut().unwrap().remove("3");
    assert_eq!(
        submit(&fake, &q, Some(&good), &body(MERGE, short)).await.0,
        400,
        "bindings fewer than ?"
    );
    let (status, answer) = submit(&fake, &q, Some(&good), &ok).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["code"], "090001");
    // A resubmission with retry=true answers the first outcome.
    let (status, _) = submit(&fake, &format!("{q}&retry=true"), Some(&good), &ok).await;
    assert_eq!(status, 200);
    assert_eq!(fake.executions_of(&id.to_string()), 1);
    assert_eq!(fake.dedup_hits(), 1);
    // A table that does not exist, and a column that does not.
    let (status, answer) = submit(
        &fake,
        &format!("?requestId={}", uuid::Uuid::new_v4()),
        Some(&good),
        &body(
            &MERGE.replace("AUDIENCE_MEMBERS", "NOPE"),
            merge_bindings("p1"),
        ),
    )
    .await;
    assert_eq!((status, answer["code"].as_str()), (422, Some("002003")));
    let with_ltv = MERGE
        .replace(
            "TO_TIMESTAMP_LTZ(column3, 3)",
            "column3::FLOAT AS \"LTV\", TO_TIMESTAMP_LTZ(column4, 3)",
        )
        .replace("(?, ?, ?)", "(?, ?, ?, ?)");
    let mut b = merge_bindings("p1");
    b["3"] = json!({"type": "REAL", "value": "2.5"});
    b["4"] = json!({"type": "FIXED", "value": "1750000000000"});
    let (status, answer) = submit(
        &fake,
        &format!("?requestId={}", uuid::Uuid::new_v4()),
        Some(&good),
        &body(&with_ltv, b),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (422, Some("000904")),
        "{answer}"
    );
    assert!(answer["message"]
        .as_str()
        .unwrap()
        .contains("invalid identifier"));
    assert_eq!(fake.rejected().len(), 6, "{:?}", fake.rejected());
}

#[tokio::test]
async fn snowflake_adds_updates_and_exits_converge_in_the_table_with_typed_values() {
    let fake = FakeSnowflake::start().await;
    let app = TestApp::start_with(&config(&fake, &format!("create_table = true\n{MAP}"))).await;
    let attrs = json!({"plan": "gold", "ltv": "120.5", "vip": "yes", "last_order": 1_764_579_600});
    app.segment_webhook(&person_body("u1", "entered", T0, attrs.clone()))
        .await;
    app.segment_webhook(&person_body("u2", "entered", T0, attrs))
        .await;
    until("u1 and u2 in the table", LONG, || async {
        fake.members(CART).len() == 2
    })
    .await;
    let t = fake.table(QUALIFIED).expect("created by koala");
    let types: Vec<(&str, &str)> = t
        .columns
        .iter()
        .map(|(c, ty)| (c.as_str(), ty.as_str()))
        .collect();
    assert_eq!(
        types,
        [
            ("AUDIENCE", "VARCHAR"),
            ("PERSON_ID", "VARCHAR"),
            ("CIO_ID", "VARCHAR"),
            ("EMAIL", "VARCHAR"),
            ("LAST_ORDER_AT", "TIMESTAMP_LTZ"),
            ("LTV", "FLOAT"),
            ("PLAN", "VARCHAR"),
            ("VIP", "BOOLEAN"),
            ("ENTERED_AT", "TIMESTAMP_LTZ"),
            ("UPDATED_AT", "TIMESTAMP_LTZ"),
            ("EXITED_AT", "TIMESTAMP_LTZ"),
        ]
    );
    let row = fake.row(CART, "u1").unwrap();
    assert_eq!(row["EMAIL"], "u1@example.com");
    assert_eq!(row["CIO_ID"], "ciou1");
    assert_eq!(row["PLAN"], "gold");
    assert_eq!(row["LTV"], 120.5);
    assert_eq!(row["VIP"], true);
    assert_eq!(row["LAST_ORDER_AT"], 1_764_579_600_000i64);
    assert_eq!(row["ENTERED_AT"], T0 * 1000);
    assert_eq!(row["EXITED_AT"], Value::Null);

    // An attribute change of a current member updates its columns.
    app.segment_webhook(&person_body(
        "u1",
        "entered",
        T0 + 30,
        json!({"plan": "platinum", "ltv": 99, "vip": false}),
    ))
    .await;
    until("u1 updated", LONG, || async {
        fake.row(CART, "u1")
            .is_some_and(|r| r["PLAN"] == "platinum")
    })
    .await;
    let row = fake.row(CART, "u1").unwrap();
    assert_eq!(
        (row["LTV"].clone(), row["VIP"].clone()),
        (json!(99.0), json!(false))
    );
    assert_eq!(row["ENTERED_AT"], T0 * 1000, "still the first entry");

    // An exit marks the row (the default on_exit).
    app.segment_event(CART_SEGMENT, "u1", "exited", T0 + 60)
        .await;
    until("u1 marked exited", LONG, || async {
        fake.members(CART).iter().eq(["u2"].iter())
    })
    .await;
    let row = fake.row(CART, "u1").unwrap();
    assert_eq!(row["EXITED_AT"], (T0 + 60) * 1000);
    assert_eq!(row["UPDATED_AT"], (T0 + 60) * 1000);
    // And a re-entry clears it.
    app.segment_event(CART_SEGMENT, "u1", "entered", T0 + 90)
        .await;
    until("u1 back", LONG, || async { fake.members(CART).len() == 2 }).await;
    assert_eq!(
        fake.row(CART, "u1").unwrap()["ENTERED_AT"],
        (T0 + 90) * 1000
    );

    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());
    assert_eq!(fake.ddl_executions(), 1, "CREATE TABLE once per mapping");
    assert_eq!(fake.reexecuted_without_retry(), 0);
    for r in fake.requests() {
        let sql = r.statement.unwrap_or_default();
        assert!(
            !sql.contains("example.com") && !sql.contains("platinum"),
            "{sql}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn snowflake_on_exit_delete_removes_the_row() {
    let fake = FakeSnowflake::start().await;
    fake.create_table(QUALIFIED, &[]);
    let app = TestApp::start_with(&config(&fake, "on_exit = \"delete\"")).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 in", LONG, || async { fake.row(CART, "u1").is_some() }).await;
    app.segment_event(CART_SEGMENT, "u1", "exited", T0 + 60)
        .await;
    until("u1's row deleted", LONG, || async {
        fake.row(CART, "u1").is_none()
    })
    .await;
    let last = fake.requests().last().unwrap().statement.clone().unwrap();
    assert!(last.ends_with("THEN DELETE"), "{last}");
    assert_eq!(fake.ddl_executions(), 0, "create_table is off by default");
    app.stop().await;
}

#[tokio::test]
async fn snowflake_a_statement_resent_after_a_lost_answer_is_not_executed_twice() {
    let fake = FakeSnowflake::start().await;
    fake.create_table(QUALIFIED, &[]);
    let app = TestApp::start_with(&config(&fake, "")).await;
    // Executed, but the answer is lost (503): koala sends the same
    // statement again under the same requestId, with retry=true.
    fake.fail_next_after_executing(503);
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("acknowledged", LONG, || async {
        acknowledged(&app).await == 1
    })
    .await;
    let r = fake.requests();
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!((r[0].status, r[1].status), (503, 200));
    assert_eq!(r[0].request_id, r[1].request_id);
    assert!(!r[0].retry && r[1].retry);
    assert_eq!(fake.executions_of(r[0].request_id.as_deref().unwrap()), 1);
    assert_eq!((fake.dml_executions(), fake.dedup_hits()), (1, 1));
    assert!(fake.members(CART).contains("u1"));

    // Throttles and outages retry; the rows arrive once they pass.
    fake.throttle_next(429, 0);
    fake.fail_next(1, 503);
    app.segment_event(CART_SEGMENT, "u2", "entered", T0).await;
    until("u2 in", LONG, || async {
        fake.members(CART).contains("u2")
    })
    .await;
    let statuses: Vec<u16> = fake.requests().iter().skip(2).map(|r| r.status).collect();
    assert_eq!(statuses, [429, 503, 200]);

    // A statement Snowflake cancelled (408) goes again under a new
    // requestId, which is not answered with the cancellation.
    fake.fail_next(1, 408);
    app.segment_event(CART_SEGMENT, "u3", "entered", T0).await;
    until("u3 in", LONG, || async {
        fake.members(CART).contains("u3")
    })
    .await;
    let r: Vec<_> = fake.requests().into_iter().skip(5).collect();
    assert_eq!(r.iter().map(|r| r.status).collect::<Vec<_>>(), [408, 200]);
    assert_ne!(r[0].request_id, r[1].request_id);
    assert!(!r[1].retry);
    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());
    app.stop().await;
}

#[tokio::test]
async fn snowflake_a_long_statement_is_polled_and_resubmitted_with_its_request_id() {
    let fake = FakeSnowflake::start().await;
    fake.create_table(QUALIFIED, &[]);
    let app = TestApp::start_with(&config(&fake, "")).await;
    // 202, three polls still running, then done.
    fake.async_next(3);
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 in", LONG, || async {
        fake.members(CART).contains("u1")
    })
    .await;
    let methods: Vec<(String, u16)> = fake
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    assert_eq!(
        methods,
        [
            ("POST".to_owned(), 202),
            ("GET".to_owned(), 202),
            ("GET".to_owned(), 202),
            ("GET".to_owned(), 202),
            ("GET".to_owned(), 200)
        ]
    );
    until("acknowledged", LONG, || async {
        acknowledged(&app).await == 1
    })
    .await;

    // Longer than koala waits (request_timeout 2 s, a poll every 20 ms):
    // it gives up, retries later with the same requestId and retry=true,
    // is told the statement still runs, polls on, and it executes once.
    let before = fake.requests().len();
    fake.async_next(150);
    app.segment_event(CART_SEGMENT, "u2", "entered", T0).await;
    until("u2 in", LONG, || async {
        fake.members(CART).contains("u2")
    })
    .await;
    let posts: Vec<_> = fake
        .requests()
        .into_iter()
        .skip(before)
        .filter(|r| r.method == "POST")
        .collect();
    assert!(posts.len() >= 2, "{posts:?}");
    assert!(posts.iter().all(|p| p.request_id == posts[0].request_id));
    assert!(posts[1..].iter().all(|p| p.retry && p.status == 202));
    assert_eq!(
        fake.executions_of(posts[0].request_id.as_deref().unwrap()),
        1
    );
    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());
    app.stop().await;
}

#[tokio::test]
async fn snowflake_the_jwt_is_signed_anew_before_it_expires_and_after_a_401() {
    let fake = FakeSnowflake::start().await;
    fake.create_table(QUALIFIED, &[]);
    let app = TestApp::start_with(&config(
        &fake,
        "jwt_lifetime = \"3s\"\njwt_refresh_margin = \"1s\"",
    ))
    .await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 in", LONG, || async {
        fake.members(CART).contains("u1")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    app.segment_event(CART_SEGMENT, "u2", "entered", T0).await;
    until("u2 in", LONG, || async {
        fake.members(CART).contains("u2")
    })
    .await;
    let tokens = fake.tokens();
    assert!(tokens.len() >= 2, "{tokens:?}");
    assert!(tokens.iter().all(|t| t.exp - t.iat == 3));
    assert!(tokens[1].iat >= tokens[0].iat + 2, "{tokens:?}");
    // The fake refuses expired tokens: none was sent.
    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());

    // One 401: koala signs a new token and sends again.
    fake.fail_next(1, 401);
    app.segment_event(CART_SEGMENT, "u3", "entered", T0).await;
    until("u3 in", LONG, || async {
        fake.members(CART).contains("u3")
    })
    .await;
    // Two: the destination pauses, saying what to check.
    fake.fail_next(2, 401);
    app.segment_event(CART_SEGMENT, "u4", "entered", T0).await;
    until("paused", LONG, || async {
        paused_reason(&app).await.is_some()
    })
    .await;
    let reason = paused_reason(&app).await.unwrap();
    assert!(
        reason.contains("HTTP 401")
            && reason.contains("RSA_PUBLIC_KEY")
            && reason.contains(&fingerprint())
            && reason.contains("KOALA_SVC"),
        "{reason}"
    );
    assert!(!fake.members(CART).contains("u4"));
    app.stop().await;
}

#[tokio::test]
async fn snowflake_a_table_that_does_not_fit_the_mapping_pauses_with_a_clear_reason() {
    let fake = FakeSnowflake::start().await;
    // A table made by hand, without the mapped column LTV.
    fake.create_table(QUALIFIED, &[("PLAN", "VARCHAR")]);
    let map = r#"map = { plan = "plan", ltv = { from = "ltv", type = "number" } }"#;
    let app = TestApp::start_with(&config(&fake, map)).await;
    app.segment_webhook(&person_body(
        "u1",
        "entered",
        T0,
        json!({"plan": "gold", "ltv": 5}),
    ))
    .await;
    until("paused", LONG, || async {
        paused_reason(&app).await.is_some()
    })
    .await;
    let reason = paused_reason(&app).await.unwrap();
    assert!(
        reason.contains("000904")
            && reason.contains("invalid identifier")
            && reason.contains("LTV"),
        "{reason}"
    );
    assert!(
        reason.contains("resume") && !reason.contains("u1@"),
        "{reason}"
    );
    let d = app.audience(CART).await;
    assert_eq!(
        d["destinations"][0]["dead_letters"], 0,
        "nothing dead-lettered"
    );
    app.stop().await;

    // No table at all (and create_table off): paused, naming it.
    let fake = FakeSnowflake::start().await;
    let app = TestApp::start_with(&config(&fake, "")).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("paused", LONG, || async {
        paused_reason(&app).await.is_some()
    })
    .await;
    let reason = paused_reason(&app).await.unwrap();
    assert!(
        reason.contains("002003")
            && reason.contains(QUALIFIED)
            && reason.contains("does not exist"),
        "{reason}"
    );
    app.stop().await;
}

#[tokio::test]
async fn snowflake_a_batch_is_cut_to_the_statement_limits() {
    let fake = FakeSnowflake::start().await;
    fake.create_table(QUALIFIED, &[]);
    let app = TestApp::start_with(&config(&fake, "max_rows_per_statement = 2")).await;
    bulk_changes(
        &app,
        0..5,
        koala::customerio::segment::SegmentAction::Entered,
        T0,
    )
    .await;
    until("five in", LONG, || async { fake.members(CART).len() == 5 }).await;
    let r = fake.requests();
    assert!(r.iter().all(|r| r.rows <= 2), "{r:?}");
    assert!(r.len() >= 3);
    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());
    app.stop().await;
}

#[test]
fn snowflake_koala_check_names_every_bad_key_and_sends_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = rt.block_on(FakeSnowflake::start());
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let path = dir.path().join("koala.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_koala"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let missing = format!(
        "{}\n[[destinations]]\nname = \"sf\"\ntype = \"snowflake\"\nbase_url = \"{}\"\nallow_http = true\nprivate_key_path = \"/nonexistent/koala.p8\"\ntable = \"members;drop\"\nmap = {{ \"order count\" = \"orders\" }}\n",
        base_config(""),
        fake.base_url()
    );
    let (code, err) = check(&missing);
    assert_eq!(code, Some(1), "{err}");
    for key in [
        "destinations[0].account: required",
        "destinations[0].user: required",
        "destinations[0].database: required",
        "destinations[0].schema: required",
        "destinations[0].warehouse: required",
        "destinations[0].table: \"members;drop\" is not a usable identifier",
        "destinations[0].private_key_path: cannot read /nonexistent/koala.p8",
        "destinations[0].map.order count: not a usable Snowflake column name",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
    let ec = config(&fake, "").replace(
        &format!("private_key_path = \"{}\"", private_key_path()),
        &format!("private_key = \"\"\"{EC_KEY}\"\"\""),
    );
    let (code, err) = check(&ec);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("destinations[0].private_key: the private key is not an RSA key"),
        "{err}"
    );
    assert!(!err.contains("MIGHAgEA"), "the key is never printed: {err}");
    let (code, err) = check(&config(&fake, ""));
    assert_eq!(code, Some(0), "{err}");
    assert!(fake.requests().is_empty(), "check sends nothing");
}

/// The README's Snowflake example is a valid config, and the DDL it shows
/// is what `create_table = true` runs for that mapping.
#[test]
fn snowflake_the_readme_example_is_valid_and_its_ddl_is_what_koala_runs() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("### Snowflake (`type = \"snowflake\"`)")
        .unwrap();
    let section = &readme[start..];
    let section = &section[..section[4..].find("\n### ").unwrap() + 4];
    let block = |lang: &str| -> String {
        let open = section.find(&format!("```{lang}\n")).unwrap() + lang.len() + 4;
        section[open..open + section[open..].find("```").unwrap()].to_owned()
    };
    let toml = block("toml").replace(
        "private_key_path = \"/etc/koala/snowflake_key.p8\"",
        &format!("private_key_path = \"{}\"", private_key_path()),
    );
    let config =
        koala::config::Config::from_toml(&base_config(&toml)).expect("the example is valid");
    let entry = config.destination("warehouse").unwrap();
    let koala::config::DestinationConfig::Snowflake(sf) = &entry.platform else {
        panic!("not snowflake")
    };
    let mapping = entry.mapping(&Default::default()).unwrap();
    let ddl = koala::destinations::snowflake::encoder::Layout::new(sf, &mapping)
        .unwrap()
        .create_table();
    let shown: String = block("sql")
        .lines()
        .map(|l| l.split("--").next().unwrap())
        .collect::<String>()
        .trim_end()
        .trim_end_matches(';')
        .to_owned();
    let squash = |s: &str| s.split_whitespace().collect::<String>();
    assert_eq!(
        squash(&shown),
        squash(&ddl),
        "README:\n{shown}\nkoala:\n{ddl}"
    );
}

#[test]
fn snowflake_check_online_reads_the_columns_and_names_drift_without_writing() {
    // Its own runtime: the fake answers while the test waits for koala.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = rt.block_on(FakeSnowflake::start());
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let path = dir.path().join("koala.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_koala"))
            .args(["check", "--online", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let map = r#"map = { plan = "plan", ltv = { from = "ltv", type = "number" } }"#;

    // No table and no create_table: named.
    let (code, _, err) = check(&config(&fake, map));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "destinations.sf: snowflake table {QUALIFIED} does not exist"
        )) && err.contains("create_table = true"),
        "{err}"
    );
    // With create_table a missing table is fine, and nothing is created.
    let create = format!("create_table = true\n{map}");
    let (code, out, err) = check(&config(&fake, &create));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("destinations: ok (read, nothing sent)"),
        "{out}"
    );
    assert!(fake.table(QUALIFIED).is_none());

    // Made by hand for an earlier mapping: LTV a NUMBER, no PLAN.
    fake.create_table(QUALIFIED, &[("LTV", "NUMBER")]);
    let (code, _, err) = check(&config(&fake, map));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "snowflake table {QUALIFIED} column LTV is NUMBER, but koala writes FLOAT"
        )),
        "{err}"
    );
    assert!(
        err.contains(
            "has no column PLAN, which koala writes: add it (ALTER TABLE \"ANALYTICS\".\"CRM\".\"AUDIENCE_MEMBERS\" ADD COLUMN \"PLAN\" VARCHAR) or take it out of map"
        ),
        "{err}"
    );
    assert!(err.contains("destinations: 2 problem(s)"), "{err}");
    // Fixed: it fits.
    fake.create_table(QUALIFIED, &[("LTV", "FLOAT"), ("PLAN", "VARCHAR")]);
    let (code, out, err) = check(&config(&fake, map));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("destinations: ok"), "{out}");

    // Only SELECTs ran: no MERGE, no CREATE, nothing refused.
    let statements: Vec<String> = fake
        .requests()
        .into_iter()
        .filter_map(|r| r.statement)
        .collect();
    assert_eq!(statements.len(), 4, "{statements:?}");
    assert!(
        statements.iter().all(|s| s.starts_with("SELECT ")),
        "{statements:?}"
    );
    assert_eq!((fake.dml_executions(), fake.ddl_executions()), (0, 0));
    assert!(fake.table(QUALIFIED).unwrap().rows.is_empty());
    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());

    // A table as koala's own create_table makes it fits (NOT NULL where
    // koala always writes).
    let fresh = rt.block_on(FakeSnowflake::start());
    let text = config(&fresh, &create);
    let parsed = koala::config::Config::from_toml(&text).unwrap();
    let entry = parsed.destination("sf").unwrap();
    let koala::config::DestinationConfig::Snowflake(sf) = &entry.platform else {
        panic!("not snowflake")
    };
    let mapping = entry.mapping(&Default::default()).unwrap();
    let ddl = koala::destinations::snowflake::encoder::Layout::new(sf, &mapping)
        .unwrap()
        .create_table();
    let (status, answer) = rt.block_on(submit(
        &fresh,
        &format!("?requestId={}", uuid::Uuid::new_v4()),
        Some(&token(ACCOUNT, USER, 3540)),
        &body(&ddl, json!({})),
    ));
    assert_eq!(status, 200, "{answer}");
    assert!(fresh
        .table(QUALIFIED)
        .unwrap()
        .not_null
        .contains(&"UPDATED_AT".to_owned()));
    let (code, _, err) = check(&config(&fresh, map));
    assert_eq!(code, Some(0), "{err}");

    // A key the user does not have: the user is named, never the key.
    let other =
        config(&fake, map).replace(&format!("user = \"{USER}\""), "user = \"someone_else\"");
    let (code, _, err) = check(&other);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "user SOMEONE_ELSE could not read the columns of table {QUALIFIED}"
        )) && err.contains("HTTP 401")
            && err.contains("RSA_PUBLIC_KEY"),
        "{err}"
    );
    let key_line = PRIVATE_KEY.lines().nth(1).unwrap();
    assert!(
        !err.contains(key_line) && !err.contains("PRIVATE KEY"),
        "{err}"
    );
    // Refused (403).
    fake.fail_next(1, 403);
    let (_, _, err) = check(&config(&fake, map));
    assert!(
        err.contains(&format!(
            "user {} could not read",
            USER.to_ascii_uppercase()
        )) && err.contains("network policies"),
        "{err}"
    );
    // Snowflake unreachable.
    let down = config(&fake, map).replace(
        &format!("base_url = \"{}\"", fake.base_url()),
        "base_url = \"http://127.0.0.1:9\"",
    );
    let (code, _, err) = check(&down);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "could not reach Snowflake to read the columns of table {QUALIFIED}"
        )),
        "{err}"
    );
    assert_eq!((fake.dml_executions(), fake.ddl_executions()), (0, 0));
}
