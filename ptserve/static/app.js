// The try-it page: send images (multipart) or JSON to POST /predict, show the answer and latency.
"use strict";

const $ = (id) => document.getElementById(id);

async function describeModel() {
  const models = await (await fetch("/models")).json();
  const list = Array.isArray(models) ? models : models.models || [];
  const model = list.length ? list[0] : null;
  if (model) {
    $("model").textContent = model.name;
    const inputs = (model.signature || {}).inputs || [];
    $("signature").textContent = inputs.map((s) => `${s.name}: ${s.dtype} [${s.shape}]`).join(", ");
    $("image-section").hidden = !model.uploads;
  }
  try {
    const schema = await (await fetch("/openapi.json")).json();
    const body = schema.paths["/predict"].post.requestBody.content["application/json"].example;
    $("json").value = JSON.stringify(body);
  } catch (err) {
    $("json").value = '{"instances": []}';
  }
}

async function predict(init) {
  $("error").textContent = "";
  $("status").textContent = "…";
  const started = performance.now();
  let response;
  try {
    response = await fetch("/predict", { method: "POST", ...init });
  } catch (err) {
    $("error").textContent = String(err);
    return;
  }
  const text = await response.text();
  const elapsed = performance.now() - started;
  $("latency").textContent = `${elapsed.toFixed(1)} ms`;
  $("status").textContent = `(HTTP ${response.status})`;
  let body;
  try {
    body = JSON.parse(text);
  } catch (err) {
    body = text;
  }
  $("output").textContent = typeof body === "string" ? body : JSON.stringify(body, null, 2);
  if (!response.ok) {
    $("label").textContent = "–";
    $("score").textContent = "";
    $("error").textContent = body.error || text;
    return;
  }
  const first = (body.predictions || [])[0];
  const labelled = first && typeof first === "object" && "label" in first;
  $("label").textContent = labelled ? first.label : "(see output)";
  $("score").textContent = labelled && typeof first.score === "number" ? first.score.toFixed(3) : "";
}

function sendFiles(files) {
  if (!files.length) return;
  const form = new FormData();
  $("previews").replaceChildren();
  for (const file of files) {
    form.append("file", file, file.name);
    const img = document.createElement("img");
    img.alt = file.name;
    img.src = URL.createObjectURL(file);
    $("previews").append(img);
  }
  predict({ body: form });
}

function wire() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    sendFiles([...e.dataTransfer.files]);
  });
  $("file").addEventListener("change", (e) => sendFiles([...e.target.files]));
  $("send-json").addEventListener("click", () =>
    predict({ headers: { "Content-Type": "application/json" }, body: $("json").value }));
}

wire();
describeModel();
