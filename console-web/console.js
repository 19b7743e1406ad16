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

// The dashboard redraws itself (the page from the server, parsed) when an event arrives, at
// most every 300 ms, and every 15 s for heartbeats and the chain status; never while the
// operator is typing in it.
function liveDashboard(dash) {
  let timer = null;
  const redraw = async () => {
    timer = null;
    const active = document.activeElement;
    if (active && dash.contains(active) && active.tagName === "INPUT") return;
    const res = await fetch(dash.dataset.live, { credentials: "same-origin" });
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), "text/html");
    const fresh = doc.getElementById("dash");
    if (!fresh) return;
    dash.replaceChildren(...Array.from(fresh.childNodes).map((n) => document.importNode(n, true)));
    document.body.className = doc.body.className;
  };
  const soon = () => { if (!timer) timer = setTimeout(redraw, 300); };
  const source = new EventSource("/events/stream");
  source.addEventListener("audit", soon);
  source.addEventListener("lagged", soon);
  setInterval(soon, 15000);
}

// The approvals page redraws its queue from /api/approvals whenever a gate is requested or
// decided anywhere, so new requests appear without a reload.
function decisionForm(id, verb, csrf, danger) {
  const form = document.createElement("form");
  form.method = "post";
  form.action = "/approvals/" + encodeURIComponent(id) + "/" + verb;
  form.className = "inline";
  const token = document.createElement("input");
  token.type = "hidden"; token.name = "csrf"; token.value = csrf;
  const reason = document.createElement("input");
  reason.name = "reason"; reason.placeholder = "reason"; reason.required = true;
  reason.setAttribute("aria-label", "Reason to " + verb + " request " + id);
  const button = document.createElement("button");
  button.type = "submit"; button.textContent = verb === "approve" ? "Approve" : "Deny";
  if (danger) button.className = "danger";
  form.append(token, reason, button);
  return form;
}

async function redrawApprovals(table) {
  const res = await fetch("/api/approvals", { credentials: "same-origin" });
  if (!res.ok) return;
  const { pending } = await res.json();
  const csrf = table.dataset.csrf;
  const canDecide = table.dataset.canDecide === "true";
  const busy = table.querySelector("input[name=reason]:focus");
  if (busy && busy.value) return;
  while (table.rows.length > 1) table.deleteRow(1);
  for (const g of pending) {
    const row = table.insertRow();
    row.id = "gate-" + g.id;
    row.className = "fresh";
    [g.requested_at, g.agent_id, g.session_id, g.tool].forEach((v) => row.appendChild(cell(v)));
    const args = document.createElement("td");
    const code = document.createElement("code");
    code.textContent = JSON.stringify(g.args);
    args.appendChild(code);
    row.appendChild(args);
    row.appendChild(cell(g.expires_at));
    if (canDecide) {
      const td = document.createElement("td");
      td.append(decisionForm(g.id, "approve", csrf, false), decisionForm(g.id, "deny", csrf, true));
      row.appendChild(td);
    }
  }
  const none = document.getElementById("no-approvals");
  if (none) none.hidden = pending.length > 0;
}

function watchApprovals(table) {
  const source = new EventSource("/events/stream");
  source.addEventListener("audit", (msg) => {
    const e = JSON.parse(msg.data);
    if (e.kind.startsWith("gate.")) redrawApprovals(table);
  });
  // Fell behind the live feed: redraw from the API rather than trust what arrives.
  source.addEventListener("lagged", () => redrawApprovals(table));
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
  const dash = document.getElementById("dash");
  if (dash) liveDashboard(dash);
  const approvals = document.getElementById("approvals");
  if (approvals) watchApprovals(approvals);
});
