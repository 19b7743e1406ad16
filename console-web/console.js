// governance console: live events over SSE. No inline scripts (the CSP forbids them).
"use strict";

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  return td;
}

function follow(table) {
  const status = document.getElementById("live-status");
  const params = new URLSearchParams();
  const agent = document.querySelector("form.filters input[name=agent]");
  const kind = document.querySelector("form.filters input[name=kind]");
  if (agent && agent.value) params.set("agent", agent.value);
  if (kind && kind.value) params.set("kind", kind.value);
  const source = new EventSource(table.dataset.stream + "?" + params.toString());
  source.onopen = () => { if (status) status.textContent = "live"; };
  // On reconnect the browser sends the last id it saw (Last-Event-ID: <chain>:<seq>) and the
  // server sends everything after it first, so a reconnect loses nothing.
  source.onerror = () => { if (status) status.textContent = "reconnecting…"; };
  // This page fell behind the live feed: the server says so, then sends what it missed from
  // the database, in order, before continuing live.
  source.addEventListener("lagged", (msg) => {
    const note = JSON.parse(msg.data);
    if (status) status.textContent = "catching up (" + note.missed + " events behind)…";
  });
  source.addEventListener("audit", (msg) => {
    if (status && status.textContent !== "live") status.textContent = "live";
    const e = JSON.parse(msg.data);
    const row = document.createElement("tr");
    row.className = "fresh";
    row.dataset.kind = e.kind;
    const payload = document.createElement("td");
    const code = document.createElement("code");
    code.textContent = (e.payload || "").slice(0, 200);
    payload.appendChild(code);
    [e.seq, e.occurred_at, e.agent_id, e.kind, e.session_id, e.actor].forEach((v) => row.appendChild(cell(v)));
    row.appendChild(payload);
    const body = table.tBodies[0];
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
  });
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
  const approvals = document.getElementById("approvals");
  if (approvals) watchApprovals(approvals);
});
