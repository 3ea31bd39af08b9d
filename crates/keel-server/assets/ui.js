// keel admin UI: refreshes the overview in place. Everything works without it except the live
// refresh and the charts.
"use strict";

function spark(svg, values) {
  const max = Math.max(1e-9, ...values);
  const step = values.length > 1 ? 120 / (values.length - 1) : 0;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(23 - (v / max) * 22).toFixed(1)}`);
  let line = svg.querySelector("polyline");
  if (!line) {
    line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    svg.appendChild(line);
  }
  line.setAttribute("points", points.join(" "));
  const last = values.length ? values[values.length - 1] : 0;
  svg.setAttribute("data-last", String(last));
}

function show(data) {
  const body = document.querySelector("#queues tbody");
  if (!body) return;
  const known = new Set();
  for (const q of data.queues) {
    known.add(q.name);
    const row = body.querySelector(`tr[data-q="${CSS.escape(q.name)}"]`);
    if (!row) { location.reload(); return; } // a new queue: render it server-side
    for (const cell of row.querySelectorAll("[data-f]")) {
      const v = q[cell.dataset.f];
      if (v !== undefined && cell.textContent !== String(v)) cell.textContent = String(v);
    }
    const dead = row.querySelector('[data-f="dead"]');
    if (dead) dead.classList.toggle("bad", q.dead > 0);
    for (const svg of row.querySelectorAll("svg[data-spark]")) {
      spark(svg, q.rates.map(r => r[svg.dataset.spark]));
    }
  }
}

// A session that ended (logged out elsewhere, token revoked) is sent to the login page by the
// server; follow it there instead of reading the login page as data.
function endedSession(res) {
  if (res.redirected && new URL(res.url).pathname === "/ui/login") {
    location.href = "/ui/login";
    return true;
  }
  return false;
}

async function refresh(status) {
  try {
    const res = await fetch("/ui/live", { credentials: "same-origin", headers: { accept: "application/json" } });
    if (endedSession(res)) return;
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    show(await res.json());
    status.textContent = `Updated ${new Date().toLocaleTimeString()}.`;
  } catch (e) {
    status.textContent = `Could not refresh (${e.message}); retrying.`;
  }
}

// An open job page follows its job: when it changes, the page is rendered again.
async function followJob(el) {
  try {
    const res = await fetch(`/ui/jobs/${el.dataset.job}/live`, { credentials: "same-origin" });
    if (endedSession(res) || !res.ok) return;
    const now = await res.json();
    if (now.updated_at !== el.dataset.updated) location.reload();
  } catch (_) { /* try again on the next tick */ }
}

document.addEventListener("DOMContentLoaded", () => {
  const job = document.getElementById("job-state");
  if (job) setInterval(() => followJob(job), 2000);
  const status = document.getElementById("live-status");
  if (!status) return;
  refresh(status);
  setInterval(() => refresh(status), 2000);
});
