// The dashboard: routes /ui/... to its page, draws the header, and keeps one live stream open
// with the topics the page asks for.

import { h, replace } from "./dom.js";
import { currentPath, navigate, onNavigate, url } from "./router.js";
import { adoptFragmentToken, claims, forget, isOperator, token } from "./session.js";
import { openStream } from "./stream.js";
import * as jobPage from "./pages/job.js";
import * as jobsPage from "./pages/jobs.js";
import * as overviewPage from "./pages/overview.js";
import * as signinPage from "./pages/signin.js";
import * as uploadPage from "./pages/upload.js";

const app = document.getElementById("app");
let page = null;
let stream = { close: null, topics: "" };

const notFound = {
  render(root) {
    document.title = "Not found · geoworker";
    replace(root, h("h1", { text: "No such page" }),
            h("p", {}, h("a", { href: url("/ui"), "data-nav": true, text: "Back to the dashboard" })));
    return {};
  },
};

function route(path) {
  if (path === "/ui" || path === "/ui/") return { redirect: isOperator() ? "/ui/overview" : "/ui/jobs" };
  if (path === "/ui/signin") return { page: signinPage };
  if (path === "/ui/overview") return { page: overviewPage };
  if (path === "/ui/jobs") return { page: jobsPage };
  if (path === "/ui/upload") return { page: uploadPage };
  const match = /^\/ui\/jobs\/([^/]+)$/.exec(path);
  if (match) return { page: jobPage, params: { id: decodeURIComponent(match[1]) } };
  return { page: notFound };
}

function render() {
  adoptFragmentToken();
  const path = currentPath();
  if (page && page.cleanup) page.cleanup();
  page = null;
  const target = route(path);
  if (target.redirect) return navigate(target.redirect, { replace: true });
  if (target.page !== signinPage && !token()) {
    forget("Sign in with your token (an operator prints a sign-in link with `geoworker token --user NAME --link`).",
           path + location.search);
    return navigate("/ui/signin", { replace: true });
  }
  drawHeader(path);
  window.scrollTo(0, 0);
  page = target.page.render(app, { params: target.params || {} }) || {};
  setStream(page.topics || []);
}

function setStream(topics) {
  const key = topics.join(",");
  if (key === stream.topics && stream.close) return;
  if (stream.close) stream.close();
  stream = { close: null, topics: key };
  setLive(null);
  if (!topics.length) return;
  stream.close = openStream({
    topics,
    onState: setLive,
    onOpen: () => page && page.onOpen && page.onOpen(),
    onEvent: (name, data) => page && page.onEvent && page.onEvent(name, data),
  });
}

function setLive(state) {
  const el = document.getElementById("live");
  if (!el) return;
  el.hidden = !state;
  el.dataset.state = state || "";
  el.textContent = state === "live" ? "live" : state === "reconnecting" ? "reconnecting…" : "connecting…";
}

function drawHeader(path) {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  const me = claims();
  if (!me || path === "/ui/signin") {
    replace(nav);
    replace(who);
    return;
  }
  const link = (href, text) => h("a", { href: url(href), "data-nav": true, text,
                                        "aria-current": path === href || path.startsWith(href + "/") ? "page" : null });
  replace(nav, isOperator() ? link("/ui/overview", "Overview") : null, link("/ui/jobs", "Jobs"),
          link("/ui/upload", "Upload"));
  replace(who,
          h("span", { id: "live", class: "live", hidden: true }),
          h("span", { class: "user", title: me.sub }, me.sub, isOperator() ? h("span", { class: "role", text: "operator" }) : null),
          h("button", { type: "button", class: "link", text: "Sign out", onclick: () => {
            forget("You signed out.");
            if (stream.close) stream.close();
            stream = { close: null, topics: "" };
            navigate("/ui/signin");
          } }));
}

onNavigate(render);
render();
