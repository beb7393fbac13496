// End-to-end test of the dashboard in a real browser (Debian's Chromium driven by playwright-core).
//
// Starts `finsecure serve` on a free port with a throw-away data directory and the live demo stream on,
// signs in through the login page and checks, each as one step: live KPIs move, an incident appears
// without a reload, its explanation links its entities through the graph, an entity is blocked and an
// alert split off, it can be assigned and resolved, a viewer sees no action buttons, the map draws
// markers, the graph draws nodes, an admin switches a rule off and on (and runs its samples and a
// backtest) and the models page lists versions. Screenshots of every page go to e2e/screenshots/.
//
//   node e2e/run.mjs            (CHROMIUM=/path/to/chromium, FINSECURE_BIN=/path/to/finsecure to override)
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, createWriteStream, readFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..", "..");
const SHOTS = path.join(HERE, "screenshots");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const FINSECURE = process.env.FINSECURE_BIN ?? path.join(REPO, ".venv", "bin", "finsecure");
const ADMIN_PASSWORD = "e2e-admin-password-long-enough";
const PASSWORD = "e2e-user-password-long-enough";
const DEADLINE_MS = 300_000; // the whole run stays under 5 minutes

const started = Date.now();
const results = [];

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

async function waitFor(what, check, timeoutMs = 30_000, everyMs = 250) {
  const until = Date.now() + timeoutMs;
  let last;
  while (Date.now() < until) {
    try {
      const value = await check();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

async function step(name, fn) {
  const t0 = Date.now();
  if (Date.now() - started > DEADLINE_MS) {
    results.push({ name, ok: false, ms: 0, error: "not run: the e2e time budget is spent" });
    return;
  }
  try {
    const note = await fn();
    results.push({ name, ok: true, ms: Date.now() - t0, note });
  } catch (err) {
    results.push({ name, ok: false, ms: Date.now() - t0, error: err?.message ?? String(err) });
  }
}

const PYTHON = path.join(REPO, ".venv", "bin", "python");
const PG_ADMIN_URL = process.env.FINSECURE_TEST_PG_URL ?? "postgresql+psycopg://postgres@127.0.0.1:5432/postgres";

/** Run a little Python (the project's venv) that prints one line; null when it fails. */
function python(code, args) {
  return new Promise((resolve) => {
    const child = spawn(PYTHON, ["-c", code, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.on("error", () => resolve(null));
    child.on("exit", (code) => resolve(code === 0 ? out.trim() : null));
  });
}

const PG_SCRIPT = `
import secrets, sys
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
url = make_url(sys.argv[1])
engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
with engine.connect() as conn:
    if sys.argv[2] == "create":
        name = "finsecure_e2e_" + secrets.token_hex(4)
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        print(url.set(database=name).render_as_string(hide_password=False))
    else:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{sys.argv[3]}" WITH (FORCE)'))
`;

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  // PostgreSQL when the local server answers (as in `make test`): the API's writes then never collide
  // with the demo stream's the way they can on one SQLite file. FINSECURE_E2E_SQLITE=1 forces SQLite.
  const databaseUrl = process.env.FINSECURE_E2E_SQLITE ? null : await python(PG_SCRIPT, [PG_ADMIN_URL, "create"]);
  console.log(`e2e database: ${databaseUrl ? "a throw-away PostgreSQL database" : "SQLite in a temp directory"}`);
  const dataDir = mkdtempSync(path.join(tmpdir(), "finsecure-e2e-"));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const logPath = path.join(dataDir, "server.log");
  const log = createWriteStream(logPath);
  const server = spawn(FINSECURE, ["serve", "--port", String(port), "--host", "127.0.0.1"], {
    cwd: REPO,
    env: {
      ...process.env,
      FINSECURE_ENV: "development",
      FINSECURE_DATA_DIR: dataDir,
      FINSECURE_DATABASE_URL: databaseUrl ?? "",
      FINSECURE_ADMIN_USERNAME: "admin",
      FINSECURE_ADMIN_PASSWORD: ADMIN_PASSWORD,
      FINSECURE_DEMO_STREAM: "true",
      FINSECURE_DEMO_RATE: process.env.FINSECURE_DEMO_RATE ?? "50",
      FINSECURE_DEMO_CUSTOMERS: "2000",
      FINSECURE_LOG_LEVEL: "WARNING",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  server.stdout.pipe(log);
  server.stderr.pipe(log);
  let browser;
  try {
    await waitFor("the server", async () => (await fetch(`${base}/api/health`)).ok, 60_000, 500);
    const apiCall = async (pathname, { token, method, json, form, headers = {}, attempt = 0 } = {}) => {
      method = method ?? (json || form ? "POST" : "GET");
      const response = await fetch(`${base}${pathname}`, {
        method,
        headers: {
          ...(token ? { Authorization: `Bearer ${token}` } : {}),
          ...(json ? { "Content-Type": "application/json" } : {}),
          ...headers,
        },
        body: json ? JSON.stringify(json) : form ? new URLSearchParams(form) : undefined,
      });
      if (response.status >= 500 && attempt < 4) {
        // SQLite under the demo stream's writes can refuse a write with "database is locked": retry
        await new Promise((r) => setTimeout(r, 300 * (attempt + 1)));
        return apiCall(pathname, { token, method, json, form, headers, attempt: attempt + 1 });
      }
      if (!response.ok) throw new Error(`${method} ${pathname}: ${response.status} ${await response.text()}`);
      return response.status === 204 ? null : response.json();
    };
    const admin = await apiCall("/api/auth/token", { form: { username: "admin", password: ADMIN_PASSWORD } });
    for (const [username, role] of [["ana", "analyst"], ["vic", "viewer"]]) {
      await apiCall("/api/users", {
        token: admin.access_token,
        method: "POST",
        json: { username, password: PASSWORD, role, full_name: role === "analyst" ? "Ana Lyst" : "Vic Viewer" },
      });
    }
    const key = await apiCall("/api/apikeys", {
      token: admin.access_token,
      method: "POST",
      json: { name: "e2e", scopes: ["ingest"] },
    });

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"],
    });
    const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    const page = await context.newPage();
    const consoleErrors = [];
    page.on("pageerror", (err) => consoleErrors.push(String(err)));

    await step("login page signs in and shows the role", async () => {
      await page.goto(`${base}/`);
      await page.getByLabel("Username").fill("ana");
      await page.getByLabel("Password").fill("wrong-password-entirely");
      await page.getByRole("button", { name: "Sign in" }).click();
      await page.getByRole("alert").waitFor({ timeout: 10_000 });
      await page.screenshot({ path: path.join(SHOTS, "login.png") });
      await page.getByLabel("Password").fill(PASSWORD);
      await page.getByRole("button", { name: "Sign in" }).click();
      const who = await page.getByTestId("whoami").textContent({ timeout: 10_000 });
      if (!who.includes("analyst")) throw new Error(`expected the analyst role, saw ${who}`);
    });

    await step("overview KPIs change live while the demo stream runs", async () => {
      await page.getByTestId("live-state").and(page.locator('[data-state="open"]')).waitFor({ timeout: 15_000 });
      const value = () => page.getByTestId("kpi-total-value").textContent();
      const first = await waitFor("a first KPI sample", value, 15_000);
      const changed = await waitFor("the event count to move", async () => {
        const now = await value();
        return now !== first ? now : null;
      }, 20_000);
      await page.waitForTimeout(1500); // let the charts draw a few points
      await page.screenshot({ path: path.join(SHOTS, "overview.png") });
      return `events processed ${first} → ${changed}`;
    });

    let incidentId = null;
    const suspect = `e2e-${Date.now()}`;
    await step("a new incident appears on the incidents page without a reload", async () => {
      await page.getByRole("link", { name: "Incidents", exact: true }).click();
      await page.getByTestId("incidents-table").waitFor();
      await page.waitForTimeout(500);
      const before = new Set(await page.getByTestId("incident-row").evaluateAll((rows) => rows.map((r) => r.dataset.id)));
      // two alerts about one user (so that the incident can be split), from one IP (a graph path)
      const common = { source: "e2e", user_id: suspect, principal_id: `arn:aws:iam::1:user/${suspect}`, src_ip: "203.0.113.77" };
      const events = [
        { ...common, event_id: `${suspect}-1`, ts: new Date().toISOString(), service: "cloudtrail.amazonaws.com", action: "StopLogging" },
        {
          ...common,
          event_id: `${suspect}-2`,
          ts: new Date(Date.now() + 1000).toISOString(),
          service: "iam.amazonaws.com",
          action: "AttachUserPolicy",
          resource: "arn:aws:iam::aws:policy/AdministratorAccess",
        },
      ];
      // a busy pipeline answers 503 with "try again shortly" (the machine may be loaded): do as told
      const pushed = await waitFor("the ingest API to take the events", async () => {
        const answer = await fetch(`${base}/api/ingest/cloud`, {
          method: "POST",
          headers: { "X-API-Key": key.key, "Content-Type": "application/x-ndjson" },
          body: events.map((e) => JSON.stringify(e)).join("\n") + "\n",
        });
        return answer.status === 503 ? null : answer;
      }, 90_000, 1000);
      if (!pushed.ok) throw new Error(`ingest answered ${pushed.status}: ${await pushed.text()}`);
      incidentId = await waitFor(
        "the new incident row",
        async () => {
          const ids = await page.getByTestId("incident-row").evaluateAll((rows) =>
            rows.map((r) => [r.dataset.id, r.textContent]),
          );
          const fresh = ids.find(([id, text]) => !before.has(id) && text.toLowerCase().includes("audit trail"));
          return fresh ? fresh[0] : null;
        },
        60_000,
      ).catch(async (err) => {
        // say whether the pipeline was slow (no alert yet) or the page missed an incident the API has
        const alerts = await apiCall(`/api/alerts?entity_id=${suspect}&size=10`, { token: admin.access_token }).catch(() => null);
        const incidents = await apiCall(`/api/incidents?size=5`, { token: admin.access_token }).catch(() => null);
        const titles = incidents?.items?.map((i) => `#${i.id} ${i.title}`).join(" | ");
        throw new Error(`${err.message}; alerts about ${suspect}: ${alerts?.total ?? "?"}; latest incidents: ${titles}`);
      });
      await page.screenshot({ path: path.join(SHOTS, "incidents.png") });
      return `incident #${incidentId}`;
    });

    await step("incident detail: graph path in plain words, block an entity, split an alert off", async () => {
      if (!incidentId) throw new Error("no incident from the first incident step");
      const alerts = await waitFor("both alerts in the incident", async () => {
        const detail = await apiCall(`/api/incidents/${incidentId}`, { token: admin.access_token });
        return detail.alerts.length >= 2 ? detail.alerts : null;
      }, 30_000, 1000);
      await page.locator(`[data-testid="incident-row"][data-id="${incidentId}"]`).click();
      const sentence = await waitFor("the graph path sentence", async () => {
        const texts = await page.getByTestId("graph-path").allTextContents();
        return texts.find((t) => t.includes("203.0.113.77")) ?? null;
      }, 20_000, 500);
      await page.getByRole("button", { name: "Block…" }).click();
      await page.getByTestId("block-panel").waitFor();
      await page.locator("#block-entity").selectOption({ label: "IP address 203.0.113.77" });
      await page.locator("#block-ttl").selectOption({ label: "1 day" });
      await page.screenshot({ path: path.join(SHOTS, "incident-block.png"), fullPage: true });
      await page.getByTestId("block-panel").getByRole("button", { name: "Block", exact: true }).click();
      await page.getByRole("dialog").getByRole("button", { name: "Block", exact: true }).click();
      await page.getByTestId("incident-notice").getByText("Blocked IP address 203.0.113.77").waitFor({ timeout: 10_000 });
      const blocks = await apiCall(`/api/blocklist?entity_type=src_ip&entity_id=203.0.113.77`, { token: admin.access_token });
      if (blocks.total !== 1) throw new Error(`the block list has ${blocks.total} entries for the IP`);
      await page.getByRole("button", { name: "Split…" }).click();
      const moved = alerts[alerts.length - 1];
      await page.getByTestId("split-panel").getByRole("checkbox", { name: new RegExp(`^#${moved.id} `) }).check();
      await page.screenshot({ path: path.join(SHOTS, "incident-split.png"), fullPage: true });
      await page.getByRole("button", { name: "Move 1 alert to a new incident" }).click();
      await page.getByTestId("incident-notice").getByText(/Moved 1 alert into incident #\d+/).waitFor({ timeout: 10_000 });
      const after = await apiCall(`/api/incidents/${incidentId}`, { token: admin.access_token });
      if (after.alerts.length !== alerts.length - 1) throw new Error(`the incident still has ${after.alerts.length} alerts`);
      await page.getByRole("link", { name: "Incidents", exact: true }).click();
      await page.getByTestId("incidents-table").waitFor();
      return sentence;
    });

    await step("the analyst assigns the incident and resolves it", async () => {
      if (!incidentId) throw new Error("no incident from the previous step");
      if (!(await page.getByTestId("incidents-table").isVisible())) {
        await page.getByRole("link", { name: "Incidents", exact: true }).click(); // the step before failed midway
        await page.getByTestId("incidents-table").waitFor();
      }
      await page.locator(`[data-testid="incident-row"][data-id="${incidentId}"]`).click();
      await page.getByRole("button", { name: "Assign to me" }).click();
      await page.getByText("assigned to you").waitFor({ timeout: 10_000 });
      await page.getByRole("button", { name: "Show the evidence" }).first().click();
      await page.getByTestId("alert-evidence").first().waitFor({ timeout: 10_000 });
      await page.getByLabel("What it was").selectOption("true_positive");
      await page.getByRole("button", { name: "Resolve" }).click();
      await page.getByTestId("incident-status").getByText("Resolved").waitFor({ timeout: 10_000 });
      await page.screenshot({ path: path.join(SHOTS, "incident-detail.png"), fullPage: true });
      const detail = await apiCall(`/api/incidents/${incidentId}`, { token: admin.access_token });
      if (detail.status !== "resolved" || detail.disposition !== "true_positive") {
        throw new Error(`the API says ${detail.status}/${detail.disposition}`);
      }
    });

    await step("alerts page lists the alert", async () => {
      await page.getByRole("link", { name: "Alerts", exact: true }).click();
      await page.getByTestId("alert-row").first().waitFor({ timeout: 10_000 });
      await page.screenshot({ path: path.join(SHOTS, "alerts.png") });
    });

    await step("a viewer sees the incident but no action buttons", async () => {
      const viewer = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      const vpage = await viewer.newPage();
      // Signed in through the API (the login page itself is covered above) and handed to the page the
      // way the app keeps its session: this step is about what a viewer is shown.
      const tokens = await apiCall("/api/auth/token", { form: { username: "vic", password: PASSWORD } });
      await vpage.addInitScript((stored) => {
        sessionStorage.setItem("finsecure.tokens", stored);
      }, JSON.stringify({ access: tokens.access_token, refresh: tokens.refresh_token, accessExpiresAt: Date.now() + tokens.expires_in * 1000 }));
      await vpage.goto(`${base}/incidents/${incidentId}`);
      await vpage.getByTestId("incident-status").waitFor({ timeout: 10_000 });
      const who = await vpage.getByTestId("whoami").textContent();
      if (!who.includes("viewer")) throw new Error(`expected the viewer role, saw ${who}`);
      const buttons = await vpage.getByRole("button", { name: /Assign to me|Resolve|Split…|Block…/ }).count();
      await vpage.goto(`${base}/rules`);
      await vpage.getByTestId("rule-row").first().waitFor({ timeout: 10_000 });
      const toggles = await vpage.getByTestId("rule-toggle").count();
      await vpage.goto(`${base}/models`);
      await vpage.getByRole("heading", { name: "Models" }).waitFor({ timeout: 10_000 });
      await vpage.waitForTimeout(1000); // the list has loaded (or failed) by now
      const promotes = await vpage.getByRole("button", { name: /Promote|Roll back/ }).count();
      await viewer.close();
      if (buttons !== 0) throw new Error(`a viewer sees ${buttons} action buttons`);
      if (toggles !== 0 || promotes !== 0) throw new Error(`a viewer sees ${toggles} rule switches and ${promotes} model buttons`);
    });

    let entity = null;
    await step("the map draws markers on the offline basemap", async () => {
      await page.getByRole("link", { name: "Map", exact: true }).click();
      await page.locator(".leaflet-overlay-pane path").first().waitFor({ timeout: 10_000 }); // countries
      const markers = await waitFor(
        "markers",
        async () => {
          const n = await page.locator(".leaflet-marker-icon").count();
          return n > 0 ? n : null;
        },
        30_000,
        1000,
      );
      const body = await apiCall(`/api/map/points?limit=50`, { token: admin.access_token });
      const located = body.points.find((p) => p.entity_id && p.entity_type === "card_id") ?? body.points.find((p) => p.entity_id);
      if (located) entity = { type: located.entity_type, id: located.entity_id };
      await page.screenshot({ path: path.join(SHOTS, "map.png") });
      return `${markers} marker icons (clusters included)`;
    });

    await step("the graph explorer draws an entity's neighbourhood", async () => {
      const target = entity ?? { type: "user_id", id: suspect };
      await page.goto(`${base}/graph?type=${encodeURIComponent(target.type)}&id=${encodeURIComponent(target.id)}`);
      const probe = await fetch(
        `${base}/api/graph/entity/${encodeURIComponent(target.type)}/${encodeURIComponent(target.id)}?hops=2`,
        { headers: { Authorization: `Bearer ${admin.access_token}` } },
      );
      if (probe.status === 404 && (await probe.json()).error?.message === "Not Found") {
        await page.getByText("graph service is not available").waitFor({ timeout: 10_000 });
        await page.screenshot({ path: path.join(SHOTS, "graph.png") });
        throw new Error("GET /api/graph/entity is not served by this build (graph API missing)");
      }
      const nodes = await waitFor(
        "graph nodes",
        async () => {
          const n = await page.getByTestId("graph-node").count();
          return n > 0 ? n : null;
        },
        20_000,
      );
      await page.waitForTimeout(1500); // let the layout settle for the picture
      await page.screenshot({ path: path.join(SHOTS, "graph.png") });
      return `${nodes} nodes around ${target.type} ${target.id}`;
    });

    await step("the system page reports a healthy platform", async () => {
      await page.getByRole("link", { name: "System", exact: true }).click();
      await page.getByTestId("system-health").getByText("Healthy").waitFor({ timeout: 10_000 });
      await page.screenshot({ path: path.join(SHOTS, "system.png") });
    });

    // An admin's own browser session (signed in through the API, as the viewer's above)
    const adminContext = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    const apage = await adminContext.newPage();
    apage.on("pageerror", (err) => consoleErrors.push(String(err)));
    await apage.addInitScript((stored) => {
      sessionStorage.setItem("finsecure.tokens", stored);
    }, JSON.stringify({ access: admin.access_token, refresh: admin.refresh_token, accessExpiresAt: Date.now() + admin.expires_in * 1000 }));

    await step("an admin switches a rule off and on again, runs its samples and a backtest", async () => {
      await apage.goto(`${base}/rules`);
      await apage.getByTestId("rule-row").first().waitFor({ timeout: 10_000 });
      const rows = await apage.getByTestId("rule-row").count();
      await apage.getByLabel("Area").selectOption("cloud");
      const row = apage.locator('[data-testid="rule-row"]').filter({ hasText: "Cloud audit trail stopped or deleted" });
      const ruleId = await row.getAttribute("data-id");
      await row.getByTestId("rule-toggle").click();
      await apage.locator(`[data-testid="rule-row"][data-id="${ruleId}"][data-enabled="false"]`).waitFor({ timeout: 10_000 });
      const off = await apiCall(`/api/rules/${ruleId}`, { token: admin.access_token });
      if (off.enabled !== false) throw new Error("the API still has the rule on");
      await apage.screenshot({ path: path.join(SHOTS, "rules.png") });
      await row.getByTestId("rule-toggle").click();
      await apage.locator(`[data-testid="rule-row"][data-id="${ruleId}"][data-enabled="true"]`).waitFor({ timeout: 10_000 });
      await row.getByRole("button", { name: /^Open / }).click();
      await apage.getByRole("button", { name: "Run samples" }).click();
      const verdict = await apage.getByTestId("sample-results").locator("p").first().textContent({ timeout: 15_000 });
      await apage.getByRole("button", { name: "Backtest", exact: true }).click();
      const replay = await apage.getByTestId("backtest-result").locator("p").first().textContent({ timeout: 60_000 });
      await apage.screenshot({ path: path.join(SHOTS, "rule-detail.png"), fullPage: true });
      return `${rows} rules; samples: ${verdict}; backtest: ${replay}`;
    });

    await step("the models page lists versions and asks before promoting", async () => {
      await apage.goto(`${base}/models`);
      await apage.getByRole("heading", { name: "Models" }).waitFor({ timeout: 10_000 });
      // the first start trains the first models in the background: wait a while for them, else the
      // page must say that none is registered yet
      const cards = await waitFor("model cards", async () => {
        await apage.reload();
        await apage.getByRole("heading", { name: "Models" }).waitFor({ timeout: 10_000 });
        await apage.waitForTimeout(1000);
        const n = await apage.getByTestId("model-card").count();
        return n > 0 ? n : null;
      }, 45_000, 5000).catch(() => 0);
      let note = `${cards} models`;
      if (cards === 0) {
        await apage.getByText("No model is registered yet").waitFor({ timeout: 5_000 });
        note = "no model registered yet (first-start training still running)";
      } else {
        const versions = await apage.getByTestId("model-version").count();
        const live = await apage.locator('[data-testid="model-version"][data-live="true"]').count();
        note += `, ${versions} versions, ${live} live`;
        const promote = apage.getByRole("button", { name: "Promote" });
        if ((await promote.count()) > 0) {
          await promote.first().click();
          await apage.getByRole("dialog").waitFor();
          await apage.screenshot({ path: path.join(SHOTS, "models-confirm.png") });
          await apage.getByRole("dialog").getByRole("button", { name: "Cancel" }).click();
          note += ", promote asks first";
        }
      }
      await apage.screenshot({ path: path.join(SHOTS, "models.png"), fullPage: true });
      return note;
    });
    await adminContext.close();

    await step("sign out returns to the login page", async () => {
      await page.getByRole("button", { name: "Sign out" }).click();
      await page.getByLabel("Username").waitFor({ timeout: 10_000 });
    });

    if (consoleErrors.length) results.push({ name: "no uncaught errors in the page", ok: false, ms: 0, error: consoleErrors.join("\n") });
  } finally {
    await browser?.close().catch(() => undefined);
    const exited = new Promise((r) => server.once("exit", r));
    server.kill("SIGTERM");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 15_000))]);
    const failed = results.some((r) => !r.ok);
    for (const r of results) {
      const mark = r.ok ? "ok  " : "FAIL";
      console.log(`${mark} ${r.name} (${(r.ms / 1000).toFixed(1)} s)${r.note ? ` — ${r.note}` : ""}${r.error ? `\n     ${r.error}` : ""}`);
    }
    console.log(`e2e: ${results.filter((r) => r.ok).length}/${results.length} steps passed in ${((Date.now() - started) / 1000).toFixed(0)} s; screenshots in ${SHOTS}`);
    if (failed || results.length === 0) {
      try {
        console.log("---- server log (tail) ----\n" + readFileSync(logPath, "utf8").split("\n").slice(-40).join("\n"));
      } catch {
        // no log
      }
      process.exitCode = 1;
    }
    rmSync(dataDir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
    if (databaseUrl) await python(PG_SCRIPT, [PG_ADMIN_URL, "drop", databaseUrl.split("/").pop()]);
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
