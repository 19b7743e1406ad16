//! The CLI as a newcomer meets it: it says what it is doing, counts in English, keeps escape
//! codes off pipes and files, and says when an agent name means nothing here.

use gov_testdb::TestDb;

use crate::support::{governance, seed};

fn run(cmd: &mut assert_cmd::Command) -> (i32, String, String) {
    let out = cmd.output().expect("run governance");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn tail_says_what_it_follows_on_stderr_and_keeps_stdout_for_events() {
    let db = TestDb::new().await;
    seed(&db, 2).await;
    let (code, stdout, stderr) =
        run(governance(&db).args(["tail", "--since", "1d", "--limit", "2"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("following chain default on") && stderr.contains("Ctrl-C to stop"),
        "{stderr}"
    );
    assert!(!stderr.contains("postgres@"), "credentials shown: {stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(!stdout.contains("following"), "{stdout}");
}

#[tokio::test]
async fn one_event_is_one_event() {
    let db = TestDb::new().await;
    seed(&db, 1).await;
    let (code, stdout, stderr) = run(governance(&db).arg("verify"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": 1 event,"), "{stdout}");
    assert!(!stdout.contains("1 events"), "{stdout}");
}

#[tokio::test]
async fn budget_of_an_agent_never_seen_says_so_and_names_the_known_ones() {
    let db = TestDb::new().await;
    let (code, _, stderr) = run(governance(&db).args(["demo", "--events", "8", "--no-serve"]));
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run(governance(&db).args(["budget", "nobody"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("agent nobody was never seen")
            && stderr.contains("agents known here: demo-agent"),
        "{stderr}"
    );
    // A known agent still works, with or without a session.
    let (code, stdout, stderr) = run(governance(&db).args(["budget", "demo-agent"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stdout.contains("session"),
        "no session row unless asked: {stdout}"
    );
    let (code, stdout, _) = run(governance(&db).args(["budget", "demo-agent", "--session", "s-1"]));
    assert_eq!(code, 0);
    assert!(stdout.contains("session s-1"), "{stdout}");
    let (_, help, _) = run(governance(&db).args(["budget", "--help"]));
    assert!(!help.contains("[default: -]"), "{help}");
}

#[tokio::test]
async fn logs_carry_no_escape_codes_off_a_terminal_even_without_no_color() {
    let db = TestDb::new().await;
    // The demo's loop detection logs a warning; stderr here is a pipe.
    let (code, _, stderr) =
        run(governance(&db)
            .env_remove("NO_COLOR")
            .args(["demo", "--events", "8", "--no-serve"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("WARN"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "escape codes in a pipe: {stderr:?}"
    );
}

#[tokio::test]
async fn help_text_is_not_wrapped_mid_sentence_by_hand() {
    let db = TestDb::empty().await;
    for cmd in [
        &["verify"][..],
        &["report"],
        &["rotate-chain-key"],
        &["export"],
        &["import"],
        &["demo"],
        &["console", "serve"],
    ] {
        let (code, help, _) = run(governance(&db).args(cmd).arg("--help"));
        assert_eq!(code, 0);
        // A hand-made break inside a sentence, re-wrapped by clap, leaves a line of one or two
        // words followed by a line that goes on in lower case.
        let lines: Vec<&str> = help.lines().collect();
        for pair in lines.windows(2) {
            let (a, b) = (pair[0].trim(), pair[1].trim());
            if a.starts_with("governance") || b.starts_with("governance") {
                continue; // the examples, one command a line
            }
            assert!(
                !(a.split_whitespace().count() <= 2
                    && !a.is_empty()
                    && !a.ends_with(':')
                    && !a.starts_with('-')
                    && b.starts_with(|c: char| c.is_ascii_lowercase())),
                "{cmd:?} --help breaks a sentence after {a:?}:\n{help}"
            );
        }
    }
}
