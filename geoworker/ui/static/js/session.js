// The signed-in token: kept in sessionStorage (this tab only, gone when it closes), sent as Bearer.

const TOKEN = "geoworker.token";
const MESSAGE = "geoworker.signin.message";
const NEXT = "geoworker.signin.next";

export function token() {
  return sessionStorage.getItem(TOKEN);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN, value);
}

/** The token's claims as the page reads them (display only: the API checks the signature). */
export function claims() {
  const value = token();
  if (!value) return null;
  try {
    const part = value.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return null;
  }
}

export function isOperator() {
  return claims()?.role === "operator";
}

export function forget(message, next) {
  sessionStorage.removeItem(TOKEN);
  if (message) sessionStorage.setItem(MESSAGE, message);
  if (next) sessionStorage.setItem(NEXT, next);
}

export function takeMessage() {
  const value = sessionStorage.getItem(MESSAGE);
  sessionStorage.removeItem(MESSAGE);
  return value;
}

export function takeNext() {
  const value = sessionStorage.getItem(NEXT);
  sessionStorage.removeItem(NEXT);
  return value;
}

/** A token handed over in the URL fragment (#token=...): kept, and wiped from the address bar. */
export function adoptFragmentToken() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!match) return false;
  setToken(decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search);
  return true;
}
