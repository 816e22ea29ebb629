/*
 * The p2pexec dashboard: polls the node's JSON API once a second and draws
 * the topology, the jobs and one job's tasks.
 *
 * Plain JavaScript, no libraries and no build step.  Every string that comes
 * from the API reaches the page through textContent or setAttribute, never
 * through innerHTML.
 *
 * One round of requests at a time (health, topology, jobs, one page of
 * tasks), the next a second after the last began; while the node does not
 * answer, rounds back off (1, 2, 4 ... 15 s) and the page says so.
 *
 * Stable hooks for tests:
 *   #topology svg g.node[data-name][data-state][data-busy][data-slots]
 *   #topology svg line.link[data-source][data-target][data-state]
 *   #jobs .job[data-id][data-state] .progress[data-progress]   (0..1)
 *   #tasks tbody tr[data-id][data-state]
 *   #connection[data-connection=connecting|live|slow|disconnected]
 *   #health[data-health=ok|leaving|unhealthy|unknown]   (title: the problem, if any)
 */
"use strict";

(function () {
  const POLL_MS = 1000;            // one refresh a second while the node answers
  const REQUEST_TIMEOUT_MS = 3000; // a node that takes longer counts as not answering
  const SLOW_MS = 2500;            // say so when the last answer is older than this
  const MAX_BACKOFF_MS = 15000;    // longest wait between tries while it does not answer
  const PAGE_SIZE = 200;           // task rows per page
  const LABEL_LIMIT = 24;          // above this many nodes, names show on hover only
  const LABEL_CHARS = 18;          // longer names are cut (the hover label has them whole)
  const TASK_STATES = ["pending", "waiting", "running", "succeeded", "failed", "cancelled", "skipped"];
  const SVG_NS = "http://www.w3.org/2000/svg";
  const numberFormat = new Intl.NumberFormat("en-US");

  const ui = {
    nodeName: byId("node-name"),
    health: byId("health"),
    peers: byId("peers-connected"),
    jobsRunning: byId("jobs-running"),
    connection: byId("connection"),
    lastUpdate: byId("last-update"),
    svg: byId("topology-svg"),
    topologySummary: byId("topology-summary"),
    topologyEmpty: byId("topology-empty"),
    jobList: byId("job-list"),
    jobsSummary: byId("jobs-summary"),
    jobsEmpty: byId("jobs-empty"),
    jobSelect: byId("task-job"),
    stateSelect: byId("task-state"),
    nodeSelect: byId("task-node"),
    tbody: document.querySelector("#tasks tbody"),
    tasksEmpty: byId("tasks-empty"),
    range: byId("task-range"),
    pageNumber: byId("page-number"),
    first: byId("page-first"),
    prev: byId("page-prev"),
    next: byId("page-next"),
    last: byId("page-last"),
    toast: byId("toast"),
  };
  ui.linkLayer = ui.svg.querySelector("g.links");
  ui.nodeLayer = ui.svg.querySelector("g.nodes");
  ui.hoverLabel = ui.svg.querySelector("g.hover-label");

  const view = {
    jobs: [],
    nodeNames: [],
    chosenJob: "",      // "" follows the newest job
    stateFilter: "",
    nodeFilter: "",
    offset: 0,
    matched: 0,
    nodeElements: new Map(),
    linkElements: new Map(),
    jobElements: new Map(),
    positions: new Map(),
    hovered: null,
  };

  const poll = { timer: null, busy: false, again: false, failures: 0, lastUpdate: 0, retryAt: 0 };

  /* ---------- small helpers ---------- */

  function byId(id) {
    return document.getElementById(id);
  }

  function element(tag, className, text) {
    const made = document.createElement(tag);
    if (className) made.className = className;
    if (text !== undefined && text !== null) made.textContent = String(text);
    return made;
  }

  function svgElement(tag, attributes) {
    const made = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes || {})) made.setAttribute(name, String(value));
    return made;
  }

  function setText(node, text) {
    const value = text === undefined || text === null ? "" : String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function setAttr(node, name, value) {
    const text = String(value);
    if (node.getAttribute(name) !== text) node.setAttribute(name, text);
  }

  function count(n) {
    return numberFormat.format(n);
  }

  function twoDigits(n) {
    return String(n).padStart(2, "0");
  }

  /** A span of seconds for people: 0.42 s, 12.3 s, 4 min 05 s, 2 h 07 min. */
  function seconds(value) {
    if (value === null || value === undefined || !isFinite(value)) return "";
    if (value < 10) return value.toFixed(2) + " s";
    if (value < 60) return value.toFixed(1) + " s";
    const whole = Math.round(value);
    if (whole < 3600) return Math.floor(whole / 60) + " min " + twoDigits(whole % 60) + " s";
    return Math.floor(whole / 3600) + " h " + twoDigits(Math.floor((whole % 3600) / 60)) + " min";
  }

  /** A time still to go, rounded as a person would: 9 s, 4 min 05 s, 2 h 07 min. */
  function eta(value) {
    if (value === null || value === undefined || !isFinite(value)) return "\u2013";
    return value < 60 ? Math.max(1, Math.round(value)) + " s" : seconds(value);
  }

  function clock(date) {
    return twoDigits(date.getHours()) + ":" + twoDigits(date.getMinutes()) + ":" + twoDigits(date.getSeconds());
  }

  function shorten(text, limit) {
    return text.length > limit ? text.slice(0, limit - 1) + "\u2026" : text;
  }

  let toastTimer = null;
  function toast(message, isError) {
    setText(ui.toast, message);
    ui.toast.classList.toggle("error", Boolean(isError));
    ui.toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { ui.toast.hidden = true; }, 5000);
  }

  /* ---------- HTTP ---------- */

  /** The node answered with an error status. */
  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** The node did not answer (refused, reset, or too slow). */
  class NetworkError extends Error {}

  /**
   * GET or POST a URL of this node and parse its JSON.  Rejects with an
   * HttpError for an error status (unless listed in `accept`), and with a
   * NetworkError when the node does not answer within the timeout.
   */
  /**
   * The HTTP token of a cluster with a key: given once in the page's address
   * (`#token=...`, never sent to the server in the URL), then kept for the
   * tab's session, and sent as `Authorization: Bearer ...`.
   */
  const TOKEN = (function () {
    const match = /(?:^|[#&])token=([0-9a-f]{64})(?:&|$)/.exec(window.location.hash);
    try {
      if (match) {
        window.sessionStorage.setItem("p2pexec-token", match[1]);
        history.replaceState(null, "", window.location.pathname + window.location.search);
      }
      return window.sessionStorage.getItem("p2pexec-token");
    } catch (e) {
      return match ? match[1] : null;
    }
  })();

  /**
   * The headers of a request: JSON wanted, and sent (the node refuses a POST
   * that is not application/json), and the token when there is one.
   */
  function requestHeaders(method) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["Content-Type"] = "application/json";
    if (TOKEN) headers.Authorization = "Bearer " + TOKEN;
    return headers;
  }

  async function requestJSON(url, options) {
    const settings = options || {};
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
    try {
      const response = await fetch(url, {
        method: settings.method || "GET",
        cache: "no-store",
        headers: requestHeaders(settings.method || "GET"),
        signal: abort.signal,
      });
      let body = null;
      try {
        body = await response.json();
      } catch (e) {
        body = null;
      }
      if (!response.ok && !(settings.accept || []).includes(response.status)) {
        const message = body && typeof body.error === "string" ? body.error : "HTTP " + response.status;
        throw new HttpError(response.status, message);
      }
      if (body === null) throw new HttpError(response.status, "the answer is not JSON");
      return body;
    } catch (e) {
      if (e instanceof HttpError) throw e;
      throw new NetworkError(e && e.name === "AbortError" ? "no answer within " + REQUEST_TIMEOUT_MS / 1000 + " s" : String(e));
    } finally {
      clearTimeout(timer);
    }
  }

  function tasksURL(jobId) {
    const query = new URLSearchParams({ offset: String(view.offset), limit: String(PAGE_SIZE) });
    if (view.stateFilter) query.set("state", view.stateFilter);
    if (view.nodeFilter) query.set("node", view.nodeFilter);
    return "/api/jobs/" + encodeURIComponent(jobId) + "?" + query.toString();
  }

  /* ---------- polling: one round at a time ---------- */

  function currentJob() {
    if (view.chosenJob && view.jobs.some((job) => job.id === view.chosenJob)) return view.chosenJob;
    return view.jobs.length ? view.jobs[0].id : "";
  }

  function tasksKey() {
    return [currentJob(), view.stateFilter, view.nodeFilter, view.offset].join("\u0000");
  }

  /** Refresh as soon as the round in flight (if any) is over. */
  function refreshSoon() {
    if (poll.busy) {
      poll.again = true;
      return;
    }
    clearTimeout(poll.timer);
    round();
  }

  async function round() {
    poll.timer = null;
    poll.busy = true;
    poll.again = false;
    const started = performance.now();
    const jobId = currentJob();
    const key = tasksKey();
    let ok = true;
    try {
      const tasks = jobId
        ? requestJSON(tasksURL(jobId)).catch((e) => (e instanceof HttpError ? { error: e.message } : Promise.reject(e)))
        : Promise.resolve(null);
      // allSettled, not all: the round ends only when every request has, so
      // that two rounds never overlap even when one request fails early.
      const settled = await Promise.allSettled([
        requestJSON("/healthz", { accept: [503] }),
        requestJSON("/api/topology"),
        requestJSON("/api/jobs"),
        tasks,
      ]);
      const failed = settled.find((outcome) => outcome.status === "rejected");
      if (failed) throw failed.reason;
      const [health, topology, jobs, page] = settled.map((outcome) => outcome.value);
      view.jobs = Array.isArray(jobs.jobs) ? jobs.jobs : [];
      drawHeader(health);
      drawTopology(topology);
      drawJobs();
      drawJobChoice();
      if (tasksKey() === key && page) {
        drawTasks(page);
      } else if (!currentJob()) {
        drawNoTasks("No job to show.");
      } else {
        poll.again = true;  // the job or the filters changed meanwhile: ask again at once
      }
      connected();
    } catch (e) {
      ok = false;
      // A fault of the page itself must not pass for a network problem.
      if (!(e instanceof HttpError) && !(e instanceof NetworkError)) console.error("p2pexec dashboard:", e);
      disconnected(e);
    }
    poll.busy = false;
    let delay;
    if (!ok) {
      delay = Math.min(MAX_BACKOFF_MS, POLL_MS * 2 ** Math.min(poll.failures - 1, 10));
      poll.retryAt = Date.now() + delay;
      showAge();
    } else {
      delay = poll.again ? 0 : Math.max(0, POLL_MS - (performance.now() - started));
    }
    poll.timer = setTimeout(round, delay);
  }

  /** Twice a second, without asking the node anything: how stale is what the page shows? */
  function showAge() {
    const now = Date.now();
    if (poll.failures > 0) {
      const left = Math.ceil((poll.retryAt - now) / 1000);
      setText(ui.connection, left > 0 ? "disconnected \u00b7 retry in " + left + " s" : "disconnected \u00b7 retrying");
    } else if (poll.lastUpdate && now - poll.lastUpdate > SLOW_MS) {
      setAttr(ui.connection, "data-connection", "slow");
      setText(ui.connection, "no answer for " + Math.floor((now - poll.lastUpdate) / 1000) + " s");
    }
  }

  function connected() {
    poll.failures = 0;
    poll.lastUpdate = Date.now();
    document.body.classList.remove("stale");
    setAttr(ui.connection, "data-connection", "live");
    setText(ui.connection, "live");
    ui.connection.removeAttribute("title");
    const now = new Date();
    setText(ui.lastUpdate, clock(now));
    setAttr(ui.lastUpdate, "datetime", now.toISOString());
  }

  function disconnected(error) {
    poll.failures += 1;
    document.body.classList.add("stale");
    setAttr(ui.connection, "data-connection", "disconnected");
    setAttr(ui.connection, "title", "The node does not answer: " + (error && error.message ? error.message : error));
    setAttr(ui.health, "data-health", "unknown");
    setText(ui.health, "unreachable");
  }

  /* ---------- header ---------- */

  function drawHeader(health) {
    setText(ui.nodeName, health.node || "?");
    document.title = (health.node ? health.node + " \u00b7 " : "") + "p2pexec";
    const known = ["ok", "leaving", "unhealthy"];
    const status = known.includes(health.status) ? health.status : "unknown";
    setAttr(ui.health, "data-health", status);
    setText(ui.health, status === "ok" ? "healthy" : status === "unknown" ? String(health.status) : status);
    // The problem (a journal that cannot be written) in words, on hover.
    setAttr(ui.health, "title", health.problem ? String(health.problem) : "");
    setText(ui.peers, count(health.peers_connected || 0));
    setText(ui.jobsRunning, count(health.jobs_running || 0));
  }

  /* ---------- topology ---------- */

  /**
   * Where each node goes, the same way every time.  Up to LABEL_LIMIT
   * nodes: on a circle, self at the top and the others clockwise by name,
   * with their names beside them.  More: a sunflower (Vogel's spiral), self
   * in the middle and the others outwards by name, which fills a disc evenly
   * so that 100 nodes still get a usable size; names then show on hover.
   * The view box follows the layout's extent.
   */
  function layout(nodes) {
    const self = nodes.find((node) => node.state === "self");
    const others = nodes.filter((node) => node !== self).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const ordered = self ? [self].concat(others) : others;
    const n = ordered.length;
    const positions = new Map();
    if (n <= LABEL_LIMIT) {
      const radius = n <= 8 ? 18 : 14;
      const spacing = 2 * radius + 26;
      const ring = n <= 1 ? 0 : Math.max(n <= 8 ? 110 : 140, (n * spacing) / (2 * Math.PI));
      // Room around the ring for the longest label (about 7.5 units a character).
      const longest = Math.max(0, ...ordered.map((node) => Math.min(node.name.length, LABEL_CHARS)));
      ordered.forEach((node, i) => {
        const angle = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(n, 1);
        positions.set(node.name, { x: ring * Math.cos(angle), y: ring * Math.sin(angle), angle });
      });
      return { ordered, radius, labels: true, extent: ring + radius + 18 + 7.5 * longest, positions };
    }
    const radius = n <= 60 ? 11 : 9;
    const step = (2 * radius + 9) / Math.sqrt(Math.PI);  // each node gets a disc of that spacing
    const golden = Math.PI * (3 - Math.sqrt(5));
    let extent = 0;
    ordered.forEach((node, i) => {
      const distance = step * Math.sqrt(i + 0.5);
      const angle = -Math.PI / 2 + i * golden;
      positions.set(node.name, { x: distance * Math.cos(angle), y: distance * Math.sin(angle), angle });
      extent = Math.max(extent, distance);
    });
    return { ordered, radius, labels: false, extent: extent + radius + 12, positions };
  }

  /** Screen pixels per view box unit. */
  function pixelScale() {
    const box = ui.svg.viewBox.baseVal;
    if (!box || !box.width || !box.height || !ui.svg.clientWidth) return 1;
    return Math.min(ui.svg.clientWidth / box.width, ui.svg.clientHeight / box.height) || 1;
  }

  /** The part of a circle of radius r filled from the bottom up to `fraction` of its height. */
  function levelPath(r, fraction) {
    if (!(fraction > 0)) return "";
    if (fraction >= 1) return "M " + -r + " 0 A " + r + " " + r + " 0 1 0 " + r + " 0 A " + r + " " + r + " 0 1 0 " + -r + " 0 Z";
    const y = r - 2 * r * fraction;
    const half = Math.sqrt(Math.max(0, r * r - y * y));
    const large = y < 0 ? 1 : 0;
    return "M " + (-half).toFixed(2) + " " + y.toFixed(2) + " A " + r + " " + r + " 0 " + large + " 0 " + half.toFixed(2) + " " + y.toFixed(2) + " Z";
  }

  function busyText(node) {
    if (node.busy === null || node.busy === undefined) return "load not reported yet";
    return node.busy + " of " + node.slots + " slot" + (node.slots === 1 ? "" : "s") + " busy" +
      (node.queued ? ", " + node.queued + " queued" : "");
  }

  function drawTopology(topology) {
    const nodes = Array.isArray(topology.nodes) ? topology.nodes : [];
    const links = Array.isArray(topology.links) ? topology.links : [];
    const placed = layout(nodes);
    const e = placed.extent;
    setAttr(ui.svg, "viewBox", [-e, -e, 2 * e, 2 * e].map((v) => v.toFixed(1)).join(" "));
    ui.svg.classList.toggle("dense", links.length > 150);
    ui.svg.classList.toggle("no-labels", !placed.labels);
    view.positions = placed.positions;
    view.nodeNames = nodes.map((node) => node.name);
    ui.topologyEmpty.hidden = nodes.length > 0;

    // Links first, beneath the nodes.
    const seenLinks = new Set();
    for (const link of links) {
      const a = placed.positions.get(link.source);
      const b = placed.positions.get(link.target);
      if (!a || !b) continue;
      const key = link.source + "\u0000" + link.target;
      seenLinks.add(key);
      let line = view.linkElements.get(key);
      if (!line) {
        line = svgElement("line", { class: "link" });
        line.setAttribute("data-source", link.source);
        line.setAttribute("data-target", link.target);
        ui.linkLayer.appendChild(line);
        view.linkElements.set(key, line);
      }
      setAttr(line, "data-state", link.state);
      setAttr(line, "x1", a.x.toFixed(1));
      setAttr(line, "y1", a.y.toFixed(1));
      setAttr(line, "x2", b.x.toFixed(1));
      setAttr(line, "y2", b.y.toFixed(1));
    }
    for (const [key, line] of view.linkElements) {
      if (!seenLinks.has(key)) {
        line.remove();
        view.linkElements.delete(key);
      }
    }

    const r = placed.radius;
    const seenNodes = new Set();
    for (const node of placed.ordered) {
      seenNodes.add(node.name);
      let g = view.nodeElements.get(node.name);
      if (!g) {
        g = svgElement("g", { class: "node", tabindex: "0" });
        g.setAttribute("data-name", node.name);
        g.appendChild(svgElement("circle", { class: "halo" }));
        g.appendChild(svgElement("circle", { class: "body" }));
        g.appendChild(svgElement("path", { class: "level" }));
        g.appendChild(svgElement("circle", { class: "outline" }));
        g.appendChild(svgElement("text", { class: "label" }));
        g.addEventListener("mouseenter", () => hover(node.name));
        g.addEventListener("mouseleave", () => hover(null));
        g.addEventListener("focus", () => hover(node.name));
        g.addEventListener("blur", () => hover(null));
        ui.nodeLayer.appendChild(g);
        view.nodeElements.set(node.name, g);
      }
      const where = placed.positions.get(node.name);
      const hasLoad = node.busy !== null && node.busy !== undefined;
      const fraction = hasLoad && node.slots > 0 ? Math.min(1, node.busy / node.slots) : 0;
      setAttr(g, "data-state", node.state);
      setAttr(g, "data-busy", hasLoad ? node.busy : "");
      setAttr(g, "data-slots", node.slots);
      setAttr(g, "transform", "translate(" + where.x.toFixed(1) + " " + where.y.toFixed(1) + ")");
      setAttr(g, "aria-label", node.name + ", " + node.state + ", " + busyText(node));
      g.details = node;
      const [halo, body, level, outline, label] = g.children;
      setAttr(halo, "r", r + 7);
      setAttr(body, "r", r);
      setAttr(outline, "r", r);
      setAttr(level, "d", levelPath(r, fraction));
      // Labels point away from the centre.
      const cos = Math.cos(where.angle);
      const sin = Math.sin(where.angle);
      const lone = placed.ordered.length === 1;
      const distance = r + 10;
      setAttr(label, "x", lone ? 0 : (cos * distance).toFixed(1));
      setAttr(label, "y", lone ? r + 18 : (sin * distance).toFixed(1));
      setAttr(label, "text-anchor", lone || Math.abs(cos) < 0.3 ? "middle" : cos > 0 ? "start" : "end");
      setAttr(label, "dominant-baseline", lone ? "hanging" : sin > 0.7 ? "hanging" : sin < -0.7 ? "auto" : "middle");
      setText(label, shorten(node.name, LABEL_CHARS));
    }
    for (const [name, g] of view.nodeElements) {
      if (!seenNodes.has(name)) {
        g.remove();
        view.nodeElements.delete(name);
      }
    }
    if (view.hovered && !view.nodeElements.has(view.hovered)) hover(null);
    else if (view.hovered) hover(view.hovered);

    const states = {};
    for (const node of nodes) states[node.state] = (states[node.state] || 0) + 1;
    const parts = [count(nodes.length) + " node" + (nodes.length === 1 ? "" : "s"), count(links.length) + " link" + (links.length === 1 ? "" : "s")];
    for (const name of ["suspect", "known", "gone"]) if (states[name]) parts.push(states[name] + " " + name);
    setText(ui.topologySummary, parts.join(" \u00b7 "));
  }

  /** Highlight a node and its links, and show its details beside it. */
  function hover(name) {
    view.hovered = name;
    ui.svg.classList.toggle("focused", Boolean(name));
    for (const [key, g] of view.nodeElements) g.classList.toggle("hl", key === name);
    for (const line of view.linkElements.values()) {
      line.classList.toggle("hl", Boolean(name) && (line.getAttribute("data-source") === name || line.getAttribute("data-target") === name));
    }
    const g = name ? view.nodeElements.get(name) : null;
    if (!g || !g.details) {
      ui.hoverLabel.setAttribute("visibility", "hidden");
      return;
    }
    const node = g.details;
    const where = view.positions.get(name);
    const text = ui.hoverLabel.querySelector("text");
    const rect = ui.hoverLabel.querySelector("rect");
    setText(text, node.name + " \u00b7 " + node.state + " \u00b7 " + busyText(node));
    ui.hoverLabel.parentNode.appendChild(ui.hoverLabel);  // on top of every node
    // The same size on screen (12 px) whatever the view box's scale.
    const unit = 1 / pixelScale();
    const radius = parseFloat(g.querySelector("circle.body").getAttribute("r")) || 10;
    text.setAttribute("font-size", (12 * unit).toFixed(2));
    rect.setAttribute("rx", (4 * unit).toFixed(2));
    text.setAttribute("x", "0");
    text.setAttribute("y", "0");
    const box = text.getBBox();
    const extent = ui.svg.viewBox.baseVal.width / 2;
    const padX = 6 * unit;
    const padY = 4 * unit;
    let x = where.x - box.width / 2;
    x = Math.max(-extent + padX, Math.min(extent - box.width - padX, x));
    // Below a node in the upper half, above one in the lower half.
    const y = where.y < 0 ? where.y + radius + 10 * unit : where.y - radius - 10 * unit - box.height;
    text.setAttribute("x", (x - box.x).toFixed(1));
    text.setAttribute("y", (y - box.y).toFixed(1));
    rect.setAttribute("x", (x - padX).toFixed(1));
    rect.setAttribute("y", (y - padY).toFixed(1));
    rect.setAttribute("width", (box.width + 2 * padX).toFixed(1));
    rect.setAttribute("height", (box.height + 2 * padY).toFixed(1));
    ui.hoverLabel.setAttribute("visibility", "visible");
  }

  /* ---------- jobs ---------- */

  function makeJob(id) {
    const card = element("article", "job");
    card.setAttribute("data-id", id);
    const head = element("div", "job-head");
    const title = element("button", "job-id mono", id);
    title.type = "button";
    title.title = "Show the tasks of job " + id;
    const badge = element("span", "badge");
    const percent = element("span", "percent");
    const cancel = element("button", "cancel", "Cancel");
    cancel.type = "button";
    cancel.title = "Cancel job " + id;
    head.append(title, badge, percent, cancel);
    const bar = element("div", "progress");
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    for (const part of ["succeeded", "failed", "cancelled", "skipped", "running"]) {
      const segment = element("span", "seg");
      segment.setAttribute("data-part", part);
      bar.appendChild(segment);
    }
    const meta = element("div", "job-meta");
    for (const part of ["done", "running", "failed", "waiting", "pending", "cancelled", "skipped", "time", "master"]) {
      const item = element("span", "count");
      item.setAttribute("data-count", part);
      meta.appendChild(item);
    }
    card.append(head, bar, meta);
    card.addEventListener("click", (event) => {
      if (event.target.closest("button.cancel")) return;
      chooseJob(id);
    });
    cancel.addEventListener("click", () => cancelJob(card.summary || { id }, cancel));
    return card;
  }

  function drawJobs() {
    const jobs = view.jobs;
    const selected = currentJob();
    ui.jobsEmpty.hidden = jobs.length > 0;
    const running = jobs.filter((job) => job.state === "running").length;
    setText(ui.jobsSummary, jobs.length ? count(jobs.length) + " job" + (jobs.length === 1 ? "" : "s") + " \u00b7 " + running + " running" : "");
    const seen = new Set();
    let previous = null;
    for (const job of jobs) {
      seen.add(job.id);
      let card = view.jobElements.get(job.id);
      if (!card) {
        card = makeJob(job.id);
        view.jobElements.set(job.id, card);
      }
      // Keep the API's order (newest first) without moving cards needlessly.
      const wanted = previous ? previous.nextSibling : ui.jobList.firstChild;
      if (wanted !== card) ui.jobList.insertBefore(card, wanted);
      previous = card;
      card.summary = job;
      drawJob(card, job, job.id === selected);
    }
    for (const [id, card] of view.jobElements) {
      if (!seen.has(id)) {
        card.remove();
        view.jobElements.delete(id);
      }
    }
  }

  function drawJob(card, job, selected) {
    const c = job.counts || {};
    const total = job.total || 0;
    const progress = typeof job.progress === "number" ? job.progress : 0;
    setAttr(card, "data-state", job.state);
    card.classList.toggle("selected", selected);
    const badge = card.querySelector(".badge");
    setText(badge, job.state);
    setAttr(badge, "data-state", job.state);
    setText(card.querySelector(".percent"), (progress * 100).toFixed(progress > 0 && progress < 0.1 ? 1 : 0) + "%");
    const cancel = card.querySelector("button.cancel");
    cancel.hidden = job.state !== "running";
    const bar = card.querySelector(".progress");
    setAttr(bar, "data-progress", progress);
    setAttr(bar, "aria-valuenow", Math.round(progress * 100));
    setAttr(bar, "aria-label", "job " + job.id + " " + Math.round(progress * 100) + "% done");
    for (const segment of bar.children) {
      const part = segment.getAttribute("data-part");
      const width = total ? (100 * (c[part] || 0)) / total : 0;
      const style = width.toFixed(3) + "%";
      if (segment.style.width !== style) segment.style.width = style;
    }
    const meta = {};
    for (const item of card.querySelectorAll(".job-meta .count")) meta[item.getAttribute("data-count")] = item;
    setText(meta.done, "done " + count(job.done || 0) + " / " + count(total));
    setText(meta.running, "running " + count(c.running || 0));
    setText(meta.failed, "failed " + count(c.failed || 0));
    meta.failed.classList.toggle("alert", (c.failed || 0) > 0);
    setText(meta.waiting, "waiting " + count(c.waiting || 0));
    meta.waiting.classList.toggle("warn", (c.waiting || 0) > 0);
    setAttr(meta.waiting, "title", "tasks no connected node can run");
    setText(meta.pending, "pending " + count(c.pending || 0));
    meta.pending.hidden = !(c.pending > 0);
    setText(meta.cancelled, "cancelled " + count(c.cancelled || 0));
    meta.cancelled.hidden = !(c.cancelled > 0);
    setText(meta.skipped, "skipped " + count(c.skipped || 0));
    meta.skipped.hidden = !(c.skipped > 0);
    setAttr(meta.skipped, "title", "tasks that did not run because a task they run after did not succeed");
    if (job.state === "running" && job.stalled) {
      setText(meta.time, "stalled");
    } else if (job.state === "running") {
      setText(meta.time, "ETA " + eta(job.eta));
    } else {
      setText(meta.time, "took " + seconds(job.elapsed));
    }
    setAttr(meta.time, "title", (job.stalled ? String(job.stalled) + "; " : "") + "elapsed " + seconds(job.elapsed));
    // Who leads the job now, and in which epoch (one more at each takeover).
    meta.master.hidden = !job.master;
    setText(meta.master, job.master ? "master " + job.master + " \u00b7 epoch " + (job.epoch || 1) : "");
    setAttr(meta.master, "title", job.answered_by === "replica" ? "as a replica of its records says" : "as its master says");
  }

  async function cancelJob(job, button) {
    const left = job.total - job.done;
    const question = "Cancel job " + job.id + "?\n\nIts " + count(left) + " unfinished task(s) will not run, and those running now are stopped.";
    if (!window.confirm(question)) return;
    button.disabled = true;
    try {
      const answer = await requestJSON("/api/jobs/" + encodeURIComponent(job.id) + "/cancel", { method: "POST" });
      toast("Job " + job.id + " cancelled: " + count(answer.cancelled || 0) + " task(s) will not run.");
    } catch (e) {
      toast("Could not cancel job " + job.id + ": " + e.message, true);
    } finally {
      button.disabled = false;
      refreshSoon();
    }
  }

  function chooseJob(id) {
    if (view.chosenJob === id) return;
    view.chosenJob = id;
    view.offset = 0;
    view.nodeFilter = "";
    ui.nodeSelect.value = "";
    drawJobChoice();
    drawJobs();
    refreshSoon();
  }

  /* ---------- the task table ---------- */

  function fillSelect(select, options, value) {
    // Rebuild only when the choices change, so that an open list stays open.
    const signature = options.map(([v, label]) => v + "\u0001" + label).join("\u0000");
    if (select.signature !== signature) {
      select.replaceChildren(...options.map(([v, label]) => {
        const option = element("option", null, label);
        option.value = v;
        return option;
      }));
      select.signature = signature;
    }
    if (select.value !== value) select.value = value;
  }

  function drawJobChoice() {
    const options = [["", view.jobs.length ? "Newest (" + view.jobs[0].id + ")" : "Newest"]];
    for (const job of view.jobs) options.push([job.id, job.id + " \u2013 " + job.state]);
    fillSelect(ui.jobSelect, options, view.chosenJob && view.jobs.some((job) => job.id === view.chosenJob) ? view.chosenJob : "");
  }

  function drawNodeChoice(rows) {
    const names = new Set(view.nodeNames);
    for (const row of rows) if (row.node) names.add(row.node);
    if (view.nodeFilter) names.add(view.nodeFilter);
    const options = [["", "All nodes"]].concat([...names].sort().map((name) => [name, name]));
    fillSelect(ui.nodeSelect, options, view.nodeFilter);
  }

  function drawNoTasks(message) {
    view.matched = 0;
    ui.tbody.replaceChildren();
    setText(ui.tasksEmpty, message);
    ui.tasksEmpty.hidden = false;
    setText(ui.range, "");
    setText(ui.pageNumber, "");
    for (const button of [ui.first, ui.prev, ui.next, ui.last]) button.disabled = true;
    drawNodeChoice([]);
  }

  const COLUMNS = ["id", "kind", "state", "node", "attempts", "exit_code", "duration", "error"];

  function makeRow() {
    const row = element("tr");
    for (const column of COLUMNS) {
      const cell = element("td");
      cell.setAttribute("data-column", column);
      if (column === "id" || column === "node") cell.className = "mono";
      if (column === "attempts" || column === "exit_code" || column === "duration") cell.className = "num";
      if (column === "state") cell.appendChild(element("span", "badge"));
      if (column === "error") cell.className = "error";
      row.appendChild(cell);
    }
    return row;
  }

  function drawTasks(page) {
    if (page.error) {
      drawNoTasks(page.error);
      return;
    }
    const rows = Array.isArray(page.tasks) ? page.tasks : [];
    view.matched = page.matched || 0;
    if (view.matched > 0 && view.offset >= view.matched) {
      // The filtered list shrank under the current page: go to its last page.
      view.offset = Math.floor((view.matched - 1) / PAGE_SIZE) * PAGE_SIZE;
      poll.again = true;
    }
    while (ui.tbody.children.length > rows.length) ui.tbody.lastChild.remove();
    while (ui.tbody.children.length < rows.length) ui.tbody.appendChild(makeRow());
    rows.forEach((task, i) => {
      const row = ui.tbody.children[i];
      setAttr(row, "data-id", task.id);
      setAttr(row, "data-state", task.state);
      const cells = row.children;
      setText(cells[0], task.id);
      setText(cells[1], task.kind);
      const badge = cells[2].firstChild;
      setText(badge, task.state);
      setAttr(badge, "data-state", task.state);
      setText(cells[3], task.node || "");
      setText(cells[4], task.attempts);
      setText(cells[5], task.exit_code === null || task.exit_code === undefined ? "" : task.exit_code);
      setText(cells[6], seconds(task.duration));
      if (task.status && task.status !== task.state) setAttr(badge, "title", task.status);
      else badge.removeAttribute("title");
      // The error, or for a plain non-zero exit the last line the task wrote to stderr.
      const stderr = typeof task.stderr === "string" ? task.stderr : "";
      let error = task.error || "";
      const fromStderr = !error && task.state === "failed" && stderr.trim() !== "";
      if (fromStderr) error = stderr.trim().split("\n").pop();
      setText(cells[7], error);
      cells[7].classList.toggle("from-stderr", fromStderr);
      const detail = stderr.trim() && (error || task.state === "failed")
        ? (task.error ? task.error + "\n\n" : "") + "stderr (end):\n" + stderr.slice(-2000)
        : error;
      if (detail) setAttr(cells[7], "title", detail);
      else cells[7].removeAttribute("title");
    });
    const filtered = view.stateFilter || view.nodeFilter;
    ui.tasksEmpty.hidden = rows.length > 0;
    setText(ui.tasksEmpty, filtered ? "No task matches these filters." : "This job has no tasks.");
    const total = page.job ? page.job.total : view.matched;
    if (rows.length) {
      setText(ui.range, count(view.offset + 1) + "\u2013" + count(view.offset + rows.length) + " of " + count(view.matched) +
        (filtered ? " matching (" + count(total) + " in all)" : ""));
    } else {
      setText(ui.range, filtered ? "0 of " + count(total) : "");
    }
    const pages = Math.max(1, Math.ceil(view.matched / PAGE_SIZE));
    const pageIndex = Math.floor(view.offset / PAGE_SIZE);
    setText(ui.pageNumber, "page " + count(pageIndex + 1) + " / " + count(pages));
    ui.first.disabled = ui.prev.disabled = pageIndex === 0;
    ui.next.disabled = ui.last.disabled = pageIndex >= pages - 1;
    drawNodeChoice(rows);
  }

  function goToOffset(offset) {
    const lastOffset = Math.max(0, Math.floor((view.matched - 1) / PAGE_SIZE) * PAGE_SIZE);
    const wanted = Math.max(0, Math.min(offset, lastOffset));
    if (wanted === view.offset) return;
    view.offset = wanted;
    refreshSoon();
  }

  /* ---------- wiring ---------- */

  fillSelect(ui.stateSelect, [["", "All states"]].concat(TASK_STATES.map((s) => [s, s])), "");
  drawNodeChoice([]);
  drawJobChoice();

  ui.jobSelect.addEventListener("change", () => {
    view.chosenJob = ui.jobSelect.value;
    view.offset = 0;
    view.nodeFilter = "";
    drawJobs();
    refreshSoon();
  });
  ui.stateSelect.addEventListener("change", () => {
    view.stateFilter = ui.stateSelect.value;
    view.offset = 0;
    refreshSoon();
  });
  ui.nodeSelect.addEventListener("change", () => {
    view.nodeFilter = ui.nodeSelect.value;
    view.offset = 0;
    refreshSoon();
  });
  ui.first.addEventListener("click", () => goToOffset(0));
  ui.prev.addEventListener("click", () => goToOffset(view.offset - PAGE_SIZE));
  ui.next.addEventListener("click", () => goToOffset(view.offset + PAGE_SIZE));
  ui.last.addEventListener("click", () => goToOffset(Number.MAX_SAFE_INTEGER));

  setInterval(showAge, 500);
  round();
})();
