// The HTTP API: one call() for the {code,msg,data} envelope, and uploads with progress.

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.msg) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

export const session = {
  get user() {
    try { return JSON.parse(localStorage.getItem("lanchat.user") || "null"); } catch { return null; }
  },
  set user(value) {
    if (value) localStorage.setItem("lanchat.user", JSON.stringify(value));
    else localStorage.removeItem("lanchat.user");
  },
};

export async function call(path, fields = {}, { method = "POST" } = {}) {
  const user = session.user;
  const headers = {};
  if (user && user.token) headers.Authorization = `Bearer ${user.token}`;
  let url = path;
  const init = { method, headers, credentials: "same-origin" };
  if (method === "GET") {
    const query = new URLSearchParams(fields).toString();
    if (query) url += `?${query}`;
  } else {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(fields);
  }
  let resp;
  try {
    resp = await fetch(url, init);
  } catch (err) {
    throw new ApiError(0, { msg: err.message, error: "unavailable" });
  }
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON */ }
  if (!resp.ok || !body || body.code !== 0) throw new ApiError(resp.status, body);
  return body;
}

// Upload a File or Blob; onProgress(0..1). Resolves with the "/mnt/..." path.
export function upload(file, onProgress = () => {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    const form = new FormData();
    form.append("file", file, file.name || "upload");
    xhr.open("POST", "/attach/upload");
    const user = session.user;
    if (user && user.token) xhr.setRequestHeader("Authorization", `Bearer ${user.token}`);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status === 200 && body && body.code === 0) resolve(body.data);
      else reject(new ApiError(xhr.status, body));
    };
    xhr.onerror = () => reject(new ApiError(0, { msg: "network error", error: "unavailable" }));
    xhr.send(form);
  });
}
