// Sign-in: paste a token, or arrive with one in the link's fragment (/ui#token=...).

import { api, ApiError } from "../api.js";
import { h, replace } from "../dom.js";
import { navigate } from "../router.js";
import { forget, setToken, takeMessage, takeNext } from "../session.js";

export function render(root) {
  document.title = "Sign in · geoworker";
  const message = takeMessage();
  const status = h("p", { class: message ? "notice" : "notice hidden", role: "alert", id: "signin-message",
                          text: message || "" });
  const field = h("textarea", { id: "token", name: "token", rows: 4, required: true, autocomplete: "off",
                                spellcheck: "false", placeholder: "eyJhbGciOiJIUzI1NiIs…" });
  const button = h("button", { type: "submit", text: "Sign in" });
  const form = h("form", { class: "card signin", onsubmit: async (event) => {
    event.preventDefault();
    const value = field.value.trim().replace(/^Bearer\s+/i, "");
    if (!value) return;
    button.disabled = true;
    setToken(value);
    try {
      await api("/api/me");
      navigate(takeNext() || "/ui", { replace: true });
    } catch (err) {
      // a 401 has already come back here with the API's reason; anything else is said here
      if (!(err instanceof ApiError && err.status === 401)) {
        forget();
        status.textContent = err.message;
        status.classList.remove("hidden");
      }
      button.disabled = false;
    }
  } },
  h("h1", { text: "Sign in" }),
  h("p", { class: "muted", text: "Paste the token you were given (a JWT). An operator prints one, or a sign-in link, " +
                                 "with geoworker token --user NAME [--operator] --link." }),
  status,
  h("label", { for: "token", text: "Token" }),
  field,
  h("div", { class: "actions" }, button));
  replace(root, form);
  field.focus();
  return {};
}
