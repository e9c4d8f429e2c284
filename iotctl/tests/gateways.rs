//! `iotctl gateways`: the registry through the command line, its secrets shown once or
//! written owner-only, and every bad request refused with a sentence and exit code 1.

mod support;

use std::os::unix::fs::PermissionsExt;

use sqlx::PgPool;
use support::{json, run, stderr, stdout};

fn is_secret(text: &str) -> bool {
    text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit())
}

#[sqlx::test(migrations = "../migrations")]
async fn gateways_are_added_listed_rotated_and_switched(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pi-a.secret");
    let file_arg = file.to_str().unwrap();

    let added = run(
        &pool,
        &[
            "gateways",
            "add",
            "pi-a",
            "--device",
            "furnace-01",
            "--secret-file",
            file_arg,
        ],
    );
    assert!(added.status.success(), "{}", stderr(&added));
    assert!(!stdout(&added).contains(std::fs::read_to_string(&file).unwrap().trim()));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first = std::fs::read_to_string(&file).unwrap();
    assert!(is_secret(first.trim()), "{first:?}");

    let printed = run(&pool, &["gateways", "add", "pi-b"]);
    assert!(printed.status.success(), "{}", stderr(&printed));
    let shown = stdout(&printed);
    assert!(
        shown.lines().last().is_some_and(is_secret),
        "the secret is printed once, on its own line: {shown}"
    );

    let listed = json(&run(&pool, &["--json", "gateways", "list"]));
    assert_eq!(listed[0]["id"], "pi-a");
    assert_eq!(listed[0]["devices"], serde_json::json!(["furnace-01"]));
    assert_eq!(listed[1]["id"], "pi-b");
    assert!(
        !listed.to_string().contains(first.trim()),
        "list never shows a secret"
    );

    // An existing file, even a readable one, is narrowed to the owner and replaced.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let rotated = run(
        &pool,
        &["gateways", "rotate", "pi-a", "--secret-file", file_arg],
    );
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let second = std::fs::read_to_string(&file).unwrap();
    assert_ne!(first, second);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let moved = run(
        &pool,
        &["gateways", "assign", "pi-b", "--device", "furnace-01"],
    );
    assert!(
        stdout(&moved).contains("furnace-01 moved from gateway pi-a"),
        "{}",
        stdout(&moved)
    );
    let disabled = run(&pool, &["gateways", "disable", "pi-b"]);
    assert!(disabled.status.success(), "{}", stderr(&disabled));
    let listed = json(&run(&pool, &["--json", "gateways", "list"]));
    assert_eq!(listed[1]["enabled"], false);
    assert_eq!(listed[1]["devices"], serde_json::json!(["furnace-01"]));
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_requests_say_what_is_wrong(pool: PgPool) {
    assert!(run(&pool, &["gateways", "add", "pi-a"]).status.success());
    let cases: [(&[&str], i32, &str); 5] = [
        (&["gateways", "add", "pi-a"], 1, "exists already"),
        (
            &["gateways", "add", "pi-c", "--device", "kiln-9"],
            1,
            "kiln-9",
        ),
        (&["gateways", "rotate", "ghost"], 1, "no gateway \"ghost\""),
        (&["gateways", "add", "pi/a"], 2, "not a gateway id"),
        (&["gateways", "assign", "pi-a"], 2, "--device"),
    ];
    for (args, code, says) in cases {
        let output = run(&pool, args);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(says),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let listed = json(&run(&pool, &["--json", "gateways", "list"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
}
