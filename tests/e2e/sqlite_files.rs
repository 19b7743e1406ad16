//! SQLite files on the host, as another local user and as a user with a typo see them: a
//! database file the tools create is readable by its owner only (600, its `-wal` and `-shm`
//! files too), in directories created 700; an existing file keeps its mode; and every command
//! other than `migrate` and `demo` refuses a path that names no file, with a clear error, and
//! creates nothing (no file, no directory). No Postgres is involved.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::support::SECRET;

/// A directory of its own, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "gov-e2e-{name}-{}-{}",
            std::process::id(),
            time::OffsetDateTime::now_utc().unix_timestamp_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        Self(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `governance --database-url URL ARGS…` with nothing else configured but the secret; HOME and
/// XDG_DATA_HOME point into `home`, so nothing outside it can be touched. Returns (code, stderr).
fn run(home: &Path, url: &str, args: &[&str], stdin: &str) -> (i32, String) {
    let mut cmd = crate::support::bare_governance();
    let mut child = cmd
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("GOVERNANCE_AUDIT_SECRET", SECRET)
        .env("NO_COLOR", "1")
        .arg("--database-url")
        .arg(url)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run governance");
    {
        use std::io::Write as _;
        let mut input = child.stdin.take().expect("stdin");
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every path under `dir`, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("list") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A handle on `url` that has just logged one event, so the `-wal` and `-shm` files exist.
async fn open_and_log(url: &str) -> gov_sdk::Governance {
    let gov = gov_sdk::Governance::builder()
        .database_url(url)
        .audit_secret(SECRET)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect");
    gov.audit()
        .log(
            gov_sdk::AuditEvent::builder("agent-1", "tool.call")
                .build()
                .expect("event"),
        )
        .await
        .expect("log");
    gov
}

#[test]
fn every_command_but_migrate_and_demo_refuses_a_mistyped_path_and_creates_nothing() {
    let home = Dir::new("sqlite-typo");
    let input = home.0.join("chains.jsonl");
    std::fs::write(&input, "{}\n").expect("an input file");
    let key = home.0.join("operator.key");
    std::fs::write(&key, "4f".repeat(16) + &"a1".repeat(16)).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let key_url = format!("file://{}", key.display());
    let input = input.to_str().expect("utf-8");
    let pw = "a long enough password\n";
    let new_secret = format!("{}\n", crate::support::OTHER_SECRET);
    let commands: &[(&[&str], &str)] = &[
        (&["export"], ""),
        (&["export", "--output", "out.jsonl"], ""),
        (&["import", "--input", input], ""),
        (&["console", "list-users"], ""),
        (
            &["console", "add-user", "--username", "a", "--role", "admin"],
            pw,
        ),
        (&["console", "disable-user", "--username", "a"], ""),
        (&["console", "reset-password", "--username", "a"], pw),
        (
            &["console", "set-role", "--username", "a", "--role", "viewer"],
            "",
        ),
        (&["console", "serve", "--bind", "127.0.0.1:0"], ""),
        (&["verify"], ""),
        (&["report", "--format", "article12"], ""),
        (&["tail", "--limit", "1"], ""),
        (&["budget", "agent-1"], ""),
        (&["checkpoint", "--signing-key", &key_url], ""),
        (&["rotate-chain-key"], &new_secret),
    ];
    let before = tree(&home.0);
    for typo in [
        home.0.join("governanc.db"),
        home.0.join("no-such-dir").join("governance.db"),
    ] {
        let url = format!("sqlite://{}", typo.display());
        for (args, stdin) in commands {
            let (code, stderr) = run(&home.0, &url, args, stdin);
            assert_eq!(code, 2, "{args:?}: {stderr}");
            assert!(
                stderr.contains("does not exist") && stderr.contains("governance migrate"),
                "{args:?}: the error names the problem and the fix: {stderr}"
            );
            assert!(!stderr.contains(&url), "{args:?}: the URL was printed");
            assert_eq!(
                tree(&home.0),
                before,
                "{args:?} on a mistyped path left something behind"
            );
        }
    }
}

#[tokio::test]
async fn created_databases_are_private_and_existing_files_keep_their_mode() {
    let home = Dir::new("sqlite-modes");
    // `migrate` creates the file 600 and every directory it makes 700.
    let db = home.0.join("new").join("sub").join("governance.db");
    let url = format!("sqlite://{}", db.display());
    let (code, stderr) = run(&home.0, &url, &["migrate"], "");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(mode(&db), 0o600, "the database file");
    assert_eq!(mode(&home.0.join("new")), 0o700);
    assert_eq!(mode(&home.0.join("new").join("sub")), 0o700);
    // Its -wal and -shm files, while a handle has them open, are 600 too.
    let gov = open_and_log(&url).await;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", db.display()));
        assert_eq!(mode(&side), 0o600, "{}", side.display());
    }
    gov.close().await;

    // `demo` in an existing directory: the file is 600, the directory keeps its mode.
    let shared = home.0.join("shared");
    std::fs::create_dir(&shared).expect("dir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let demo = shared.join("demo.db");
    let (code, stderr) = run(
        &home.0,
        &format!("sqlite://{}", demo.display()),
        &["demo", "--events", "5", "--no-serve"],
        "",
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(mode(&demo), 0o600);
    assert_eq!(
        mode(&shared),
        0o755,
        "an existing directory is left as it is"
    );

    // A file that exists keeps the mode its owner gave it, and its -wal and -shm follow it.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    for args in [&["migrate"][..], &["export"], &["console", "list-users"]] {
        let (code, stderr) = run(&home.0, &url, args, "");
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert_eq!(mode(&db), 0o640, "{args:?} changed an existing file's mode");
    }
    let gov = open_and_log(&url).await;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", db.display()));
        assert_eq!(mode(&side), 0o640, "{}", side.display());
    }
    gov.close().await;

    // The SDK's `migrate_on_connect(true)` creates as privately.
    let made = home.0.join("sdk").join("service.db");
    let gov = gov_sdk::Governance::builder()
        .database_url(format!("sqlite://{}", made.display()))
        .audit_secret(SECRET)
        .migrate_on_connect(true)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect and migrate");
    assert_eq!(mode(&made), 0o600);
    assert_eq!(mode(&home.0.join("sdk")), 0o700);
    gov.close().await;
    // Without it, a missing file is refused and nothing is made.
    let err = gov_sdk::Governance::builder()
        .database_url(format!(
            "sqlite://{}",
            home.0.join("sdk2").join("x.db").display()
        ))
        .audit_secret(SECRET)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect_err("a missing file");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!home.0.join("sdk2").exists());
}
