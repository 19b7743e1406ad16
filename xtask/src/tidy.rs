//! Repository rules, checked by `cargo xtask tidy` and by a test:
//! the crate dependency graph, module docs on every file, no ignored or should-panic tests,
//! and every `GOVERNANCE_*` variable documented in docs/configuration.md.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// (crate, dependency) pairs that break the architecture.
const FORBIDDEN: &[(&str, &str)] = &[
    ("gov-cli", "sqlx"),
    ("gov-cli", "gov-store"),
    ("gov-console", "sqlx"),
    ("gov-console", "gov-store"),
    ("gov-core", "sqlx"),
    ("gov-core", "tokio"),
    ("gov-core", "gov-store"),
    ("gov-audit", "sqlx"),
    ("gov-report", "sqlx"),
    ("gov-report", "gov-store"),
    ("gov-sdk", "sqlx"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if !p.ends_with("target") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The names in a manifest's `[dependencies]` table (not dev- or build-dependencies).
fn normal_dependencies(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && let Some((name, _)) = line.split_once('=') {
            let name = name.trim().split('.').next().unwrap_or("").trim();
            if !name.is_empty() && !name.starts_with('#') {
                deps.push(name.to_owned());
            }
        }
    }
    deps
}

fn problems() -> Vec<String> {
    let root = root();
    let mut problems = Vec::new();

    for (krate, dep) in FORBIDDEN {
        let path = root.join("crates").join(krate).join("Cargo.toml");
        if let Ok(m) = std::fs::read_to_string(&path)
            && normal_dependencies(&m).iter().any(|d| d == dep)
        {
            problems.push(format!(
                "{krate} must not depend on {dep} (see ARCHITECTURE.md)"
            ));
        }
    }

    let mut files = Vec::new();
    for dir in ["crates", "xtask", "tests"] {
        rust_files(&root.join(dir), &mut files);
    }
    let config_doc =
        std::fs::read_to_string(root.join("docs/configuration.md")).unwrap_or_default();
    let ignore_attr = concat!("#[", "ignore");
    let should_panic_attr = concat!("#[", "should_panic");
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let rel = f.strip_prefix(&root).unwrap_or(f).display().to_string();
        if !text.starts_with("//!") {
            problems.push(format!("{rel}: the first line must be a `//!` module doc"));
        }
        if text.contains(ignore_attr) || text.contains(should_panic_attr) {
            problems.push(format!("{rel}: no ignored or should_panic tests"));
        }
        let mut rest = text.as_str();
        while let Some(i) = rest.find("GOVERNANCE_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            if name.len() > "GOVERNANCE_".len()
                && !name.ends_with('_')
                && !config_doc.contains(name)
            {
                problems.push(format!(
                    "{rel}: {name} is not documented in docs/configuration.md"
                ));
            }
            rest = &tail[end..];
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

pub(crate) fn run() -> Result<()> {
    let p = problems();
    if p.is_empty() {
        eprintln!("tidy: ok");
        return Ok(());
    }
    for x in &p {
        eprintln!("tidy: {x}");
    }
    bail!("tidy found {} problem(s)", p.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tidy() {
        let p = super::problems();
        assert!(p.is_empty(), "{}", p.join("\n"));
    }

    #[test]
    fn reads_only_normal_dependencies() {
        let m =
            "[dependencies]\nfoo.workspace = true\nbar = \"1\"\n[dev-dependencies]\nsqlx = \"1\"\n";
        assert_eq!(super::normal_dependencies(m), ["foo", "bar"]);
    }
}
