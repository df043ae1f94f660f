// Overview (operators): counts, the last hour, the queue, durations, failures, and every worker
// process, all pushed by the live stream.

import { api } from "../api.js";
import { h, progressBar, replace } from "../dom.js";
import { ago, bytes, duration, errorText, shortId } from "../format.js";
import { finishedChart } from "../chart.js";
import { url } from "../router.js";
import { isOperator } from "../session.js";
import { STATUSES, notice, statusBadge } from "../widgets.js";

export function render(root) {
  document.title = "Overview · geoworker";
  if (!isOperator()) {
    replace(root, h("h1", { text: "Overview" }),
            notice("The overview is for operators (a token with \"role\": \"operator\"). Your jobs are on the Jobs page.", "info"));
    return {};
  }
  const counts = h("div", { class: "counts", id: "counts" });
  const queue = h("dl", { class: "facts", id: "queue" });
  const chart = h("div", { class: "chart-box", id: "chart" });
  const legend = h("p", { class: "legend" }, h("span", { class: "swatch ok" }), "succeeded ", h("span", { class: "swatch bad" }), "failed");
  const durations = h("tbody");
  const failures = h("tbody");
  const workers = h("tbody");
  const message = h("div", { class: "message" });
  let overview = null, board = null;

  replace(root,
    h("h1", { text: "Overview" }), message, counts,
    h("div", { class: "grid" },
      h("section", { class: "card wide-card" }, h("h2", { text: "Finished per minute, last hour" }), chart, legend),
      h("section", { class: "card" }, h("h2", { text: "Queue" }), queue),
      h("section", { class: "card" }, h("h2", { text: "Duration by task (last hour)" }),
        h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", { text: "Task" }),
          h("th", { text: "Jobs", class: "num" }), h("th", { text: "p50", class: "num" }), h("th", { text: "p95", class: "num" }))), durations))),
      h("section", { class: "card wide-card" }, h("h2", { text: "Recent failures" }),
        h("div", { class: "table-wrap" }, h("table", { id: "failures" }, h("thead", {}, h("tr", {}, h("th", { text: "Job" }),
          h("th", { text: "Task" }), h("th", { text: "Error" }), h("th", { text: "When" }))), failures)))),
    h("section", { class: "card" }, h("h2", { text: "Workers" }),
      h("div", { class: "table-wrap" }, h("table", { class: "workers", id: "workers" }, h("thead", {}, h("tr", {},
        h("th", { text: "Process" }), h("th", { text: "Host" }), h("th", { text: "PID", class: "num" }), h("th", { text: "RSS", class: "num" }),
        h("th", { text: "Job" }), h("th", { text: "Progress" }), h("th", { text: "Done", class: "num" }), h("th", { text: "Last seen" }))), workers))));

  function paintOverview() {
    const o = overview;
    replace(counts, STATUSES.map((s) => h("a", { class: "count", href: url(`/ui/jobs?status=${s}`), "data-nav": true, dataset: { status: s } },
      h("span", { class: "n", text: String(o.counts[s] ?? 0) }), statusBadge(s))));
    const q = o.queue;
    replace(queue, [["Ready to run", q.ready], ["Waiting to retry", q.scheduled], ["Running", q.running],
                    ["Oldest ready job waited", q.ready ? duration(q.oldestReadyAge) : "–"],
                    ["Finished in the hour", `${o.finished.succeeded} succeeded, ${o.finished.failed} failed, ${o.finished.cancelled} cancelled`],
                    ["Workers alive", o.workersAlive]].map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", { text: String(v) }))));
    replace(chart, finishedChart(o.perMinute));
    replace(durations, o.durations.length ? o.durations.map((d) => h("tr", {}, h("td", { text: d.taskType }), h("td", { class: "num", text: String(d.n) }),
      h("td", { class: "num", text: duration(d.p50) }), h("td", { class: "num", text: duration(d.p95) })))
      : h("tr", {}, h("td", { colspan: 4, class: "muted", text: "No job succeeded in the last hour." })));
    replace(failures, o.recentFailures.length ? o.recentFailures.map((f) => h("tr", { dataset: { jobId: f.id } },
      h("td", {}, h("a", { href: url(`/ui/jobs/${f.id}`), "data-nav": true, class: "mono", text: shortId(f.id) })),
      h("td", { text: f.taskType }), h("td", {}, h("code", { text: f.errorCode || "–" }), " ", h("span", { class: "muted", text: errorText(f.errorCode, f.error) })),
      h("td", { title: f.finishedAt, text: ago(f.finishedAt) })))
      : h("tr", {}, h("td", { colspan: 4, class: "muted", text: "No failures." })));
  }

  function paintWorkers() {
    // supervisors first, each followed by its children; remote workers and orphans after
    const list = board.workers;
    const children = (parent) => list.filter((w) => w.parentId === parent.id);
    const ordered = [];
    for (const w of list.filter((w) => w.kind === "supervisor")) ordered.push(w, ...children(w));
    for (const w of list) if (!ordered.includes(w)) ordered.push(w);
    replace(workers, ordered.length ? ordered.map((w) => h("tr", { dataset: { workerId: w.id, kind: w.kind }, class: w.kind === "child" ? "child" : "" },
      h("td", { text: w.kind === "child" ? "↳ child" : w.kind }), h("td", { text: w.host }), h("td", { class: "num", text: String(w.pid) }),
      h("td", { class: "num", text: w.rss ? bytes(w.rss) : "–" }),
      h("td", {}, w.job ? h("a", { href: url(`/ui/jobs/${w.job.id}`), "data-nav": true, class: "mono", text: `${shortId(w.job.id)} ${w.job.taskType}` }) : h("span", { class: "muted", text: w.kind === "supervisor" ? "" : "idle" })),
      h("td", {}, w.job ? progressBar(w.job.progress, `progress of job ${shortId(w.job.id)}`) : null),
      h("td", { class: "num", text: String(w.jobsDone) }), h("td", { title: w.lastSeen, text: ago(w.lastSeen) })))
      : h("tr", {}, h("td", { colspan: 8, class: "muted", text: "No worker is running: start one with geoworker run." })));
  }

  async function load() {
    try {
      [overview, board] = await Promise.all([api("/api/overview"), api("/api/workers")]);
      replace(message);
      paintOverview();
      paintWorkers();
    } catch (err) {
      if (err.status !== 401) replace(message, notice(err.message));
    }
  }

  function onEvent(name, data) {
    if (name === "overview") { overview = data; paintOverview(); }
    else if (name === "workers") { board = data; paintWorkers(); }
    else if (name === "resync") load();
  }

  const ticker = setInterval(() => { if (board) paintWorkers(); }, 10000);
  load();
  return { topics: ["overview", "workers"], onOpen: load, onEvent, cleanup: () => clearInterval(ticker) };
}
