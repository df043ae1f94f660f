// Calls to the API with the session's token. A 401 (expired, forged, missing token) signs out,
// back to the sign-in page with the API's own reason.

import { currentPath, navigate, base } from "./router.js";
import { forget, token } from "./session.js";

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `the API answered ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

export function authHeaders() {
  const value = token();
  return value ? { Authorization: `Bearer ${value}` } : {};
}

export function signOut(reason) {
  const here = currentPath();
  forget(reason, here.startsWith("/ui/signin") ? null : here + location.search);
  navigate("/ui/signin", { replace: true });
}

export function reasonFor(body) {
  const why = body && body.message ? body.message : "you are not signed in";
  return `Signed out: ${why}. Sign in again with a valid token.`;
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { ...authHeaders(), Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                          cache: "no-store" });
  } catch {
    throw new ApiError(0, { message: "the API cannot be reached; is it running?" });
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (response.status === 401) {
    signOut(reasonFor(data));
    throw new ApiError(401, data);
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}
