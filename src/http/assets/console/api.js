// What the console and the demo share: calling Ruyi's HTTP API with the manager token.
// The pages hold no secret: beyond loopback the API wants the manager token, which the
// operator types once; it is kept for this browser session only (sessionStorage) and sent
// as the `token` header.
'use strict';

const TOKEN_KEY = 'ruyi-manager-token';
const $ = (id) => document.getElementById(id);
let managerToken = sessionStorage.getItem(TOKEN_KEY) || '';

/** Calls the API; throws an Error carrying the server's message. */
async function api(method, path, body) {
  const headers = {};
  if (managerToken) headers.token = managerToken;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401) {
    $('token-box').classList.add('on');
    throw new Error('this server wants its manager token (HTTP 401): type it above');
  }
  const text = await res.text();
  let data = text;
  try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!res.ok) throw new Error((data && data.msg) || `HTTP ${res.status}`);
  return data;
}

function showError(e) { $('api-error').textContent = e ? String(e.message || e) : ''; }

$('token-save').addEventListener('click', () => {
  managerToken = $('token-input').value.trim();
  sessionStorage.setItem(TOKEN_KEY, managerToken);
  $('token-box').classList.remove('on');
  showError(null);
});
