// The live stream (GET /api/stream): Server-Sent Events read with fetch() and a ReadableStream,
// so that the token travels in the Authorization header, never in a URL (EventSource cannot
// send headers). It reconnects by itself, with backoff, after the API restarts; each (re)open
// brings a "hello", on which a page reads again what it shows, so nothing missed stays missed.

import { authHeaders, reasonFor, signOut } from "./api.js";
import { base } from "./router.js";

const FIRST_DELAY = 1000;
const MAX_DELAY = 10000;

/**
 * openStream({topics, onEvent(name, data), onOpen(), onState(state)}) -> close().
 * state: "connecting" | "live" | "reconnecting".
 */
export function openStream({ topics, onEvent, onOpen, onState = () => {} }) {
  let stopped = false;
  let controller = null;
  let delay = FIRST_DELAY;

  async function run() {
    while (!stopped) {
      controller = new AbortController();
      let opened = false;
      try {
        const response = await fetch(`${base}/api/stream?topics=${encodeURIComponent(topics.join(","))}`, {
          headers: { ...authHeaders(), Accept: "text/event-stream" }, signal: controller.signal, cache: "no-store",
        });
        if (response.status === 401) {
          const body = await response.json().catch(() => null);
          stopped = true;
          signOut(reasonFor(body));
          return;
        }
        if (response.ok && response.body) {
          await readEvents(response.body, (name, data) => {
            if (name === "hello") {
              opened = true;
              delay = FIRST_DELAY;
              onState("live");
              onOpen();
            } else if (name === "expired") {
              stopped = true;
              signOut(reasonFor({ message: "the token has expired" }));
            } else {
              onEvent(name, data);
            }
          }, () => stopped);
        }
      } catch {
        // the API went away or the page closed the stream: the loop decides
      }
      if (stopped) return;
      onState("reconnecting");
      await sleep(opened ? FIRST_DELAY : delay);
      delay = Math.min(MAX_DELAY, delay * 2);
    }
  }

  onState("connecting");
  run();
  return () => {
    stopped = true;
    if (controller) controller.abort();
  };
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function readEvents(body, dispatch, isStopped) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  while (!isStopped()) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // a keepalive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = text;
        else if (field === "data") data.push(text);
      }
      if (!data.length) continue;
      let parsed = null;
      try {
        parsed = JSON.parse(data.join("\n"));
      } catch {
        continue;
      }
      dispatch(name, parsed);
    }
  }
  reader.cancel().catch(() => {});
}
