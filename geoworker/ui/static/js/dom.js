// Building DOM without innerHTML: every text is a text node, so nothing from a job can become markup.

/**
 * h("a", {href, class: "x", dataset: {jobId}, onclick}, "text", child, ...) -> Element.
 * Attributes: `class`, `text`, `dataset` (object), `on<event>` (function), `style` is not
 * accepted (the Content-Security-Policy forbids inline styles; set element.style.x instead).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replace(el, ...children) {
  return append(clear(el), children);
}

/** A labelled progress bar whose fill width is set through the CSSOM (allowed by the CSP). */
export function progressBar(percent, label) {
  const fill = h("span", { class: "bar-fill" });
  const bar = h("span", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
                          "aria-label": label || "progress" }, fill);
  setProgress(bar, percent);
  return bar;
}

export function setProgress(bar, percent) {
  const value = Math.max(0, Math.min(100, Number(percent) || 0));
  bar.setAttribute("aria-valuenow", value);
  bar.firstChild.style.width = `${value}%`;
}

/** Call fn at most once per `ms`, with the latest arguments (trailing call guaranteed). */
export function throttle(fn, ms) {
  let timer = null, last = 0, pending = null;
  const run = () => { timer = null; last = Date.now(); const args = pending; pending = null; fn(...args); };
  const wrapped = (...args) => {
    pending = args;
    if (timer) return;
    timer = setTimeout(run, Math.max(0, last + ms - Date.now()));
  };
  wrapped.cancel = () => { if (timer) clearTimeout(timer); timer = null; };
  return wrapped;
}
