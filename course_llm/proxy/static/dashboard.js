// course_llm dashboard: reads the usage API with the proxy key and draws it.
//
// Vanilla JS, no build step, no CDN: the proxy may run on a machine without internet access.
// Every value from the API is inserted with textContent or setAttribute, never as HTML, because
// error messages come from LLM providers and tenant names from callers.
//
// State lives in the URL fragment (#since=7d&status=error&page=2&request=…) so a view can be
// shared or reloaded; `#key=…` is accepted once, moved to sessionStorage and removed from the URL.
"use strict";

(() => {
  const KEY_STORAGE = "course_llm.proxy_key";
  const PAGE_SIZE = 50;
  const FILTERS = ["action", "strategy", "provider", "model_id", "status", "tenant_id", "since"];
  const DEFAULT_SINCE = "30d";
  // Seven distinct hues for the biggest series; everything smaller is folded into grey "other".
  const PALETTE = ["#2f6fdf", "#e8833a", "#23a37a", "#c8372d", "#8a5cd1", "#d4b106", "#17a2b8"];
  const OTHER_COLOR = "#9aa1ad";
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = { filters: { since: DEFAULT_SINCE }, page: 1, request: null, charts: {} };
  const $ = (selector) => document.querySelector(selector);

  class AuthError extends Error {}

  // ---- DOM helpers ---------------------------------------------------------------------------

  function build(element, attrs, children) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) element.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return element;
  }
  const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
  const svg = (tag, attrs, ...children) => build(document.createElementNS(SVG_NS, tag), attrs, children);

  // ---- formatting ----------------------------------------------------------------------------

  const isNum = (v) => v !== null && v !== undefined && Number.isFinite(Number(v));
  // Cents above a dollar; below it up to four decimals, because single calls cost fractions of a cent.
  function usd(v, decimals) {
    if (!isNum(v)) return "—";
    const n = Number(v);
    if (decimals === undefined && n !== 0 && Math.abs(n) < 0.0001) return "$" + n.toPrecision(2);
    const digits = decimals ?? (Math.abs(n) >= 1 ? 2 : 4);
    const text = n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
    return "$" + (decimals === undefined ? text.replace(/(\.\d\d\d?)0+$/, "$1").replace(/(\.\d\d)0$/, "$1") : text);
  }
  const pct = (v) => (isNum(v) ? (Number(v) * 100).toFixed(1) + "%" : "—");
  const int = (v) => (isNum(v) ? Number(v).toLocaleString("en-US") : "—");
  function ms(v) {
    if (!isNum(v)) return "—";
    const n = Number(v);
    return n < 1000 ? Math.round(n) + " ms" : (n / 1000).toFixed(n < 10000 ? 2 : 1) + " s";
  }
  function utcTime(iso) {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().slice(0, 19).replace("T", " ");
  }
  const dayOf = (value) => String(value).slice(0, 10);
  function addDays(day, n) {
    const d = new Date(day + "T00:00:00Z");
    d.setUTCDate(d.getUTCDate() + n);
    return d.toISOString().slice(0, 10);
  }

  // ---- key, URL state, messages --------------------------------------------------------------

  const getKey = () => sessionStorage.getItem(KEY_STORAGE);

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    const key = params.get("key");
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    state.filters = {};
    for (const name of FILTERS) {
      const value = params.get(name);
      if (value) state.filters[name] = value;
    }
    // An absent `since` means the default; `since=` (empty) means all time.
    if (!params.has("since")) state.filters.since = DEFAULT_SINCE;
    state.page = Math.max(1, parseInt(params.get("page") || "1", 10) || 1);
    state.request = params.get("request") || null;
    if (key) writeHash(); // the key must not linger in the address bar or the history
  }

  function writeHash() {
    const params = new URLSearchParams();
    for (const name of FILTERS) if (state.filters[name]) params.set(name, state.filters[name]);
    if (!state.filters.since) params.set("since", "");
    if (state.page > 1) params.set("page", String(state.page));
    if (state.request) params.set("request", state.request);
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

  // ---- API -----------------------------------------------------------------------------------

  // Relative paths: the proxy may be mounted under a prefix, and the page sits next to /usage.
  async function api(path) {
    const key = getKey();
    if (!key) throw new AuthError("missing");
    const response = await fetch(path, { headers: { Authorization: "Bearer " + key, Accept: "application/json" } });
    if (response.status === 401) throw new AuthError("rejected");
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

  // ---- charts --------------------------------------------------------------------------------

  function niceCeiling(value) {
    if (value <= 0) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  // Stacked bars: one bar per UTC day of the last 30, one segment per series (action or model).
  function renderStacked(selector, groups, seriesKey) {
    const root = $(selector);
    root.replaceChildren();
    const byDay = new Map();
    const totals = new Map();
    for (const group of groups) {
      const day = dayOf(group.day);
      const name = group[seriesKey] ?? "(none)";
      const cost = Number(group.cost_usd) || 0;
      if (!byDay.has(day)) byDay.set(day, new Map());
      byDay.get(day).set(name, (byDay.get(day).get(name) || 0) + cost);
      totals.set(name, (totals.get(name) || 0) + cost);
    }
    // Series that cost nothing (only failed attempts) have no bar, so they get no colour or legend entry.
    let names = [...totals.entries()].filter((e) => e[1] > 0).sort((a, b) => b[1] - a[1]).map((e) => e[0]);
    const folded = names.length > PALETTE.length ? new Set(names.slice(PALETTE.length - 1)) : new Set();
    if (folded.size) names = names.slice(0, PALETTE.length - 1).concat(["other"]);
    const seriesOf = (name) => (folded.has(name) ? "other" : name);
    const colorOf = (name) => (name === "other" && folded.size ? OTHER_COLOR : PALETTE[names.indexOf(name)]);

    const today = new Date().toISOString().slice(0, 10);
    const dataDays = [...byDay.keys()].sort();
    let first = addDays(today, -29);
    let last = today;
    if (dataDays.length && dataDays[0] < first) first = dataDays[0];
    if (dataDays.length && dataDays[dataDays.length - 1] > last) last = dataDays[dataDays.length - 1];
    const days = [];
    for (let day = first; day <= last; day = addDays(day, 1)) days.push(day);

    const stackOf = (day) => [...(byDay.get(day) || new Map()).values()].reduce((a, b) => a + b, 0);
    const yMax = niceCeiling(Math.max(0, ...days.map(stackOf)));
    const width = Math.max(320, root.clientWidth || 560);
    const height = 210;
    const pad = { left: 58, right: 8, top: 10, bottom: 22 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const slot = plotW / days.length;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": root.id });
    const y = (v) => pad.top + plotH - (v / yMax) * plotH;

    const axis = svg("g", { class: "axis" });
    const ticks = [0, 1, 2, 3, 4].map((i) => (yMax * i) / 4);
    // As few decimals as spell every tick exactly, and cents at least below $10.
    let decimals = 0;
    while (decimals < 8 && ticks.some((t) => Math.abs(Number(t.toFixed(decimals)) - t) > 1e-12)) decimals++;
    if (yMax < 10) decimals = Math.max(decimals, 2);
    for (const v of ticks) {
      axis.append(svg("line", { class: "grid-line", x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }));
      axis.append(svg("text", { x: pad.left - 6, y: y(v) + 4, "text-anchor": "end" }, usd(v, decimals)));
    }
    const labelEvery = Math.ceil(days.length / 7);
    days.forEach((day, i) => {
      if ((days.length - 1 - i) % labelEvery === 0) {
        axis.append(svg("text", { x: pad.left + slot * (i + 0.5), y: height - 6, "text-anchor": "middle" }, day.slice(5)));
      }
    });
    chart.append(axis);

    const bars = svg("g", { class: "bars" });
    let barCount = 0;
    let grandTotal = 0;
    days.forEach((day, i) => {
      const costs = new Map();
      for (const [name, cost] of byDay.get(day) || []) costs.set(seriesOf(name), (costs.get(seriesOf(name)) || 0) + cost);
      let base = 0;
      for (const name of names) {
        const cost = costs.get(name) || 0;
        if (cost <= 0) continue;
        const top = y(base + cost);
        const barHeight = Math.max(1, y(base) - top); // a tiny share still shows as a sliver
        bars.append(svg("rect", {
          x: (pad.left + slot * i + slot * 0.15).toFixed(2), y: (y(base) - barHeight).toFixed(2),
          width: (slot * 0.7).toFixed(2), height: barHeight.toFixed(2), fill: colorOf(name),
          "data-day": day, "data-series": name, "data-cost": cost,
        }, svg("title", {}, `${day} · ${name}: ${usd(cost)}`)));
        base += cost;
        barCount += 1;
        grandTotal += cost;
      }
    });
    chart.append(bars);
    if (!barCount) {
      chart.append(svg("text", { class: "empty", x: pad.left + plotW / 2, y: pad.top + plotH * 0.375 + 4, "text-anchor": "middle" },
        "No cost recorded in the last 30 days"));
    }
    root.append(chart);
    const legend = h("div", { class: "legend" });
    for (const name of names) {
      const total = folded.size && name === "other"
        ? [...folded].reduce((sum, n) => sum + totals.get(n), 0) : totals.get(name);
      const swatch = h("i");
      swatch.style.background = colorOf(name);
      legend.append(h("span", { "data-series": name }, swatch, `${name} ${usd(total)}`));
    }
    root.append(legend);
    root.dataset.bars = String(barCount);
    root.dataset.days = String(days.length);
    root.dataset.total = String(grandTotal);
    // Page coordinates of the plot, for the screenshot test (and handy when debugging layout).
    const box = chart.getBoundingClientRect();
    root.dataset.layout = [box.left + scrollX, box.top + scrollY, box.width, box.height].map(Math.round).join(",");
    state.charts[selector] = [groups, seriesKey];
  }

  // ---- figures -------------------------------------------------------------------------------

  function renderKpis(totals) {
    const set = (id, value, text) => {
      const el = $(id);
      el.textContent = text;
      el.dataset.value = isNum(value) ? String(value) : "";
    };
    set("#kpi-cost", totals.cost_usd, usd(totals.cost_usd));
    set("#kpi-calls", totals.calls, int(totals.calls));
    set("#kpi-error-rate", totals.error_rate, pct(totals.error_rate));
    set("#kpi-fallback-rate", totals.fallback_rate, pct(totals.fallback_rate));
    set("#kpi-p50", totals.p50_latency_ms, ms(totals.p50_latency_ms));
    set("#kpi-p95", totals.p95_latency_ms, ms(totals.p95_latency_ms));
  }

  function renderModels(groups) {
    const body = $("#models-table tbody");
    body.replaceChildren();
    if (!groups.length) {
      body.append(h("tr", {}, h("td", { class: "empty", colspan: 9 }, "No calls recorded yet.")));
      return;
    }
    const slowest = Math.max(1, ...groups.map((g) => Number(g.p95_latency_ms) || 0));
    const sorted = [...groups].sort((a, b) => (Number(b.cost_usd) || 0) - (Number(a.cost_usd) || 0));
    for (const g of sorted) {
      const bar = h("div", { class: "latency-bar", title: `p50 ${ms(g.p50_latency_ms)} · p95 ${ms(g.p95_latency_ms)}` });
      for (const [cls, value] of [["p95", g.p95_latency_ms], ["p50", g.p50_latency_ms]]) {
        const mark = h("i", { class: cls });
        mark.style.width = ((Number(value) || 0) / slowest) * 100 + "%";
        bar.append(mark);
      }
      body.append(h("tr", { "data-model": g.model_id },
        h("td", {}, g.model_id), h("td", { class: "num" }, int(g.calls)),
        h("td", { class: "num" }, pct(g.error_rate)), h("td", { class: "num" }, pct(g.fallback_rate)),
        h("td", { class: "num p50" }, ms(g.p50_latency_ms)), h("td", { class: "num p95" }, ms(g.p95_latency_ms)),
        h("td", {}, bar), h("td", { class: "num" }, `${int(g.tokens_in)} / ${int(g.tokens_out)}`),
        h("td", { class: "num" }, usd(g.cost_usd))));
    }
  }

  function fillDatalist(name, values) {
    const list = $("#list-" + name);
    const known = new Set([...list.options].map((o) => o.value));
    for (const value of values) {
      if (value && !known.has(value)) { list.append(h("option", { value })); known.add(value); }
    }
  }

  // ---- calls table and request drill-down ----------------------------------------------------

  function statusCell(row) {
    if (row.success) return h("td", { class: "status-ok" }, "ok");
    const label = [row.status_code, row.error_class].filter((v) => v !== null && v !== undefined).join(" ") || "error";
    return h("td", { class: "status-error", title: row.error_message || "" }, label);
  }

  function requestLink(requestId) {
    const link = h("a", { href: "#request=" + encodeURIComponent(requestId), class: "request-link",
      "data-request-id": requestId, title: requestId }, requestId.length > 13 ? requestId.slice(0, 13) + "…" : requestId);
    link.addEventListener("click", (event) => { event.preventDefault(); openRequest(requestId); });
    return link;
  }

  async function loadCalls() {
    const query = new URLSearchParams();
    for (const name of FILTERS) if (state.filters[name]) query.set(name, state.filters[name]);
    query.set("page", String(state.page));
    query.set("page_size", String(PAGE_SIZE));
    const data = await api("usage/calls?" + query);
    if (data.total_pages > 0 && state.page > data.total_pages) {
      state.page = data.total_pages; // the filters shrank the result below the current page
      writeHash();
      return loadCalls();
    }
    const body = $("#calls-table tbody");
    body.replaceChildren();
    for (const row of data.data) {
      const strategy = row.served_strategy && row.served_strategy !== row.strategy
        ? `${row.strategy} → ${row.served_strategy}` : row.strategy;
      body.append(h("tr", { "data-call-id": row.id, "data-request-id": row.request_id, "data-success": String(row.success) },
        h("td", {}, utcTime(row.created_at)), h("td", {}, requestLink(String(row.request_id))),
        h("td", { class: "num" }, row.attempt), h("td", {}, row.action), h("td", {}, strategy),
        h("td", {}, row.provider), h("td", {}, row.model_id), statusCell(row),
        h("td", { class: "num" }, `${int(row.tokens_in)} / ${int(row.tokens_out)}`),
        h("td", { class: "num" }, ms(row.latency_ms)), h("td", { class: "num" }, usd(row.cost_usd)),
        h("td", {}, row.tenant_id ?? "")));
    }
    if (!data.data.length) {
      body.append(h("tr", { class: "no-rows" }, h("td", { class: "empty", colspan: 12 }, "No calls match these filters.")));
    }
    const table = $("#calls-table");
    table.dataset.total = String(data.total);
    table.dataset.page = String(data.page);
    $("#page-info").textContent = `Page ${data.page} of ${Math.max(1, data.total_pages)} · ${int(data.total)} calls`;
    $("#page-prev").disabled = state.page <= 1;
    $("#page-next").disabled = state.page >= data.total_pages;
    fillDatalist("strategy", data.data.map((r) => r.strategy));
    fillDatalist("provider", data.data.map((r) => r.provider));
  }

  function detailItem(term, value) {
    return [h("dt", {}, term), h("dd", {}, value)];
  }

  async function openRequest(requestId) {
    state.request = requestId;
    writeHash();
    const drawer = $("#request-detail");
    drawer.hidden = false;
    drawer.dataset.requestId = requestId;
    $("#request-detail-id").textContent = requestId;
    const list = $("#request-attempts");
    list.replaceChildren();
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
    const attempts = data.attempts || [];
    for (const a of attempts) {
      const status = a.success ? "success" : [a.status_code, a.error_class].filter((v) => v != null).join(" ") || "error";
      const served = a.served_strategy && a.served_strategy !== a.strategy
        ? `${a.served_strategy} (asked for ${a.strategy})` : a.served_strategy || a.strategy;
      const details = h("dl", {},
        ...detailItem("Provider", a.provider), ...detailItem("Served strategy", served),
        ...detailItem("Status", status), ...(a.error_message ? detailItem("Error", a.error_message) : []),
        ...detailItem("Latency", ms(a.latency_ms)), ...detailItem("Tokens", `${int(a.tokens_in)} in / ${int(a.tokens_out)} out`),
        ...detailItem("Cost", usd(a.cost_usd)), ...detailItem("Started", utcTime(a.created_at)));
      list.append(h("li", { "data-attempt": a.attempt, "data-model": a.model_id, "data-success": String(a.success) },
        h("div", { class: "attempt-head" }, h("span", {}, `Attempt ${a.attempt} · ${a.model_id}`),
          h("span", { class: a.success ? "status-ok" : "status-error" }, a.success ? "ok" : "failed")),
        details));
    }
    const cost = attempts.reduce((sum, a) => sum + (Number(a.cost_usd) || 0), 0);
    const took = attempts.reduce((sum, a) => sum + (Number(a.latency_ms) || 0), 0);
    const outcome = attempts.some((a) => a.success) ? "succeeded" : "failed";
    $("#request-summary").textContent = attempts.length
      ? `${attempts.length} attempt${attempts.length === 1 ? "" : "s"} · ${outcome} · ${usd(cost)} · ${ms(took)} in total`
      : "No attempts recorded for this request.";
  }

  function closeRequest() {
    state.request = null;
    writeHash();
    $("#request-detail").hidden = true;
  }

  // ---- wiring --------------------------------------------------------------------------------

  async function loadAll() {
    if (!getKey()) return handleError(new AuthError("missing"));
    setState("loading");
    try {
      const [byAction, byModel, window30, models] = await Promise.all([
        api("usage/summary?group_by=day,action&since=30d"),
        api("usage/summary?group_by=day,model_id&since=30d"),
        api("usage/summary?since=30d"),
        api("usage/summary?group_by=model_id"),
      ]);
      renderKpis(window30.totals);
      renderStacked("#chart-cost-by-action", byAction.groups, "action");
      renderStacked("#chart-cost-by-model", byModel.groups, "model_id");
      renderModels(models.groups);
      fillDatalist("action", byAction.groups.map((g) => g.action));
      fillDatalist("model_id", models.groups.map((g) => g.model_id));
      if (!models.groups.length) {
        showMessage("empty", "No calls recorded yet: the database is empty. Send a request through the proxy and reload.");
      } else if (!window30.totals.calls) {
        showMessage("empty", "No calls in the last 30 days; the model table shows all time.");
      } else {
        hideMessage();
      }
      await loadCalls();
      setState(models.groups.length ? "ready" : "empty");
      if (state.request) await openRequest(state.request);
    } catch (error) {
      handleError(error);
    }
  }

  function syncForm() {
    const form = $("#filters");
    for (const name of FILTERS) form.elements[name].value = state.filters[name] || "";
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
    loadCalls().catch(handleError);
  }

  function turnPage(delta) {
    state.page = Math.max(1, state.page + delta);
    writeHash();
    loadCalls().catch(handleError);
  }

  function init() {
    readHash();
    syncForm();
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
    $("#page-prev").addEventListener("click", () => turnPage(-1));
    $("#page-next").addEventListener("click", () => turnPage(1));
    $("#request-close").addEventListener("click", closeRequest);
    document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeRequest(); });
    // Back/forward or an edited address: the fragment is the state, so reload from it.
    window.addEventListener("hashchange", () => { readHash(); syncForm(); loadAll(); });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        for (const [selector, [groups, key]] of Object.entries(state.charts)) renderStacked(selector, groups, key);
      }, 150);
    });
    loadAll();
  }

  init();
})();
