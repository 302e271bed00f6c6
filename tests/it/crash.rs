//! kill -9 at any moment: the real binary is killed mid-delivery and
//! restarted, and the destination still converges to the exact audience.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::app::*;
use crate::support::fake_meta::*;
use crate::support::wait::until;

const AUD: &str = "23850000000000";

struct Koala {
    child: Child,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn spawn_koala(config: &std::path::Path, port: u16) -> Koala {
    spawn_koala_logging(config, port, "warn", None).await
}

/// Starts the real binary; with `log`, its output goes to that file.
async fn spawn_koala_logging(
    config: &std::path::Path,
    port: u16,
    level: &str,
    log: Option<&std::path::Path>,
) -> Koala {
    let output = || match log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap(),
        ),
        None => Stdio::null(),
    };
    let child = Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(["serve", "--config"])
        .arg(config)
        .env("KOALA_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("KOALA_LOG", level)
        .stdout(output())
        .stderr(output())
        .spawn()
        .expect("koala starts");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    until("koala is up", Duration::from_secs(30), || {
        let url = format!("{base}/healthz");
        let http = http.clone();
        async move { http.get(url).send().await.is_ok() }
    })
    .await;
    Koala { child, base }
}

async fn post(base: &str, body: &serde_json::Value) -> bool {
    let bytes = serde_json::to_vec(body).unwrap();
    let url = format!("{base}/webhooks/customerio/segments");
    let r = signed_post(&reqwest::Client::new(), &url, WEBHOOK_KEY, &bytes)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    matches!(r, Ok(r) if r.status().is_success())
}

fn write_config(
    dir: &tempfile::TempDir,
    fake: &FakeMeta,
    destination_extra: &str,
) -> std::path::PathBuf {
    let path = dir.path().join("koala.toml");
    let text = format!(
        "[store]\nurl = \"sqlite://{}/koala.db\"\n",
        dir.path().display()
    ) + &base_config("")
        + &fake.destination_toml("meta", destination_extra)
        + &cart_audience(
            &format!(r#"{{ destination = "meta", audience_id = "{AUD}" }}"#),
            "mirror",
        );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn a_run_killed_mid_delivery_and_restarted_converges_to_the_exact_audience() {
    let fake = FakeMeta::start().await;
    fake.set_latency(Duration::from_millis(30));
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(&dir, &fake, "max_batch = 25\nconcurrency = 2");

    // 300 people enter; the first 100 exit later. Expected: p100..p299.
    let t0 = 1_750_000_000;
    let mut events: Vec<_> = (0..300)
        .map(|i| segment_body(CART_SEGMENT, &format!("p{i}"), "entered", t0))
        .collect();
    events
        .extend((0..100).map(|i| segment_body(CART_SEGMENT, &format!("p{i}"), "exited", t0 + 60)));

    let port = free_port();
    let mut koala = spawn_koala(&config_path, port).await;
    let mut kills = 0;
    let mut i = 0;
    while i < events.len() {
        if (i == 120 || i == 330) && kills < 2 {
            // kill -9 while requests are in flight.
            until("deliveries in flight", Duration::from_secs(30), || async {
                fake.request_count() > 0
            })
            .await;
            koala.child.kill().unwrap();
            koala.child.wait().unwrap();
            kills += 1;
            koala = spawn_koala(&config_path, port).await;
        }
        // Customer.io retries until it gets a 2xx.
        while !post(&koala.base, &events[i]).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        i += 1;
    }
    let expected: BTreeSet<String> = (100..300).map(|i| format!("p{i}")).collect();
    until(
        "the fake audience equals the segment",
        Duration::from_secs(60),
        || async { fake.members(AUD) == expected },
    )
    .await;
    koala.child.kill().unwrap();
    koala.child.wait().unwrap();
    assert_eq!(kills, 2);
}

#[tokio::test]
async fn sigterm_stops_taking_webhooks_finishes_requests_in_flight_and_exits() {
    let fake = FakeMeta::start().await;
    fake.set_latency(Duration::from_millis(700));
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(&dir, &fake, "");
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("[server]", "[server]\nshutdown_grace = \"5s\"");
    std::fs::write(&config_path, text).unwrap();
    let port = free_port();
    let mut koala = spawn_koala(&config_path, port).await;
    assert!(
        post(
            &koala.base,
            &segment_body(CART_SEGMENT, "u1", "entered", 1_750_000_000)
        )
        .await
    );
    // The add is now in flight (the fake takes 700 ms to answer).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = koala.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exited = tokio::task::spawn_blocking(move || koala.child.wait().unwrap())
        .await
        .unwrap();
    assert!(exited.success(), "{exited:?}");
    // The request in flight was finished, not abandoned.
    assert!(fake.members(AUD).contains("u1"));
    assert!(
        !post(
            &format!("http://127.0.0.1:{port}"),
            &segment_body(CART_SEGMENT, "u2", "entered", 1_750_000_000)
        )
        .await
    );
}

#[tokio::test]
async fn sighup_with_a_fixed_token_resumes_a_paused_destination() {
    let fake = FakeMeta::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(&dir, &fake, "");
    let good = std::fs::read_to_string(&config_path).unwrap();
    // Start with an expired token: Meta answers code 190, koala pauses.
    std::fs::write(
        &config_path,
        good.replace(FAKE_META_TOKEN, "expired-token-0123"),
    )
    .unwrap();
    let port = free_port();
    let mut koala = spawn_koala(&config_path, port).await;
    assert!(
        post(
            &koala.base,
            &segment_body(CART_SEGMENT, "u1", "entered", 1_750_000_000)
        )
        .await
    );
    let http = reqwest::Client::new();
    let paused = || async {
        let v: serde_json::Value = http
            .get(format!("{}/v1/destinations", koala.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["destinations"][0]["status"]["paused"] == true
    };
    until(
        "paused on the expired token",
        Duration::from_secs(30),
        paused,
    )
    .await;
    assert!(fake.members(AUD).is_empty());

    // The operator fixes the token in the file and sends SIGHUP.
    std::fs::write(&config_path, &good).unwrap();
    let pid = koala.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    until(
        "u1 delivered with the new token",
        Duration::from_secs(30),
        || async { fake.members(AUD).contains("u1") },
    )
    .await;
    koala.child.kill().unwrap();
    koala.child.wait().unwrap();
}

#[tokio::test]
async fn emails_and_phones_never_reach_the_logs_even_at_debug_level() {
    let fake = FakeMeta::start().await;
    fake.push_response(ScriptedResponse::invalid_parameter());
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(&dir, &fake, "");
    let port = free_port();
    let log = dir.path().join("koala.log");
    let mut koala = spawn_koala_logging(&config_path, port, "debug", Some(&log)).await;
    let base = koala.base.clone();
    let body = serde_json::json!({"segment_id": CART_SEGMENT, "action": "entered", "occurred_at": 1_750_000_000,
        "identifiers": {"id": "u1", "email": "Secret.Person@Example.com", "phone": "+14155550199"},
        "attributes": {"first_name": "Zebulon"}});
    assert!(post(&base, &body).await);
    // A dead letter and a lookup by email exercise the error and admin paths.
    until("dead letter", Duration::from_secs(30), || async {
        fake.request_count() >= 1
    })
    .await;
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/people/secret.person@example.com"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    koala.child.kill().unwrap();
    koala.child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("DEBUG") || text.contains("INFO"),
        "the log was written: {text}"
    );
    for secret in ["secret.person", "Secret.Person", "4155550199", "Zebulon"] {
        assert!(!text.contains(secret), "{secret} reached the log:\n{text}");
    }
}

/// 400, 413 and 422 used to leave no trace; now every refused webhook is
/// logged once at warn with its status, reason and the offending field's
/// name — never the field's value.
#[tokio::test]
async fn every_refused_webhook_is_logged_once_with_reason_and_field_but_no_value() {
    let fake = FakeMeta::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(&dir, &fake, "");
    let port = free_port();
    let log = dir.path().join("koala.log");
    let mut koala = spawn_koala_logging(&config_path, port, "warn", Some(&log)).await;
    let base = koala.base.clone();
    let url = format!("{base}/webhooks/customerio/segments");
    let send = |body: Vec<u8>, key: &'static str| {
        let url = url.clone();
        async move {
            signed_post(&reqwest::Client::new(), &url, key, &body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let wrong_shape = json(
        serde_json::json!({"segment_id": CART_SEGMENT, "action": "leaked.person@example.com",
        "occurred_at": 1_750_000_000, "identifiers": {"id": "u1"}}),
    );
    assert_eq!(send(wrong_shape, WEBHOOK_KEY).await, 400);
    let nobody = json(
        serde_json::json!({"segment_id": CART_SEGMENT, "action": "entered",
        "occurred_at": 1_750_000_000, "identifiers": {"phone": "4155550177"}}),
    );
    assert_eq!(send(nobody, WEBHOOK_KEY).await, 422);
    assert_eq!(send(vec![b' '; 2 << 20], WEBHOOK_KEY).await, 413);
    assert_eq!(send(b"{}".to_vec(), "not-the-key").await, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    koala.child.kill().unwrap();
    koala.child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let refusals: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("webhook refused"))
        .collect();
    assert_eq!(refusals.len(), 4, "{text}");
    for (status, reason, field) in [
        ("400", "wrong_shape", "action"),
        ("422", "no_identifier", "identifiers"),
        ("413", "too_large", "-"),
        ("401", "signature_mismatch", "-"),
    ] {
        assert!(
            refusals.iter().any(|l| {
                let l = l.replace('"', "");
                l.contains(&format!("status={status}"))
                    && l.contains(&format!("reason={reason}"))
                    && l.contains(&format!("field={field}"))
            }),
            "{status} {reason} {field}: {text}"
        );
    }
    for secret in ["leaked.person", "4155550177"] {
        assert!(!text.contains(secret), "{secret} reached the log:\n{text}");
    }
}
