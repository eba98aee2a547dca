// course_llm dashboard, part 4 of 4: state, the usage API, and the wiring of the page.
//
// Vanilla JS, no build step, no CDN: the proxy may run on a machine without internet access.
// One time range and one set of filters drive everything on the page (figures, charts,
// breakdowns, both views, the CSV export), so no two numbers on screen cover different rows.
//
// State lives in the URL fragment (#range=7d&status=error&view=attempts&request=…) so a view can
// be shared or reloaded; `#key=…` is accepted once, moved to sessionStorage and removed from the URL.
// The fragment is untrusted input: a time or an interval the pickers could not have produced is
// dropped (and the page says so) rather than handed to Date or setInterval.
//
// Loads overlap (a filter applied while the last one is still loading, a slow refresh tick): each
// load takes a sequence number, and only the latest one renders, so the page never shows the
// figures of an earlier filter under a later one.
"use strict";

(() => {
  const CL = window.CourseLLM;
  const { h, $ } = CL;
  const KEY_STORAGE = "course_llm.proxy_key";
  const DEV_KEY = "sk-course-llm-dev";
  const PAGE_SIZE = 50;
  const FILTERS = ["action", "strategy", "provider", "model_id", "status", "tenant_id", "operation"];
  const RANGES = { "1h": CL.HOUR, "24h": 24 * CL.HOUR, "7d": 7 * CL.DAY, "30d": 30 * CL.DAY };
  const DEFAULT_RANGE = "24h";
  // What <input type="datetime-local"> gives (minutes, or seconds with a step), read as UTC.
  const PICKER_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?$/;

  const state = {
    range: DEFAULT_RANGE, from: "", to: "", filters: {}, view: "requests", page: 1, request: null,
    refresh: 0, charts: {}, loads: 0, notice: "",
  };
  let refreshTimer = null;
  // The latest load of everything and of the view alone; a load whose number is no longer the
  // latest renders nothing. `inFlight` lets a refresh tick skip while a load is still running.
  const seq = { all: 0, view: 0 };
  let inFlight = false;

  class AuthError extends Error {}

  // ---- key, URL state, messages --------------------------------------------------------------

  const getKey = () => sessionStorage.getItem(KEY_STORAGE);

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    const key = params.get("key");
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    state.filters = {};
    for (const name of FILTERS) if (params.get(name)) state.filters[name] = params.get(name);
    const range = params.get("range");
    state.range = range === "custom" || RANGES[range] ? range : DEFAULT_RANGE;
    state.from = params.get("from") || "";
    state.to = params.get("to") || "";
    state.notice = "";
    if (state.range === "custom" && !(pickerTime(state.from) && (!state.to || pickerTime(state.to)))) {
      state.notice = `Ignored the custom range in the address (from ${JSON.stringify(state.from)}` +
        ` to ${JSON.stringify(state.to)}): times must look like 2025-03-01T12:00 (UTC). Showing the last 24 hours.`;
      state.range = DEFAULT_RANGE;
      state.from = "";
      state.to = "";
    }
    state.view = params.get("view") === "attempts" ? "attempts" : "requests";
    state.page = Math.max(1, parseInt(params.get("page") || "1", 10) || 1);
    state.request = params.get("request") || null;
    const refresh = params.get("refresh");
    state.refresh = refreshChoices().includes(refresh) ? parseInt(refresh, 10) : 0;
    if (refresh && !state.refresh) {
      state.notice += (state.notice ? " " : "") +
        `Ignored refresh=${JSON.stringify(refresh)} in the address: the interval must be one of ` +
        `${refreshChoices().join(", ")} seconds. Auto-refresh is off.`;
    }
    if (key || state.notice) writeHash(); // no key in the address bar or history; no rejected value
  }

  // A time as the picker writes it, and one that names a real instant (not 2025-13-45T99:00).
  function pickerTime(value) {
    return PICKER_TIME.test(value) && !Number.isNaN(new Date(value + "Z").getTime());
  }

  // The intervals the refresh picker offers, in seconds, as strings: the only ones accepted.
  const refreshChoices = () => Array.from($("#refresh-interval").options, (option) => option.value);

  function writeHash() {
    const params = new URLSearchParams();
    if (state.range !== DEFAULT_RANGE) params.set("range", state.range);
    if (state.range === "custom") { params.set("from", state.from); params.set("to", state.to); }
    for (const name of FILTERS) if (state.filters[name]) params.set(name, state.filters[name]);
    if (state.view !== "requests") params.set("view", state.view);
    if (state.page > 1) params.set("page", String(state.page));
    if (state.request) params.set("request", state.request);
    if (state.refresh) params.set("refresh", String(state.refresh));
    const fragment = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (fragment ? "#" + fragment : ""));
  }

  function showMessage(kind, text) {
    const box = $("#message");
    box.dataset.kind = kind;
    box.textContent = text;
    box.hidden = false;
  }
  const hideMessage = () => { $("#message").hidden = true; };
  const setState = (name) => { document.body.dataset.state = name; };

  // ---- the range and the filters as query parameters ------------------------------------------

  // {since, until} as Dates, for the chart buckets; custom times are UTC, as the page labels them.
  function rangeDates() {
    if (state.range === "custom") {
      const since = new Date(state.from + "Z");
      const until = state.to ? new Date(state.to + "Z") : new Date();
      return { since, until };
    }
    const until = new Date();
    return { since: new Date(until.getTime() - RANGES[state.range]), until };
  }

  function query(extra) {
    const params = new URLSearchParams();
    if (state.range === "custom") {
      if (state.from) params.set("since", state.from);
      if (state.to) params.set("until", state.to);
    } else {
      params.set("since", state.range);
    }
    for (const name of FILTERS) if (state.filters[name]) params.set(name, state.filters[name]);
    for (const [name, value] of Object.entries(extra || {})) params.set(name, value);
    return params.toString();
  }

  // ---- API -----------------------------------------------------------------------------------

  // Relative paths: the proxy may be mounted under a prefix, and the page sits next to /usage.
  async function api(path, asText) {
    const key = getKey();
    if (!key) throw new AuthError("missing");
    const response = await fetch(path, { headers: { Authorization: "Bearer " + key } });
    if (response.status === 401) throw new AuthError("rejected");
    if (asText && response.ok) return response.blob();
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok) {
      const detail = body && (body.error || body.detail);
      const text = detail ? ": " + (typeof detail === "string" ? detail : JSON.stringify(detail)) : "";
      throw new Error(`/${path.split("?")[0]} answered ${response.status}${text}`);
    }
    return body;
  }

  function handleError(error) {
    if (error instanceof AuthError) {
      if (error.message === "rejected") {
        sessionStorage.removeItem(KEY_STORAGE);
        showMessage("error", "The proxy rejected this key (401). Enter the proxy key (LITELLM_MASTER_KEY) again.");
        setState("unauthorized");
      } else {
        showMessage("auth", "Enter the proxy key (LITELLM_MASTER_KEY) to load usage.");
        setState("need-key");
      }
      $("#key-input").focus();
      return;
    }
    showMessage("error", "Could not load usage: " + error.message);
    setState("error");
  }

  // ---- loading -------------------------------------------------------------------------------

  function summary(groupBy, extra) {
    return api("usage/summary?" + query({ ...(groupBy ? { group_by: groupBy } : {}), ...(extra || {}) }));
  }

  // The current view's page; null (and nothing rendered) when a later view load has started.
  async function loadView() {
    const mine = ++seq.view;
    const page = { page: String(state.page), page_size: String(PAGE_SIZE) };
    const attempts = state.view === "attempts";
    let data;
    try {
      data = await api((attempts ? "usage/calls?" : "usage/requests?") + query(page));
    } catch (error) {
      if (mine !== seq.view) return null; // a superseded load's failure is no longer news
      throw error;
    }
    if (mine !== seq.view) return null;
    if (data.total_pages > 0 && state.page > data.total_pages) {
      state.page = data.total_pages; // the filters shrank the result below the current page
      writeHash();
      return loadView();
    }
    $("#requests-table").hidden = attempts;
    $("#export-csv").title = attempts
      ? "Every attempt matching the range and filters"
      : "Every attempt of the requests listed (status is a request's final outcome)";
    $("#calls-table").hidden = !attempts;
    for (const tab of document.querySelectorAll("[data-view]")) tab.setAttribute("aria-selected", String(tab.dataset.view === state.view));
    (attempts ? CL.renderCalls : CL.renderRequests)(data, openRequest);
    const table = $(attempts ? "#calls-table" : "#requests-table");
    table.dataset.total = String(data.total);
    $("#page-info").textContent =
      `Page ${data.page} of ${Math.max(1, data.total_pages)} · ${CL.int(data.total)} ${attempts ? "attempts" : "requests"}`;
    $("#page-prev").disabled = state.page <= 1;
    $("#page-next").disabled = state.page >= data.total_pages;
    return data;
  }

  async function loadAll() {
    const mine = ++seq.all;
    const latest = () => mine === seq.all;
    inFlight = false; // an earlier load, if any, is superseded and will not clear it
    if (!getKey()) return handleError(new AuthError("missing"));
    setState("loading");
    inFlight = true;
    // Everything below is inside the try: whatever fails ends in a message, never in "loading".
    try {
      const { since, until } = rangeDates();
      const unit = CL.bucketUnit(since, until);
      const buckets = CL.bucketKeys(since, until, unit);
      $("#range-note").textContent = `${CL.utcTime(since.toISOString())} → ${CL.utcTime(until.toISOString())} UTC · ${unit === "hour" ? "hourly" : "daily"} buckets`;
      // Budgets and circuits are optional: a proxy without them (an older one) leaves the panel empty.
      const optional = (path) => api(path).catch((error) => { if (error instanceof AuthError) throw error; return null; });
      const [totals, requests, byAction, byModel, models, tenants, operations, users, tags, errors, budgets, circuits] = await Promise.all([
        summary(""), api("usage/requests?" + query({ page_size: "1" })),
        summary(unit + ",action"), summary(unit + ",model_id"), summary("model_id"), summary("tenant_id"),
        summary("operation"), summary("end_user"), api("usage/tags?" + query()),
        summary("error_class", { status: "error" }), optional("usage/budgets"), optional("usage/circuits"),
      ]);
      if (!latest()) return;
      CL.renderKpis(totals.totals, requests.totals);
      state.charts = {
        "#chart-cost-by-action": { groups: byAction.groups, seriesKey: "action", bucketKey: unit, buckets },
        "#chart-cost-by-model": { groups: byModel.groups, seriesKey: "model_id", bucketKey: unit, buckets },
      };
      for (const [selector, chart] of Object.entries(state.charts)) CL.renderStacked(selector, chart);
      CL.renderModels(models.groups);
      CL.renderBreakdown("#tenants-table", tenants.groups, "tenant_id");
      CL.renderBreakdown("#operations-table", operations.groups, "operation");
      CL.renderBreakdown("#users-table", users.groups, "end_user");
      CL.renderBreakdown("#tags-table", tags.groups, "tag");
      CL.renderErrors(errors.groups);
      CL.renderBudgets(budgets && budgets.budgets);
      CL.renderCircuits(circuits && circuits.circuits);
      await loadView();
      if (!latest()) return;
      let empty = false;
      if (!totals.totals.calls) {
        // Nothing in this range: a new install (nothing at all) gets its first steps instead.
        const everything = await api("usage/calls?page_size=1");
        if (!latest()) return;
        empty = everything.total === 0;
        showMessage("empty", empty ? "No calls recorded yet." : "No calls in this range or with these filters.");
      } else {
        hideMessage();
      }
      if (state.notice) showMessage("notice", state.notice); // a rejected address value, once
      state.notice = "";
      renderFirstSteps(empty);
      state.loads += 1;
      document.body.dataset.loads = String(state.loads);
      $("#refreshed-at").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
      setState(empty ? "empty" : "ready");
      if (state.request) await openRequest(state.request);
    } catch (error) {
      if (latest()) handleError(error);
    } finally {
      if (latest()) inFlight = false;
    }
  }

  // The empty state: how to make a first call through this very proxy.
  function renderFirstSteps(show) {
    const box = $("#first-steps");
    box.hidden = !show;
    if (!show) return;
    // The development key is shown as is; any other key stays off the screen.
    const key = getKey() === DEV_KEY ? DEV_KEY : "$LITELLM_MASTER_KEY";
    const base = location.origin + location.pathname.replace(/\/dashboard\/?$/, "");
    $("#first-curl").textContent =
      `curl ${base}/v1/chat/completions \\\n` +
      `  -H "Authorization: Bearer ${key}" \\\n` +
      `  -H "Content-Type: application/json" \\\n` +
      `  -d '{"model": "text_processing", "messages": [{"role": "user", "content": "Say hello"}]}'`;
  }

  // ---- the request panel ---------------------------------------------------------------------

  async function openRequest(requestId) {
    state.request = requestId;
    writeHash();
    const drawer = $("#request-detail");
    drawer.hidden = false;
    drawer.dataset.requestId = requestId;
    $("#request-detail-id").textContent = requestId;
    $("#request-fields").replaceChildren();
    $("#request-attempts").replaceChildren();
    $("#request-summary").textContent = "Loading…";
    let data;
    try {
      data = await api("usage/requests/" + encodeURIComponent(requestId));
    } catch (error) {
      if (error instanceof AuthError) return handleError(error);
      $("#request-summary").textContent = error.message;
      return;
    }
    if (state.request !== requestId) return; // another request was opened meanwhile
    drawer.dataset.requestId = data.request_id;
    CL.renderRequest(data);
  }

  function closeRequest() {
    state.request = null;
    writeHash();
    $("#request-detail").hidden = true;
  }

  // ---- controls ------------------------------------------------------------------------------

  function syncControls() {
    const form = $("#filters");
    for (const name of FILTERS) form.elements[name].value = state.filters[name] || "";
    $("#range").value = state.range;
    $("#custom-range").hidden = state.range !== "custom";
    $("#range-from").value = state.from;
    $("#range-to").value = state.to;
    $("#refresh-toggle").checked = state.refresh > 0;
    if (state.refresh) $("#refresh-interval").value = String(state.refresh);
    scheduleRefresh();
  }

  function scheduleRefresh() {
    clearInterval(refreshTimer);
    // A tick while a load is still running is skipped: a slow database gets no pile of queries.
    const tick = () => { if (!inFlight) loadAll(); };
    refreshTimer = state.refresh ? setInterval(tick, state.refresh * 1000) : null;
    document.body.dataset.refresh = String(state.refresh);
  }

  function applyFilters() {
    const form = $("#filters");
    state.filters = {};
    for (const name of FILTERS) {
      const value = form.elements[name].value.trim();
      if (value) state.filters[name] = value;
    }
    state.page = 1;
    writeHash();
    loadAll();
  }

  function applyRange() {
    const range = $("#range").value;
    $("#custom-range").hidden = range !== "custom";
    if (range === "custom") {
      const from = $("#range-from").value;
      if (!from) { $("#range-from").focus(); return; } // wait for a start time
      state.from = from;
      state.to = $("#range-to").value;
    }
    state.range = range;
    state.page = 1;
    writeHash();
    loadAll();
  }

  async function exportCsv() {
    const button = $("#export-csv");
    button.disabled = true;
    try {
      // The requests view exports the attempts of the requests it lists: with status=error, a
      // request rescued by a fallback is not listed, so its failed attempt is not exported either.
      const requests = state.view === "requests";
      const blob = await api("usage/export.csv?" + query(requests ? { view: "requests" } : {}), true);
      const name = requests ? "course_llm_requests_attempts.csv" : "course_llm_calls.csv";
      const link = h("a", { href: URL.createObjectURL(blob), download: name });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    } catch (error) {
      handleError(error);
    } finally {
      button.disabled = false;
    }
  }

  function init() {
    readHash();
    syncControls();
    $("#key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("#key-input").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORAGE, key);
      $("#key-input").value = "";
      loadAll();
    });
    $("#key-forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORAGE);
      handleError(new AuthError("missing"));
    });
    $("#filters").addEventListener("submit", (event) => { event.preventDefault(); applyFilters(); });
    $("#filters").addEventListener("reset", () => setTimeout(applyFilters)); // after the form resets
    $("#range").addEventListener("change", applyRange);
    $("#custom-apply").addEventListener("click", applyRange);
    $("#refresh-toggle").addEventListener("change", () => {
      state.refresh = $("#refresh-toggle").checked ? parseInt($("#refresh-interval").value, 10) : 0;
      writeHash();
      scheduleRefresh();
    });
    $("#refresh-interval").addEventListener("change", () => {
      if (!state.refresh) return;
      state.refresh = parseInt($("#refresh-interval").value, 10);
      writeHash();
      scheduleRefresh();
    });
    $("#export-csv").addEventListener("click", exportCsv);
    for (const tab of document.querySelectorAll("[data-view]")) {
      tab.addEventListener("click", () => {
        state.view = tab.dataset.view;
        state.page = 1;
        writeHash();
        loadView().catch(handleError);
      });
    }
    const turnPage = (delta) => {
      state.page = Math.max(1, state.page + delta);
      writeHash();
      loadView().catch(handleError);
    };
    $("#page-prev").addEventListener("click", () => turnPage(-1));
    $("#page-next").addEventListener("click", () => turnPage(1));
    $("#request-close").addEventListener("click", closeRequest);
    document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeRequest(); });
    // Back/forward or an edited address: the fragment is the state, so reload from it.
    window.addEventListener("hashchange", () => { readHash(); syncControls(); loadAll(); });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        for (const [selector, chart] of Object.entries(state.charts)) CL.renderStacked(selector, chart);
      }, 150);
    });
    loadAll();
  }

  init();
})();
