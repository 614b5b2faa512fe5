// The preference test's page: plain JavaScript, no build step. The server decides the order and the sides;
// this page only shows what it is given and sends which button was pressed.
"use strict";

const $ = (id) => document.getElementById(id);
let participant = null;
let current = null;
let busy = false;

async function api(method, url, body) {
  const options = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    return { status: 0, data: { error: "the server cannot be reached; check the connection and try again" } };
  }
  let data = null;
  try {
    data = await response.json();
  } catch (error) {
    data = null;
  }
  return { status: response.status, data };
}

function show(section) {
  for (const id of ["login", "trial", "done"]) $(id).hidden = id !== section;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function base() {
  return "/api/participants/" + encodeURIComponent(participant);
}

function setBusy(value) {
  busy = value;
  for (const id of ["choice-first", "choice-second", "choice-neither"]) $(id).disabled = value;
}

function updateProgress(answered, total) {
  $("progress").max = total;
  $("progress").value = answered;
  $("progress-text").textContent = `Item ${Math.min(answered + 1, total)} of ${total} · ${answered} answered`;
}

function stopPlayer() {
  const player = $("player");
  if (player) player.pause();
}

async function begin(data) {
  participant = data.participant;
  if (data.title) $("title").textContent = data.title;
  $("who-code").textContent = participant;
  $("who").hidden = false;
  showError("");
  await loadNext();
}

async function loadNext() {
  const { status, data } = await api("GET", base() + "/next");
  if (status !== 200) {
    showError((data && data.error) || "the next item could not be loaded");
    if (status === 401 || status === 403) show("login");
    setBusy(false);
    return;
  }
  updateProgress(data.answered, data.total);
  stopPlayer();
  if (data.done) {
    current = null;
    $("done-text").textContent = `You answered all ${data.total} items. You can close this page.`;
    show("done");
    return;
  }
  current = data;
  const player = document.createElement(data.kind === "video" ? "video" : "audio");
  player.id = "player";
  player.controls = true;
  player.preload = "auto";
  player.src = data.media;
  $("player-box").replaceChildren(player);
  $("transcript").textContent = data.text ? "“" + data.text + "”" : "";
  $("choice-first").textContent = data.descriptions[0];
  $("choice-second").textContent = data.descriptions[1];
  $("choice-neither").hidden = !data.neither;
  setBusy(false);
  show("trial");
}

async function choose(slot) {
  if (busy || !current) return;
  setBusy(true);
  const { status, data } = await api("POST", base() + "/answers", { position: current.position, choice: slot });
  if (status === 201 || status === 409) {
    showError("");
    await loadNext();
  } else {
    showError((data && data.error) || "the answer could not be saved; try again");
    setBusy(false);
  }
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  const { status, data } = await api("POST", "/api/session", { code: $("code").value });
  if (status === 200) await begin(data);
  else showError((data && data.error) || "the code was not accepted");
});
$("choice-first").addEventListener("click", () => choose("first"));
$("choice-second").addEventListener("click", () => choose("second"));
$("choice-neither").addEventListener("click", () => choose("neither"));
$("switch").addEventListener("click", (event) => {
  event.preventDefault();
  stopPlayer();
  participant = null;
  current = null;
  $("who").hidden = true;
  $("code").value = "";
  show("login");
});

(async () => {
  const { status, data } = await api("GET", "/api/session");
  if (status === 200) await begin(data);
  else show("login");
})();
