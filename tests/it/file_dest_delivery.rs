//! The file destination through the real app: entries and exits reach
//! both files, retries change nothing, an unwritable directory pauses;
//! and the quickstart (examples/koala.toml + `koala simulate`) shows
//! members arriving at a destination without any account.

use std::path::Path;
use std::time::Duration;

use koala::audiences::{AudienceDef, SyncOp};
use koala::destinations::file::{FileConfig, FileDestination, DELIVERY};
use koala::destinations::{Destination, Mapping, SendOutcome, SendTarget};
use koala::person::PersonRecord;
use serde_json::{json, Value};

use crate::support::app::*;
use crate::support::wait::until;

const T0: i64 = 1_750_000_000;
const LONG: Duration = Duration::from_secs(30);

fn config(dir: &Path) -> String {
    base_config(&format!(
        r#"
[[destinations]]
name = "files"
type = "file"
directory = "{}"
map = {{ plan = "plan" }}
base_backoff = "20ms"
max_backoff = "200ms"
"#,
        dir.display()
    )) + &cart_audience(r#"{ destination = "files" }"#, "mirror")
}

fn members(dir: &Path) -> Value {
    std::fs::read(dir.join(format!("{CART}.members.json")))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn log(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join(format!("{CART}.jsonl")))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(v: &Value) -> Vec<String> {
    v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn file_dest_entries_and_exits_reach_both_files() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("out/nested");
    let app = TestApp::start_with(&config(&dir)).await;
    for p in ["u1", "u2", "u3"] {
        app.segment_event(CART_SEGMENT, p, "entered", T0).await;
    }
    until("three members", LONG, || async {
        members(&dir)["count"] == 3
    })
    .await;
    app.segment_event(CART_SEGMENT, "u2", "exited", T0 + 60)
        .await;
    until("u2 removed", LONG, || async {
        ids(&members(&dir)) == ["u1", "u3"]
    })
    .await;
    let m = members(&dir);
    assert_eq!(m["audience"], CART);
    assert_eq!(m["members"][0]["email"], "u1@example.com");
    assert_eq!(m["members"][0]["attributes"], json!({"plan": "gold"}));
    let lines = log(&dir);
    let ops: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["op"].as_str().unwrap(), l["id"].as_str().unwrap()))
        .collect();
    assert_eq!(ops.len(), 4, "{ops:?}");
    assert_eq!(ops[3], ("remove", "u2"));
    assert!(lines
        .iter()
        .all(|l| chrono::DateTime::parse_from_rfc3339(l["at"].as_str().unwrap()).is_ok()));
    app.stop().await;
}

#[tokio::test]
async fn file_dest_a_retried_batch_changes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let dest = FileDestination::new(
        "files",
        FileConfig::new(t.path().display().to_string()),
        DELIVERY,
    );
    let def = AudienceDef {
        id: 1,
        name: CART.into(),
        segment_id: CART_SEGMENT,
        mode: Default::default(),
        destinations: vec!["files".into()],
    };
    let mapping = Mapping::resolve(&[], true, &[]).unwrap();
    let target = SendTarget {
        audience: &def,
        platform_audience_id: CART,
        mapping: &mapping,
        changed_at: &[],
    };
    let people: Vec<PersonRecord> = (1..=3)
        .map(|i| PersonRecord {
            person_id: i,
            customer_id: Some(format!("u{i}")),
            email: Some(format!("u{i}@example.com")),
            ..Default::default()
        })
        .collect();
    let ok = SendOutcome::Success {
        received: 3,
        invalid: 0,
    };
    assert_eq!(dest.send(&target, SyncOp::Add, &people).await, ok);
    let (m1, l1) = (members(t.path()), log(t.path()));
    assert_eq!(dest.send(&target, SyncOp::Add, &people).await, ok);
    assert_eq!(members(t.path())["members"], m1["members"]);
    assert_eq!(log(t.path()), l1);
    assert_eq!(l1.len(), 3);
    assert_eq!(
        dest.send(&target, SyncOp::Remove, &people[..1]).await,
        SendOutcome::Success {
            received: 1,
            invalid: 0
        }
    );
    assert_eq!(
        dest.send(&target, SyncOp::Remove, &people[..1]).await,
        SendOutcome::Success {
            received: 1,
            invalid: 0
        }
    );
    assert_eq!(ids(&members(t.path())), ["u2", "u3"]);
    assert_eq!(log(t.path()).len(), 4);
}

#[tokio::test]
async fn file_dest_an_unwritable_directory_pauses_naming_the_path() {
    let t = tempfile::tempdir().unwrap();
    let blocker = t.path().join("blocker");
    std::fs::write(&blocker, "a file, not a directory").unwrap();
    let dir = blocker.join("out");
    let app = TestApp::start_with(&config(&dir)).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    let reason = app.paused_reason().await;
    assert!(reason.contains(&dir.display().to_string()), "{reason}");
    assert!(!reason.contains("u1@"), "{reason}");
    app.stop().await;
}

/// The README's quickstart: `koala check` accepts examples/koala.toml, and
/// `koala simulate` against it ends by showing what the file destination
/// holds.
#[tokio::test]
async fn file_dest_the_quickstart_shows_members_arriving_and_leaving() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/koala.toml"))
            .unwrap();
    let check = tokio::process::Command::new(env!("CARGO_BIN_EXE_koala"))
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/koala.toml"),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("1 destination(s)"));

    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    assert!(example.contains(r#"directory = "data/out""#));
    let text = example.replace(
        r#"directory = "data/out""#,
        &format!("directory = {:?}", out.display().to_string()),
    );
    let app = TestApp::start_with(&text).await;
    let path = t.path().join("koala.toml");
    std::fs::write(&path, &text).unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(["simulate", "--config"])
        .arg(&path)
        .args(["--url", &app.base, "--people", "20", "--exits", "5"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("holds 15 members"), "{stdout}");
    assert!(stdout.contains("***@example.com"), "{stdout}");
    assert!(
        !stdout.contains("-1@example.com"),
        "emails are masked: {stdout}"
    );
    let m: Value = serde_json::from_slice(
        &std::fs::read(out.join("CIO__CartAbandon__0-4h__NoPurchase.members.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["count"], 15);
    let removes = std::fs::read_to_string(out.join("CIO__CartAbandon__0-4h__NoPurchase.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains(r#""op":"remove""#))
        .count();
    assert!(removes <= 5);
    app.stop().await;
}
