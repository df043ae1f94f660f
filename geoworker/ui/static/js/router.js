// Paths under /ui, in the browser: pushState navigation; main.js renders the page for each path.

export const config = JSON.parse(document.getElementById("gw-config").textContent);
export const base = config.base || "";

let render = () => {};

export function onNavigate(fn) {
  render = fn;
}

/** The path of a page under this API: url("/ui/jobs") -> "/prefix/ui/jobs" behind a proxy prefix. */
export function url(path) {
  return base + path;
}

/** The page path without the proxy prefix. */
export function currentPath() {
  const path = location.pathname;
  return path.startsWith(base) ? path.slice(base.length) || "/" : path;
}

export function navigate(path, { replace = false } = {}) {
  const target = path.startsWith(base + "/") ? path : url(path);
  if (replace) history.replaceState(null, "", target);
  else history.pushState(null, "", target);
  render();
}

window.addEventListener("popstate", () => render());

// links marked data-nav stay in the page (a plain click; modified clicks open tabs as usual)
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-nav]");
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});
