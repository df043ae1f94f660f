// Jobs: filter by status and task, a page at a time, rows updating live.
// Each row carries data-job-id and data-status.

import { api } from "../api.js";
import { h, progressBar, replace, setProgress, throttle } from "../dom.js";
import { ago, between, duration, shortId } from "../format.js";
import { url } from "../router.js";
import { isOperator } from "../session.js";
import { FINISHED, STATUSES, notice, option, setStatus, statusBadge } from "../widgets.js";

const PAGE = 25;

export function render(root) {
  document.title = "Jobs · geoworker";
  const query = new URLSearchParams(location.search);
  const state = { status: query.get("status") || "", task: query.get("task") || "",
                  offset: Math.max(0, Number(query.get("offset")) || 0), next: null };
  const operator = isOperator();
  const rows = new Map();

  const statusFilter = h("select", { id: "filter-status", onchange: () => { state.status = statusFilter.value; state.offset = 0; load(); } },
                         option("", "any status"), STATUSES.map((s) => option(s, s, s === state.status)));
  const taskFilter = h("select", { id: "filter-task", onchange: () => { state.task = taskFilter.value; state.offset = 0; load(); } },
                       option("", "any task"), state.task ? option(state.task, state.task, true) : null);
  api("/api/tasks").then((catalog) => {
    replace(taskFilter, option("", "any task"),
            catalog.tasks.map((t) => option(t.name, t.name, t.name === state.task)));
  }).catch(() => {});

  const body = h("tbody");
  const message = h("div", { class: "message" });
  const prev = h("button", { type: "button", class: "secondary", text: "← Newer", onclick: () => { state.offset = Math.max(0, state.offset - PAGE); load(); } });
  const next = h("button", { type: "button", class: "secondary", text: "Older →", onclick: () => { state.offset = state.next; load(); } });
  const range = h("span", { class: "muted range" });

  replace(root,
    h("div", { class: "page-head" }, h("h1", { text: operator ? "All jobs" : "My jobs" }),
      h("a", { class: "button", href: url("/ui/upload"), "data-nav": true, text: "Upload a GeoTIFF" })),
    h("div", { class: "filters" },
      h("label", {}, "Status ", statusFilter), h("label", {}, "Task ", taskFilter)),
    message,
    h("div", { class: "table-wrap" }, h("table", { class: "jobs" },
      h("thead", {}, h("tr", {}, h("th", { text: "Job" }), h("th", { text: "Task" }), h("th", { text: "Status" }),
        h("th", { text: "Progress", class: "wide" }), h("th", { text: "Attempts", class: "wide" }), h("th", { text: "Created" }),
        h("th", { text: "Duration", class: "wide" }), operator ? h("th", { text: "Owner", class: "wide" }) : null)),
      body)),
    h("div", { class: "pager" }, prev, range, next));

  function row(job) {
    const badge = statusBadge(job.status);
    const bar = progressBar(job.progress, `progress of job ${shortId(job.id)}`);
    const created = h("td", { title: job.createdAt });
    const took = h("td", { class: "wide num" });
    const attempts = h("td", { class: "wide num" });
    const tr = h("tr", { dataset: { jobId: job.id, status: job.status } },
      h("td", {}, h("a", { href: url(`/ui/jobs/${job.id}`), "data-nav": true, class: "mono", text: shortId(job.id) })),
      h("td", { text: job.taskType }), h("td", {}, badge), h("td", { class: "wide" }, bar), attempts, created, took,
      operator ? h("td", { class: "wide", text: job.owner || "–" }) : null);
    const entry = { tr, badge, bar, created, took, attempts, job };
    paint(entry);
    return entry;
  }

  function paint(entry) {
    const { job } = entry;
    entry.tr.dataset.status = job.status;
    setStatus(entry.badge, job.status);
    setProgress(entry.bar, job.progress);
    entry.attempts.textContent = `${job.attempts} of ${job.maxAttempts}`;
    entry.created.textContent = ago(job.createdAt);
    const ran = job.status === "running" || FINISHED.has(job.status);
    const seconds = ran ? between(job.startedAt, job.status === "running" ? null : job.finishedAt) : null;
    entry.took.textContent = seconds === null ? "–" : duration(seconds);
  }

  async function load() {
    const params = new URLSearchParams({ limit: PAGE, offset: state.offset });
    if (state.status) params.set("status", state.status);
    if (state.task) params.set("task", state.task);
    const shown = new URLSearchParams(params);
    shown.delete("limit");
    if (!state.offset) shown.delete("offset");
    history.replaceState(null, "", location.pathname + (shown.toString() ? `?${shown}` : ""));
    try {
      const data = await api(`/api/geo-jobs?${params}`);
      rows.clear();
      replace(body, data.jobs.map((job) => { const entry = row(job); rows.set(job.id, entry); return entry.tr; }));
      state.next = data.nextOffset;
      replace(message, data.jobs.length ? null : h("p", { class: "muted", text: state.status || state.task ?
        "No job matches these filters." : "No jobs yet. Upload a GeoTIFF to start one." }));
      prev.disabled = state.offset === 0;
      next.disabled = data.nextOffset === null;
      range.textContent = data.jobs.length ? `${state.offset + 1}–${state.offset + data.jobs.length}` : "";
    } catch (err) {
      if (err.status !== 401) replace(message, notice(err.message));
    }
  }
  const reload = throttle(load, 1000);

  function onEvent(name, change) {
    if (name === "resync") return reload();
    if (name !== "job") return;
    const entry = rows.get(change.id);
    if (!entry) {
      // a new job (or one queued again) may belong on this page; others are not shown here
      if (state.offset === 0 && (change.status === "pending" || change.status === "queued")) reload();
      return;
    }
    const moved = entry.job.status !== change.status;
    entry.job = { ...entry.job, status: change.status, progress: change.progress };
    paint(entry);
    if (moved) reload(); // timestamps and attempts changed with the status
  }

  const ticker = setInterval(() => rows.forEach(paint), 10000);
  load();
  return { topics: ["jobs"], onOpen: reload, onEvent, cleanup: () => { clearInterval(ticker); reload.cancel(); } };
}
