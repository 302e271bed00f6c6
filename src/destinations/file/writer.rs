//! The files of one audience, written with blocking I/O (called through
//! `spawn_blocking`): `{stem}.jsonl` gets one line per change that changed
//! the members, then `{stem}.members.json` is replaced atomically (a temp
//! file, fsync, rename).
//!
//! Idempotent: an add of a member already present with the same record,
//! or a remove of someone absent, changes neither file, so a retried
//! batch writes nothing twice. After a crash between the two writes the
//! log may repeat a line (the members file, written last, is exact).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::audiences::SyncOp;

/// A member as written: key, ids, email, phone, attributes.
pub type Member = Map<String, Value>;

/// The members file's content.
pub fn members_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.members.json"))
}

pub fn log_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.jsonl"))
}

/// Applies `changes` (key, member) for `op`; answers how many changed
/// something. Errors name the path, never a member.
pub fn apply(
    dir: &Path,
    stem: &str,
    audience: &str,
    op: SyncOp,
    changes: &[(String, Member)],
    at: &str,
) -> Result<usize, String> {
    fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    let mpath = members_path(dir, stem);
    let mut members: BTreeMap<String, Member> = match fs::read(&mpath) {
        Ok(bytes) => {
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is not koala's members file: {e}", mpath.display()))?;
            v["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| {
                    let m = m.as_object()?.clone();
                    Some((key_of(&m)?, m))
                })
                .collect()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", mpath.display())),
    };
    let mut lines = Vec::new();
    for (key, m) in changes {
        let changed = match op {
            SyncOp::Add | SyncOp::Update => {
                if members.get(key) == Some(m) {
                    false
                } else {
                    members.insert(key.clone(), m.clone());
                    true
                }
            }
            SyncOp::Remove => members.remove(key).is_some(),
        };
        if changed {
            let mut line = Map::new();
            line.insert("op".into(), json!(op.as_str()));
            line.extend(m.clone());
            line.insert("at".into(), json!(at));
            lines.push(serde_json::to_string(&Value::Object(line)).expect("serializable"));
        }
    }
    if lines.is_empty() {
        return Ok(0);
    }
    let lpath = log_path(dir, stem);
    let mut log = open_private(&lpath, true)
        .map_err(|e| format!("cannot append to {}: {e}", lpath.display()))?;
    let mut text = lines.join("\n");
    text.push('\n');
    log.write_all(text.as_bytes())
        .and_then(|_| log.sync_data())
        .map_err(|e| format!("cannot append to {}: {e}", lpath.display()))?;

    let doc = json!({
        "audience": audience,
        "updated_at": at,
        "count": members.len(),
        "members": members.values().cloned().map(Value::Object).collect::<Vec<_>>(),
    });
    let tmp = dir.join(format!(".{stem}.members.json.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = open_private(&tmp, false)?;
        f.write_all(&serde_json::to_vec_pretty(&doc).expect("serializable"))?;
        f.sync_all()?;
        fs::rename(&tmp, &mpath)
    };
    write().map_err(|e| format!("cannot replace {}: {e}", mpath.display()))?;
    Ok(lines.len())
}

/// The key a member is held under: its Customer.io id, else its cio_id.
pub fn key_of(m: &Member) -> Option<String> {
    for k in ["id", "cio_id"] {
        if let Some(Value::String(s)) = m.get(k) {
            return Some(format!("{k}:{s}"));
        }
    }
    None
}

/// Files hold email and phone: readable by koala's user only.
fn open_private(path: &Path, append: bool) -> std::io::Result<fs::File> {
    let mut o = fs::OpenOptions::new();
    o.create(true).write(true);
    if append {
        o.append(true);
    } else {
        o.truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, plan: &str) -> (String, Member) {
        let m: Member = serde_json::from_value(json!({"id": id, "cio_id": null, "email": null, "phone": null, "attributes": {"plan": plan}})).unwrap();
        (key_of(&m).unwrap(), m)
    }

    fn read(dir: &Path) -> (Value, Vec<Value>) {
        let members = serde_json::from_slice(&fs::read(members_path(dir, "a")).unwrap()).unwrap();
        let log = fs::read_to_string(log_path(dir, "a"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (members, log)
    }

    #[test]
    fn adds_and_removes_are_logged_once_and_held() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("new/dir");
        let at = "2026-12-01T09:00:00Z";
        let batch = [member("u1", "gold"), member("u2", "basic")];
        assert_eq!(apply(&dir, "a", "A", SyncOp::Add, &batch, at), Ok(2));
        assert_eq!(
            apply(&dir, "a", "A", SyncOp::Add, &batch, at),
            Ok(0),
            "a retry changes nothing"
        );
        let (m, log) = read(&dir);
        assert_eq!(m["count"], 2);
        assert_eq!(log.len(), 2);
        assert_eq!(log[0]["op"], "add");
        assert_eq!(log[0]["at"], at);
        assert_eq!(log[0]["attributes"]["plan"], "gold");
        assert_eq!(
            apply(&dir, "a", "A", SyncOp::Add, &[member("u1", "basic")], at),
            Ok(1),
            "an update"
        );
        assert_eq!(
            apply(&dir, "a", "A", SyncOp::Remove, &[member("u2", "basic")], at),
            Ok(1)
        );
        assert_eq!(
            apply(&dir, "a", "A", SyncOp::Remove, &[member("u2", "basic")], at),
            Ok(0)
        );
        let (m, log) = read(&dir);
        assert_eq!(m["count"], 1);
        assert_eq!(m["members"][0]["attributes"]["plan"], "basic");
        assert_eq!(log.len(), 4);
        assert_eq!(log[3]["op"], "remove");
        // An attribute update of a present member: an update line, the new value.
        assert_eq!(
            apply(
                &dir,
                "a",
                "A",
                SyncOp::Update,
                &[member("u1", "platinum")],
                at
            ),
            Ok(1)
        );
        let (m, log) = read(&dir);
        assert_eq!(m["members"][0]["attributes"]["plan"], "platinum");
        assert_eq!(log[4]["op"], "update");
    }

    #[test]
    fn an_unwritable_directory_names_the_path() {
        let t = tempfile::tempdir().unwrap();
        let blocker = t.path().join("blocker");
        fs::write(&blocker, "a file").unwrap();
        let dir = blocker.join("out");
        let e = apply(&dir, "a", "A", SyncOp::Add, &[member("u1", "gold")], "x").unwrap_err();
        assert!(e.contains(&dir.display().to_string()), "{e}");
        assert!(!e.contains("u1"));
    }
}
