// Riffle's web console: reads the REST API of the process that serves it and redraws once a
// second. No framework and no build step: plain DOM calls.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // the id of the job shown
let lastPlan = null;

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch (_) { json = { error: text }; }
  if (!res.ok) throw new Error((json && json.error) || res.statusText);
  return json;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

const rate = (r) => r >= 1e6 ? (r / 1e6).toFixed(2) + " M" : r >= 1e3 ? (r / 1e3).toFixed(1) + " k" : r.toFixed(0);
const pct = (x) => (100 * x).toFixed(0) + " %";
const bytes = (b) => b >= 1 << 20 ? (b / (1 << 20)).toFixed(1) + " MiB" : b >= 1024 ? (b / 1024).toFixed(1) + " KiB" : b + " B";

// Green when idle, towards red when busy, towards blue when backpressured.
function colour(busy, backpressured) {
  const mix = (a, b, t) => a.map((x, i) => Math.round(x + (b[i] - x) * Math.min(1, Math.max(0, t))));
  const idle = [198, 246, 213];
  const c = backpressured > busy ? mix(idle, [144, 205, 244], backpressured * 1.5) : mix(idle, [252, 129, 129], busy);
  return `rgb(${c.join(",")})`;
}

function say(text, error) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

// Jobs run here in part for a coordinator on another node (that node's console shows them).
let parts = [];

async function refreshJobs() {
  const all = await api("GET", "/jobs");
  parts = all.filter((j) => j.part);
  const jobs = all.filter((j) => !j.part);
  const select = $("job-select");
  const wanted = current || (location.hash.startsWith("#job=") ? location.hash.slice(5) : null);
  const running = jobs.filter((j) => j.state === "running");
  const pick = jobs.find((j) => j.id === wanted) || running[running.length - 1] || jobs[jobs.length - 1];
  select.replaceChildren(...jobs.map((j) => {
    const o = el("option", { value: j.id }, `${j.name} (${j.state})`);
    if (pick && j.id === pick.id) o.selected = true;
    return o;
  }));
  current = pick ? pick.id : null;
}

// Columns by depth: sources first, every chain one right of its deepest input.
function layout(chains) {
  const depth = {};
  const byName = Object.fromEntries(chains.map((c) => [c.name, c]));
  const d = (name, seen) => {
    if (depth[name] !== undefined) return depth[name];
    if (seen.has(name)) return 0;
    seen.add(name);
    const ins = (byName[name] || { inputs: [] }).inputs;
    depth[name] = ins.length ? 1 + Math.max(...ins.map((i) => d(i, seen))) : 0;
    return depth[name];
  };
  chains.forEach((c) => d(c.name, new Set()));
  const columns = [];
  chains.forEach((c) => (columns[depth[c.name]] = columns[depth[c.name]] || []).push(c.name));
  const pos = {};
  columns.forEach((col, x) => col.forEach((name, y) => (pos[name] = { x: 20 + x * 220, y: 20 + y * 90 })));
  return { pos, rows: Math.max(...columns.map((c) => c.length)) };
}

function drawGraph(job) {
  const g = $("graph");
  const { pos, rows } = layout(job.chains);
  g.setAttribute("height", String(40 + rows * 90));
  const defs = svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5",
    markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#718096" })));
  const parts = [defs];
  for (const c of job.chains) {
    for (const i of c.inputs) {
      const a = pos[i], b = pos[c.name];
      if (a && b) parts.push(svg("path", { class: "edge", d: `M ${a.x + 170} ${a.y + 30} L ${b.x} ${b.y + 30}` }));
    }
  }
  for (const c of job.chains) {
    const p = pos[c.name];
    const flow = c.source ? c.rate_out : c.rate_in;
    const title = svg("title", {}, `busy ${pct(c.busy)}, backpressured ${pct(c.backpressured)}`);
    parts.push(svg("g", { class: "op", "data-name": c.name, "data-parallelism": String(c.parallelism),
      "data-rate": String(flow), "data-busy": String(c.busy), "data-backpressured": String(c.backpressured) },
      title,
      svg("rect", { x: p.x, y: p.y, width: 170, height: 60, fill: colour(c.busy, c.backpressured) }),
      svg("text", { x: p.x + 8, y: p.y + 18, "font-weight": "600" }, c.name),
      svg("text", { x: p.x + 8, y: p.y + 35, class: "parallelism" }, `parallelism ${c.parallelism}`),
      svg("text", { x: p.x + 8, y: p.y + 52, class: "rate" }, `${rate(flow)} rec/s`)));
  }
  g.replaceChildren(...parts);
}

function drawTables(job, checkpoints, nodes) {
  $("subtasks").tBodies[0].replaceChildren(...job.subtasks.map((s) => {
    const f = s.figures;
    const cells = [s.chain, s.subtask, s.node, s.state,
      f ? rate(f.rate_in) : "–", f ? rate(f.rate_out) : "–", f ? pct(f.busy) : "–",
      f ? pct(f.backpressured) : "–", f ? f.queue : "–"];
    return el("tr", {}, ...cells.map((c) => el("td", {}, String(c))));
  }));
  $("checkpoints").tBodies[0].replaceChildren(...checkpoints.slice(-15).reverse().map((c) =>
    el("tr", {}, el("td", {}, String(c.id)), el("td", {}, c.duration_ms.toFixed(1) + " ms"),
      el("td", {}, bytes(c.bytes)), el("td", {}, c.savepoint ? "savepoint" : "checkpoint"))));
  $("nodes").tBodies[0].replaceChildren(...nodes.map((n) =>
    el("tr", {}, el("td", {}, n.name), el("td", {}, n.address), el("td", {}, n.state),
      el("td", {}, n.rtt_ms == null ? "–" : n.rtt_ms.toFixed(2) + " ms"), el("td", {}, String(n.reconnects)),
      el("td", {}, [n.this ? "this node" : "", n.coordinator ? "coordinator" : ""].filter(Boolean).join(", ")))));
}

function drawSummary(job) {
  const state = $("job-state");
  state.textContent = job.state;
  state.className = "state " + job.state;
  const facts = [`id ${job.id}`, `epoch ${job.epoch}`, `${job.checkpoints} checkpoints`];
  if (job.failure) facts.push(`failure: ${job.failure}`);
  $("job-facts").textContent = facts.join(" · ");
  const op = $("rescale-op");
  const ops = job.chains.filter((c) => !c.source);
  if (op.options.length !== ops.length || [...op.options].some((o, i) => o.value !== ops[i].operator)) {
    op.replaceChildren(...ops.map((c) => el("option", { value: c.operator }, c.name)));
  }
  const running = job.state === "running";
  for (const id of ["savepoint-btn", "rescale-btn", "stop-btn", "cancel-btn"]) $(id).disabled = !running;
}

async function refresh() {
  try {
    await refreshJobs();
    if (!current) {
      const elsewhere = parts.map((p) => `${p.name} (${p.state}, coordinated by ${p.coordinator})`);
      $("job-facts").textContent = elsewhere.length
        ? `no jobs coordinated in this process; parts of jobs run here: ${elsewhere.join(", ")}`
        : "no jobs in this process";
      return;
    }
    const [job, checkpoints, nodes] = await Promise.all([
      api("GET", `/jobs/${current}`), api("GET", `/jobs/${current}/checkpoints`), api("GET", "/cluster/nodes")]);
    lastPlan = job;
    drawSummary(job);
    drawGraph(job);
    drawTables(job, checkpoints, nodes);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    say("cannot reach the job: " + e.message, true);
  }
}

async function act(what, run) {
  if (!current) return;
  say(what + "…");
  try {
    say(what + ": " + (await run()));
  } catch (e) {
    say(what + " refused: " + e.message, true);
  }
  refresh();
}

$("job-select").addEventListener("change", (e) => { current = e.target.value; location.hash = "job=" + current; refresh(); });
$("savepoint-btn").addEventListener("click", () => act("savepoint", async () =>
  `savepoint ${(await api("POST", `/jobs/${current}/savepoints`)).savepoint} written`));
$("rescale-btn").addEventListener("click", () => act("rescale", async () => {
  const operator = $("rescale-op").value, parallelism = Number($("rescale-n").value);
  const r = await api("POST", `/jobs/${current}/rescale`, { operator, parallelism });
  return `${operator} now runs ${r.parallelism} subtasks (${r.keys_moved} of ${r.keys} keys moved, paused ${r.pause_ms.toFixed(1)} ms)`;
}));
$("stop-btn").addEventListener("click", () => act("stop", async () =>
  `stopped at savepoint ${(await api("POST", `/jobs/${current}/stop`, { savepoint: true })).savepoint}`));
$("cancel-btn").addEventListener("click", () => act("cancel", async () => {
  await api("POST", `/jobs/${current}/stop`, { savepoint: false });
  return "cancelled";
}));

refresh();
setInterval(refresh, 1000);
