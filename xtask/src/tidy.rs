//! Repository rules, checked by `cargo xtask tidy` and by a test:
//! the crate dependency graph, module docs on every file, no ignored or should-panic tests,
//! every `GOVERNANCE_*` variable documented in docs/configuration.md, README's SDK snippet equal
//! to the quickstart example the suite runs, and every relative link in README.md and docs/*.md
//! resolving to a file (and none naming a design document the repository does not have).

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

    // The snapshot of the Postgres functions (`cargo xtask schema`); the test
    // `schema::the_function_snapshot_is_current` checks that it is current.
    if !root.join("migrations/postgres/schema.sql").is_file() {
        problems
            .push("migrations/postgres/schema.sql is missing: run `cargo xtask schema`".to_owned());
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
    problems.extend(readme_snippet(&root));
    problems.extend(doc_links(&root));
    problems.sort();
    problems.dedup();
    problems
}

/// The example README shows, up to its test module.
const QUICKSTART: &str = "crates/gov-sdk/examples/quickstart.rs";

/// The fenced blocks of a Markdown text whose info string is `lang`.
fn fenced_blocks(text: &str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    // Inside a block: `Some(Some(text))` when it is one of ours, `Some(None)` when it is not.
    let mut current: Option<Option<String>> = None;
    for line in text.lines() {
        let fence = line.trim_start().starts_with("```");
        match (&mut current, fence) {
            (None, true) => {
                let info = line.trim_start().trim_start_matches('`').trim();
                current = Some((info == lang).then(String::new));
            }
            (None, false) => {}
            (Some(block), true) => {
                if let Some(b) = block.take() {
                    blocks.push(b);
                }
                current = None;
            }
            (Some(Some(block)), false) => {
                block.push_str(line);
                block.push('\n');
            }
            (Some(None), false) => {}
        }
    }
    blocks
}

/// README's SDK snippet must be the quickstart example (without its test module), so the code a
/// newcomer copies is the code the suite runs.
fn readme_snippet(root: &Path) -> Vec<String> {
    let (Ok(readme), Ok(example)) = (
        std::fs::read_to_string(root.join("README.md")),
        std::fs::read_to_string(root.join(QUICKSTART)),
    ) else {
        return vec![format!("README.md or {QUICKSTART} cannot be read")];
    };
    let shown = match example.find("\n#[cfg(test)]") {
        Some(i) => format!("{}\n", example[..i].trim_end()),
        None => example.clone(),
    };
    if fenced_blocks(&readme, "rust").contains(&shown) {
        Vec::new()
    } else {
        vec![format!(
            "README.md: no ```rust block equals {QUICKSTART} (up to its test module); copy the example into README's \"Using the SDK\""
        )]
    }
}

/// Every relative link in README.md and docs/*.md resolves to a file or folder of the
/// repository, and none names the design document the repository does not have.
fn doc_links(root: &Path) -> Vec<String> {
    let mut files = vec![root.join("README.md"), root.join("console-web/README.md")];
    if let Ok(entries) = std::fs::read_dir(root.join("docs")) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "md") {
                files.push(e.path());
            }
        }
    }
    let design = concat!("DESIGN", ".md");
    let mut problems = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let rel = f.strip_prefix(root).unwrap_or(&f).display().to_string();
        if text.contains(design) {
            problems.push(format!(
                "{rel}: names {design}, which is not in the repository"
            ));
        }
        let dir = f.parent().unwrap_or(root);
        for target in relative_links(&text) {
            if !dir.join(&target).exists() {
                problems.push(format!("{rel}: the link ({target}) leads nowhere"));
            }
        }
    }
    problems
}

/// The relative targets of a Markdown text's inline links, `[text](target)`, without their
/// `#fragment`; links in fenced code blocks are not links.
fn relative_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let tail = &rest[i + 2..];
            let Some(end) = tail.find(')') else {
                break;
            };
            let target = tail[..end].split_whitespace().next().unwrap_or("");
            let path = target.split('#').next().unwrap_or("");
            if !path.is_empty() && !path.contains("://") && !path.starts_with("mailto:") {
                out.push(path.to_owned());
            }
            rest = &tail[end..];
        }
    }
    out
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
    fn finds_relative_links_outside_code() {
        let md =
            "See [a](docs/a.md#x), [b](https://b.example/) and [c](#c).\n```\n[d](d.md)\n```\n";
        assert_eq!(super::relative_links(md), ["docs/a.md"]);
    }

    #[test]
    fn reads_fenced_blocks_of_one_language() {
        let md = "```sh\nls\n```\n```rust\nfn main() {}\n```\n";
        assert_eq!(super::fenced_blocks(md, "rust"), ["fn main() {}\n"]);
    }

    #[test]
    fn reads_only_normal_dependencies() {
        let m =
            "[dependencies]\nfoo.workspace = true\nbar = \"1\"\n[dev-dependencies]\nsqlx = \"1\"\n";
        assert_eq!(super::normal_dependencies(m), ["foo", "bar"]);
    }
}
