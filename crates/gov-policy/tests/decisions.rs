//! Decisions table-driven from files: the fixture sets' cases (permit, forbid, approval, with
//! the determining policies) and the refusals of sets that must not be applied.

use std::path::Path;

use gov_policy::{PolicyError, PolicySet, cases};

fn fixture(name: &str) -> (PolicySet, Vec<cases::Case>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("fixture file");
    let set = PolicySet::parse(&read("policies.cedar"), &read("settings.json")).expect("valid set");
    let cases = cases::parse(&read("cases.json"), "cases.json").expect("case file");
    (set, cases)
}

#[test]
fn every_case_of_the_fixture_decides_as_expected() {
    let (set, cases) = fixture("billing");
    assert!(cases.len() >= 10);
    let failed: Vec<_> = cases::run(&set, &cases)
        .into_iter()
        .filter(|o| !o.passed)
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn an_approval_names_its_reason() {
    let (set, cases) = fixture("billing");
    let case = cases
        .iter()
        .find(|c| c.expect == gov_policy::Effect::Approval)
        .expect("a case");
    let d = case.decide(&set);
    assert_eq!(
        d.approval.as_deref(),
        Some("refunds over 1,000 USD need a second person")
    );
}

#[test]
fn the_hash_covers_policies_and_settings() {
    let (set, _) = fixture("billing");
    assert_eq!(set.hash().len(), 64);
    let again = PolicySet::parse(set.source(), set.settings_json()).expect("valid");
    assert_eq!(again.hash(), set.hash());
    let other_settings = PolicySet::parse(
        set.source(),
        r#"{"arguments": {"amount": "long", "to": "string", "write": "bool"}}"#,
    )
    .expect("valid");
    assert_ne!(other_settings.hash(), set.hash());
    let other_policies = PolicySet::parse(
        &format!("{}\n// a comment", set.source()),
        set.settings_json(),
    )
    .expect("valid");
    assert_ne!(other_policies.hash(), set.hash());
}

fn refused(policies: &str, settings: &str) -> PolicyError {
    PolicySet::parse(policies, settings).expect_err("refused")
}

#[test]
fn sets_that_would_not_evaluate_as_written_are_refused_with_the_reason() {
    let cases = [
        ("permit (principal, action, resource", "", "do not parse"),
        (r#"permit (principal, action, resource);"#, "", "@id"),
        (
            r#"@id("a") permit (principal, action, resource); @id("a") forbid (principal, action, resource);"#,
            "",
            "unique",
        ),
        (
            r#"@id("f") @approval("x") forbid (principal, action, resource);"#,
            "",
            "@approval belongs on a permit",
        ),
        (
            r#"@id("p") @approval("") permit (principal, action, resource);"#,
            "",
            "needs a reason",
        ),
        (
            r#"@id("typo") permit (principal, action, resource) when { principal.teem == "x" };"#,
            "",
            "policy typo",
        ),
        (
            r#"@id("undeclared") permit (principal, action, resource) when { context.arguments.amount > 3 };"#,
            "",
            "policy undeclared",
        ),
        (
            r#"@id("unknown-type") permit (principal, action, resource == Governance::Tol::"x");"#,
            "",
            "validate",
        ),
        (
            r#"@id("ok") permit (principal, action, resource);"#,
            r#"{"agent": {}}"#,
            "settings",
        ),
    ];
    for (policies, settings, needle) in cases {
        let e = refused(policies, settings).to_string();
        assert!(e.contains(needle), "{policies}: {e} (wanted {needle:?})");
    }
}

#[test]
fn diff_names_added_removed_and_changed_policies_and_changed_decisions() {
    let (set, cases) = fixture("billing");
    let edited = set
        .source()
        .replace("amount > 1000", "amount > 10")
        .replace("@id(\"github-read-only\")", "@id(\"github-ro\")");
    let new = PolicySet::parse(&edited, set.settings_json()).expect("valid");
    let d = cases::diff(Some(&set), &new, &cases);
    assert_eq!(d.added, ["github-ro"]);
    assert_eq!(d.removed, ["github-read-only"]);
    assert_eq!(d.changed, ["large-refund-needs-approval"]);
    assert!(!d.settings_changed);
    let names: Vec<_> = d.decisions.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a small refund is permitted"]);
    assert!(cases::diff(Some(&set), &set, &cases).is_empty());
}

/// "Approve and save as a rule": the added `@preapproved` permit turns exactly that approval
/// into a permit (agent, tool and declared arguments), a forbid still wins, strings are escaped,
/// and the annotation is refused where it would mean nothing.
#[test]
fn a_preapproval_permits_exactly_what_it_names() {
    let (set, _) = fixture("billing");
    let args = serde_json::json!({ "amount": 5000, "note": "x\"y" });
    let with = set
        .with_preapproval(
            "approved-1",
            "approval 42 by \"ann\"",
            "billing-agent",
            "refund",
            Some(&args),
        )
        .expect("a valid set");
    assert!(with.source().contains("@preapproved("), "{}", with.source());
    assert_ne!(with.hash(), set.hash());
    let decide = |s: &PolicySet, agent: &str, amount: i64| {
        let a = serde_json::json!({ "amount": amount });
        s.decide(&gov_policy::Request {
            agent,
            resource: gov_policy::Resource::Tool("refund"),
            session: "s",
            arguments: Some(&a),
            estimated_cost_micros: 0,
            session_spend_micros: 0,
            now: time::macros::datetime!(2026-01-05 12:00 UTC),
        })
    };
    let d = decide(&with, "billing-agent", 5000);
    assert_eq!(d.effect, gov_policy::Effect::Permit);
    assert_eq!(d.determining, ["approved-1"]);
    assert_eq!(
        decide(&with, "billing-agent", 5001).effect,
        gov_policy::Effect::Approval
    );
    assert_eq!(
        decide(&set, "billing-agent", 5000).effect,
        gov_policy::Effect::Approval
    );
    for bad in [
        "@id(\"f\") @preapproved(\"x\") forbid (principal, action, resource);",
        "@id(\"p\") @preapproved(\"x\") @approval(\"y\") permit (principal, action, resource);",
        "@id(\"e\") @preapproved(\"\") permit (principal, action, resource);",
    ] {
        assert!(
            matches!(PolicySet::parse(bad, ""), Err(PolicyError::Invalid(_))),
            "{bad}"
        );
    }
}
