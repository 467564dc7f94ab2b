// Harmonia dashboard: confirmations, the run page's live updates (Server-Sent Events from
// /api/v1/runs/{id}/events) and the task table's status filter. No framework, nothing fetched
// from elsewhere.
'use strict';

document.addEventListener('submit', (ev) => {
  const form = ev.target;
  const question = form.getAttribute && form.getAttribute('data-confirm');
  if (question && !window.confirm(question)) ev.preventDefault();
});

function bySelector(node) {
  return '[data-node="' + CSS.escape(node) + '"]';
}

// As the server writes them (page.rs human_ms): 812 ms, 1.2 s, 3 min 4 s, 2 h 5 min.
function humanMs(ms) {
  if (ms === null || ms === undefined) return '';
  ms = Math.max(0, ms);
  if (ms < 1000) return ms + ' ms';
  if (ms < 60000) return (ms / 1000).toFixed(1) + ' s';
  if (ms < 3600000) return Math.floor(ms / 60000) + ' min ' + Math.floor(ms % 60000 / 1000) + ' s';
  return Math.floor(ms / 3600000) + ' h ' + Math.floor(ms % 3600000 / 60000) + ' min';
}

// As the server writes it (runs.rs progress_text): a succeeded task is at 100%.
function progressText(t) {
  if (t.status === 'succeeded') return '100%';
  if (!t.progress) return '';
  const pct = Math.round(t.progress.percent);
  return (t.progress.stage ? t.progress.stage + ' ' : '') + pct + '%';
}

function applyTask(t) {
  document.querySelectorAll(bySelector(t.node_id)).forEach((el) => {
    if (el.tagName.toLowerCase() === 'tr') {
      el.dataset.status = t.status;
      const badge = el.querySelector('.n-status');
      if (badge) { badge.textContent = t.status; badge.className = 'badge st-' + t.status + ' n-status'; }
      const set = (cls, text) => { const c = el.querySelector(cls); if (c) c.textContent = text; };
      set('.n-pct', progressText(t));
      set('.n-attempt', t.attempt + '/' + t.max_attempts);
      set('.n-worker', t.worker_id || '');
      set('.n-duration', humanMs(t.duration_ms));
      applyFilter();
    } else {
      el.setAttribute('class', 'node st-' + t.status);
      const status = el.querySelector('.n-status');
      if (status) status.textContent = t.status;
      const pct = el.querySelector('.n-pct');
      if (pct) pct.textContent = progressText(t);
      const bar = el.querySelector('.bar');
      const box = el.querySelector('.box');
      if (bar && box) {
        const full = Number(box.getAttribute('width'));
        const p = t.status === 'succeeded' ? 100 : (t.progress ? t.progress.percent : 0);
        bar.setAttribute('width', String(Math.round(full * p / 100)));
      }
      const title = el.querySelector('title');
      if (title) title.textContent = t.node_id + ' (' + t.task_type + '): ' + t.status;
    }
  });
}

function applyRun(r) {
  const status = document.getElementById('run-status');
  if (status) { status.textContent = r.status; status.className = 'badge st-' + r.status; }
  const counts = document.getElementById('run-counts');
  if (counts) counts.textContent = r.succeeded + ' succeeded · ' + r.failed + ' failed · ' + r.running + ' running · ' + r.task_count + ' in all';
  const duration = document.getElementById('run-duration');
  if (duration && r.duration_ms !== null && r.duration_ms !== undefined) duration.textContent = humanMs(r.duration_ms);
}

function applyFilter() {
  const select = document.getElementById('task-filter');
  if (!select) return;
  const want = select.value;
  document.querySelectorAll('#tasks tbody tr').forEach((row) => {
    row.hidden = want !== '' && row.dataset.status !== want;
  });
}

function follow(run) {
  const state = document.getElementById('live-state');
  const source = new EventSource('/api/v1/runs/' + encodeURIComponent(run) + '/events');
  source.addEventListener('open', () => { if (state) state.textContent = 'live'; });
  source.addEventListener('task', (e) => applyTask(JSON.parse(e.data)));
  source.addEventListener('run', (e) => {
    const r = JSON.parse(e.data);
    applyRun(r);
    if (['succeeded', 'failed', 'cancelled'].includes(r.status) && state) state.textContent = 'finished';
  });
  source.addEventListener('error', () => { if (state) state.textContent = 'reconnecting…'; });
}

document.addEventListener('DOMContentLoaded', () => {
  const run = document.getElementById('run');
  if (run && run.dataset.live === 'true') follow(run.dataset.run);
  const select = document.getElementById('task-filter');
  if (select) select.addEventListener('change', applyFilter);
});
