// caas web page: sign in with a token, upload, submit, follow jobs, download results, all
// through the HTTP API v1 (docs/api.md). Plain JavaScript for a current browser: no build
// step, no library, no CDN. Every failure shows the API's {"error"} message in #error.
'use strict';

const API = '/api/v1';
const PART = 8 * 1024 * 1024; // resumable uploads above this size, in parts of this size
const TERMINAL = new Set(['succeeded', 'failed', 'timed_out', 'cancelled', 'lost', 'rejected']);
const WORD = {
  submitted: 'INITIALIZING', validating: 'INITIALIZING', queued: 'INITIALIZING',
  staging: 'INITIALIZING', pending: 'INITIALIZING', running: 'IN PROGRESS',
  uploading: 'IN PROGRESS', succeeded: 'SUCCESS', failed: 'FAILED', timed_out: 'FAILED',
  cancelled: 'FAILED', lost: 'FAILED', rejected: 'FAILED',
};

const $ = (id) => document.getElementById(id);
const S = {
  token: null, who: null, group: null, analyses: [], inputs: [], configs: [],
  jobTimer: null, jobsTimer: null, logCtl: null, jobName: null, job: null,
};

// ---------- small helpers ----------

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k in e && k !== 'list' && k !== 'form') e[k] = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function bytes(n) {
  if (typeof n !== 'number' || !isFinite(n)) return '?';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + ' ' + u[i];
}

// Costs of short tasks are fractions of a cent: show two significant digits past the zeros
// ($0.0000028), cents for a dollar and more ($1.25), never an exponent.
function usd(n) {
  if (typeof n !== 'number' || !isFinite(n)) return '–';
  if (n === 0) return '$0.00';
  const a = Math.abs(n);
  if (a >= 1) return '$' + n.toFixed(2);
  if (a < 1e-10) return (n < 0 ? '-' : '') + '<$0.0000000001';
  const digits = Math.min(10, Math.max(2, Math.ceil(-Math.log10(a)) + 1));
  return '$' + n.toFixed(digits);
}

function when(s) {
  if (!s) return '';
  const d = new Date(s);
  return isNaN(d) ? String(s) : d.toLocaleString();
}

function stateBadge(state, id) {
  const s = String(state || 'unknown');
  return el('span', { class: 'state', id, 'data-state': s, text: `${WORD[s] || s.toUpperCase()} · ${s}` });
}

function showError(msg) {
  const e = $('error');
  e.textContent = msg;
  e.hidden = false;
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

// Run an async UI action; any failure lands in #error.
function guard(fn) {
  return async (...args) => {
    try {
      return await fn(...args);
    } catch (e) {
      if (e && e.name === 'AbortError') return undefined;
      showError(e && e.message ? e.message : String(e));
      return undefined;
    }
  };
}

// ---------- the API ----------

class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function errorFromText(status, statusText, text) {
  let body = null;
  let msg = `${status} ${statusText || ''}`.trim();
  try {
    body = JSON.parse(text);
    if (body && typeof body.error === 'string') msg = body.error;
  } catch {
    if (text) msg = `${msg}: ${text.slice(0, 500)}`;
  }
  return new ApiError(status, msg, body);
}

async function errorFrom(resp) {
  let text = '';
  try { text = await resp.text(); } catch { /* the message is the status then */ }
  return errorFromText(resp.status, resp.statusText, text);
}

const gpath = () => '/groups/' + encodeURIComponent(S.group);
const jpath = (job) => gpath() + '/jobs/' + encodeURIComponent(job);
const encPath = (p) => String(p).split('/').map(encodeURIComponent).join('/');

async function api(method, path, { json, headers = {}, signal } = {}) {
  const h = { Authorization: 'Bearer ' + S.token, ...headers };
  let body;
  if (json !== undefined) {
    h['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  }
  let resp;
  try {
    resp = await fetch(API + path, { method, headers: h, body, signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, `cannot reach the caas server (${e.message}); check your connection and retry`);
  }
  if (!resp.ok) {
    const err = await errorFrom(resp);
    if (resp.status === 401) signedOut(err.message);
    throw err;
  }
  return resp;
}

async function apiJson(method, path, opts) {
  const resp = await api(method, path, opts);
  const text = await resp.text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    throw new ApiError(resp.status, `the server sent something that is not JSON for ${method} ${path}`);
  }
}

// PUT a body with XMLHttpRequest, the one browser API that reports upload progress.
function xhrPut(url, body, onProgress) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open('PUT', url);
    x.setRequestHeader('Authorization', 'Bearer ' + S.token);
    x.setRequestHeader('Content-Type', 'application/octet-stream');
    x.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded); };
    x.onload = () => {
      if (x.status >= 200 && x.status < 300) {
        let j = {};
        try { j = JSON.parse(x.responseText); } catch { /* an empty answer is fine */ }
        resolve(j);
      } else {
        const err = errorFromText(x.status, x.statusText, x.responseText);
        if (x.status === 401) signedOut(err.message);
        reject(err);
      }
    };
    x.onerror = () => reject(new ApiError(0, 'the connection was lost during the upload'));
    x.onabort = () => reject(new ApiError(0, 'the upload was aborted'));
    x.send(body);
  });
}

// ---------- sign in ----------

async function signIn(token) {
  S.token = token;
  let who;
  try {
    who = await apiJson('GET', '/whoami');
  } catch (e) {
    S.token = null;
    sessionStorage.removeItem('caas-token');
    throw e;
  }
  sessionStorage.setItem('caas-token', token);
  S.who = who;
  clearError();
  $('token').value = '';
  $('sign-in-form').hidden = true;
  $('who').hidden = false;
  $('whoami').textContent = `${who.user}${who.read_only ? ' (read-only)' : ''}`
    + (who.expires ? ` · token expires ${when(who.expires)}` : '');
  const sel = $('group');
  sel.replaceChildren(...(who.groups || []).map((g) => el('option', { value: g, text: g })));
  const remembered = sessionStorage.getItem('caas-group');
  S.group = (who.groups || []).includes(remembered) ? remembered : (who.groups || [])[0] || null;
  if (S.group) sel.value = S.group;
  for (const id of ['submit', 'cancel', 'file-input']) $(id).disabled = !!who.read_only;
  $('app').hidden = false;
  if (!S.group) {
    showError(`user ${who.user} is in no group yet; ask the operator to add one (caas users add ${who.user} --group G)`);
    return;
  }
  await Promise.all([loadAnalyses(), loadGroup()]);
  route();
}

function signedOut(message) {
  S.token = null;
  sessionStorage.removeItem('caas-token');
  stopJob();
  clearInterval(S.jobsTimer);
  $('app').hidden = true;
  $('who').hidden = true;
  $('sign-in-form').hidden = false;
  if (message) showError(`${message} (sign in again with a valid token)`);
}

// ---------- analyses and the config form from a JSON Schema ----------

async function loadAnalyses() {
  S.analyses = (await apiJson('GET', '/analyses')) || [];
  const list = $('analyses');
  list.replaceChildren();
  if (!S.analyses.length) list.append(el('p', { class: 'muted', text: 'No analysis is served.' }));
  for (const a of S.analyses) {
    const box = el('div', { class: 'analysis', 'data-analysis': a.name },
      el('strong', { text: a.name }), ' ', el('span', { class: 'version', text: `v${a.version}` }),
      el('p', { class: 'description', text: a.description || '' }));
    if (a.config_schema && typeof a.config_schema === 'object') box.append(schemaForm(a));
    list.append(box);
  }
  $('analysis').replaceChildren(...S.analyses.map((a) => el('option', { value: a.name, text: `${a.name} ${a.version}` })));
}

// An enum value as a scientist reads it: `slow`, `3`, `true`; JSON only for lists and objects.
function enumText(v) {
  if (v === null) return 'null';
  return typeof v === 'object' ? JSON.stringify(v) : String(v);
}

function schemaForm(a) {
  const schema = a.config_schema;
  const props = schema.properties && typeof schema.properties === 'object' ? schema.properties : {};
  const required = new Set(Array.isArray(schema.required) ? schema.required : []);
  // novalidate: the checks below say what is wrong in #error, as every other failure does.
  const form = el('form', { class: 'schema-form', novalidate: true });
  const fields = [];
  form.append(el('p', { class: 'muted', text: 'Make a config from this analysis\' schema:' }));
  for (const [key, p0] of Object.entries(props)) {
    const p = p0 && typeof p0 === 'object' ? p0 : {};
    const type = Array.isArray(p.type) ? p.type.find((t) => t !== 'null') : p.type;
    const id = `cfg-${a.name}-${key}`;
    let input;
    if (Array.isArray(p.enum)) {
      input = el('select', { id });
      if (!required.has(key)) input.append(el('option', { value: '', text: '(not set)' }));
      p.enum.forEach((v, i) => input.append(el('option', { value: String(i), text: enumText(v) })));
      const d = p.enum.findIndex((v) => JSON.stringify(v) === JSON.stringify(p.default));
      if (d >= 0) input.value = String(d);
    } else if (type === 'boolean') {
      input = el('input', { id, type: 'checkbox', checked: p.default === true });
    } else if (type === 'integer' || type === 'number') {
      input = el('input', { id, type: 'number', step: type === 'integer' ? '1' : 'any' });
      if (typeof p.minimum === 'number') input.min = p.minimum;
      if (typeof p.maximum === 'number') input.max = p.maximum;
      if (typeof p.default === 'number') input.value = p.default;
    } else if (type === 'array' || type === 'object') {
      input = el('input', { id, type: 'text', placeholder: 'JSON', value: p.default !== undefined ? JSON.stringify(p.default) : '' });
    } else {
      input = el('input', { id, type: 'text', value: typeof p.default === 'string' ? p.default : '' });
    }
    fields.push({ key, p, type, input });
    form.append(el('div', { class: 'field' },
      el('label', { for: id, text: key + (required.has(key) ? ' *' : ''), title: p.description || '' }),
      input, el('span', { class: 'muted', text: p.description || '' })));
  }
  const name = el('input', { type: 'text', value: `${a.name}-config.json`, 'aria-label': 'config name' });
  form.append(el('div', { class: 'field' }, el('label', { text: 'save as' }), name,
    el('button', { type: 'submit', text: 'Upload config' })));
  form.addEventListener('submit', guard(async (ev) => {
    ev.preventDefault();
    const cfg = {};
    for (const { key, p, type, input } of fields) {
      if (Array.isArray(p.enum)) {
        if (input.value !== '') cfg[key] = p.enum[Number(input.value)];
      } else if (type === 'boolean') {
        cfg[key] = input.checked;
      } else if (input.value.trim() === '') {
        if (required.has(key)) throw new Error(`${key} is required`);
      } else if (type === 'integer' || type === 'number') {
        const n = Number(input.value);
        if (!isFinite(n) || (type === 'integer' && !Number.isInteger(n))) throw new Error(`${key} must be ${type === 'integer' ? 'an integer' : 'a number'}`);
        cfg[key] = n;
      } else if (type === 'array' || type === 'object') {
        try { cfg[key] = JSON.parse(input.value); } catch { throw new Error(`${key} must be JSON (${type})`); }
      } else {
        cfg[key] = input.value;
      }
    }
    const n = name.value.trim();
    if (!n) throw new Error('give the config a name');
    const file = new File([JSON.stringify(cfg, null, 2) + '\n'], n, { type: 'application/json' });
    await uploadFiles([file], 'configs');
  }));
  return form;
}

// ---------- the group: inputs, configs, jobs, cost ----------

async function loadGroup() {
  await Promise.all([loadInputs(), loadConfigs(), loadJobs(), loadCost()].map((p) => p.catch((e) => showError(e.message))));
}

async function loadInputs(check = []) {
  const was = new Set([...document.querySelectorAll('#datasets input:checked')].map((c) => c.value));
  for (const c of check) was.add(c);
  S.inputs = (await apiJson('GET', gpath() + '/inputs')) || [];
  const box = $('datasets');
  box.replaceChildren();
  if (!S.inputs.length) box.append(el('p', { class: 'muted', text: 'No dataset yet: upload one above.' }));
  for (const f of S.inputs) {
    box.append(el('label', {},
      el('input', { type: 'checkbox', name: 'dataset', value: f.name, checked: was.has(f.name) }),
      ` ${f.name} `, el('span', { class: 'muted', text: `(${bytes(f.size)})` })));
  }
}

async function loadConfigs(select) {
  const was = select || $('configs').value;
  S.configs = (await apiJson('GET', gpath() + '/configs')) || [];
  const sel = $('configs');
  sel.replaceChildren(...S.configs.map((f) => el('option', { value: f.name, text: `${f.name} (${bytes(f.size)})` })));
  if (S.configs.some((f) => f.name === was)) sel.value = was;
}

// The job list: fetched once per refresh, then filtered (state, analysis, text) and shown a
// page at a time, so a group with thousands of jobs renders 50 rows, not all of them.
const JOBS_PAGE = 50;

async function loadJobs() {
  S.allJobs = (await apiJson('GET', gpath() + '/jobs')) || [];
  const fill = (id, values, all) => {
    const sel = $(id);
    const was = sel.value;
    sel.replaceChildren(el('option', { value: '', text: all }),
      ...values.map((v) => el('option', { value: v, text: v })));
    if (values.includes(was)) sel.value = was;
  };
  fill('job-state-filter', [...new Set(S.allJobs.map((j) => j.state))].sort(), 'all states');
  fill('job-analysis-filter', [...new Set(S.allJobs.map((j) => j.analysis))].sort(), 'all analyses');
  renderJobs();
}

function filteredJobs() {
  const state = $('job-state-filter').value;
  const analysis = $('job-analysis-filter').value;
  const text = $('job-filter').value.trim().toLowerCase();
  return (S.allJobs || []).filter((j) => (!state || j.state === state)
    && (!analysis || j.analysis === analysis)
    && (!text || `${j.job} ${j.timestamp} ${j.reason || ''} ${(j.datasets || []).map((d) => d.name).join(' ')}`
      .toLowerCase().includes(text)));
}

function renderJobs() {
  const jobs = filteredJobs();
  const pages = Math.max(1, Math.ceil(jobs.length / JOBS_PAGE));
  S.jobsPage = Math.min(Math.max(0, S.jobsPage || 0), pages - 1);
  const shown = jobs.slice(S.jobsPage * JOBS_PAGE, (S.jobsPage + 1) * JOBS_PAGE);
  const rows = document.createDocumentFragment();
  if (!shown.length) rows.append(el('tr', {}, el('td', { colspan: 6, class: 'muted', text: (S.allJobs || []).length ? 'No job matches.' : 'No job yet.' })));
  for (const j of shown) {
    rows.append(el('tr', { 'data-job': j.job },
      el('td', {}, el('a', { href: '#job/' + encodeURIComponent(j.job), class: 'job-link', text: j.timestamp || j.job })),
      el('td', { text: j.analysis || '' }),
      el('td', {}, stateBadge(j.state)),
      el('td', { text: String((j.datasets || []).length) }),
      el('td', { text: when(j.created) }),
      el('td', { text: usd(j.cost_usd) })));
  }
  $('jobs').replaceChildren(rows);
  $('jobs-count').textContent = `${jobs.length} of ${(S.allJobs || []).length} jobs`;
  $('jobs-page').textContent = `page ${S.jobsPage + 1} of ${pages}`;
  $('jobs-prev').disabled = S.jobsPage === 0;
  $('jobs-next').disabled = S.jobsPage >= pages - 1;
}

async function loadCost() {
  const c = await apiJson('GET', gpath() + '/cost');
  $('cost').textContent = `${usd(c.cost_usd)} over ${c.tasks} tasks (${Math.round(c.wall_seconds || 0)} s wall, `
    + `${Math.round(c.cpu_seconds || 0)} s CPU)` + (typeof c.budget_usd === 'number' ? `, budget ${usd(c.budget_usd)}` : '');
}

// ---------- uploads ----------

function kindOf(file, forced) {
  if (forced) return forced;
  const k = $('upload-kind').value;
  if (k === 'inputs' || k === 'configs') return k;
  return /\.(ya?ml|json)$/i.test(file.name) ? 'configs' : 'inputs';
}

function progress(done, total, text) {
  const pct = total > 0 ? Math.min(100, Math.floor((done / total) * 100)) : 100;
  $('upload-progress').value = pct;
  $('upload-status').textContent = text || `${pct} % of ${bytes(total)}`;
}

async function uploadFiles(files, forced) {
  clearError();
  let last = '';
  const inputs = [];
  const configs = [];
  for (const file of files) {
    const kind = kindOf(file, forced);
    const label = `${file.name} → ${kind === 'inputs' ? 'datasets' : 'configs'}`;
    progress(0, file.size, `uploading ${label}…`);
    const r = file.size > PART ? await uploadResumable(file, kind, label) : await uploadSingle(file, kind, label);
    last = `${label}: ${r && r.created === false ? 'identical file already stored' : 'uploaded'} (${bytes(file.size)})`;
    progress(file.size, file.size, `${last}; refreshing the lists…`);
    (kind === 'inputs' ? inputs : configs).push(file.name);
  }
  if (inputs.length) await loadInputs(inputs);
  if (configs.length) await loadConfigs(configs[configs.length - 1]);
  // Said last, so "uploaded" means the file is also listed (and ticked or selected) below.
  if (last) $('upload-status').textContent = last;
}

function uploadSingle(file, kind, label) {
  const url = `${API}${gpath()}/${kind}/${encodeURIComponent(file.name)}`;
  return xhrPut(url, file, (n) => progress(n, file.size, `uploading ${label}: ${Math.floor((n / file.size) * 100)} %`));
}

// Resumable upload in PART-sized parts. The upload's id is kept in localStorage under the
// file's identity, so dropping the same file again after an interruption (a lost connection,
// a closed tab) asks the server how much it has and goes on from there.
async function uploadResumable(file, kind, label) {
  const key = `caas-upload:${S.group}:${kind}:${file.name}:${file.size}:${file.lastModified}`;
  const base = gpath() + '/uploads';
  let id = localStorage.getItem(key);
  let received = 0;
  if (id) {
    try {
      const u = await apiJson('GET', `${base}/${encodeURIComponent(id)}`);
      if (u && u.name === file.name && u.size === file.size && u.kind === kind) {
        received = Number(u.received) || 0;
        $('upload-progress').dataset.resumedFrom = String(received);
        progress(received, file.size, `resuming ${label} at ${bytes(received)}`);
      } else {
        id = null;
      }
    } catch (e) {
      if (e.status !== 404) throw e;
      id = null;
    }
  }
  if (!id) {
    const u = await apiJson('POST', base, { json: { kind, name: file.name, size: file.size } });
    id = u.id;
    received = Number(u.received) || 0;
    localStorage.setItem(key, id);
  }
  let failures = 0;
  while (received < file.size) {
    const end = Math.min(received + PART, file.size);
    const at = received;
    try {
      const r = await xhrPut(`${API}${base}/${encodeURIComponent(id)}?offset=${at}`, file.slice(at, end),
        (n) => progress(at + n, file.size, `uploading ${label}: ${Math.floor(((at + n) / file.size) * 100)} % (part ${Math.floor(at / PART) + 1} of ${Math.ceil(file.size / PART)})`));
      received = typeof r.received === 'number' ? r.received : end;
      failures = 0;
    } catch (e) {
      if (e.status === 409 && e.body && typeof e.body.received === 'number') {
        received = e.body.received; // the server has a different offset: go on from there
      } else if ((e.status === 0 || e.status >= 500) && failures < 6) {
        failures++;
        progress(at, file.size, `connection lost; resuming ${label} (try ${failures})…`);
        await sleep(500 * 2 ** failures);
        try {
          const u = await apiJson('GET', `${base}/${encodeURIComponent(id)}`);
          received = Number(u.received) || 0;
        } catch { /* retried in the next round */ }
      } else {
        if (e.status === 404) localStorage.removeItem(key);
        throw e;
      }
    }
  }
  try {
    return await apiJson('POST', `${base}/${encodeURIComponent(id)}/complete`);
  } finally {
    localStorage.removeItem(key);
  }
}

// ---------- submit ----------

async function submitJob(ev) {
  ev.preventDefault();
  const dataname = [...document.querySelectorAll('#datasets input:checked')].map((c) => c.value);
  const configname = $('configs').value;
  if (!dataname.length) throw new Error('pick at least one dataset');
  if (!configname) throw new Error('pick a config (upload one first)');
  const body = { dataname, configname };
  if ($('analysis').value) body.analysis = $('analysis').value;
  const ts = $('timestamp').value.trim();
  if (ts) body.timestamp = ts;
  $('submit').disabled = true;
  try {
    const job = await apiJson('POST', gpath() + '/jobs', { json: body });
    clearError();
    $('timestamp').value = '';
    location.hash = '#job/' + encodeURIComponent(job.job);
    loadJobs().catch((e) => showError(e.message));
  } finally {
    $('submit').disabled = !!(S.who && S.who.read_only);
  }
}
