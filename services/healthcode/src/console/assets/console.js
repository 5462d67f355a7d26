// The operations console: polls /console/api/state every second and turns
// counter samples into rates between polls. No library, no build step.
"use strict";

const POLL_MS = 1000;
const HISTORY = 60;
const DOCS = "/console/docs/operations#";
let previous = null;
const history = { ingest: [], lookups: [] };

// Prometheus sample key -> {name, labels}.
function parseKey(key) {
  const brace = key.indexOf("{");
  if (brace < 0) return { name: key, labels: {} };
  const labels = {};
  const re = /(\w+)="((?:[^"\\]|\\.)*)"/g;
  let m;
  while ((m = re.exec(key.slice(brace))) !== null) labels[m[1]] = m[2];
  return { name: key.slice(0, brace), labels };
}

// Every node's samples summed per series (the cluster as one).
function merged(nodes) {
  const out = new Map();
  for (const node of nodes) {
    if (!node.samples) continue;
    for (const [key, value] of Object.entries(node.samples)) {
      out.set(key, (out.get(key) || 0) + value);
    }
  }
  return out;
}

function select(samples, name, match) {
  const out = [];
  for (const [key, value] of samples) {
    const { name: n, labels } = parseKey(key);
    if (n !== name) continue;
    if (match && !Object.entries(match).every(([k, v]) => (Array.isArray(v) ? v.includes(labels[k]) : labels[k] === v))) continue;
    out.push({ labels, value });
  }
  return out;
}

function sum(samples, name, match) {
  return select(samples, name, match).reduce((a, s) => a + s.value, 0);
}

// Per-second rate of a summed counter between the last two polls.
function rate(now, before, seconds, name, match) {
  if (!before || seconds <= 0) return 0;
  return Math.max(0, (sum(now, name, match) - sum(before, name, match)) / seconds);
}

// Rates grouped by one label.
function rateBy(now, before, seconds, name, label, match) {
  const out = {};
  for (const s of select(now, name, match)) {
    const key = s.labels[label] || "";
    const old = before ? select(before, name, { ...match, [label]: key }).reduce((a, x) => a + x.value, 0) : s.value;
    out[key] = (out[key] || 0) + (seconds > 0 ? Math.max(0, (s.value - old) / seconds) : 0);
  }
  return out;
}

// A quantile from histogram bucket counts added between two polls.
function quantile(now, before, name, match, q) {
  const buckets = new Map();
  for (const s of select(now, name + "_bucket", match)) {
    const le = s.labels.le === "+Inf" ? Infinity : parseFloat(s.labels.le);
    buckets.set(le, (buckets.get(le) || 0) + s.value);
  }
  if (before) {
    for (const s of select(before, name + "_bucket", match)) {
      const le = s.labels.le === "+Inf" ? Infinity : parseFloat(s.labels.le);
      buckets.set(le, (buckets.get(le) || 0) - s.value);
    }
  }
  const sorted = [...buckets.entries()].sort((a, b) => a[0] - b[0]);
  const total = sorted.length ? sorted[sorted.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [le, count] of sorted) {
    if (count >= rank) {
      if (le === Infinity) return lower;
      const inBucket = count - below;
      return inBucket > 0 ? lower + (le - lower) * ((rank - below) / inBucket) : le;
    }
    lower = le;
    below = count;
  }
  return lower;
}

function fmt(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function el(id) {
  return document.getElementById(id);
}

function rows(table, data) {
  table.replaceChildren(
    ...data.map((cells) => {
      const tr = document.createElement("tr");
      cells.forEach((c, i) => {
        const cell = document.createElement(i === 0 ? "th" : "td");
        cell.textContent = c;
        tr.append(cell);
      });
      return tr;
    }),
  );
}

function spark(svg, values) {
  const max = Math.max(1, ...values);
  const step = 120 / Math.max(1, HISTORY - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(30 - (v / max) * 28).toFixed(1)}`).join(" ");
  svg.innerHTML = `<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="${points}"/>`;
}

function push(list, value) {
  list.push(value);
  if (list.length > HISTORY) list.shift();
}

// What each degraded mode means, and where docs/operations.md says what to do.
function banners(b) {
  const out = [];
  if (b.spoolShare > 0.05)
    out.push(["spool", `The edge spool holds ${fmt(b.spool)} events (${fmt(b.spoolShare * 100)}% of its capacity): the event log is unreachable or slow, and accepted events wait on the edge's disk.`, "degraded-modes"]);
  if (b.storeErrors > 0 || b.storeRetries > 0)
    out.push(["store", `The status store is failing (${fmt(b.storeErrors + b.storeRetries, 1)} errors/s): lookups answer from their cache, flagged stale, and the materializer retries.`, "degraded-modes"]);
  if (b.lagGrowing)
    out.push(["lag", `The materializer is falling behind: ${fmt(b.lag)} records not yet applied, and growing. New results show late.`, "degraded-modes"]);
  if (b.shed > 0)
    out.push(["shedding", `Calls are being shed (${fmt(b.shed, 1)}/s refused with RESOURCE_EXHAUSTED): more load than the lanes admit. Stations retry after the hint they get.`, "lookups-admission-and-the-edge-spool"]);
  if (b.stale > 0)
    out.push(["stale", `Stale answers: ${fmt(b.stale, 1)}/s lookups answered from the cache because the store did not answer in time.`, "degraded-modes"]);
  const area = el("banners");
  area.replaceChildren(
    ...out.map(([kind, text, anchor]) => {
      const div = document.createElement("div");
      div.className = `banner banner-${kind}`;
      div.dataset.testid = `banner-${kind}`;
      div.textContent = text + " ";
      const a = document.createElement("a");
      a.href = DOCS + anchor;
      a.textContent = "What to do";
      div.append(a);
      return div;
    }),
  );
}

function render(state) {
  const now = merged(state.nodes);
  const at = Date.parse(state.as_of) / 1000;
  const before = previous ? previous.samples : null;
  const seconds = previous ? at - previous.at : 0;
  const lag = sum(now, "healthcode_materializer_lag_records");

  el("scope").textContent = state.nodes.length > 1 ? `${state.nodes.length} nodes (${state.source})` : `one process (${state.role})`;
  el("updated").textContent = `updated ${new Date(state.as_of).toLocaleTimeString()}`;

  const kinds = rateBy(now, before, seconds, "healthcode_ingest_events_total", "kind", { outcome: "accepted" });
  const ingest = Object.values(kinds).reduce((a, b) => a + b, 0);
  el("ingest-rate").textContent = fmt(ingest);
  el("ingest-total").textContent = fmt(sum(now, "healthcode_ingest_events_total", { outcome: "accepted" }));
  rows(el("ingest-kinds"), Object.entries(kinds).map(([k, v]) => [k, `${fmt(v, 1)}/s`]));
  push(history.ingest, ingest);
  spark(el("ingest-spark"), history.ingest);

  const lookupRpcs = { rpc: ["GetStatus", "BatchGetStatus"] };
  const lookups = rate(now, before, seconds, "healthcode_grpc_requests_total", lookupRpcs);
  el("lookup-rate").textContent = fmt(lookups);
  const p50 = quantile(now, before, "healthcode_grpc_request_seconds", lookupRpcs, 0.5);
  const p99 = quantile(now, before, "healthcode_grpc_request_seconds", lookupRpcs, 0.99);
  el("lookup-p50").textContent = p50 === null ? "–" : fmt(p50 * 1000, 1);
  el("lookup-p99").textContent = p99 === null ? "–" : fmt(p99 * 1000, 1);
  el("lookup-p99").className = p99 !== null && p99 * 1000 > state.budget_ms ? "over" : "";
  el("budget").textContent = fmt(state.budget_ms);
  push(history.lookups, lookups);
  spark(el("lookup-spark"), history.lookups);

  const colors = rateBy(now, before, seconds, "healthcode_lookup_answers_total", "color", {});
  const totalColors = Object.values(colors).reduce((a, b) => a + b, 0);
  const bar = el("color-bar");
  bar.replaceChildren(
    ...["green", "yellow", "red"].map((c) => {
      const span = document.createElement("span");
      span.className = `c-${c}`;
      span.style.width = totalColors > 0 ? `${(100 * (colors[c] || 0)) / totalColors}%` : "0";
      return span;
    }),
  );
  rows(el("color-table"), ["green", "yellow", "red"].map((c) => [c, `${fmt(colors[c] || 0, 1)}/s`]));

  const applied = rate(now, before, seconds, "healthcode_materializer_events_total", { result: "applied" });
  el("lag").textContent = fmt(lag);
  el("apply-rate").textContent = fmt(applied);
  el("drain").textContent = lag === 0 ? "now" : applied > 0 ? `~${fmt(lag / applied, 1)} s` : "– (nothing applied)";

  const storeErrors = rate(now, before, seconds, "healthcode_store_errors_total");
  const storeRetries = rate(now, before, seconds, "healthcode_materializer_store_retries_total");
  const stale = rate(now, before, seconds, "healthcode_lookup_reads_total", { source: "stale" });
  const unavailable = rate(now, before, seconds, "healthcode_lookup_reads_total", { source: "unavailable" });
  const storeFailing = storeErrors + storeRetries + unavailable > 0;
  el("store-health").textContent = storeFailing ? `failing (${fmt(storeErrors + storeRetries + unavailable, 1)} errors/s)` : "ok";
  el("store-health").className = storeFailing ? "over" : "ok";
  const spooled = rate(now, before, seconds, "healthcode_edge_spooled_total");
  el("log-health").textContent = spooled > 0 ? `spooling (${fmt(spooled, 1)} events/s to the edge spool)` : "ok";
  el("stale-rate").textContent = `${fmt(stale, 1)}/s`;
  const spool = sum(now, "healthcode_edge_spool_records");
  const capacity = sum(now, "healthcode_edge_spool_capacity_records");
  el("spool").textContent = capacity > 0 ? `${fmt(spool)} of ${fmt(capacity)} events` : "off";

  const shedLanes = rateBy(now, before, seconds, "healthcode_admission_shed_total", "lane", {});
  const limited = rate(now, before, seconds, "healthcode_auth_refused_total", { reason: "rate_limited" });
  rows(el("shed-table"), [...Object.entries(shedLanes).map(([l, v]) => [l, `${fmt(v, 1)}/s`]), ["rate limited", `${fmt(limited, 1)}/s`]]);
  const shed = Object.values(shedLanes).reduce((a, b) => a + b, 0) + limited;

  rows(el("station-table"), (state.stations || []).map((s) => [s.station, `${fmt(s.events)} events`]));
  const risks = state.site_risks || [];
  el("risk-table").replaceChildren();
  if (state.site_risks_error) rows(el("risk-table"), [["unavailable", state.site_risks_error]]);
  else if (!risks.length) rows(el("risk-table"), [["none", "no exposure site on record"]]);
  else
    rows(
      el("risk-table"),
      risks.map((r) => [r.risk_id, r.site_id, `${r.risky_from} → ${r.risky_until}`, r.retracted ? "retracted" : `${fmt(r.exposed_residents)} exposed`]),
    );
  const diff = state.policy_diff;
  el("diff").textContent = diff
    ? `${diff.candidate} against ${diff.current} at ${diff.as_of}: ${fmt(diff.changed)} of ${fmt(diff.residents)} residents would change color; ` +
      diff.transitions.filter((t) => t.from !== t.to).map((t) => `${t.from}→${t.to} ${fmt(t.count)}`).join(", ")
    : "no policy diff since this process started (healthcode policy diff --candidate FILE)";
  rows(el("node-table"), state.nodes.map((n) => [n.name, n.up ? "up" : `unreachable: ${n.error}`]));

  const lagHistory = previous ? previous.lags.concat([lag]).slice(-4) : [lag];
  const lagGrowing = lag > 1000 && lagHistory.length >= 3 && lagHistory.every((v, i) => i === 0 || v > lagHistory[i - 1]);
  banners({ spool, spoolShare: capacity > 0 ? spool / capacity : 0, storeErrors: storeErrors + unavailable, storeRetries, lag, lagGrowing, shed, stale });
  previous = { samples: now, at, lags: lagHistory };
}

async function poll() {
  try {
    const response = await fetch("/console/api/state", { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) {
      window.location.assign("/console");
      return;
    }
    if (response.ok) render(await response.json());
    else el("updated").textContent = `the console's data failed: HTTP ${response.status}`;
  } catch (e) {
    el("updated").textContent = `the server is unreachable: ${e}`;
  }
  setTimeout(poll, POLL_MS);
}

poll();
