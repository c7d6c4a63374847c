// The one HTTP client of the dashboard: every API call and every stream URL goes through here, so
// auth (an optional bearer token kept in sessionStorage) is handled in a single place.

const TOKEN_KEY = "snnmon.token";

export class ApiError extends Error {
  constructor(status, body) {
    const message = (body && (body.message || body.error)) || `HTTP ${status}`;
    super(message);
    this.status = status;
    this.body = body || {};
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

// Several requests can hit a 401 at once (the jobs poll, a status fetch): they share one prompt.
let pendingTokenPrompt = null;
// After the user cancels the prompt, background requests (the jobs poll) stop asking again every
// two seconds; a request the user made (Train, Stop, opening a job) still asks.
let declined = false;

function askForToken() {
  if (!pendingTokenPrompt) {
    pendingTokenPrompt = showTokenDialog().finally(() => {
      pendingTokenPrompt = null;
    });
  }
  return pendingTokenPrompt;
}

// Resolves with the token the user typed, or "" when they cancelled.
function showTokenDialog() {
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  if (!dialog || typeof dialog.showModal !== "function") {
    const value = (window.prompt("Access token for this server") || "").trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    declined = !value;
    return Promise.resolve(value);
  }
  input.value = "";
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const value = dialog.returnValue === "ok" ? input.value.trim() : "";
        if (value) sessionStorage.setItem(TOKEN_KEY, value);
        declined = !value;
        resolve(value);
      },
      { once: true },
    );
    dialog.showModal();
  });
}

// ``as: "text"`` returns the body as text (the CSV export) instead of parsing JSON; ``as: "file"``
// returns {blob, filename} (checkpoint downloads), the name from Content-Disposition.
async function request(method, path, body, { interactive = false, retried = false, as = "json" } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (response.status === 401 && !retried && (interactive || !declined)) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (await askForToken()) return request(method, path, body, { interactive, retried: true, as });
  }
  if (as === "file" && response.ok) return { blob: await response.blob(), filename: attachmentName(response) };
  const text = await response.text();
  if (as === "text" && response.ok) return text;
  let payload = null;
  if (text) {
    try {
      payload = JSON.parse(text);
    } catch {
      payload = { error: "bad_response", message: text.slice(0, 200) };
    }
  }
  if (!response.ok) throw new ApiError(response.status, payload);
  return payload;
}

const enc = encodeURIComponent;

function attachmentName(response) {
  const match = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
  return match ? match[1] : "download";
}

export const api = {
  surrogates: () => request("GET", "/api/training/surrogates"),
  cellTypes: () => request("GET", "/api/training/cell-types"),
  configSchema: () => request("GET", "/api/training/config-schema"),
  start: (config) => request("POST", "/api/training/start", config, { interactive: true }),
  stop: (jobId) => request("POST", "/api/training/stop", { job_id: jobId }, { interactive: true }),
  status: (jobId, { interactive = true } = {}) => request("GET", `/api/training/status/${enc(jobId)}`, undefined, { interactive }),
  jobs: () => request("GET", "/api/training/jobs"),
  patch: (jobId, fields) => request("PATCH", `/api/training/jobs/${enc(jobId)}`, fields, { interactive: true }),
  remove: (jobId) => request("DELETE", `/api/training/jobs/${enc(jobId)}`, undefined, { interactive: true }),
  // level "epoch" (one row per epoch) or "step" (one row per batch event)
  metricsCsv: (jobId, level = "epoch") =>
    request("GET", `/api/training/jobs/${enc(jobId)}/metrics?format=csv&level=${enc(level)}`, undefined, {
      interactive: true,
      as: "text",
    }),
  checkpoint: (jobId, which) =>
    request("GET", `/api/training/jobs/${enc(jobId)}/checkpoint?which=${enc(which)}`, undefined, { interactive: true, as: "file" }),
  exportNir: (jobId, which) =>
    request("GET", `/api/training/jobs/${enc(jobId)}/export?format=nir&which=${enc(which)}`, undefined, { interactive: true, as: "file" }),
};

// EventSource cannot send headers: the token travels as ?access_token=. A manual reconnect (after
// the browser gave up on the stream) passes the last seen seq as ?last_event_id=.
export function streamUrl(jobId, lastEventId = null) {
  const params = new URLSearchParams();
  if (token()) params.set("access_token", token());
  if (lastEventId !== null) params.set("last_event_id", String(lastEventId));
  const query = params.toString();
  return `/api/training/stream/${enc(jobId)}${query ? `?${query}` : ""}`;
}
