//! docs/cli.md stays true to `--help`: every command and every long flag the binary offers is
//! documented there.

use gov_testdb::TestDb;

use crate::support::governance;

fn help(db: &TestDb, args: &[&str]) -> String {
    let out = governance(db)
        .args(args)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The long flags (`--name`) in a help text.
fn flags(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
        if let Some(rest) = word.strip_prefix("--") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !name.is_empty() && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

#[tokio::test]
async fn docs_cli_md_documents_every_command_and_flag() {
    let db = TestDb::empty().await;
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/cli.md"))
        .expect("docs/cli.md");
    let commands: &[&[&str]] = &[
        &["migrate"],
        &["verify"],
        &["demo"],
        &["tail"],
        &["budget"],
        &["report"],
        &["rotate-chain-key"],
        &["archive"],
        &["erase"],
        &["checkpoint"],
        &["prove"],
        &["evidence", "export"],
        &["evidence", "verify"],
        &["export"],
        &["import"],
        &["console", "serve"],
        &["console", "add-user"],
        &["console", "list-users"],
        &["console", "disable-user"],
        &["console", "reset-password"],
        &["gateway", "serve"],
        &["gateway", "add-key"],
        &["gateway", "list-keys"],
        &["gateway", "revoke-key"],
        &["approvals", "workflow"],
        &["notify", "run"],
        &["completions"],
    ];
    let top = help(&db, &[]);
    let mut missing = Vec::new();
    for cmd in commands {
        let heading = format!("## `governance {}", cmd.join(" "));
        if !doc.contains(&heading) {
            missing.push(format!("no section {heading}"));
        }
        for flag in flags(&help(&db, cmd)) {
            if flag != "help" && !doc.contains(&format!("--{flag}")) {
                missing.push(format!("{} --{flag}", cmd.join(" ")));
            }
        }
    }
    for flag in flags(&top) {
        if flag != "help" && !doc.contains(&format!("--{flag}")) {
            missing.push(format!("global --{flag}"));
        }
    }
    assert!(missing.is_empty(), "docs/cli.md is missing: {missing:#?}");
}
