// The operations console in a real browser: headless Chromium from Debian,
// driven by playwright-core. Run by tests/console.rs against a fresh
// `healthcode up --fault-injection`; every check throws on failure.
import { execFile, execFileSync } from "node:child_process";
import { promisify } from "node:util";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const { ADMIN_ADDR, GRPC_ADDR, OPS_TOKEN, HEALTHCODE_BIN, DATA_DIR, ARTIFACTS } = process.env;
const base = `http://${ADMIN_ADDR}`;
mkdirSync(ARTIFACTS, { recursive: true });

function check(ok, what) {
  if (!ok) throw new Error(`console check failed: ${what}`);
  console.log(`ok: ${what}`);
}

// The CLI verbs a person would use, against the same server.
const target = () => ["--addr", `http://${GRPC_ADDR}`, "--credentials-dir", join(DATA_DIR, "credentials")];
function hc(...args) {
  return execFileSync(HEALTHCODE_BIN, [...args, ...target()], { encoding: "utf8" });
}
const hcInBackground = promisify(execFile);

async function storeFault(state) {
  const r = await fetch(`${base}/faults/store/${state}`, { method: "POST", headers: { authorization: `Bearer ${OPS_TOKEN}` } });
  check(r.ok, `store ${state} (HTTP ${r.status})`);
}

const number = (text) => Number(String(text).replace(/[^0-9.]/g, "") || "0");

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  const page = await context.newPage();

  // Without a session: the sign-in page, never data.
  await page.goto(`${base}/console`);
  check(await page.locator("#sign-in").isVisible(), "the sign-in page comes first");
  check((await page.request.get(`${base}/console/api/state`)).status() === 401, "no data without a session");
  await page.fill("#token", "not-a-token");
  await page.click("#sign-in");
  check(await page.locator("#error").isVisible(), "a wrong token is refused with a reason");

  // Sign in with the ops token.
  await page.fill("#token", OPS_TOKEN);
  await page.click("#sign-in");
  await page.waitForSelector("#ingest-total");
  const cookie = (await context.cookies()).find((c) => c.name === "healthcode_console");
  check(cookie && cookie.httpOnly && cookie.sameSite === "Strict", "the session cookie is HttpOnly and SameSite=Strict");
  await page.waitForFunction(() => document.querySelector("#updated").textContent.startsWith("updated"));

  // The numbers move while the CLI verbs are used.
  const before = number(await page.textContent("#ingest-total"));
  hc("test", "console-alice", "--outcome", "negative");
  hc("test", "console-bob", "--outcome", "positive");
  hc("scan", "console-alice", "--site", "mall-3");
  await page.waitForFunction((b) => Number(document.querySelector("#ingest-total").textContent.replace(/[^0-9]/g, "")) >= b + 3, before, {
    timeout: 15000,
  });
  check(true, "accepted events counted on the page");
  // A gate looking codes up all along, without blocking the test.
  let looking = true;
  const lookups = (async () => {
    while (looking) {
      await hcInBackground(HEALTHCODE_BIN, ["status", "console-alice", "console-bob", ...target()]).catch(() => {});
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  try {
    await page.waitForFunction(() => Number(document.querySelector("#lookup-rate").textContent.replace(/[^0-9.]/g, "")) > 0, null, {
      timeout: 15000,
    });
    check(true, "lookups per second move");
    // The color mix shows the answers: green and red both answered.
    await page.waitForFunction(
      () => [...document.querySelectorAll("#color-table tr")].filter((r) => !r.textContent.includes(" 0/s")).length >= 2,
      null,
      { timeout: 15000 },
    );
    check(true, "the color mix shows green and red answers");

    // The store fails: a banner says so and links to what to do.
    await storeFault("down");
    hc("test", "console-carol", "--outcome", "negative");
    await page.waitForSelector("[data-testid=banner-store]", { timeout: 30000 });
    const banner = page.locator("[data-testid=banner-store]");
    check((await banner.textContent()).includes("status store is failing"), "a banner appears when the store fails");
    check((await banner.locator("a").getAttribute("href")).startsWith("/console/docs/operations#degraded-modes"), "the banner links to the runbook");
    await page.screenshot({ path: join(ARTIFACTS, "console-store-down.png"), fullPage: true });
    const docs = await page.request.get(`${base}/console/docs/operations`);
    check(docs.ok() && (await docs.text()).includes('id="degraded-modes"'), "the runbook section the banner links to is served");

    await storeFault("up");
    await page.waitForSelector("[data-testid=banner-store]", { state: "detached", timeout: 45000 });
    check(true, "the banner goes when the store recovers");
  } finally {
    looking = false;
    await lookups;
  }
  await page.waitForTimeout(1500);
  await page.screenshot({ path: join(ARTIFACTS, "console.png"), fullPage: true });

  // Sign out: back to the sign-in page, and the old session reads nothing.
  await page.click("#sign-out");
  await page.waitForSelector("#sign-in");
  check((await page.request.get(`${base}/console/api/state`)).status() === 401, "signed out: no more data");
} finally {
  await browser.close();
}
console.log("console: every check passed");
