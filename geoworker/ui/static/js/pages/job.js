// One job: status and progress (live), history, error, parameters, metadata, thumbnail,
// signed download links, Cancel / Retry, and the output on a map.

import { api, ApiError } from "../api.js";
import { h, progressBar, replace, setProgress, throttle } from "../dom.js";
import { ago, between, bytes, dateTime, degrees, duration, errorText, shortId } from "../format.js";
import { showOutput } from "../map.js";
import { url } from "../router.js";
import { isOperator } from "../session.js";
import { FINISHED, confirmAction, notice, setStatus } from "../widgets.js";

const CANCELLABLE = new Set(["pending", "queued", "running"]);
const RETRYABLE = new Set(["failed", "cancelled"]);
const TILE_KINDS = ["pmtiles", "tilejson"];

export function render(root, { params }) {
  const id = params.id;
  document.title = `Job ${shortId(id)} · geoworker`;
  const operator = isOperator();
  let job = null;
  let mapHandle = null;
  let mapFor = null; // the finishedAt the map was drawn for: a retried job draws its new output
  let gone = false;

  const status = h("span", { id: "job-status", class: "badge", dataset: { status: "" }, "aria-live": "polite" });
  const bar = progressBar(0, "job progress");
  const percent = h("span", { class: "num", id: "job-percent" });
  const progressMessage = h("span", { class: "muted", id: "job-message" });
  const facts = h("dl", { class: "facts columns" });
  const actionMessage = h("div", { class: "message", "aria-live": "polite" });
  const cancelButton = h("button", { type: "button", class: "danger", text: "Cancel", hidden: true, onclick: () => act("cancel") });
  const retryButton = h("button", { type: "button", text: "Retry", hidden: true, onclick: () => act("retry") });
  const errorBox = h("section", { class: "card error-card", hidden: true, id: "job-error" });
  const timeline = h("ol", { class: "timeline", id: "job-events" });
  const paramsList = h("dl", { class: "facts", id: "job-params" });
  const metaList = h("dl", { class: "facts", id: "job-metadata" });
  const thumb = h("div", { class: "thumb", id: "job-thumbnail" });
  const downloads = h("ul", { class: "downloads", id: "job-downloads" });
  const mapBox = h("div", { class: "map", id: "map", role: "region", "aria-label": "the job's output on a map" });
  const mapNote = h("p", { class: "muted small", id: "map-note" });
  const outputCard = h("section", { class: "card", hidden: true }, h("h2", { text: "Output" }), thumb, downloads);
  const mapCard = h("section", { class: "card map-card wide-card", hidden: true }, h("h2", { text: "Map" }), mapBox, mapNote);

  replace(root,
    h("div", { class: "page-head" },
      h("h1", {}, "Job ", h("span", { class: "mono", title: id, text: shortId(id) })),
      h("div", { class: "actions" }, cancelButton, retryButton)),
    actionMessage,
    h("section", { class: "card status-card" },
      h("div", { class: "status-line" }, status, h("span", { class: "progress-line" }, bar, percent), progressMessage),
      facts),
    errorBox,
    h("div", { class: "grid" },
      mapCard,
      outputCard,
      h("section", { class: "card" }, h("h2", { text: "Metadata" }), metaList),
      h("section", { class: "card" }, h("h2", { text: "Parameters" }), paramsList),
      h("section", { class: "card history" }, h("h2", { text: "History" }), timeline)));

  async function load() {
    try {
      const [fresh, history] = await Promise.all([api(`/api/geo-jobs/${encodeURIComponent(id)}`),
                                                  api(`/api/geo-jobs/${encodeURIComponent(id)}/events`)]);
      if (gone) return;
      job = fresh;
      paint();
      paintHistory(history.events);
      if (job.status === "succeeded" && mapFor !== job.finishedAt) await showOutputs();
    } catch (err) {
      if (gone || err.status === 401) return;
      if (err.status === 404) {
        replace(root, h("h1", { text: "No such job" }),
                h("p", { text: `There is no job ${id} that you can see.` }),
                h("p", {}, h("a", { href: url("/ui/jobs"), "data-nav": true, text: "Back to the jobs" })));
        gone = true;
      } else {
        replace(actionMessage, notice(err.message));
      }
    }
  }
  const refresh = throttle(load, 1000);

  function paint() {
    setStatus(status, job.status);
    setProgress(bar, job.progress);
    percent.textContent = `${job.progress}%`;
    progressMessage.textContent = job.progressMessage || "";
    cancelButton.hidden = !CANCELLABLE.has(job.status);
    retryButton.hidden = !RETRYABLE.has(job.status);
    const ran = job.status === "running" || FINISHED.has(job.status);
    const took = ran ? between(job.startedAt, job.status === "running" ? null : job.finishedAt) : null;
    fill(facts, [
      ["Task", job.taskType],
      ["Id", h("span", { class: "mono", text: job.id })],
      operator ? ["Owner", job.owner || "–"] : null,
      ["Created", h("span", { title: dateTime(job.createdAt), text: ago(job.createdAt) })],
      job.startedAt ? ["Started", dateTime(job.startedAt)] : null,
      job.finishedAt ? ["Finished", dateTime(job.finishedAt)] : null,
      took !== null ? ["Duration", duration(took)] : null,
      ["Attempts", `${job.attempts} of ${job.maxAttempts}`],
      ["Priority", String(job.priority)],
      job.input && job.input.fileName ? ["Input", `${job.input.fileName} (${bytes(job.input.fileSize)})`] : null,
    ]);
    errorBox.hidden = !job.errorCode;
    if (job.errorCode) {
      replace(errorBox, h("h2", { text: "Error" }),
              h("p", {}, h("code", { class: "error-code", text: job.errorCode })),
              h("p", { class: "error-message", text: errorText(job.errorCode, job.error) }));
    }
    fill(paramsList, Object.entries(job.inputPayload || {}).map(([k, v]) => [k, JSON.stringify(v)]), "none: the task's defaults");
    paintMetadata(job.result && job.result.metadata);
  }

  function paintMetadata(meta) {
    if (!meta) return fill(metaList, [], job.status === "succeeded" ? "none recorded" : "once the job has succeeded");
    const out = meta.output || {};
    const crs = meta.crs_epsg ? `EPSG:${meta.crs_epsg}` : (meta.crs && meta.crs.epsg ? `EPSG:${meta.crs.epsg}` : "–");
    const box = meta.bounds_wgs84 || out.bounds_wgs84;
    fill(metaList, [
      meta.width ? ["Size", `${meta.width} × ${meta.height} pixels`] : null,
      meta.bands || meta.count ? ["Bands", `${meta.bands || meta.count}${meta.dtype ? ` (${meta.dtype})` : ""}`] : null,
      ["CRS", crs],
      box ? ["Bounds (WGS84)", `W ${degrees(box[0])}, S ${degrees(box[1])}, E ${degrees(box[2])}, N ${degrees(box[3])}`] : null,
      out.width ? ["Output", `${(out.format || "").toUpperCase()} ${out.width} × ${out.height}${out.crs_epsg ? `, EPSG:${out.crs_epsg}` : ""}`] : null,
    ]);
  }

  function paintHistory(events) {
    replace(timeline, events.slice().reverse().map((e) => h("li", { dataset: { kind: e.kind } },
      h("time", { datetime: e.at, title: dateTime(e.at), text: dateTime(e.at).slice(11) }),
      h("span", { class: "kind", text: e.kind }), h("span", { class: "what", text: e.message || "" }))));
  }

  async function showOutputs() {
    const files = await api(`/api/geo-jobs/${encodeURIComponent(id)}/download/output`).catch((err) => {
      if (err.status !== 401) replace(downloads, h("li", {}, notice(err.message)));
      return null;
    });
    if (!files || gone) return;
    const byKind = Object.fromEntries(files.files.map((f) => [f.kind, f]));
    outputCard.hidden = false;
    replace(downloads, files.files.filter((f) => f.kind !== "png" || !byKind.image).map((f) => h("li", {},
      f.url ? h("a", { href: f.url, download: f.fileName, text: f.fileName }) : h("span", { text: f.fileName }),
      h("span", { class: "muted", text: ` ${f.kind}${f.size !== null ? ", " + bytes(f.size) : ""}` }))));
    replace(thumb, byKind.thumbnail && byKind.thumbnail.url
      ? h("img", { src: byKind.thumbnail.url, alt: "thumbnail of the output", id: "thumbnail" }) : null);
    await drawMap(byKind);
    mapFor = job.finishedAt;
  }

  async function drawMap(byKind) {
    const meta = (job.result && job.result.metadata) || {};
    const hasTiles = TILE_KINDS.some((k) => job.outputs && job.outputs[k]);
    const image = byKind.image || byKind.png;
    let tilejson = null;
    if (hasTiles) {
      tilejson = await api(`/api/geo-jobs/${encodeURIComponent(id)}/tilejson.json`).catch(() => null);
    }
    if (!tilejson && !(image && image.url && meta.bounds_wgs84)) {
      mapCard.hidden = true;
      return;
    }
    mapCard.hidden = false;
    if (mapHandle) mapHandle.destroy();
    const outputCrs = meta.output && meta.output.crs_epsg;
    // a tiles job keeps its bounds with its output (across 180 degrees: east above 180)
    const bounds = meta.bounds_wgs84 || (meta.output && meta.output.bounds_wgs84);
    mapHandle = showOutput(mapBox, { imageUrl: image && image.url, bounds, tilejson,
                                     imageCrs: outputCrs });
    mapNote.textContent = tilejson ? "The job's map tiles." : outputCrs === 4326 || outputCrs === 3857 ? "The output image on its WGS84 bounds."
      : "The output image placed on its WGS84 bounds; it is not in a map projection, so the placement is approximate.";
  }

  async function act(what) {
    const cancel = what === "cancel";
    const ok = await confirmAction(cancel
      ? { title: "Cancel this job?", text: job.status === "running" ? "Its worker will be stopped." : "It will not run.", confirm: "Cancel job" }
      : { title: "Retry this job?", text: "It goes back to the queue with a fresh set of attempts.", confirm: "Retry job", cancel: "Not now" });
    if (!ok) return;
    replace(actionMessage);
    try {
      job = await api(`/api/geo-jobs/${encodeURIComponent(id)}/${what}`, { method: "POST" });
      paint();
      refresh();
    } catch (err) {
      if (err instanceof ApiError && err.status !== 401) replace(actionMessage, notice(err.message));
    }
  }

  function onEvent(name, change) {
    if (name === "resync") return refresh();
    if (name !== "job" || change.id !== id || !job) return;
    const moved = change.status !== job.status;
    job = { ...job, status: change.status, progress: change.progress };
    setStatus(status, job.status);
    setProgress(bar, job.progress);
    percent.textContent = `${job.progress}%`;
    if (moved) load(); // at once: a status change brings timestamps, errors, outputs
    else refresh();
  }

  const ticker = setInterval(() => { if (job) paint(); }, 10000);
  load();
  return {
    topics: ["jobs"], onOpen: refresh, onEvent,
    cleanup: () => { gone = true; clearInterval(ticker); refresh.cancel(); if (mapHandle) mapHandle.destroy(); },
  };
}

function fill(list, pairs, empty = "–") {
  const items = pairs.filter(Boolean);
  if (!items.length) return replace(list, h("div", {}, h("dd", { class: "muted", text: empty })));
  return replace(list, items.map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", {}, v))));
}
