// tether dashboard: live fragments from the admin listener's event stream, and confirmed
// actions that call the JSON API with the login's CSRF token. No dependencies, no build step.
'use strict';
(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : '';
  const flash = document.getElementById('flash');

  function show(message, ok) {
    if (!flash) return;
    flash.textContent = message;
    flash.className = ok ? 'ok' : 'bad';
    flash.hidden = false;
  }

  // Live updates: each `fragment` event is "<element id>\n<html rendered by the server>".
  // The stream is closed when the page is left (pagehide): a browser keeps at most six
  // connections per host, and a page kept in the back/forward cache would hold its stream.
  const url = document.body.dataset.events;
  const live = document.getElementById('live');
  let es = null;
  function connect() {
    if (!url || !window.EventSource || es) return;
    es = new EventSource(url);
    es.addEventListener('open', function () { if (live) live.className = 'on'; });
    es.addEventListener('error', function () { if (live) live.className = 'off'; });
    es.addEventListener('fragment', function (e) {
      const nl = e.data.indexOf('\n');
      const el = document.getElementById(e.data.slice(0, nl));
      if (el) el.innerHTML = e.data.slice(nl + 1);
    });
    es.addEventListener('logout', function () { disconnect(); location.assign('/ui/login'); });
    es.addEventListener('gone', function (e) { disconnect(); show(e.data, false); });
  }
  function disconnect() {
    if (es) es.close();
    es = null;
    if (live) live.className = 'off';
  }
  window.addEventListener('pagehide', disconnect);
  window.addEventListener('pageshow', function (e) { if (e.persisted) connect(); });
  connect();

  // Actions: a button with data-url asks first, in a dialog, then calls the API.
  const dialog = document.getElementById('confirm');
  let pending = null;
  document.addEventListener('click', function (e) {
    const b = e.target.closest('button[data-url]');
    if (!b || !dialog) return;
    pending = b;
    document.getElementById('confirm-text').textContent = b.dataset.confirm;
    dialog.returnValue = '';
    dialog.showModal();
  });
  if (dialog) dialog.addEventListener('close', function () {
    const b = pending;
    pending = null;
    if (b && dialog.returnValue === 'ok') run(b);
  });

  function run(b) {
    const init = { method: b.dataset.method, headers: { 'X-CSRF-Token': csrf }, credentials: 'same-origin' };
    if (b.dataset.bodyFrom) {
      const body = {};
      body[b.dataset.bodyKey] = document.getElementById(b.dataset.bodyFrom).value;
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const label = b.textContent;
    // An answer that never comes is reported, not waited for forever.
    const abort = new AbortController();
    const timer = setTimeout(function () { abort.abort(); }, 15000);
    init.signal = abort.signal;
    show(label + ': sending…', true);
    fetch(b.dataset.url, init)
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (body) {
          if (r.ok) {
            const facts = Object.keys(body).filter(function (k) { return k !== 'id'; })
              .map(function (k) { return k + ': ' + body[k]; }).join(', ');
            show(label + ': done (' + facts + ')', true);
          } else {
            show(label + ' failed: ' + (body.error ? body.error.message : 'HTTP ' + r.status), false);
          }
        });
      })
      .catch(function (err) { show(label + ' failed: ' + err, false); })
      .finally(function () { clearTimeout(timer); });
  }
})();
