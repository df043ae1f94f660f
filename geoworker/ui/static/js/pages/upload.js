// Upload: pick or drop a GeoTIFF, choose the task and its main options (from GET /api/tasks,
// the task registry's own parameter list), watch the signed PUT's progress, land on the job.
// A refusal, before the upload (the upload grant) or after it (the PUT), shows the API's reason,
// and the job created for it is cancelled rather than left waiting for an input.

import { api, ApiError, signOut, reasonFor } from "../api.js";
import { h, progressBar, replace, setProgress } from "../dom.js";
import { bytes } from "../format.js";
import { navigate } from "../router.js";
import { notice, option } from "../widgets.js";

export function render(root) {
  document.title = "Upload · geoworker";
  let catalog = null;
  let file = null;
  let busy = false;

  const input = h("input", { type: "file", id: "file", class: "visually-hidden", accept: ".tif,.tiff,image/tiff",
                             onchange: () => choose(input.files[0]) });
  const chosen = h("p", { class: "chosen muted", id: "chosen", text: "No file chosen." });
  const drop = h("label", { for: "file", class: "drop", id: "drop" },
    h("strong", { text: "Drop a GeoTIFF here" }), h("span", { text: " or " }), h("span", { class: "button secondary", text: "choose a file" }));
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) choose(event.dataTransfer.files[0]);
  });

  const taskSelect = h("select", { id: "task", name: "task", onchange: () => paintParams() });
  const paramsBox = h("div", { class: "params", id: "params" });
  const submit = h("button", { type: "submit", id: "start", text: "Upload and start" });
  const bar = progressBar(0, "upload progress");
  const progressText = h("span", { class: "num", id: "upload-progress" });
  const progressBox = h("div", { class: "upload-progress", hidden: true }, bar, progressText);
  const message = h("div", { class: "message", id: "upload-message", "aria-live": "polite" });
  const limits = h("p", { class: "muted small" });

  const form = h("form", { class: "card upload", onsubmit: start },
    input, drop, chosen, limits,
    h("label", { for: "task", text: "Task" }), taskSelect,
    paramsBox, progressBox, message,
    h("div", { class: "actions" }, submit));
  replace(root, h("h1", { text: "Upload a GeoTIFF" }), form);

  api("/api/tasks").then((data) => {
    catalog = data;
    const fileTasks = data.tasks.filter((t) => t.needsInput);
    replace(taskSelect, fileTasks.map((t) => option(t.name, `${t.name}: ${t.description}`, t.name === "geotiff_to_png")));
    limits.textContent = `Up to ${bytes(data.limits.maxFileSize)} per file.`;
    if (!data.limits.uploads) replace(message, notice("This service takes its inputs from the platform's own storage, not uploads.", "info"));
    paintParams();
  }).catch((err) => { if (err.status !== 401) replace(message, notice(err.message)); });

  function choose(picked) {
    file = picked || null;
    chosen.textContent = file ? `${file.name}, ${bytes(file.size)}` : "No file chosen.";
    chosen.classList.toggle("muted", !file);
    replace(message);
  }

  function currentTask() {
    return catalog && catalog.tasks.find((t) => t.name === taskSelect.value);
  }

  function paintParams() {
    const task = currentTask();
    if (!task) return replace(paramsBox);
    replace(paramsBox, task.params.filter((p) => p.main).map(field));
  }

  function field(param) {
    const id = `param-${param.key}`;
    const help = h("small", { class: "muted", id: `${id}-help`, text: param.help });
    let control;
    if (param.kind === "boolean") {
      control = h("input", { type: "checkbox", id, checked: param.default === true || null, "aria-describedby": `${id}-help` });
      return h("div", { class: "field check" }, control, h("label", { for: id, text: param.key }), help);
    }
    if (param.kind === "choice") {
      control = h("select", { id, "aria-describedby": `${id}-help` }, param.choices.map((c) => option(c, c, c === param.default)));
    } else {
      const numeric = param.kind === "integer" || param.kind === "number";
      control = h("input", { id, type: numeric ? "number" : "text", step: param.kind === "integer" ? 1 : "any",
                             value: param.default === null || param.default === undefined ? "" :
                               typeof param.default === "string" ? param.default : JSON.stringify(param.default),
                             "aria-describedby": `${id}-help` });
    }
    return h("div", { class: "field" }, h("label", { for: id, text: param.key }), control, help);
  }

  function payload() {
    const task = currentTask();
    const out = {};
    for (const param of task.params.filter((p) => p.main)) {
      const el = document.getElementById(`param-${param.key}`);
      if (!el) continue;
      let value;
      if (param.kind === "boolean") value = el.checked;
      else if (el.value.trim() === "") continue;
      else if (param.kind === "integer" || param.kind === "number") value = Number(el.value);
      else if (param.kind === "choice") value = el.value;
      else {
        try { value = JSON.parse(el.value); } catch { value = el.value; }
      }
      if (JSON.stringify(value) !== JSON.stringify(param.default)) out[param.key] = value;
    }
    return out;
  }

  async function start(event) {
    event.preventDefault();
    if (busy) return;
    if (!file) {
      replace(message, notice("Choose a GeoTIFF first."));
      return;
    }
    busy = true;
    submit.disabled = true;
    replace(message);
    let job = null;
    try {
      job = await api("/api/geo-jobs", { method: "POST", body: { taskType: taskSelect.value, priority: 0, inputPayload: payload() } });
      const grant = await api(`/api/geo-jobs/${job.id}/upload`, { method: "POST",
        body: { fileName: file.name, fileSize: file.size, fileType: file.type || null } });
      progressBox.hidden = false;
      await put(grant.uploadUrl, file);
      navigate(`/ui/jobs/${job.id}`);
    } catch (err) {
      if (err.status === 401) return;
      progressBox.hidden = true;
      // it will never get its input: cancelled before the refusal shows, so that what the page
      // says and what the job list says agree
      if (job) await api(`/api/geo-jobs/${job.id}/cancel`, { method: "POST" }).catch(() => {});
      replace(message, notice(`Refused: ${err.message}`));
    } finally {
      busy = false;
      submit.disabled = false;
    }
  }

  function put(uploadUrl, body) {
    // XMLHttpRequest, not fetch(): only it reports an upload's progress
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("PUT", uploadUrl);
      xhr.setRequestHeader("Content-Type", body.type || "application/octet-stream");
      xhr.upload.addEventListener("progress", (e) => {
        if (!e.lengthComputable) return;
        const percent = Math.round((e.loaded / e.total) * 100);
        setProgress(bar, percent);
        progressText.textContent = `${bytes(e.loaded)} of ${bytes(e.total)} (${percent}%)`;
      });
      xhr.addEventListener("load", () => {
        let data = null;
        try { data = JSON.parse(xhr.responseText); } catch { data = null; }
        if (xhr.status >= 200 && xhr.status < 300) return resolve(data);
        if (xhr.status === 401) signOut(reasonFor(data));
        reject(new ApiError(xhr.status, data));
      });
      xhr.addEventListener("error", () => reject(new ApiError(0, { message: "the upload was cut off (the API went away?)" })));
      xhr.send(body);
    });
  }

  return {};
}
