// The chat page (HTML + CSS + JS in one string).
#include "serve/web_page.h"

namespace vadapt::serve {

const std::string& web_page() {
  static const std::string page = R"PAGE(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>vadapt chat</title>
<style>
body{font-family:system-ui,sans-serif;max-width:46rem;margin:1rem auto;padding:0 1rem;color:#222}
#log{border:1px solid #ccc;border-radius:6px;min-height:12rem;padding:.5rem;overflow-y:auto;max-height:60vh}
.msg{margin:.4rem 0;white-space:pre-wrap;overflow-wrap:anywhere}[hidden]{display:none!important}.user{color:#134}.assistant{color:#142}.err{color:#a11}
img.thumb{max-height:6rem;display:block;margin:.2rem 0;border-radius:4px}
#bar{display:flex;gap:.5rem;margin-top:.5rem;align-items:center;flex-wrap:wrap}
#text{flex:1;min-width:12rem;padding:.4rem}
</style></head><body>
<h1>vadapt chat</h1>
<div id="bar"><label>model <select id="model"></select></label>
<label>API key <input id="key" type="password" size="10"></label>
<button id="reset" type="button">new chat</button></div>
<div id="log"></div>
<div id="bar2"><img id="preview" class="thumb" alt="" hidden></div>
<form id="form"><div id="bar">
<input id="file" type="file" accept="image/*">
<input id="text" placeholder="Ask about the image..." autocomplete="off">
<button id="send" type="submit">send</button></div></form>
<script>
"use strict";
const $ = id => document.getElementById(id);
let messages = [], image = null;
function headers() {
  const h = {"Content-Type": "application/json"};
  if ($("key").value) h["Authorization"] = "Bearer " + $("key").value;
  return h;
}
function add(cls, text, img) {
  const d = document.createElement("div"); d.className = "msg " + cls;
  if (img) { const i = document.createElement("img"); i.src = img; i.className = "thumb"; d.appendChild(i); }
  const s = document.createElement("span"); s.textContent = text; d.appendChild(s);
  $("log").appendChild(d); $("log").scrollTop = 1e9; return s;
}
async function loadModels() {
  try {
    const r = await fetch("/v1/models", {headers: headers()}); const j = await r.json();
    $("model").innerHTML = "";
    for (const m of (j.data || [])) { const o = document.createElement("option"); o.value = o.textContent = m.id; $("model").appendChild(o); }
    if (j.error) add("err", j.error.message);
  } catch (e) { add("err", String(e)); }
}
function attach(f) {
  if (!f || !f.type.startsWith("image/")) return false;
  const rd = new FileReader();
  rd.onload = () => { image = rd.result; $("preview").src = image; $("preview").hidden = false; };
  rd.readAsDataURL(f);
  return true;
}
$("file").onchange = () => attach($("file").files[0]);
document.addEventListener("paste", ev => {  // an image pasted anywhere on the page is attached
  for (const it of (ev.clipboardData ? ev.clipboardData.items : []))
    if (it.kind === "file" && attach(it.getAsFile())) { ev.preventDefault(); return; }
});
$("reset").onclick = () => { messages = []; $("log").innerHTML = ""; };
$("form").onsubmit = async ev => {
  ev.preventDefault();
  const text = $("text").value.trim(); if (!text) return;
  const content = [{type: "text", text}];
  if (image) content.push({type: "image_url", image_url: {url: image}});
  add("user", text, image);
  messages.push({role: "user", content});
  image = null; $("preview").hidden = true; $("file").value = ""; $("text").value = "";
  const out = add("assistant", "");
  let answer = "";
  try {
    const r = await fetch("/v1/chat/completions", {method: "POST", headers: headers(),
      body: JSON.stringify({model: $("model").value, messages, stream: true, temperature: 0})});
    if (!r.ok) { const j = await r.json(); out.className = "err"; out.textContent = j.error ? j.error.message : r.statusText; messages.pop(); return; }
    const reader = r.body.getReader(), dec = new TextDecoder(); let buf = "";
    for (;;) {
      const {value, done} = await reader.read(); if (done) break;
      buf += dec.decode(value, {stream: true});
      let at;
      while ((at = buf.indexOf("\n\n")) >= 0) {
        const ev = buf.slice(0, at); buf = buf.slice(at + 2);
        if (!ev.startsWith("data: ")) continue;
        const data = ev.slice(6); if (data === "[DONE]") continue;
        const j = JSON.parse(data);
        if (j.error) { out.className = "err"; out.textContent = j.error.message; continue; }
        const d = j.choices && j.choices[0].delta;
        if (d && d.content) { answer += d.content; out.textContent = answer; $("log").scrollTop = 1e9; }
      }
    }
    messages.push({role: "assistant", content: answer});
  } catch (e) { out.className = "err"; out.textContent = String(e); messages.pop(); }
};
loadModels();
</script></body></html>
)PAGE";
  return page;
}

}  // namespace vadapt::serve
