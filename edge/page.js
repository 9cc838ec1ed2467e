// What the setup page and the station's page share: served by both at /page.js (linewatch.edge.http).
"use strict";
const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const options = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const reply = await fetch(path, { credentials: "same-origin", ...options });
  if (reply.status === 401) { showLogin(); throw new Error("log in first"); }
  const data = await reply.json();
  if (!reply.ok) throw new Error(data.error || reply.statusText);
  return data;
}

function showLogin() { $("app").classList.add("hidden"); $("login").classList.remove("hidden"); }

function esc(text) { return String(text ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c])); }

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const reply = await fetch("/login", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: $("token").value }) });
  if (reply.ok) { location.reload(); } else { $("login-error").textContent = "wrong token"; }
});
