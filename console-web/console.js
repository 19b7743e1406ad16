// governance console: live events over SSE. No inline scripts (the CSP forbids them).
"use strict";

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  return td;
}

// The severity class of a kind, as the server's severity_class (pages/mod.rs) gives it.
function severity(kind) {
  if (kind === "agent.halted" || kind === "loop.detected") return "sev-critical";
  if (kind.endsWith(".denied") || kind === "contract.violated" || kind === "llm.error") return "sev-high";
  return "";
}

// A kind filter: exact, or a family (gate.*, *.denied).
function kindMatches(filter, kind) {
  if (!filter || filter === "*") return true;
  if (filter.endsWith("*")) return kind.startsWith(filter.slice(0, -1));
  if (filter.startsWith("*")) return kind.endsWith(filter.slice(1));
  return kind === filter;
}

function follow(table) {
  const status = document.getElementById("live-status");
  const toggle = document.getElementById("live-toggle");
  const field = (name) => { const f = document.querySelector("form.filters input[name=" + name + "]"); return f ? f.value : ""; };
  const agent = field("agent"), kind = field("kind"), session = field("session");
  const params = new URLSearchParams();
  if (agent) params.set("agent", agent);
  if (kind && !kind.includes("*")) params.set("kind", kind);
  const source = new EventSource(table.dataset.stream + "?" + params.toString());
  let paused = false, held = [];
  const show = (text) => { if (status) status.textContent = text; };
  if (toggle) toggle.addEventListener("click", () => {
    paused = !paused;
    toggle.setAttribute("aria-pressed", String(paused));
    toggle.textContent = paused ? "Resume" : "Pause";
    if (!paused) { held.forEach(add); held = []; show("live"); } else { show("paused"); }
  });
  source.onopen = () => show(paused ? "paused" : "live");
  // On reconnect the browser sends the last id it saw (Last-Event-ID: <chain>:<seq>) and the
  // server sends everything after it first, so a reconnect loses nothing.
  source.onerror = () => show("reconnecting…");
  // This page fell behind the live feed: the server says so, then sends what it missed from
  // the database, in order, before continuing live.
  source.addEventListener("lagged", (msg) => {
    const note = JSON.parse(msg.data);
    show("catching up (" + note.missed + " events behind)…");
  });
  function add(e) {
    const row = document.createElement("tr");
    row.className = ("fresh " + severity(e.kind)).trim();
    row.dataset.kind = e.kind;
    const payload = document.createElement("td");
    const code = document.createElement("code");
    code.textContent = (e.payload || "").slice(0, 200);
    payload.appendChild(code);
    const labels = ["Seq", "Time", "Agent", "Kind", "Session", "Actor"];
    [e.seq, e.occurred_at, e.agent_id, e.kind, e.session_id, e.actor].forEach((v, i) => {
      const td = cell(v); td.dataset.label = labels[i]; row.appendChild(td);
    });
    // The session links to its trace, as on the rows the server drew.
    if (e.session_id) {
      const td = row.cells[4];
      const a = document.createElement("a");
      a.href = "/agents/" + encodeURIComponent(e.agent_id) + "/sessions/" + encodeURIComponent(e.session_id);
      a.textContent = e.session_id;
      td.textContent = "";
      td.appendChild(a);
    }
    payload.dataset.label = "Payload";
    row.appendChild(payload);
    const body = table.tBodies[0];
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
    const empty = document.getElementById("events-empty");
    if (empty) empty.hidden = true;
  }
  source.addEventListener("audit", (msg) => {
    const e = JSON.parse(msg.data);
    if (!kindMatches(kind, e.kind) || (session && e.session_id !== session)) return;
    if (paused) { held.push(e); show("paused (" + held.length + " new)"); return; }
    if (status && status.textContent !== "live") show("live");
    add(e);
  });
}

// A live region (the dashboard, the approvals queue: an element with data-live, the page it
// comes from) redraws itself from that page, fetched and parsed, when an event arrives (only
// kinds starting with data-live-kinds, if set), at most every 300 ms, and every 15 s for
// heartbeats and clocks; never while the operator is typing in it (it tries again later).
function liveRegion(region) {
  const kinds = region.dataset.liveKinds || "";
  let timer = null;
  const redraw = async () => {
    timer = null;
    const active = document.activeElement;
    if (active && region.contains(active) && active.tagName === "INPUT" && active.value) {
      timer = setTimeout(redraw, 2000);
      return;
    }
    const res = await fetch(region.dataset.live, { credentials: "same-origin" });
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), "text/html");
    const fresh = doc.getElementById(region.id);
    if (!fresh) return;
    region.replaceChildren(...Array.from(fresh.childNodes).map((n) => document.importNode(n, true)));
    if (region.id === "dash") document.body.className = doc.body.className;
  };
  const soon = () => { if (!timer) timer = setTimeout(redraw, 300); };
  const source = new EventSource("/events/stream");
  // Tests (and curious operators) can see that the region follows the feed.
  source.onopen = () => { region.dataset.streamOpen = "true"; };
  source.addEventListener("audit", (msg) => {
    if (!kinds || JSON.parse(msg.data).kind.startsWith(kinds)) soon();
  });
  // Fell behind the live feed: redraw rather than trust what arrives.
  source.addEventListener("lagged", soon);
  setInterval(soon, 15000);
}

// The chain page verifies in the background and shows progress; without JS the form posts and
// the page shows the result when verification is done.
function verifyWithProgress(form) {
  const box = document.getElementById("verify-progress");
  const bar = box.querySelector("progress");
  const text = box.querySelector("span");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const csrf = form.dataset.csrf;
    const start = await fetch("/api/chain/verification", { method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" });
    if (!start.ok && start.status !== 409) { text.textContent = "could not start: " + start.status; box.hidden = false; return; }
    box.hidden = false;
    const poll = async () => {
      const res = await fetch("/api/chain/verification", { credentials: "same-origin" });
      const job = await res.json();
      if (job.status === "running") {
        bar.max = Math.max(job.total, 1); bar.value = job.checked;
        text.textContent = "verifying " + (job.chain || "") + ": " + job.checked + " of " + job.total + " events";
        setTimeout(poll, 300);
        return;
      }
      bar.max = 1; bar.value = 1;
      if (job.status === "failed") { text.textContent = "failed: " + job.error; return; }
      const r = job.report || { events_checked: 0, chains: [] };
      const bad = r.chains.find((c) => c.finding);
      text.textContent = job.status + ": " + r.events_checked + " events in " + r.chains.length + " chains" +
        (bad ? " — chain " + bad.chain_id + " fails at seq " + bad.finding.seq + " (" + bad.finding.reason + ")" : "");
      text.className = job.status;
      text.id = "verify-result";
    };
    poll();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const verify = document.getElementById("verify-form");
  if (verify) verifyWithProgress(verify);
  const table = document.getElementById("events");
  if (table) follow(table);
  document.querySelectorAll("[data-live]").forEach(liveRegion);
});
