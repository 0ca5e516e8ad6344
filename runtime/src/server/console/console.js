// agentrt console: submit a task and watch its pipeline run live, browse past runs, see the
// plugins and the statistics. Plain browser JavaScript against the public HTTP API — nothing
// here that a client of /v1/pipeline/runs, /plugins and /stats could not do itself.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
};

// --- API -----------------------------------------------------------------------------------

const keyInput = $("api-key");
keyInput.value = localStorage.getItem("agentrt-key") || "";
keyInput.addEventListener("change", () => localStorage.setItem("agentrt-key", keyInput.value));

function headers(extra = {}) {
  const h = { ...extra };
  if (keyInput.value) h.Authorization = `Bearer ${keyInput.value}`;
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: headers(options.headers) });
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try {
      const body = await res.json();
      if (body.error) message = `${body.error.code}: ${body.error.message}`;
    } catch (_) { /* not JSON */ }
    const error = new Error(message);
    error.status = res.status;
    // Seconds to wait before asking again, where the server says (429, 503).
    error.retryAfter = Number(res.headers.get("retry-after")) || 0;
    throw error;
  }
  return res;
}

// Server-sent events over fetch (EventSource cannot send an API key). True when the server
// says nothing is left to send (204: the run has ended); `onOpen` is told when a stream opens.
async function streamEvents(path, onEvent, signal, onOpen = () => {}) {
  const res = await api(path, { signal, headers: { Accept: "text/event-stream" } });
  if (res.status === 204 || !res.body) return true;
  onOpen();
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      let seq = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("id:")) seq = Number(line.slice(3).trim());
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(type, JSON.parse(data.join("\n")), seq);
    }
  }
}

// --- Tabs ----------------------------------------------------------------------------------

const loaders = { history: loadHistory, plugins: loadPlugins, stats: loadStats };
for (const button of document.querySelectorAll("nav button")) {
  button.addEventListener("click", () => showTab(button.dataset.tab));
}
function showTab(name) {
  for (const b of document.querySelectorAll("nav button")) {
    b.classList.toggle("active", b.dataset.tab === name);
    if (b.dataset.tab === name) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== `tab-${name}`;
  showError("");
  if (loaders[name]) loaders[name]().catch((e) => showError(e.message));
}

// --- A run ---------------------------------------------------------------------------------

let following = null; // AbortController of the stream being shown

function badge(node, text) {
  node.textContent = text.replace("_", " ");
  node.className = `badge ${text}`;
}

function resetRunView(id, task) {
  $("run-view").hidden = false;
  $("run-id").textContent = id;
  $("run-task").textContent = task || "";
  badge($("run-state"), "queued");
  for (const id of ["timeline", "tokens", "checks", "code", "summary", "score"]) $(id).textContent = "";
  $("tests").tBodies[0].textContent = "";
  $("verdict").textContent = "";
  $("verdict").className = "badge";
}

const stageItems = new Map();
// Where the model's text of the call in progress goes.
let tokenTarget = null;
// Each attempt's checks and tests events, to show the one chosen for review again.
const attempts = new Map();
let latestAttempt = 0;

function seenAttempt(n) {
  latestAttempt = Math.max(latestAttempt, n);
  if (!attempts.has(n)) attempts.set(n, {});
  return attempts.get(n);
}

function renderCode(code, findings) {
  const byLine = new Map();
  for (const f of findings) {
    if (!byLine.has(f.line)) byLine.set(f.line, []);
    byLine.get(f.line).push(f);
  }
  const view = $("code");
  view.textContent = "";
  const whole = byLine.get(0) || [];
  for (const f of whole) view.append(findingNode(f));
  code.split("\n").forEach((text, i) => {
    const here = byLine.get(i + 1) || [];
    const worst = ["error", "warning", "info"].find((s) => here.some((f) => f.severity === s));
    view.append(el("div", { class: `line ${worst || ""}` }, el("span", { class: "no" }, String(i + 1)), el("span", {}, text)));
    for (const f of here) view.append(findingNode(f));
  });
}

function findingNode(f) {
  const where = f.line ? `line ${f.line}${f.column ? ":" + f.column : ""}` : "whole file";
  const text = `${f.severity} ${f.rule_id} (${where}): ${f.message}${f.suggestion ? " — " + f.suggestion : ""}`;
  return el("div", { class: `finding ${f.severity}`, "data-testid": "finding", "data-rule": f.rule_id, "data-line": String(f.line) }, text);
}

const handlers = {
  stage_started(e) {
    badge($("run-state"), "running");
    const item = el("li", {}, `${e.stage} · ${e.plugin} · attempt ${e.attempt} …`);
    stageItems.set(`${e.stage}/${e.plugin}/${e.attempt}`, item);
    $("timeline").append(item);
    // Model text comes from generation and review: a header per call keeps them apart, and
    // the text itself goes into a span of its own.
    if (e.stage === "generate" || e.stage === "review") {
      $("tokens").append(el("span", { class: "muted" }, `\n— ${e.stage} · ${e.plugin} · attempt ${e.attempt} —\n`));
      tokenTarget = null;
    }
  },
  tokens(e) {
    if (!tokenTarget) {
      tokenTarget = el("span", { "data-testid": "token-text" });
      $("tokens").append(tokenTarget);
    }
    // Kept at the newest text only while the reader is there: one who scrolled up to read
    // is left where they are.
    const out = $("tokens");
    const atEnd = out.scrollHeight - out.scrollTop - out.clientHeight < 24;
    tokenTarget.append(e.text);
    if (atEnd) out.scrollTop = out.scrollHeight;
  },
  stage_finished(e) {
    const r = e.report;
    const key = `${r.stage}/${r.plugin}/${r.attempt}`;
    const item = stageItems.get(key) || $("timeline").appendChild(el("li"));
    item.textContent = `${r.stage} · ${r.plugin} · attempt ${r.attempt} · ${r.status} · ${r.duration_ms} ms${r.tokens ? ` · ${r.tokens} tokens` : ""}${r.error ? ` · ${r.error.code} ${r.error.message}` : ""}`;
  },
  checks(e) {
    seenAttempt(e.attempt).checks = e;
    const list = $("checks");
    list.textContent = "";
    for (const c of e.checks) {
      const b = el("span", { class: `badge ${c.status}` }, `${c.name}: ${c.status}, ${c.findings} findings`);
      list.append(b, " ");
    }
    renderCode(e.code || "", e.findings);
  },
  tests(e) {
    seenAttempt(e.attempt).tests = e;
    const body = $("tests").tBodies[0];
    body.textContent = "";
    if (e.report.setup_error) body.append(el("tr", {}, el("td", { colSpan: 3 }, `did not load: ${e.report.setup_error}`)));
    for (const t of e.report.results) {
      const status = el("span", { class: `badge ${t.status}` }, t.status);
      body.append(el("tr", { "data-testid": "test-row" }, el("td", {}, t.name), el("td", {}, status), el("td", {}, t.message)));
    }
  },
  retry(e) {
    const on = e.model ? ` on model ${e.model}` : "";
    $("timeline").append(el("li", { class: "retry" }, `retry ${e.stage}${on} (attempt ${e.attempt}): ${e.reason}`));
  },
  recovery(e) {
    $("timeline").append(el("li", { class: "retry" }, `error handler: ${e.decision} after ${e.stage} of attempt ${e.attempt} failed (${e.code}): ${e.reason}`));
  },
  // The review is of the best attempt, not always the last: show its code, checks and tests.
  chosen(e) {
    const chosen = attempts.get(e.attempt);
    if (!chosen || e.attempt === latestAttempt) return;
    $("timeline").append(el("li", {}, `attempt ${e.attempt} chosen for review (its tests did best)`));
    if (chosen.checks) handlers.checks(chosen.checks);
    if (chosen.tests) handlers.tests(chosen.tests);
  },
  review(e) {
    badge($("verdict"), e.review.verdict);
    $("score").textContent = `score ${e.review.score.toFixed(1)} / 10`;
    $("summary").textContent = e.review.summary;
  },
  done(e) {
    badge($("run-state"), e.state);
    if (e.error) $("timeline").append(el("li", { class: "retry" }, `${e.error.code}: ${e.error.message}`));
    $("cancel").hidden = true;
  },
};

async function follow(id, task) {
  if (following) following.abort();
  following = new AbortController();
  resetRunView(id, task);
  stageItems.clear();
  attempts.clear();
  latestAttempt = 0;
  tokenTarget = null;
  $("cancel").hidden = false;
  // A stream that ends before the run's `done` (a proxy's timeout, a dropped connection, a
  // server restart) is resumed after the last event seen, waiting as the server asks while it
  // starts (503) or while the key is over its rate (429). A refusal (unknown run, a key) is
  // shown at once; so is a server that has not answered for FOLLOW_GIVE_UP_MS, and streams
  // that keep ending with nothing (FOLLOW_EMPTY_STREAMS in a row: a proxy cutting them).
  const signal = following.signal;
  let last = 0;
  let ended = false;
  let fruitless = 0;
  let failingSince = null;
  let emptyStreams = 0;
  let retrying = false;
  let opened = false;
  const onEvent = (type, data, seq) => {
    if (seq) last = seq;
    if (type === "done") ended = true;
    if (handlers[type]) handlers[type](data);
  };
  // A stream answered: the server is back. A queued run may then send nothing for long while
  // it waits, which is not a lost stream.
  const onOpen = () => {
    opened = true;
    failingSince = null;
    if (retrying && !signal.aborted) showError("");
    retrying = false;
  };
  const lost = (message) => {
    showError(message);
    badge($("run-state"), "unknown");
    $("cancel").hidden = true;
  };
  while (!ended && !signal.aborted) {
    const before = last;
    let wait = 0;
    opened = false;
    try {
      const over = await streamEvents(`/v1/pipeline/runs/${encodeURIComponent(id)}/events?after=${last}`, onEvent, signal, onOpen);
      if (over) ended = true;
    } catch (e) {
      if (e.name === "AbortError") return;
      if (e.status && !RETRIED_STATUSES.includes(e.status)) {
        lost(e.message);
        return;
      }
      if (e.status) {
        wait = 1000 * (e.retryAfter || 5);
        showError(`${e.message} (following the run again in ${Math.round(wait / 1000)} s)`);
        retrying = true;
      }
    }
    // An aborted view leaves the error box to the view that replaced it.
    if (signal.aborted) return;
    if (ended) {
      if (retrying) showError("");
      return;
    }
    if (last > before) {
      fruitless = 0;
      emptyStreams = 0;
    } else {
      fruitless += 1;
      if (opened) emptyStreams += 1;
    }
    if (!opened && failingSince === null) failingSince = Date.now();
    const silent = failingSince !== null && Date.now() - failingSince > FOLLOW_GIVE_UP_MS;
    if (silent || emptyStreams > FOLLOW_EMPTY_STREAMS) {
      lost("lost the run's event stream; open the run again from the history");
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, wait || Math.min(5000, 500 * fruitless)));
  }
}

// Answers after which a run's stream is asked for again: a key over its rate, a proxy's
// failure, a server starting or restarting.
const RETRIED_STATUSES = [429, 502, 503, 504];
// How long the server may not answer a run's stream, across reconnections, before the view
// gives up (a restart on a small machine takes a minute or two).
const FOLLOW_GIVE_UP_MS = 3 * 60 * 1000;
// Streams in a row that open and end with no event before the view gives up (about 2.5
// minutes at the longest pause between them).
const FOLLOW_EMPTY_STREAMS = 30;

$("task-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  // One run per click: a double click must not submit the task twice, however fast the
  // server answers (the button stays off for SUBMIT_PAUSE_MS after a run is accepted).
  const submit = $("submit");
  if (submit.disabled) return;
  submit.disabled = true;
  let pause = 0;
  showError("");
  const body = {
    task_description: $("task").value,
    language: $("language").value,
  };
  // An empty field leaves the server's default, not 0.
  const retries = $("retries").value.trim();
  if (retries !== "") body.max_retries = Number(retries);
  try {
    const res = await api("/v1/pipeline/runs", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const run = await res.json();
    pause = SUBMIT_PAUSE_MS;
    follow(run.id, body.task_description);
  } catch (e) {
    showError(e.message);
  } finally {
    setTimeout(() => { submit.disabled = false; }, pause);
  }
});
const SUBMIT_PAUSE_MS = 1000;

$("cancel").addEventListener("click", async () => {
  const id = $("run-id").textContent;
  try {
    await api(`/v1/pipeline/runs/${encodeURIComponent(id)}`, { method: "DELETE" });
  } catch (e) {
    showError(e.message);
  }
});

// --- History -------------------------------------------------------------------------------

// Where the next page of the history starts (the list's `next_before`), if there is one.
let historyNext = null;

async function loadHistory(more = false) {
  let path = "/v1/pipeline/runs?limit=50";
  if (more && historyNext) {
    path += `&before=${historyNext.before}&before_id=${encodeURIComponent(historyNext.id)}`;
  }
  const list = await (await api(path)).json();
  const rows = $("history-rows");
  if (!more) rows.textContent = "";
  for (const run of list.data) {
    const state = el("span", { class: `badge ${run.state}` }, run.state);
    const task = run.task_description || "";
    // The id is a button: a row opens from the keyboard too.
    const open = el("button", { type: "button", class: "link", "data-testid": "history-open" }, el("code", {}, run.id));
    const row = el("tr", { "data-testid": "history-row", "data-run": run.id },
      el("td", {}, open), el("td", { class: "task", title: task }, task),
      el("td", {}, state), el("td", {}, new Date(run.created_at_ms).toLocaleString()));
    // Opening a past run replays its stored events through the same view.
    row.addEventListener("click", () => {
      showTab("run");
      follow(run.id, run.task_description);
    });
    rows.append(row);
  }
  historyNext = list.next_before != null ? { before: list.next_before, id: list.next_before_id } : null;
  $("history-more").hidden = !historyNext;
}

$("history-more").addEventListener("click", () => {
  // One page at a time: a second click while one loads would add the same runs again.
  const more = $("history-more");
  if (more.disabled) return;
  more.disabled = true;
  loadHistory(true).catch((e) => showError(e.message)).finally(() => { more.disabled = false; });
});

// --- Plugins -------------------------------------------------------------------------------

async function loadPlugins() {
  const [body, stats] = await Promise.all([
    api("/plugins").then((r) => r.json()),
    api("/stats").then((r) => r.json()),
  ]);
  const cards = $("plugin-cards");
  cards.textContent = "";
  for (const p of body.plugins) {
    const source = p.source && p.source.kind === "file" ? p.source.path : "built in";
    // Health: loaded, and how its calls went since the counters started.
    const calls = (stats.plugins || {})[p.name];
    const health = !calls || calls.requests === 0
      ? el("span", { class: "badge ok" }, "loaded")
      : calls.failures === 0
        ? el("span", { class: "badge ok" }, `healthy · ${calls.requests} call${calls.requests === 1 ? "" : "s"}`)
        : el("span", { class: "badge failed" }, `${calls.failures} of ${calls.requests} calls failed`);
    const latency = calls && calls.requests ? ` · ${calls.avg_latency_ms.toFixed(0)} ms per call` : "";
    cards.append(el("div", { class: "card", "data-testid": "plugin-card", "data-plugin": p.name },
      el("h4", {}, `${p.name} `, health),
      el("div", { class: "muted" }, `${p.world} · v${p.version} · ${p.wit || ""} · ${source}`),
      el("p", {}, p.description || ""),
      el("div", {}, el("strong", {}, "granted: "), p.granted_summary || ""),
      el("div", { class: "muted" }, `${(p.size_bytes / 1e6).toFixed(2)} MB · compiled in ${p.compile_ms} ms${p.cached ? " (cache)" : ""}${latency}`)));
  }
  const refused = $("refused");
  refused.textContent = "";
  for (const r of body.refused || []) {
    refused.append(el("p", { class: "finding error", "data-testid": "refused" },
      `refused ${r.file}: ${r.code} ${r.message}${r.keeping ? ` (keeping ${r.keeping})` : ""}`));
  }
}

// --- Statistics ----------------------------------------------------------------------------

function barChart(target, rows) {
  if (!rows.length) {
    target.textContent = "no data yet";
    return;
  }
  const width = 640, bar = 18, gap = 6, label = 200;
  const max = Math.max(1, ...rows.map((r) => r.value));
  const height = rows.length * (bar + gap) + gap;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", Math.max(height, 24));
  rows.forEach((r, i) => {
    const y = gap + i * (bar + gap);
    const text = document.createElementNS(ns, "text");
    text.setAttribute("x", 4); text.setAttribute("y", y + bar - 5); text.setAttribute("font-size", 12);
    text.textContent = r.label;
    const w = Math.max(1, ((width - label - 60) * r.value) / max);
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", label); rect.setAttribute("y", y); rect.setAttribute("width", w); rect.setAttribute("height", bar);
    rect.setAttribute("fill", r.color || "#2c5cc5");
    const value = document.createElementNS(ns, "text");
    value.setAttribute("x", label + w + 4); value.setAttribute("y", y + bar - 5); value.setAttribute("font-size", 12);
    value.textContent = r.text ?? String(r.value);
    svg.append(text, rect, value);
  });
  target.textContent = "";
  target.append(svg);
}

async function loadStats() {
  const s = await (await api("/stats")).json();
  $("stats-totals").textContent = `${s.totals.requests} requests, ${s.totals.failures} failed, ${s.totals.tokens} tokens, up ${s.uptime_seconds} s`;
  const endpoints = Object.entries(s.endpoints);
  barChart($("chart-requests"), endpoints.map(([k, v]) => ({ label: k, value: v.requests, text: `${v.requests} (${v.failures} failed)` })));
  barChart($("chart-latency"), endpoints.map(([k, v]) => ({ label: k, value: v.avg_latency_ms, text: `${v.avg_latency_ms.toFixed(0)} ms` })));
  const plugins = Object.entries(s.plugins);
  barChart($("chart-plugins"), plugins.flatMap(([k, v]) => [
    { label: k, value: v.requests, text: `${v.requests} calls` },
    { label: "", value: v.failures, color: "#b3261e", text: `${v.failures} failed` },
  ]));
}

// --- Health --------------------------------------------------------------------------------

// Asked again every HEALTH_EVERY_MS: a server restarting, starting or degraded says so here.
const HEALTH_EVERY_MS = 10 * 1000;
function refreshHealth() {
  fetch("/health").then((r) => r.json()).then((h) => {
    const stage = h.stage ? ` (${h.stage})` : "";
    const models = (h.models || []).map((m) => m.id).join(", ");
    $("health").textContent = `${h.status}${stage} · ${models} · v${h.version}`;
  }).catch(() => {
    $("health").textContent = "not answering";
  });
}
refreshHealth();
setInterval(refreshHealth, HEALTH_EVERY_MS);
