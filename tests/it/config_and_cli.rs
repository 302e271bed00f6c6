//! The `koala` binary: `check` names every problem by key; `--help` explains.

use std::process::Command;

fn koala() -> Command {
    Command::new(env!("CARGO_BIN_EXE_koala"))
}

fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("koala.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, &crate::support::app::base_config(""));
    let out = koala()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn check_names_every_problem_by_key_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        r#"
[server]
admin_token = "short"
[customerio]
webhook_signing_keys = []
[[audiences]]
name = "a"
segment_id = 1
sync = [{ destination = "meta" }]
"#,
    );
    let out = koala()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.admin_token"), "{err}");
    assert!(err.contains("customerio.webhook_signing_keys"), "{err}");
    assert!(err.contains("audiences[0].sync[0].destination"), "{err}");
}

#[test]
fn check_reports_unknown_keys_and_unset_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        crate::support::app::base_config("").replace("[server]", "[server]\nlisten_port = 1");
    let path = write(&dir, &text);
    let out = koala()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_port"));

    let text = crate::support::app::base_config("")
        .replace(crate::support::app::ADMIN_TOKEN, "${KOALA_TEST_NEVER_SET}");
    let path = write(&dir, &text);
    let out = koala()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.admin_token") && err.contains("KOALA_TEST_NEVER_SET"),
        "{err}"
    );
}

#[test]
fn environment_variables_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, &crate::support::app::base_config(""));
    let out = koala()
        .args(["check", "--config"])
        .arg(&path)
        .env("KOALA_STORE__URL", "mysql://nope")
        .env("KOALA_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.url"));
}

#[test]
fn help_explains_the_commands() {
    let out = koala().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "check", "KOALA_"] {
        assert!(text.contains(word), "{word} missing from --help:\n{text}");
    }
}

#[tokio::test]
async fn simulate_plays_signed_webhooks_and_shows_the_audience() {
    let app = crate::support::app::TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, &app.config_text);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(["simulate", "--config"])
        .arg(&path)
        .args([
            "--url",
            &app.base,
            "--people",
            "50",
            "--exits",
            "5",
            "--audience",
            crate::support::app::CART,
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("sent 55 webhooks") && text.contains("0 not accepted"),
        "{text}"
    );
    assert!(text.contains("45 members"), "{text}");
    assert_eq!(app.members(crate::support::app::CART).await, 45);
    app.stop().await;
}
