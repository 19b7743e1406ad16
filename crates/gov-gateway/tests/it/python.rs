//! End to end with the official Python SDKs (`openai`, `anthropic` from PyPI), pointed at the
//! gateway: plain and streamed calls, a budget refusal and a bad key, then a halted agent. The
//! SDKs are installed into a virtual environment cached under the target directory
//! (`target/gateway-py`); when that fails the test fails and says why.

use std::path::{Path, PathBuf};
use std::process::Command;

use gov_sdk::MicroUsd;

use crate::support::{AGENT, Served, World, mock_provider};

const SCRIPT: &str = r#"
import os, sys
import openai, anthropic

url, key, phase = os.environ["GW_URL"], os.environ["GW_KEY"], sys.argv[1]
headers = {"x-governance-session": "py"}
msgs = [{"role": "user", "content": "Hello"}]
oa = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, default_headers=headers)
an = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, default_headers=headers)

if phase == "serve":
    r = oa.chat.completions.create(model="gpt-test", max_tokens=100, messages=msgs)
    assert r.choices[0].message.content == "Hello!", r
    assert r.usage.completion_tokens == 5, r.usage

    chunks = list(oa.chat.completions.create(model="gpt-test", max_tokens=100, messages=msgs,
                                             stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello!", text
    assert [c.usage.completion_tokens for c in chunks if c.usage] == [5], chunks

    chunks = list(oa.chat.completions.create(model="gpt-test", max_tokens=100, messages=msgs, stream=True))
    assert all(c.usage is None for c in chunks), chunks

    m = an.messages.create(model="claude-test", max_tokens=100, messages=msgs)
    assert m.content[0].text == "Hello!", m
    with an.messages.stream(model="claude-test", max_tokens=100, messages=msgs) as s:
        assert s.get_final_text() == "Hello!"

    try:
        oa.chat.completions.create(model="gpt-test", max_tokens=10_000_000, messages=msgs)
        raise SystemExit("a call over the budget went through")
    except openai.APIStatusError as e:
        assert e.status_code == 402 and e.body["code"] == "budget_exceeded", (e.status_code, e.body)
    try:
        with an.messages.stream(model="claude-test", max_tokens=10_000_000, messages=msgs) as s:
            s.get_final_text()
        raise SystemExit("a call over the budget went through")
    except anthropic.APIStatusError as e:
        assert e.status_code == 402, e.status_code

    bad = openai.OpenAI(base_url=url + "/v1", api_key="gk1_not-a-key", max_retries=0)
    try:
        bad.chat.completions.create(model="gpt-test", max_tokens=10, messages=msgs)
        raise SystemExit("a bad key went through")
    except openai.AuthenticationError:
        pass
elif phase == "halted":
    try:
        oa.chat.completions.create(model="gpt-test", max_tokens=10, messages=msgs)
        raise SystemExit("a halted agent went through")
    except openai.PermissionDeniedError as e:
        assert e.body["code"] == "agent_halted", e.body
    try:
        with an.messages.stream(model="claude-test", max_tokens=10, messages=msgs) as s:
            s.get_final_text()
        raise SystemExit("a halted agent went through")
    except anthropic.PermissionDeniedError:
        pass
print("ok", phase)
"#;

/// The target directory (where the virtual environment is cached).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

pub(crate) fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cached virtual environment `target/{name}` with `packages`, made on first use (in a
/// directory of its own, renamed into place, so concurrent runs do not share a half-made one).
pub(crate) fn venv(home: &Path, name: &str, packages: &[&str]) -> PathBuf {
    let dir = target_dir().join(name);
    let python = dir.join("bin/python");
    if python.exists() {
        return python;
    }
    let tmp = target_dir().join(format!("{name}.{}", std::process::id()));
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&tmp),
        "creating a Python virtual environment (python3 -m venv; install python3-venv)",
    );
    run(
        Command::new(tmp.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(packages)
            .env("HOME", home),
        &format!(
            "installing {} from PyPI (pip install; needs network access to PyPI)",
            packages.join(", ")
        ),
    );
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another run made it first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    python
}

#[tokio::test]
async fn the_official_python_sdks_work_through_the_gateway() {
    let home = tempfile::tempdir().expect("home");
    let home_path = home.path().to_owned();
    let python = tokio::task::spawn_blocking(move || {
        venv(&home_path, "gateway-py", &["openai", "anthropic"])
    })
    .await
    .expect("venv");
    let (up, seen) = mock_provider().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    let gw = Served::start(&world, &up, "").await;
    let script = home.path().join("agent.py");
    std::fs::write(&script, SCRIPT).expect("script");
    let phase = |p: &'static str| {
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .arg(p)
            .env_clear()
            .env("HOME", home.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GW_URL", &gw.url)
            .env("GW_KEY", &world.key);
        cmd
    };
    let mut serve = phase("serve");
    tokio::task::spawn_blocking(move || run(&mut serve, "the Python agent (serve)"))
        .await
        .expect("join");
    // One plain and two streamed OpenAI calls, one plain and one streamed Anthropic call; the
    // refused ones never reached the provider.
    assert_eq!(seen.count(), 5);
    gw.gov.llm().settled().await;
    assert_eq!(world.spent("py").await, 5 * (7 + 2 * 5));

    world
        .gov
        .presence()
        .halt_self(AGENT, "test halt")
        .await
        .expect("halt");
    let mut halted = phase("halted");
    tokio::task::spawn_blocking(move || run(&mut halted, "the Python agent (halted)"))
        .await
        .expect("join");
    assert_eq!(seen.count(), 5);
    gw.shutdown().await;
    world.assert_chain_clean().await;
}
