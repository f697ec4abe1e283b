// ocr-stream web page: upload, live progress (SSE read with fetch, so an API key can be
// sent as a header), each page image with its blocks' boxes beside its rendered Markdown.
"use strict";

const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
keyInput.value = sessionStorage.getItem("ocr-api-key") || "";
keyInput.addEventListener("change", () => sessionStorage.setItem("ocr-api-key", keyInput.value));

function headers() {
  const key = keyInput.value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok && response.status !== 202) {
    let message = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      if (body.error) message = body.error.code + ": " + body.error.message;
    } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

let current = null; // { id, shown: Set of page numbers, stream: AbortController }

$("upload").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  if ($("pages").value.trim()) form.append("pages", $("pages").value.trim());
  form.append("dpi", $("dpi").value || "144");
  showError("");
  $("submit").disabled = true;
  try {
    const accepted = await (await api("/v1/tasks", { method: "POST", body: form })).json();
    location.hash = "task=" + encodeURIComponent(accepted.task_id);
    follow(accepted.task_id, file.name);
  } catch (error) {
    $("task").hidden = false;
    showError(error.message);
  } finally {
    $("submit").disabled = false;
  }
});

function follow(taskId, name) {
  if (current) current.stream.abort();
  current = { id: taskId, shown: new Set(), stream: new AbortController() };
  $("page-list").replaceChildren();
  $("task").hidden = false;
  $("task-name").textContent = name || taskId;
  $("download").hidden = true;
  $("progress").value = 0;
  $("status").textContent = "submitted";
  readEvents(current).catch((error) => {
    if (error.name !== "AbortError") showError(error.message);
  });
}

async function readEvents(task) {
  const response = await api(`/v1/tasks/${encodeURIComponent(task.id)}/events`, { signal: task.stream.signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const kind = (block.match(/^event: (.*)$/m) || [])[1];
      const data = (block.match(/^data: (.*)$/m) || [])[1];
      if (kind === "progress" && data) await update(task, JSON.parse(data));
    }
  }
}

async function update(task, answer) {
  if (task !== current) return;
  $("progress").value = answer.percent;
  let text = `${answer.status} · ${answer.pages_done}/${answer.pages_total ?? "?"} pages · ${answer.percent}%`;
  if (answer.eta_s != null) text += ` · about ${Math.ceil(answer.eta_s)} s left`;
  if (answer.message) text += ` · ${answer.message}`;
  $("status").textContent = text;
  if (answer.error) showError(answer.error.code + ": " + answer.error.message);
  for (const summary of answer.pages) {
    if (!task.shown.has(summary.page)) {
      task.shown.add(summary.page);
      await showPage(task, summary.page);
    }
  }
  if (["completed", "failed", "cancelled"].includes(answer.status)) {
    document.body.dataset.final = answer.status;
    await offerZip(task);
  }
}

async function showPage(task, number) {
  const base = `/v1/tasks/${encodeURIComponent(task.id)}/pages/${number}`;
  const page = await (await api(base)).json();
  const section = document.createElement("section");
  section.className = "page";
  section.dataset.page = number;
  const title = document.createElement("h2");
  title.textContent = `Page ${number}` + (page.error ? ` — ${page.error.code}` : "");
  const wrap = document.createElement("div");
  wrap.className = "image-wrap";
  const { width_px: width, height_px: height } = page.image;
  if (page.image_url) {
    const image = document.createElement("img");
    image.alt = `page ${number}`;
    image.width = width;
    image.height = height;
    wrap.append(image);
    api(page.image_url).then((r) => r.blob()).then((blob) => { image.src = URL.createObjectURL(blob); })
      .catch(() => wrap.classList.add("no-image"));
  } else {
    wrap.classList.add("no-image");
    wrap.style.aspectRatio = `${width} / ${height}`;
  }
  for (const block of page.blocks) {
    const [x1, y1, x2, y2] = block.bbox_px;
    const box = document.createElement("div");
    box.className = "box";
    box.style.left = `${(100 * x1) / width}%`;
    box.style.top = `${(100 * y1) / height}%`;
    box.style.width = `${(100 * (x2 - x1)) / width}%`;
    box.style.height = `${(100 * (y2 - y1)) / height}%`;
    const label = block.text ? `${block.label}: ${block.text}` : block.label;
    box.dataset.label = label;
    box.title = label;
    wrap.append(box);
  }
  const markdown = document.createElement("div");
  markdown.className = "markdown";
  markdown.innerHTML = page.html; // sanitised by the gateway (nh3 allow-list)
  section.append(title, wrap, markdown);
  const after = [...$("page-list").children].find((other) => Number(other.dataset.page) > number);
  $("page-list").insertBefore(section, after || null);
}

async function offerZip(task) {
  const link = $("download");
  const blob = await (await api(`/v1/tasks/${encodeURIComponent(task.id)}/result.zip`)).blob();
  link.href = URL.createObjectURL(blob);
  link.download = `${task.id}.zip`;
  link.hidden = false;
}

const opened = new URLSearchParams(location.hash.slice(1)).get("task");
if (opened) follow(opened);
