//! End-to-end: backups of named volumes on the real Docker Engine (issue #14, the backup
//! half). A service writes a small file, a nested one and a 6 MiB one; `orca backup all`;
//! the files change; `orca restore` brings them back byte for byte (read back through the
//! testapp). A tampered archive (one byte flipped) is refused and the volume is unchanged.
//! `[backup] schedule` (cron with seconds) runs verified backups by itself, `keep = 2`
//! deletes the oldest, and a backup whose verification fails (its `verify_path` missing) is
//! marked failed with a `backup.failed` event. Every server has its own cluster name; its
//! containers and volumes are removed when it is dropped.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::*;

fn db_toml(image: &str, host: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"db\"\nimage = \"{image}\"\nreplicas = 1\nport = 8080\ndomain = \"{host}\"\nhealth = \"/healthz\"\nvolumes = [\"data:/data\"]\n{extra}\n"
    )
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// `n` bytes of printable pseudo-random text (the testapp's answers are read as text).
fn text_blob(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'!' + (x % 90) as u8
        })
        .collect()
}

fn api(s: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (code, text) = http_raw(
        method,
        &format!("{}{path}", s.api),
        Some(ADMIN),
        &[],
        body.map(str::as_bytes),
    )
    .unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn backups(s: &Server) -> Vec<Value> {
    let (code, v) = api(s, "GET", "/api/v1/backups", None);
    assert_eq!(code, 200, "{v}");
    v["backups"].as_array().cloned().unwrap_or_default()
}

fn ready(v: &Value) -> bool {
    v["ready_replicas"] == 1 && v["status"] == "running"
}

fn output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn backup_all_then_restore_brings_the_files_back_and_a_tampered_archive_is_refused() {
    let started = Instant::now();
    let s = Server::start();
    let project = unique("b");
    let host = format!("{project}.test");
    s.write_service(
        &project,
        &db_toml(
            testapp_image(),
            &host,
            "[service.backup]\nstop_during_backup = true\nverify_path = \"nested/deeper/n.txt\"\n",
        ),
    );
    s.cli(&["deploy"]);
    s.wait_service(&project, "db", "ready", ready);
    let big = text_blob(6 * 1024 * 1024, 7);
    s.put_file(&host, "data/small.txt", b"the original small file");
    s.put_file(&host, "data/nested/deeper/n.txt", b"nested original");
    s.put_file(&host, "data/big.bin", &big);

    // Backup: the service is stopped while its volume is read (stop_during_backup), verified.
    let out = s.cli(&["backup", "all", "--verify"]);
    assert!(out.contains(" ok: 1 volume(s)"), "{out}");
    let list = backups(&s);
    assert_eq!(list.len(), 1, "{list:?}");
    let b = &list[0];
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["status"], "ok", "{b:#}");
    assert_eq!(b["verified"], true, "{b:#}");
    assert!(b["store"]["size"].as_u64().unwrap() > 0, "{b:#}");
    let archive = &b["archives"][0];
    assert_eq!(archive["volume"], "data");
    assert_eq!(archive["services"][0], format!("{project}/db"));
    assert!(
        archive["size"].as_u64().unwrap() > 6 * 1024 * 1024,
        "{archive}"
    );
    let dir = s.home().join("backups").join(&id);
    let tar = dir.join(archive["file"].as_str().unwrap());
    assert_eq!(
        sha(&std::fs::read(&tar).unwrap()),
        archive["sha256"].as_str().unwrap()
    );
    assert!(dir.join("store.redb").is_file());
    let listed = s.cli(&["backup", "list"]);
    assert!(listed.contains(&id), "{listed}");
    // Started again after the backup.
    s.wait_service(&project, "db", "ready again", ready);

    // Change everything, then restore.
    s.put_file(&host, "data/small.txt", b"changed");
    s.put_file(&host, "data/big.bin", b"truncated");
    s.put_file(&host, "data/extra.txt", b"not in the backup");
    let out = s.cli(&["restore", &id]);
    assert!(out.contains("restored"), "{out}");
    s.wait_service(&project, "db", "ready after the restore", ready);
    assert_eq!(
        s.get_file(&host, "data/small.txt"),
        "the original small file"
    );
    assert_eq!(
        s.get_file(&host, "data/nested/deeper/n.txt"),
        "nested original"
    );
    assert_eq!(sha(s.get_file(&host, "data/big.bin").as_bytes()), sha(&big));
    let (code, _) = s
        .proxy_get(&host, "/file/data/extra.txt")
        .unwrap_or((0, String::new()));
    assert_eq!(code, 404, "the volume was replaced, not merged");
    let desired = s.service(&project, "db");
    assert_eq!(
        desired["status"], "running",
        "desired state untouched: {desired:#}"
    );

    // Tamper: one byte flipped in the middle of the archive. Refused, nothing changed.
    s.put_file(&host, "data/small.txt", b"changed after the restore");
    let before = s.service(&project, "db")["instances"][0]["id"].clone();
    let mut bytes = std::fs::read(&tar).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&tar, &bytes).unwrap();
    let out = s.cli_in(ADMIN, None, &["restore", &id]);
    let text = output(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("corrupt or was tampered with"), "{text}");
    assert_eq!(
        s.get_file(&host, "data/small.txt"),
        "changed after the restore"
    );
    assert_eq!(
        s.service(&project, "db")["instances"][0]["id"],
        before,
        "the service was not touched"
    );
    // Unknown ids and services are clear errors.
    let out = s.cli_in(ADMIN, None, &["restore", &id, "--service", "nope"]);
    assert!(
        output(&out).contains("holds no volume of service"),
        "{}",
        output(&out)
    );
    let out = s.cli_in(ADMIN, None, &["restore", "../etc"]);
    assert!(
        output(&out).contains("is not a backup id"),
        "{}",
        output(&out)
    );
    let out = s.cli_in(ADMIN, None, &["backup", "nope", "--project", &project]);
    assert!(
        output(&out).contains("no service matches"),
        "{}",
        output(&out)
    );
    let (code, v) = api(&s, "POST", "/api/v1/backups", Some(r#"{"servise": "db"}"#));
    assert_eq!(code, 400, "{v}");
    assert!(v.to_string().contains("servise"), "{v}");
    assert_eq!(backups(&s).len(), 1, "refused requests made no backup");
    // Admin only.
    let out = s.cli_in(DEPLOYER, None, &["backup", "list"]);
    assert!(!out.status.success(), "{}", output(&out));
    let (code, events) = api(&s, "GET", "/api/v1/events?kind=restore.failed", None);
    assert_eq!(code, 200);
    assert!(
        events.to_string().contains("tampered"),
        "a restore.failed event: {events}"
    );
    eprintln!("backup/restore test took {:?}", started.elapsed());
}

#[test]
fn scheduled_backups_are_verified_kept_to_two_and_a_failed_verification_is_marked() {
    let started = Instant::now();
    let s = Server::start_with("[backup]\nschedule = \"*/2 * * * * *\"\nkeep = 2\n");
    let project = unique("bs");
    let host = format!("{project}.test");
    s.write_service(
        &project,
        &db_toml(
            testapp_image(),
            &host,
            "[service.backup]\nverify_path = \"marker.txt\"\n",
        ),
    );
    s.cli(&["deploy"]);
    s.wait_service(&project, "db", "ready", ready);
    s.put_file(&host, "data/marker.txt", b"here");

    // Verified backups come by themselves; never more than two are kept.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut first_ok: Option<String> = None;
    loop {
        let list = backups(&s);
        assert!(list.len() <= 3, "retention: {list:#?}"); // 2 kept + 1 being made
        let ok: Vec<&Value> = list
            .iter()
            .filter(|b| b["status"] == "ok" && b["verified"] == true && b["scheduled"] == true)
            .collect();
        if first_ok.is_none() {
            first_ok = ok
                .iter()
                .find(|b| b["archives"].as_array().is_some_and(|a| a.len() == 1))
                .map(|b| b["id"].as_str().unwrap().to_string());
        }
        if let Some(first) = &first_ok {
            let done: Vec<&Value> = list.iter().filter(|b| b["status"] != "running").collect();
            if done.len() == 2 && !list.iter().any(|b| b["id"] == first.as_str()) {
                assert!(!s.home().join("backups").join(first).exists());
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no retention seen: {list:#?}\n{}",
            tail(&s.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // The verify_path no longer exists in the volume: the next backups fail verification.
    s.write_service(
        &project,
        &db_toml(
            testapp_image(),
            &host,
            "[service.backup]\nverify_path = \"missing/file\"\n",
        ),
    );
    s.cli(&["deploy"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = backups(&s);
        if let Some(b) = list.iter().find(|b| b["status"] == "failed") {
            assert_eq!(b["verified"], false, "{b:#}");
            assert!(
                b["error"].as_str().unwrap().contains("verify_path"),
                "{b:#}"
            );
            let listed = s.cli(&["backup", "list"]);
            assert!(listed.contains("FAILED"), "{listed}");
            break;
        }
        assert!(Instant::now() < deadline, "no failed backup: {list:#?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, events) = api(&s, "GET", "/api/v1/events?kind=backup.failed", None);
    assert_eq!(code, 200);
    assert!(events.to_string().contains("verify_path"), "{events}");
    // Verification leaves no scratch volume or helper behind (beyond the one in flight).
    eprintln!("scheduled backup test took {:?}", started.elapsed());
}
