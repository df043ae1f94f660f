// Human-readable sizes and times: pure functions, no DOM.

const UNITS = ["bytes", "KiB", "MiB", "GiB", "TiB"];

export function bytes(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "–";
  let value = Number(n), unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) { value /= 1024; unit += 1; }
  if (unit === 0) return `${value} ${value === 1 ? "byte" : "bytes"}`;
  return `${value >= 100 ? value.toFixed(0) : value.toFixed(1)} ${UNITS[unit]}`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "–";
  const s = Math.max(0, Number(seconds));
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const m = Math.floor(s / 60), rest = Math.round(s % 60);
  if (m < 60) return rest ? `${m} min ${rest} s` : `${m} min`;
  const hours = Math.floor(m / 60), mins = m % 60;
  if (hours < 48) return mins ? `${hours} h ${mins} min` : `${hours} h`;
  return `${Math.floor(hours / 24)} days`;
}

export function between(startIso, endIso, now = Date.now()) {
  if (!startIso) return null;
  const end = endIso ? Date.parse(endIso) : now;
  return (end - Date.parse(startIso)) / 1000;
}

export function ago(iso, now = Date.now()) {
  if (!iso) return "–";
  const s = Math.round((now - Date.parse(iso)) / 1000);
  if (Math.abs(s) < 5) return "just now";
  const text = duration(Math.abs(s)).replace(/ \d+ s$/, "").replace(/ \d+ min$/, "");
  return s > 0 ? `${text} ago` : `in ${text}`;
}

export function dateTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function clock(iso) {
  const d = new Date(iso);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

export function shortId(id) {
  return String(id || "").slice(0, 8);
}

export function degrees(value) {
  return Number(value).toFixed(5) + "°";
}

/** last_error is "<code>: <message>"; the code is shown beside it already. */
export function errorText(code, error) {
  const text = String(error || "");
  return code && text.startsWith(`${code}: `) ? text.slice(code.length + 2) : text;
}
