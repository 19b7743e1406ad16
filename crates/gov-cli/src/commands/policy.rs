//! `governance policy validate | test | diff | apply`: Cedar policy sets as code, checked
//! offline (validate, test) and applied as an operator (the schema owner's URL).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use gov_sdk::policies::{Loaded, PolicySet, Slot, cases};

use crate::cli::{
    Global, PolicyApplyArgs, PolicyCommand, PolicyDiffArgs, PolicySource, PolicyTestArgs,
};
use crate::output::Out;

/// Exit code of a set that is invalid or a case that failed.
const EXIT_FAILED: u8 = 1;

pub(crate) async fn run(
    cmd: PolicyCommand,
    global: &Global,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Validate(source) => validate(&source, out),
        PolicyCommand::Test(args) => test(&args, out),
        PolicyCommand::Diff(args) => diff(&args, global, out).await,
        PolicyCommand::Apply(args) => apply(&args, global, out).await,
    }
}

/// The policies and settings of a set on disk.
fn read_set(path: &Path, settings: Option<&Path>) -> anyhow::Result<(String, String)> {
    let unreadable = |p: &Path| format!("cannot read {}", p.display());
    let (policies, default_settings) = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| unreadable(path))
            .map_err(config)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(super::config_error(format!(
                "{} holds no .cedar file: give a directory of policies or one .cedar file",
                path.display()
            )));
        }
        let mut text = String::new();
        for f in &files {
            text.push_str(
                &std::fs::read_to_string(f)
                    .with_context(|| unreadable(f))
                    .map_err(config)?,
            );
            text.push('\n');
        }
        let s = path.join("settings.json");
        (text, s.is_file().then_some(s))
    } else {
        let text = std::fs::read_to_string(path)
            .with_context(|| unreadable(path))
            .map_err(config)?;
        (text, None)
    };
    let settings = match settings.map(Path::to_path_buf).or(default_settings) {
        Some(p) => std::fs::read_to_string(&p)
            .with_context(|| unreadable(&p))
            .map_err(config)?,
        None => String::new(),
    };
    Ok((policies, settings))
}

fn config(e: anyhow::Error) -> anyhow::Error {
    super::config_error(format!("{e:#}"))
}

/// Parses a set; `Err` carries the problem for the caller to report as a failure.
fn parse(source: &PolicySource) -> anyhow::Result<Result<PolicySet, String>> {
    let (policies, settings) = read_set(&source.path, source.settings.as_deref())?;
    Ok(PolicySet::parse(&policies, &settings).map_err(|e| e.to_string()))
}

fn read_cases(files: &[PathBuf]) -> anyhow::Result<Vec<cases::Case>> {
    let mut all = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the case file {}", f.display()))
            .map_err(config)?;
        all.extend(
            cases::parse(&text, &f.display().to_string())
                .map_err(|e| super::config_error(e.to_string()))?,
        );
    }
    Ok(all)
}

fn invalid(out: &Out, what: &Path, problem: &str) -> ExitCode {
    if out.json() {
        out.emit_json(&serde_json::json!({ "status": "invalid", "path": what.display().to_string(), "error": problem }));
    }
    out.warn(format!("invalid policy set {}: {problem}", what.display()));
    ExitCode::from(EXIT_FAILED)
}

fn validate(source: &PolicySource, out: &Out) -> anyhow::Result<ExitCode> {
    let set = match parse(source)? {
        Ok(s) => s,
        Err(problem) => return Ok(invalid(out, &source.path, &problem)),
    };
    if out.json() {
        out.emit_json(&serde_json::json!({
            "status": "valid",
            "policy_set_hash": set.hash(),
            "policies": set.ids(),
        }));
    } else {
        out.line(format!(
            "valid: {} polic{} ({}), hash {}",
            set.ids().len(),
            if set.ids().len() == 1 { "y" } else { "ies" },
            set.ids().join(", "),
            set.hash()
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the cases; prints failures; whether all passed.
fn run_cases(set: &PolicySet, cases: &[cases::Case], out: &Out) -> (bool, Vec<cases::Outcome>) {
    let outcomes = cases::run(set, cases);
    for o in outcomes.iter().filter(|o| !o.passed) {
        let want_policies = o
            .expected_policies
            .as_ref()
            .map(|p| format!(" by [{}]", p.join(", ")))
            .unwrap_or_default();
        let errors = if o.got.errors.is_empty() {
            String::new()
        } else {
            format!(" (errors: {})", o.got.errors.join("; "))
        };
        out.warn(format!(
            "FAILED {:?}: expected {}{want_policies}, got {} by [{}]{errors}",
            o.name,
            o.expected,
            o.got.effect,
            o.got.determining.join(", ")
        ));
    }
    (outcomes.iter().all(|o| o.passed), outcomes)
}

fn test(args: &PolicyTestArgs, out: &Out) -> anyhow::Result<ExitCode> {
    let cases = read_cases(&args.cases)?;
    let set = match parse(&args.source)? {
        Ok(s) => s,
        Err(problem) => return Ok(invalid(out, &args.source.path, &problem)),
    };
    let (ok, outcomes) = run_cases(&set, &cases, out);
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    if out.json() {
        out.emit_json(&serde_json::json!({
            "status": if ok { "passed" } else { "failed" },
            "policy_set_hash": set.hash(),
            "cases": outcomes.len(),
            "failed": failed,
            "outcomes": outcomes,
        }));
    } else {
        out.line(format!(
            "{} of {} case(s) passed{}",
            outcomes.len() - failed,
            outcomes.len(),
            if ok {
                ""
            } else {
                "; the failures are listed above"
            }
        ));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// The set in force in `slot`, from the database.
async fn stored(global: &Global, slot: Slot) -> anyhow::Result<Option<std::sync::Arc<PolicySet>>> {
    let target = super::Target::resolve(global).await?;
    // Reading needs no secret: connect with a throwaway one (nothing is appended).
    let secret = gov_sdk::AuditSecret::generate()?.0;
    let gov = super::connect(&target.url, secret).await?;
    let snapshot = gov.policies().current().await;
    gov.close().await;
    let loaded = match slot {
        Slot::Enforced => snapshot?.enforced.clone(),
        Slot::Shadow => snapshot?.shadow.clone(),
    };
    match loaded {
        None => Ok(None),
        Some(Loaded::Set { set, .. }) => Ok(Some(set)),
        Some(Loaded::Broken {
            version, reason, ..
        }) => Err(super::config_error(format!(
            "the stored {} set (version {version}) cannot be read by this build: {reason}",
            slot.as_str()
        ))),
    }
}

async fn diff(args: &PolicyDiffArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    let cases = read_cases(&args.cases)?;
    let new = parse(&args.source)?
        .map_err(|p| super::config_error(format!("{}: {p}", args.source.path.display())))?;
    let (old, against) = match &args.against {
        Some(path) => {
            let source = PolicySource {
                path: path.clone(),
                settings: None,
            };
            let old = parse(&source)?
                .map_err(|p| super::config_error(format!("{}: {p}", path.display())))?;
            (Some(std::sync::Arc::new(old)), path.display().to_string())
        }
        None => {
            let slot = if args.shadow {
                Slot::Shadow
            } else {
                Slot::Enforced
            };
            (
                stored(global, slot).await?,
                format!("the {} set", slot.as_str()),
            )
        }
    };
    let d = cases::diff(old.as_deref(), &new, &cases);
    if out.json() {
        out.emit_json(&serde_json::json!({
            "against": against,
            "old_hash": old.as_ref().map(|o| o.hash().to_owned()),
            "new_hash": new.hash(),
            "diff": d,
        }));
    } else if d.is_empty() {
        out.line(format!("no difference from {against}"));
    } else {
        out.line(format!("against {against}:"));
        for id in &d.added {
            out.line(format!("  + {id}"));
        }
        for id in &d.removed {
            out.line(format!("  - {id}"));
        }
        for id in &d.changed {
            out.line(format!("  ~ {id}"));
        }
        if d.settings_changed {
            out.line("  ~ settings (agents or arguments)");
        }
        for c in &d.decisions {
            out.line(format!(
                "  case {:?}: {} -> {}",
                c.name,
                c.old
                    .map_or("no set (scope only)".to_owned(), |e| e.to_string()),
                c.new
            ));
        }
    }
    Ok(if d.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

async fn apply(args: &PolicyApplyArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    let slot = if args.shadow {
        Slot::Shadow
    } else {
        Slot::Enforced
    };
    let set = match &args.path {
        None => None,
        Some(path) => {
            let source = PolicySource {
                path: path.clone(),
                settings: args.settings.clone(),
            };
            let set = match parse(&source)? {
                Ok(s) => s,
                Err(problem) => {
                    out.warn("nothing applied");
                    return Ok(invalid(out, path, &problem));
                }
            };
            let cases = read_cases(&args.cases)?;
            let (ok, _) = run_cases(&set, &cases, out);
            if !ok {
                out.warn("nothing applied: fix the policies or the cases above");
                if out.json() {
                    out.emit_json(&serde_json::json!({ "status": "failed", "applied": false }));
                }
                return Ok(ExitCode::from(EXIT_FAILED));
            }
            Some(set)
        }
    };
    let target = super::Target::resolve(global).await?;
    let secret = target.audit_secret(&args.secret)?;
    let gov = super::connect(&target.url, secret).await?;
    let r = gov
        .policies()
        .apply(slot, set.as_ref(), &args.operator)
        .await;
    gov.close().await;
    let version = r?;
    if out.json() {
        out.emit_json(&serde_json::json!({
            "status": "applied",
            "slot": slot.as_str(),
            "version": version,
            "policy_set_hash": set.as_ref().map(|s| s.hash().to_owned()),
            "policies": set.as_ref().map(|s| s.ids().to_vec()).unwrap_or_default(),
        }));
    } else {
        match &set {
            Some(s) => out.line(format!(
                "applied the {} set, version {version}: {} policies, hash {}",
                slot.as_str(),
                s.ids().len(),
                s.hash()
            )),
            None => out.line(format!(
                "turned the {} set off (version {version})",
                slot.as_str()
            )),
        }
    }
    Ok(ExitCode::SUCCESS)
}
