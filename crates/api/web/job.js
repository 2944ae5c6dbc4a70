// caas web page, second half (loaded after app.js, sharing its names): the job page (state,
// certificate, results with previews, downloads, logs) and the wiring of the page's controls.

// ---------- the job page ----------

function stopJob() {
  clearTimeout(S.jobTimer);
  S.jobTimer = null;
  if (S.logCtl) S.logCtl.abort();
  S.logCtl = null;
  S.jobName = null;
  S.job = null;
}

function route() {
  if (!S.token || !S.group) return;
  const m = location.hash.match(/^#job\/(.+)$/);
  if (m) {
    let job;
    try { job = decodeURIComponent(m[1]); } catch { job = m[1]; }
    $('home-view').hidden = true;
    $('job-view').hidden = false;
    clearInterval(S.jobsTimer);
    if (S.jobName !== job) openJob(job);
  } else {
    stopJob();
    $('job-view').hidden = true;
    $('home-view').hidden = false;
    clearInterval(S.jobsTimer);
    S.jobsTimer = setInterval(() => { if (!document.hidden) loadJobs().catch(() => {}); }, 5000);
    loadGroup();
  }
}

function openJob(job) {
  stopJob();
  S.jobName = job;
  $('job-title').textContent = job;
  $('job-state').replaceWith(stateBadge('pending', 'job-state'));
  $('job-reason').textContent = '';
  $('job-cost').textContent = '';
  $('job-datasets').replaceChildren();
  $('log-dataset').replaceChildren();
  $('logs').textContent = '';
  $('log-state').textContent = '';
  $('results').replaceChildren();
  $('previews').replaceChildren();
  $('certificate').textContent = '';
  $('download-tar').disabled = true;
  pollJob(job, 0);
}

async function pollJob(job, round) {
  if (S.jobName !== job) return;
  let j;
  try {
    j = await apiJson('GET', jpath(job));
  } catch (e) {
    if (S.jobName !== job) return;
    showError(e.message);
    if (e.status === 404 || e.status === 401 || e.status === 403) return;
    S.jobTimer = setTimeout(() => pollJob(job, round + 1), 3000);
    return;
  }
  if (S.jobName !== job) return;
  S.job = j;
  renderJob(j);
  const done = TERMINAL.has(j.state);
  if (done || round % 2 === 0) loadCertificate(job);
  if (done) {
    loadResults(job);
    return;
  }
  S.jobTimer = setTimeout(() => pollJob(job, round + 1), 1000);
}

function renderJob(j) {
  $('job-state').replaceWith(stateBadge(j.state, 'job-state'));
  $('job-reason').textContent = j.reason ? `— ${j.reason}` : '';
  $('job-cost').textContent = usd(j.cost_usd);
  $('cancel').hidden = TERMINAL.has(j.state);
  renderChain(j);
  const rows = (j.datasets || []).map((d) => el('tr', { 'data-dataset': d.name },
    el('td', { text: d.name }),
    el('td', {}, stateBadge(d.state)),
    el('td', { text: d.exit_code === null || d.exit_code === undefined ? '' : String(d.exit_code) }),
    el('td', { text: d.reason || '' }),
    el('td', { text: usd(d.cost_usd) })));
  $('job-datasets').replaceChildren(...rows);
  const sel = $('log-dataset');
  const names = (j.datasets || []).map((d) => d.name);
  const have = [...sel.options].map((o) => o.value);
  if (names.join('\n') !== have.join('\n')) {
    const was = sel.value;
    sel.replaceChildren(...names.map((n) => el('option', { value: n, text: n })));
    if (names.includes(was)) sel.value = was;
    if (!S.logCtl && names.length) followLogs();
  }
}

// The [[then]] chain: the job this one follows, and the jobs that follow it (links).
function renderChain(j) {
  const link = (name) => el('a', { href: '#job/' + encodeURIComponent(name), text: name });
  const parts = [];
  if (j.parent) parts.push(el('span', { text: 'after ' }), link(j.parent));
  for (const c of j.children || []) {
    if (parts.length) parts.push(el('span', { text: ' · ' }));
    parts.push(el('span', { text: 'then ' }), link(c));
  }
  $('job-chain').replaceChildren(...parts);
  $('job-chain').hidden = parts.length === 0;
}

async function loadCertificate(job) {
  try {
    const r = await api('GET', jpath(job) + '/certificate');
    const text = await r.text();
    if (S.jobName === job) $('certificate').textContent = text;
  } catch (e) {
    if (S.jobName === job && e.status !== 404) showError(e.message);
  }
}

async function loadResults(job) {
  try {
    const files = (await apiJson('GET', jpath(job) + '/results')) || [];
    if (S.jobName !== job) return;
    $('results').replaceChildren(...files.map((f) => el('li', {},
      el('a', { href: '#', class: 'result-link', 'data-path': f.path, text: f.path,
        onclick: guard(async (ev) => { ev.preventDefault(); await download(`${jpath(job)}/results/${encPath(f.path)}`, f.path.split('/').pop()); }) }),
      ` ${bytes(f.size)}`)));
    if (!files.length) $('results').append(el('li', { class: 'muted', text: 'no result files' }));
    $('download-tar').disabled = false;
    showPreviews(job, files);
  } catch (e) {
    if (S.jobName === job) showError(e.message);
  }
}

// ---------- previews: results looked at, not only downloaded ----------

const IMAGE_TYPES = { png: 'image/png', jpg: 'image/jpeg', jpeg: 'image/jpeg', gif: 'image/gif', webp: 'image/webp', svg: 'image/svg+xml' };
const PREVIEW_MAX = 4 << 20;

function previewKind(path) {
  const ext = (path.split('.').pop() || '').toLowerCase();
  if (IMAGE_TYPES[ext]) return 'image';
  if (ext === 'csv' || ext === 'tsv') return 'table';
  if (ext === 'json') return 'json';
  if (['txt', 'log', 'md', 'yaml', 'yml'].includes(ext)) return 'text';
  return null;
}

// A naive CSV/TSV split (quoted fields keep their commas); only the first rows are shown.
function splitRow(line, sep) {
  const out = [];
  let cur = '', q = false;
  for (const ch of line) {
    if (ch === '"') q = !q;
    else if (ch === sep && !q) { out.push(cur); cur = ''; } else cur += ch;
  }
  out.push(cur);
  return out;
}

async function showPreviews(job, files) {
  const box = $('previews');
  box.replaceChildren();
  // Plots first, then tables, JSON and text; caas's own end marker is not worth a look.
  const rank = { image: 0, table: 1, json: 2, text: 3 };
  const shown = files.filter((f) => previewKind(f.path) && f.size <= PREVIEW_MAX
    && f.path.startsWith('process_results/') && f.path !== 'process_results/end.txt')
    .sort((a, b) => rank[previewKind(a.path)] - rank[previewKind(b.path)] || a.path.localeCompare(b.path));
  for (const f of shown) {
    const kind = previewKind(f.path);
    const fig = el('figure', { class: 'preview', 'data-path': f.path, 'data-kind': kind },
      el('figcaption', { text: f.path.replace(/^process_results\//, '') }));
    box.append(fig);
    try {
      const resp = await api('GET', `${jpath(job)}/results/${encPath(f.path)}`);
      if (S.jobName !== job) return;
      if (kind === 'image') {
        // The type comes from the name, never from the bytes; an SVG in <img> runs no script.
        const ext = f.path.split('.').pop().toLowerCase();
        const blob = new Blob([await resp.arrayBuffer()], { type: IMAGE_TYPES[ext] });
        fig.append(el('img', { src: URL.createObjectURL(blob), alt: f.path }));
        continue;
      }
      const text = await resp.text();
      if (kind === 'table') {
        const sep = f.path.toLowerCase().endsWith('.tsv') ? '\t' : ',';
        const lines = text.split(/\r?\n/).filter((l) => l !== '');
        const rows = lines.slice(0, 21).map((l) => splitRow(l, sep));
        const table = el('table', { class: 'csv' },
          el('thead', {}, el('tr', {}, ...(rows[0] || []).map((c) => el('th', { text: c })))),
          el('tbody', {}, ...rows.slice(1).map((r) => el('tr', {}, ...r.map((c) => el('td', { text: c }))))));
        fig.append(table);
        if (lines.length > 21) fig.append(el('p', { class: 'muted', text: `first 20 of ${lines.length - 1} rows` }));
      } else if (kind === 'json') {
        let pretty;
        try { pretty = JSON.stringify(JSON.parse(text), null, 2); } catch { pretty = text; }
        const lines = pretty.split('\n');
        fig.append(el('pre', { text: lines.slice(0, 200).join('\n') + (lines.length > 200 ? '\n…' : '') }));
      } else {
        const lines = text.split('\n');
        fig.append(el('pre', { text: lines.slice(0, 40).join('\n') + (lines.length > 40 ? '\n…' : '') }));
      }
    } catch (e) {
      fig.append(el('p', { class: 'muted', text: `no preview: ${e.message}` }));
    }
  }
}

// Downloads need the Authorization header, which a plain link cannot send: fetch the file,
// then hand the browser a Blob under an object URL.
async function download(path, filename) {
  const resp = await api('GET', path);
  const blob = await resp.blob();
  const url = URL.createObjectURL(blob);
  const a = el('a', { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// ---------- live logs: SSE read from a fetch body (EventSource cannot send headers) ----------

function followLogs() {
  if (S.logCtl) S.logCtl.abort();
  const job = S.jobName;
  const dataset = $('log-dataset').value;
  const stream = $('log-stream').value;
  if (!job || !dataset) return;
  const ctl = new AbortController();
  S.logCtl = ctl;
  $('logs').textContent = '';
  streamLogs(job, dataset, stream, ctl).catch((e) => {
    if (e.name !== 'AbortError') $('log-state').textContent = `stopped: ${e.message}`;
  });
}

async function streamLogs(job, dataset, stream, ctl) {
  const pre = $('logs');
  const url = `${jpath(job)}/logs?dataset=${encodeURIComponent(dataset)}&stream=${encodeURIComponent(stream)}`;
  const say = (t) => { if (!ctl.signal.aborted) $('log-state').textContent = t; };
  let lastId = null;
  let tries = 0;
  while (!ctl.signal.aborted) {
    const headers = { Accept: 'text/event-stream' };
    if (lastId !== null) headers['Last-Event-ID'] = lastId;
    let resp;
    try {
      resp = await api('GET', url, { headers, signal: ctl.signal });
    } catch (e) {
      if (e.name === 'AbortError' || e.status === 401 || e.status === 403) throw e;
      // No log yet (the task has not started) or a lost connection: wait while the job runs.
      if (S.job && TERMINAL.has(S.job.state) && tries > 2) throw e;
      tries++;
      say(e.status === 404 ? 'waiting for the task to start…' : `reconnecting (${e.message})…`);
      await sleep(Math.min(500 * tries, 3000));
      continue;
    }
    const type = resp.headers.get('Content-Type') || '';
    if (!type.includes('text/event-stream')) {
      pre.textContent = await resp.text();
      say('complete');
      return;
    }
    say('live');
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    let data = [];
    let event = '';
    let id = null;
    let ended = false;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        let line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') {
          // dispatch one event
          if (id !== null) lastId = id;
          if (event === 'end') {
            ended = true;
          } else if (data.length) {
            const near = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 30;
            pre.append(document.createTextNode(data.join('\n')));
            if (near) pre.scrollTop = pre.scrollHeight;
          }
          data = []; event = ''; id = null;
          continue;
        }
        if (line.startsWith(':')) continue; // a comment, the server's keep-alive
        const c = line.indexOf(':');
        const field = c < 0 ? line : line.slice(0, c);
        let v = c < 0 ? '' : line.slice(c + 1);
        if (v.startsWith(' ')) v = v.slice(1);
        if (field === 'data') data.push(v);
        else if (field === 'event') event = v;
        else if (field === 'id') id = v;
      }
      if (ended) break;
    }
    if (ended) {
      reader.cancel().catch(() => {});
      say('complete (the task ended)');
      return;
    }
    // The stream closed without its end event: reconnect where it stopped.
    tries++;
    say('reconnecting…');
    await sleep(Math.min(500 * tries, 3000));
  }
}

// ---------- wiring ----------

function wire() {
  $('sign-in-form').addEventListener('submit', guard(async (ev) => {
    ev.preventDefault();
    const t = $('token').value.trim();
    if (!t) throw new Error('paste your token (caas_…) first; the operator makes one with `caas token create NAME`');
    await signIn(t);
  }));
  $('sign-out').addEventListener('click', () => { signedOut(); clearError(); });
  $('group').addEventListener('change', guard(async () => {
    S.group = $('group').value;
    sessionStorage.setItem('caas-group', S.group);
    if (location.hash.startsWith('#job/')) location.hash = '#';
    else await loadGroup();
  }));
  $('submit-form').addEventListener('submit', guard(submitJob));
  $('refresh-jobs').addEventListener('click', guard(loadJobs));
  for (const id of ['job-state-filter', 'job-analysis-filter']) $(id).addEventListener('change', () => { S.jobsPage = 0; renderJobs(); });
  $('job-filter').addEventListener('input', () => { S.jobsPage = 0; renderJobs(); });
  $('jobs-prev').addEventListener('click', () => { S.jobsPage -= 1; renderJobs(); });
  $('jobs-next').addEventListener('click', () => { S.jobsPage += 1; renderJobs(); });
  $('back').addEventListener('click', (ev) => { ev.preventDefault(); location.hash = '#'; });
  $('home').addEventListener('click', (ev) => { ev.preventDefault(); location.hash = '#'; });
  $('cancel').addEventListener('click', guard(async () => {
    if (!S.jobName) return;
    const j = await apiJson('POST', jpath(S.jobName) + '/cancel');
    if (j && j.state) renderJob(j);
  }));
  $('download-tar').addEventListener('click', guard(async () => {
    if (S.jobName) await download(jpath(S.jobName) + '/results.tar', `${S.jobName}.tar`);
  }));
  $('log-dataset').addEventListener('change', followLogs);
  $('log-stream').addEventListener('change', followLogs);

  const drop = $('drop');
  const upload = guard(async (files, forced) => {
    if (!files.length) return;
    if (S.who && S.who.read_only) throw new Error('this token is read-only: it cannot upload');
    clearError();
    await uploadFiles(files, forced);
  });
  drop.addEventListener('dragover', (ev) => { ev.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (ev) => {
    ev.preventDefault();
    drop.classList.remove('over');
    upload([...((ev.dataTransfer && ev.dataTransfer.files) || [])]);
  });
  // A file dropped beside the zone must not make the browser navigate away to it.
  window.addEventListener('dragover', (ev) => ev.preventDefault());
  window.addEventListener('drop', (ev) => ev.preventDefault());
  $('file-input').addEventListener('change', async (ev) => {
    const files = [...ev.target.files];
    await upload(files);
    ev.target.value = '';
  });
  window.addEventListener('hashchange', route);

  const saved = sessionStorage.getItem('caas-token');
  if (saved) guard(signIn)(saved);
}

wire();
