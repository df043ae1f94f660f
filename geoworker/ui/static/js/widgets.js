// Small pieces several pages share: status badges, a confirmation dialog, error notices.

import { h } from "./dom.js";

export const STATUSES = ["pending", "queued", "running", "succeeded", "failed", "cancelled"];
export const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

export function statusBadge(status, attrs = {}) {
  return h("span", { class: "badge", ...attrs, dataset: { status }, text: status });
}

export function setStatus(el, status) {
  el.dataset.status = status;
  el.textContent = status;
}

export function notice(text, kind = "error") {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status", text });
}

/**
 * Ask before doing something: a modal <dialog> (keyboard: Tab between the buttons, Esc cancels).
 * Resolves true when the person confirms.
 */
export function confirmAction({ title, text, confirm, cancel = "Keep it" }) {
  return new Promise((resolve) => {
    const yes = h("button", { type: "button", class: "danger", text: confirm });
    const no = h("button", { type: "button", class: "secondary", text: cancel });
    const dialog = h("dialog", { class: "confirm", "aria-labelledby": "confirm-title" },
                     h("h2", { id: "confirm-title", text: title }), h("p", { text }), h("div", { class: "actions" }, no, yes));
    const done = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    yes.addEventListener("click", () => done(true));
    no.addEventListener("click", () => done(false));
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      done(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    no.focus();
  });
}

export function option(value, text, selected) {
  return h("option", { value, selected: selected || null, text });
}
