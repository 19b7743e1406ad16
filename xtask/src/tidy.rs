//! Repository rules, checked by `cargo xtask tidy` and by a test:
//! the crate dependency graph, module docs on every file, no ignored or should-panic tests,
//! every `GOVERNANCE_*` variable documented in docs/configuration.md, README's SDK snippet equal
//! to the quickstart example the suite runs, and every relative link in README.md and docs/*.md
//! resolving to a file (and none naming a design document the repository does not have).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The crate graph, as an allowlist: each workspace crate and the workspace crates it may
/// depend on (normal dependencies; dev-dependencies may add `gov-testdb` and lower layers).
/// A new crate or a new edge is a decision: add it here and to ARCHITECTURE.md's map.
const LAYERS: &[(&str, &[&str])] = &[
    ("gov-core", &[]),
    ("gov-store", &["gov-core"]),
    ("gov-policy", &["gov-core"]),
    ("gov-audit", &["gov-core", "gov-store"]),
    (
        "gov-sdk",
        &["gov-core", "gov-audit", "gov-store", "gov-policy"],
    ),
    ("gov-report", &["gov-sdk"]),
    ("gov-console", &["gov-sdk", "gov-report"]),
    ("gov-gateway", &["gov-sdk"]),
    ("gov-notify", &["gov-sdk"]),
    (
        "gov-cli",
        &[
            "gov-sdk",
            "gov-report",
            "gov-console",
            "gov-gateway",
            "gov-notify",
        ],
    ),
    ("gov-testdb", &["gov-core", "gov-audit", "gov-store"]),
    (
        "gov-bench",
        &[
            "gov-sdk",
            "gov-report",
            "gov-console",
            "gov-gateway",
            "gov-testdb",
        ],
    ),
    ("xtask", &[]),
];

/// Outside crates only some layers may use (normal dependencies): the database driver stays
/// in the store (and the test support crate, which creates and drops databases); the pure core
/// has no async runtime.
const EXTERNAL: &[(&str, &[&str])] = &[
    ("sqlx", &["gov-store", "gov-testdb"]),
    (
        "tokio",
        &[
            "gov-store",
            "gov-audit",
            "gov-sdk",
            "gov-report",
            "gov-console",
            "gov-gateway",
            "gov-notify",
            "gov-cli",
            "gov-testdb",
            "gov-bench",
        ],
    ),
];

/// One dependency edge of the workspace, as `cargo metadata` reports it.
#[derive(Debug)]
struct Edge {
    from: String,
    to: String,
    /// `None` for a normal dependency, `Some("dev")` or `Some("build")`.
    kind: Option<String>,
}

/// The workspace's crates and their dependency edges, from `cargo metadata --no-deps`.
fn workspace_edges(root: &Path) -> Result<(Vec<String>, Vec<Edge>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root)
        .output()?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    edges_of(&serde_json::from_slice(&out.stdout)?)
}

/// The crates and edges of a `cargo metadata` document.
fn edges_of(meta: &serde_json::Value) -> Result<(Vec<String>, Vec<Edge>)> {
    let Some(packages) = meta["packages"].as_array() else {
        bail!("cargo metadata: no packages");
    };
    let mut crates = Vec::new();
    let mut edges = Vec::new();
    for p in packages {
        let Some(name) = p["name"].as_str() else {
            continue;
        };
        crates.push(name.to_owned());
        for d in p["dependencies"].as_array().into_iter().flatten() {
            if let Some(to) = d["name"].as_str() {
                edges.push(Edge {
                    from: name.to_owned(),
                    to: to.to_owned(),
                    kind: d["kind"].as_str().map(str::to_owned),
                });
            }
        }
    }
    Ok((crates, edges))
}

/// Whether `lower` is a layer below `krate` in the crate map (directly or through others).
fn below(krate: &str, lower: &str) -> bool {
    LAYERS
        .iter()
        .find(|(c, _)| *c == krate)
        .is_some_and(|(_, deps)| deps.iter().any(|d| *d == lower || below(d, lower)))
}

/// What breaks the allowlists.
fn graph_problems(crates: &[String], edges: &[Edge]) -> Vec<String> {
    let mut problems = Vec::new();
    let allowed = |krate: &str| LAYERS.iter().find(|(c, _)| *c == krate).map(|(_, d)| *d);
    for c in crates {
        if allowed(c).is_none() {
            problems.push(format!(
                "{c} is not in xtask's crate map (LAYERS): add it with the crates it may use, and to ARCHITECTURE.md"
            ));
        }
    }
    for e in edges {
        let workspace = crates.contains(&e.to);
        let layer_ok = allowed(&e.from).is_none_or(|ok| ok.contains(&e.to.as_str()));
        let external_ok = EXTERNAL
            .iter()
            .find(|(x, _)| *x == e.to)
            .is_none_or(|(_, ok)| ok.contains(&e.from.as_str()));
        // Tests may use the test support crate and anything below the crate.
        let test_ok = e.to == "gov-testdb" || below(&e.from, &e.to);
        match e.kind.as_deref() {
            None if workspace && !layer_ok => problems.push(format!(
                "{} must not depend on {} (see ARCHITECTURE.md's crate map)",
                e.from, e.to
            )),
            None if !workspace && !external_ok => problems.push(format!(
                "{} must not depend on {} (see ARCHITECTURE.md)",
                e.from, e.to
            )),
            Some("dev") if workspace && !test_ok => problems.push(format!(
                "{}'s tests must not depend on {}: a crate above it",
                e.from, e.to
            )),
            _ => {}
        }
    }
    problems
}

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

fn problems() -> Vec<String> {
    let root = root();
    let mut problems = Vec::new();

    match workspace_edges(&root) {
        Ok((crates, edges)) => problems.extend(graph_problems(&crates, &edges)),
        Err(e) => problems.push(format!("the crate graph could not be read: {e}")),
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

    fn meta(edges: &[(&str, &str, Option<&str>)]) -> serde_json::Value {
        let mut names: Vec<&str> = super::LAYERS.iter().map(|(c, _)| *c).collect();
        names.extend(edges.iter().map(|(f, _, _)| *f));
        names.sort();
        names.dedup();
        let packages: Vec<_> = names
            .iter()
            .map(|n| {
                let deps: Vec<_> = edges
                    .iter()
                    .filter(|(f, _, _)| f == n)
                    .map(|(_, t, k)| serde_json::json!({ "name": t, "kind": k }))
                    .collect();
                serde_json::json!({ "name": n, "dependencies": deps })
            })
            .collect();
        serde_json::json!({ "packages": packages })
    }

    fn graph(edges: &[(&str, &str, Option<&str>)]) -> Vec<String> {
        let (crates, edges) = super::edges_of(&meta(edges)).expect("metadata");
        super::graph_problems(&crates, &edges)
    }

    #[test]
    fn the_crate_map_allows_only_its_edges() {
        assert!(graph(&[("gov-sdk", "gov-store", None), ("gov-store", "sqlx", None)]).is_empty());
        assert_eq!(
            graph(&[("gov-core", "gov-sdk", None)]),
            ["gov-core must not depend on gov-sdk (see ARCHITECTURE.md's crate map)"]
        );
        assert_eq!(
            graph(&[("gov-sdk", "sqlx", None), ("gov-core", "tokio", None)]),
            [
                "gov-core must not depend on tokio (see ARCHITECTURE.md)",
                "gov-sdk must not depend on sqlx (see ARCHITECTURE.md)"
            ]
        );
        assert_eq!(
            graph(&[("gov-new", "gov-core", None)]),
            [
                "gov-new is not in xtask's crate map (LAYERS): add it with the crates it may use, and to ARCHITECTURE.md"
            ]
        );
        // Dev-dependencies: the test support crate and lower layers, never a crate above.
        assert!(
            graph(&[
                ("gov-cli", "gov-testdb", Some("dev")),
                ("gov-cli", "gov-core", Some("dev")),
                ("gov-sdk", "tokio", Some("dev")),
            ])
            .is_empty()
        );
        assert_eq!(
            graph(&[("gov-store", "gov-sdk", Some("dev"))]),
            ["gov-store's tests must not depend on gov-sdk: a crate above it"]
        );
    }
}
