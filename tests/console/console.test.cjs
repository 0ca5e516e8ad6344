// Drives agentrt's web console in headless Chromium, as a person would: submit a task, watch
// the run live (tokens while it runs, the checks' findings on the code's lines, the tests, the
// verdict), open it again from the history, look at the plugins and the statistics.
//
//   node console.test.cjs BASE_URL OUT_DIR
//
// Environment: AGENTRT_PLAYWRIGHT (path of the playwright-core package), AGENTRT_CHROMIUM (the
// browser, default /usr/bin/chromium). Screenshots go to OUT_DIR; the last line printed is a
// JSON summary. Any failed expectation exits non-zero with the reason.
"use strict";

const path = require("path");
const { chromium } = require(process.env.AGENTRT_PLAYWRIGHT || "playwright-core");

const [base, outDir] = process.argv.slice(2);
const RUN_TIMEOUT_MS = 10 * 60 * 1000;

function expect(condition, message) {
  if (!condition) throw new Error(`expectation failed: ${message}`);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.AGENTRT_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));
  const shot = (name) => page.screenshot({ path: path.join(outDir, `${name}.png`), fullPage: true });
  try {
    await page.goto(`${base}/`);
    await page.getByTestId("health").filter({ hasText: "healthy" }).waitFor();

    // Submit a task and follow it live.
    await page.getByTestId("task-input").fill("Write a function add(a, b) that returns the sum of a and b");
    await page.getByTestId("submit").click();
    await page.getByTestId("run-id").filter({ hasText: /\S/ }).waitFor();
    const runId = (await page.getByTestId("run-id").textContent()).trim();
    // The model's own text (not the stage headers), while the run is still running.
    await page.getByTestId("token-text").filter({ hasText: /\S/ }).first().waitFor({ timeout: RUN_TIMEOUT_MS });
    const stateWhileTokens = await page.getByTestId("run-state").textContent();
    expect(stateWhileTokens.trim() === "running", `tokens arrived while the run was ${stateWhileTokens}`);
    await shot("1-live");

    await page.waitForFunction(
      () => /completed|failed|cancelled/.test(document.getElementById("run-state").className),
      null,
      { timeout: RUN_TIMEOUT_MS },
    );
    const state = (await page.getByTestId("run-state").textContent()).trim();
    expect(state === "completed", `the run ended ${state}: ${await page.getByTestId("timeline").textContent()}`);
    const verdict = (await page.getByTestId("verdict").textContent()).trim();
    expect(["approve", "request changes", "reject"].includes(verdict), `verdict ${verdict}`);
    const summary = (await page.getByTestId("summary").textContent()).trim();
    expect(summary.length > 0, "no review summary");
    const checks = await page.getByTestId("checks").textContent();
    expect(checks.includes("python-quality"), `checks shown: ${checks}`);
    const codeLines = await page.locator("[data-testid=code-view] .line").count();
    expect(codeLines > 0, "the generated code is not shown");
    const findings = await page.getByTestId("finding").evaluateAll((nodes) =>
      nodes.map((n) => ({ rule: n.dataset.rule, line: Number(n.dataset.line) })));
    for (const f of findings) expect(f.line <= codeLines, `finding ${f.rule} on line ${f.line} of ${codeLines}`);
    const stages = await page.getByTestId("timeline").textContent();
    expect(/generate/.test(stages) && /review/.test(stages), `stages shown: ${stages}`);
    const testRows = await page.getByTestId("test-row").count();
    await shot("2-done");

    // The run is in the history; opening it (from the keyboard) replays the same result.
    await page.getByTestId("history-tab").click();
    const row = page.locator(`[data-testid=history-row][data-run="${runId}"]`);
    await row.waitFor();
    await row.getByTestId("history-open").focus();
    await page.keyboard.press("Enter");
    await page.getByTestId("run-id").filter({ hasText: runId }).waitFor();
    await page.getByTestId("run-state").filter({ hasText: "completed" }).waitFor();
    await page.getByTestId("verdict").filter({ hasText: verdict }).waitFor();
    expect((await page.getByTestId("finding").count()) === findings.length, "the replay shows other findings");
    await shot("3-from-history");

    // An event stream cut short (a proxy's timeout, a dropped connection) is resumed after the
    // last event seen, not left showing a run that never ends.
    const eventRequests = [];
    await page.route(/\/events/, async (route) => {
      eventRequests.push(route.request().url());
      if (eventRequests.length > 1) return route.continue();
      const whole = await (await route.fetch()).text();
      const firstTwo = whole.split("\n\n").slice(0, 2).join("\n\n") + "\n\n";
      return route.fulfill({ status: 200, headers: { "content-type": "text/event-stream" }, body: firstTwo });
    });
    await page.getByTestId("history-tab").click();
    await row.click();
    await page.getByTestId("run-state").filter({ hasText: "completed" }).waitFor();
    await page.getByTestId("verdict").filter({ hasText: verdict }).waitFor();
    expect(eventRequests.length === 2 && /after=2\b/.test(eventRequests[1]),
      `the cut stream was not resumed after event 2: ${eventRequests.join(", ")}`);
    expect((await page.getByTestId("finding").count()) === findings.length, "the resumed run shows other findings");
    await page.unroute(/\/events/);

    // A server restarting (503 with Retry-After) is waited for, not taken for the end: the
    // view follows the run again and reaches its real end.
    const refusedFirst = [];
    await page.route(/\/events/, async (route) => {
      refusedFirst.push(route.request().url());
      if (refusedFirst.length > 1) return route.continue();
      return route.fulfill({
        status: 503,
        headers: { "content-type": "application/json", "retry-after": "1" },
        body: JSON.stringify({ error: { code: "MODEL_001", message: "the server is starting" } }),
      });
    });
    await page.getByTestId("history-tab").click();
    await row.click();
    await page.getByTestId("run-state").filter({ hasText: "completed" }).waitFor();
    expect(refusedFirst.length === 2, `the stream was not asked for again: ${refusedFirst.join(", ")}`);
    expect(await page.getByTestId("error").isHidden(), "the passing refusal is still shown");
    await page.unroute(/\/events/);

    // Plugins with their permissions, and the statistics as charts.
    await page.getByTestId("plugins-tab").click();
    await page.locator("[data-testid=plugin-card][data-plugin=python-quality]").waitFor();
    const cards = await page.getByTestId("plugin-card").count();
    expect(cards >= 4, `${cards} plugin cards`);
    const reviewerCard = await page.locator("[data-testid=plugin-card][data-plugin=reviewer]").textContent();
    expect(reviewerCard.includes("models *") && reviewerCard.includes("memory 128 MiB"),
      `the reviewer's grant is not shown: ${reviewerCard}`);
    expect(reviewerCard.includes("healthy · 1 call"), `the reviewer's health: ${reviewerCard}`);
    const allCards = await page.locator("#plugin-cards").textContent();
    expect(!allCards.includes("undefined"), `a card shows undefined: ${allCards}`);
    await shot("4-plugins");
    await page.getByTestId("stats-tab").click();
    // The run just made is counted: requests by endpoint and plugin calls both have bars.
    await page.locator("#chart-requests svg rect").first().waitFor();
    await page.locator("#chart-plugins svg rect").first().waitFor();
    const totals = await page.getByTestId("stats-totals").textContent();
    expect(/\d+ requests/.test(totals), `totals: ${totals}`);
    await shot("5-stats");

    // A double click submits one run, not two, however fast the server answers; Cancel stops it.
    const submits = [];
    page.on("request", (r) => {
      if (r.method() === "POST" && r.url().endsWith("/v1/pipeline/runs")) submits.push(r.url());
    });
    await page.getByTestId("run-tab").click();
    await page.getByTestId("task-input").fill("Write a function double(x) that returns 2 * x");
    // Two clicks as a person's double click lands them: the second once the first run was
    // accepted (a fast server answers within the double click).
    await page.getByTestId("submit").click();
    await page.getByTestId("run-id").filter({ hasNotText: runId }).waitFor();
    await page.getByTestId("submit").click({ force: true });
    await page.getByTestId("cancel").click();
    await page.getByTestId("run-state").filter({ hasText: "cancelled" }).waitFor({ timeout: RUN_TIMEOUT_MS });
    expect(submits.length === 1, `${submits.length} runs submitted by one double click`);

    expect(pageErrors.length === 0, `errors in the page: ${pageErrors.join("; ")}`);
    console.log(JSON.stringify({ ok: true, run: runId, verdict, findings: findings.length, tests: testRows, cards }));
  } catch (e) {
    await shot("failure").catch(() => {});
    console.error(e.stack || String(e));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
