// Jobs finished per minute as stacked bars (succeeded below, failed above), drawn as SVG by hand:
// sixty bars need no chart library, and the page stays free of third-party code.

import { clock } from "./format.js";

const NS = "http://www.w3.org/2000/svg";
const W = 640, H = 180, LEFT = 34, BOTTOM = 22, TOP = 8, RIGHT = 6;

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A "nice" top for the axis: 1, 2, 5 times a power of ten, at least `max`. */
export function niceMax(max) {
  if (max <= 4) return 4;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 5, 10]) if (step * power >= max) return step * power;
  return 10 * power;
}

/** perMinute: [{minute, succeeded, failed}] oldest first -> an <svg> element. */
export function finishedChart(perMinute) {
  const total = perMinute.reduce((n, m) => n + m.succeeded + m.failed, 0);
  const failed = perMinute.reduce((n, m) => n + m.failed, 0);
  const top = niceMax(Math.max(0, ...perMinute.map((m) => m.succeeded + m.failed)));
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-labelledby": "chart-title chart-desc" });
  svg.append(el("title", { id: "chart-title" }, "Jobs finished per minute, last hour"),
             el("desc", { id: "chart-desc" }, `${total} jobs finished in the last hour: ${total - failed} succeeded, ${failed} failed.`));
  const plotW = W - LEFT - RIGHT, plotH = H - TOP - BOTTOM;
  const y = (v) => TOP + plotH - (v / top) * plotH;
  for (const tick of [0, top / 2, top]) {
    svg.append(el("line", { x1: LEFT, x2: W - RIGHT, y1: y(tick), y2: y(tick), class: "grid" }),
               el("text", { x: LEFT - 4, y: y(tick) + 4, class: "axis", "text-anchor": "end" }, String(tick)));
  }
  const slot = plotW / Math.max(1, perMinute.length);
  perMinute.forEach((m, i) => {
    const x = LEFT + i * slot + slot * 0.1, w = slot * 0.8;
    if (m.succeeded) svg.append(el("rect", { x, y: y(m.succeeded), width: w, height: y(0) - y(m.succeeded), class: "ok" }));
    if (m.failed) svg.append(el("rect", { x, y: y(m.succeeded + m.failed), width: w, height: y(m.succeeded) - y(m.succeeded + m.failed), class: "bad" }));
    if (i % 15 === 0 && i < perMinute.length - 8 || i === perMinute.length - 1) {
      const last = i === perMinute.length - 1;
      svg.append(el("text", { x: last ? W - RIGHT : x + w / 2, y: H - 6, class: "axis", "text-anchor": last ? "end" : "middle" },
                    clock(m.minute)));
    }
  });
  return svg;
}
