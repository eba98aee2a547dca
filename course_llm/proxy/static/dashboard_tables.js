// course_llm dashboard, part 3 of 4: the figures, breakdown tables, requests and attempts views, and
// the request panel. Pure rendering: each function takes API data and fills its part of the page.
"use strict";

(() => {
  const CL = (window.CourseLLM = window.CourseLLM || {});
  const { h, $, usd, pct, int, ms, utcTime, statusText, strategyText, isNum } = CL;

  function setFigure(id, value, text, note) {
    const el = $(id);
    el.textContent = text;
    el.dataset.value = isNum(value) ? String(value) : "";
    if (note !== undefined) $(id + "-note").textContent = note;
  }

  // `totals`: /usage/summary totals (attempt level); `requests`: /usage/requests totals.
  CL.renderKpis = (totals, requests) => {
    setFigure("#kpi-cost", totals.cost_usd, usd(totals.cost_usd));
    setFigure("#kpi-requests", requests.requests, int(requests.requests));
    setFigure("#kpi-request-error-rate", requests.error_rate, pct(requests.error_rate),
      `${int(requests.failed_requests)} of ${int(requests.requests)} requests failed`);
    setFigure("#kpi-attempt-error-rate", totals.error_rate, pct(totals.error_rate),
      `${int(totals.failures)} of ${int(totals.calls)} attempts failed`);
    setFigure("#kpi-fallback-rate", totals.fallback_rate, pct(totals.fallback_rate));
    setFigure("#kpi-p50", totals.p50_latency_ms, ms(totals.p50_latency_ms));
    setFigure("#kpi-p95", totals.p95_latency_ms, ms(totals.p95_latency_ms));
  };

  function emptyRow(body, columns, text) {
    body.append(h("tr", { class: "no-rows" }, h("td", { class: "empty", colspan: columns }, text)));
  }

  CL.renderModels = (groups) => {
    const body = $("#models-table tbody");
    body.replaceChildren();
    if (!groups.length) return emptyRow(body, 8, "No calls in this range.");
    const slowest = Math.max(1, ...groups.map((g) => Number(g.p95_latency_ms) || 0));
    for (const g of groups) {
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
        h("td", {}, bar), h("td", { class: "num" }, usd(g.cost_usd))));
    }
  };

  // A breakdown table: one row per value of `key` (tenant, operation, end user, tag).
  CL.renderBreakdown = (selector, groups, key) => {
    const body = $(selector + " tbody");
    body.replaceChildren();
    if (!groups.length) return emptyRow(body, 4, "Nothing in this range.");
    for (const g of groups) {
      const name = g[key] ?? "(none)";
      body.append(h("tr", { "data-key": name },
        h("td", { class: g[key] == null ? "muted" : "" }, name), h("td", { class: "num" }, int(g.calls)),
        h("td", { class: "num" }, pct(g.error_rate)), h("td", { class: "num" }, usd(g.cost_usd))));
    }
  };

  // Budgets and open circuits are the proxy's state now, not the selected range's.
  CL.renderBudgets = (budgets) => {
    const body = $("#budgets-table tbody");
    body.replaceChildren();
    if (!budgets) return emptyRow(body, 6, "Not available from this proxy.");
    if (!budgets.length) return emptyRow(body, 6, "No budgets in the registry.");
    for (const b of budgets) {
      body.append(h("tr", { "data-key": b.name, "data-state": b.state },
        h("td", {}, b.name), h("td", {}, b.period), h("td", { class: "num" }, usd(b.spent_usd)),
        h("td", { class: "num" }, usd(b.limit_usd)), h("td", { class: "state-" + b.state }, b.state),
        h("td", {}, utcTime(b.resets_at))));
    }
  };

  CL.renderCircuits = (circuits) => {
    const body = $("#circuits-table tbody");
    body.replaceChildren();
    if (!circuits) return emptyRow(body, 5, "Not available from this proxy.");
    if (!circuits.length) return emptyRow(body, 5, "Every circuit is closed.");
    for (const c of circuits) {
      body.append(h("tr", { "data-key": c.model_id, "data-state": c.state },
        h("td", {}, c.model_id), h("td", { class: "state-" + c.state }, c.state.replace("_", "-")),
        h("td", { class: "num" }, c.state === "open" ? c.reopens_in_s.toFixed(1) + " s" : "now"),
        h("td", { class: "num" }, int(c.consecutive_failures)), h("td", { class: "num" }, int(c.skipped))));
    }
  };

  CL.renderErrors = (groups) => {
    const body = $("#errors-table tbody");
    body.replaceChildren();
    if (!groups.length) return emptyRow(body, 3, "No failed attempts in this range.");
    const failures = groups.reduce((sum, g) => sum + (Number(g.calls) || 0), 0);
    const sorted = [...groups].sort((a, b) => b.calls - a.calls);
    for (const g of sorted) {
      const name = g.error_class ?? "(unknown)";
      body.append(h("tr", { "data-key": name }, h("td", {}, name), h("td", { class: "num" }, int(g.calls)),
        h("td", { class: "num" }, pct(g.calls / failures))));
    }
  };

  function requestLink(requestId, open) {
    // The id in full: any 8 or more of its first characters are accepted wherever an id is taken.
    const link = h("a", { href: "#request=" + encodeURIComponent(requestId), class: "request-link",
      "data-request-id": requestId }, requestId);
    link.addEventListener("click", (event) => { event.preventDefault(); open(requestId); });
    return link;
  }

  function statusCell(row) {
    const attrs = { class: row.success ? "status-ok" : "status-error", title: row.error_message || "" };
    return h("td", attrs, statusText(row));
  }

  CL.renderRequests = (data, open) => {
    const body = $("#requests-table tbody");
    body.replaceChildren();
    for (const r of data.data) {
      body.append(h("tr", { "data-request-id": r.request_id, "data-success": String(r.success), "data-attempts": r.attempts },
        h("td", {}, utcTime(r.started_at)), h("td", {}, requestLink(String(r.request_id), open)), statusCell(r),
        h("td", { class: "num" }, r.attempts), h("td", {}, r.action), h("td", {}, strategyText(r)),
        h("td", {}, r.model_id), h("td", { class: "num latency" }, ms(r.latency_ms)),
        h("td", { class: "num" }, usd(r.cost_usd)), h("td", {}, r.tenant_id ?? ""), h("td", {}, r.operation ?? "")));
    }
    if (!data.data.length) emptyRow(body, 11, "No requests match these filters.");
  };

  CL.renderCalls = (data, open) => {
    const body = $("#calls-table tbody");
    body.replaceChildren();
    for (const row of data.data) {
      body.append(h("tr", { "data-call-id": row.id, "data-request-id": row.request_id, "data-success": String(row.success) },
        h("td", {}, utcTime(row.created_at)), h("td", {}, requestLink(String(row.request_id), open)),
        h("td", { class: "num" }, row.attempt), h("td", {}, row.action), h("td", {}, strategyText(row)),
        h("td", {}, row.model_id), statusCell(row),
        h("td", { class: "num" }, `${int(row.tokens_in)} / ${int(row.tokens_out)}`),
        h("td", { class: "num" }, ms(row.latency_ms)), h("td", { class: "num" }, usd(row.cost_usd)),
        h("td", {}, row.tenant_id ?? "")));
    }
    if (!data.data.length) emptyRow(body, 11, "No calls match these filters.");
  };

  function detail(term, value, attrs) {
    return [h("dt", {}, term), h("dd", attrs || {}, value ?? "—")];
  }

  function tagsOf(metadata) {
    const tags = metadata && metadata.tags;
    if (tags === null || tags === undefined) return [];
    if (Array.isArray(tags)) return tags.map(String);
    if (typeof tags === "object") return Object.entries(tags).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
    return [String(tags)];
  }

  // The request panel: the request's line, its attribution and metadata, then its attempts in order.
  CL.renderRequest = (data) => {
    const line = data.request;
    const attempts = data.attempts || [];
    const started = new Date(line.started_at).getTime();
    $("#request-detail-id").textContent = line.request_id;
    $("#request-summary").textContent =
      `${line.attempts} attempt${line.attempts === 1 ? "" : "s"} · ${line.success ? "succeeded" : "failed"} · ` +
      `${usd(line.cost_usd)} · ${ms(line.latency_ms)} in total, waits between attempts included`;
    const tags = h("dd", { id: "request-tags" });
    for (const tag of tagsOf(line.metadata)) tags.append(h("span", { class: "tag" }, tag));
    if (!tags.childNodes.length) tags.append("—");
    const metadata = JSON.stringify(line.metadata ?? {}, null, 2);
    $("#request-fields").replaceChildren(
      ...detail("Action", line.action), ...detail("Strategy", strategyText(line)),
      ...detail("Served by", `${line.model_id} (${line.provider})`),
      ...detail("Operation", line.operation, { id: "request-operation" }),
      ...detail("End user", line.end_user, { id: "request-end-user" }), ...detail("Tenant", line.tenant_id),
      ...detail("Source", line.source), h("dt", {}, "Tags"), tags,
      ...detail("Latency", ms(line.latency_ms), { id: "request-latency", "data-value": line.latency_ms }),
      h("dt", {}, "Metadata"), h("dd", {}, h("pre", { id: "request-metadata" }, metadata)));
    const list = $("#request-attempts");
    list.replaceChildren();
    for (const a of attempts) {
      const offset = new Date(a.created_at).getTime() - started;
      const fields = h("dl", {},
        ...detail("Provider", a.provider), ...detail("Served strategy", a.served_strategy),
        ...detail("Status", a.success ? "success" : statusText(a)), ...(a.error_message ? detail("Error", a.error_message) : []),
        ...detail("Started", `${utcTime(a.created_at)} (+${ms(offset)})`), ...detail("Latency", ms(a.latency_ms)),
        ...detail("Tokens", `${int(a.tokens_in)} in / ${int(a.tokens_out)} out`), ...detail("Cost", usd(a.cost_usd)));
      list.append(h("li", { "data-attempt": a.attempt, "data-model": a.model_id, "data-success": String(a.success) },
        h("div", { class: "attempt-head" }, h("span", {}, `Attempt ${a.attempt} · ${a.model_id}`),
          h("span", { class: a.success ? "status-ok" : "status-error" }, a.success ? "ok" : "failed")), fields));
    }
  };
})();
