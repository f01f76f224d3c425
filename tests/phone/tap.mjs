#!/usr/bin/env node
// Plays the user's phone: opens the development OP's approval page in headless
// Chromium at an iPhone-sized viewport, waits for the card that shows the given
// binding message, taps Approve or Deny, waits for the page's confirmation and
// saves a screenshot. Prints one JSON line; exits non-zero on any failure.
//
//   node tests/phone/tap.mjs --url http://127.0.0.1:9400/ --binding "Deploy payments to prod" \
//     --action approve --screenshot /tmp/after.png [--pending-screenshot /tmp/before.png] \
//     [--timeout-ms 20000] [--scale 3] [--chromium /usr/bin/chromium]
//
// Uses the system Chromium (Debian package `chromium`); never downloads a browser.

import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

const started = Date.now();
let phase = "start";

function finish(code, fields) {
  process.stdout.write(
    JSON.stringify({ ok: code === 0, phase, elapsed_ms: Date.now() - started, ...fields }) + "\n",
  );
  process.exitCode = code;
}

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      url: { type: "string" },
      binding: { type: "string" },
      action: { type: "string" },
      screenshot: { type: "string" },
      "pending-screenshot": { type: "string" },
      "timeout-ms": { type: "string", default: "20000" },
      scale: { type: "string", default: "3" },
      chromium: { type: "string", default: "/usr/bin/chromium" },
    },
    strict: true,
  }));
} catch (e) {
  finish(2, { error: `bad arguments: ${e.message}` });
  process.exit();
}
const missing = ["url", "binding", "action", "screenshot"].filter((k) => !opts[k]);
if (missing.length || !["approve", "deny"].includes(opts.action)) {
  finish(2, {
    error:
      "usage: tap.mjs --url URL --binding TEXT --action approve|deny --screenshot PNG " +
      "[--pending-screenshot PNG] [--timeout-ms N] [--scale N] [--chromium PATH]",
  });
  process.exit();
}
const timeout = Number(opts["timeout-ms"]);
const expected = opts.action === "approve" ? "approved" : "denied";
if (!existsSync(opts.chromium)) {
  finish(3, {
    error: `${opts.chromium} not found: install the Debian package chromium (apt-get install -y chromium)`,
  });
  process.exit();
}

// Hard stop: whatever hangs, the script ends (the browser dies with it).
const watchdog = setTimeout(() => {
  finish(4, { error: `gave up after ${timeout + 20000} ms (phase ${phase})` });
  process.exit(4);
}, timeout + 20000);
watchdog.unref();

const { chromium } = await import("playwright-core");
const userDataDir = mkdtempSync(join(tmpdir(), "ciba-gate-phone-"));
let context;
try {
  phase = "launch";
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: opts.chromium,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    timeout: 30000,
    // iPhone-like: 390×844 CSS pixels at 3x (--scale), touch, mobile viewport meta honoured.
    viewport: { width: 390, height: 844 },
    screen: { width: 390, height: 844 },
    deviceScaleFactor: Number(opts.scale),
    isMobile: true,
    hasTouch: true,
    locale: "en-US",
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(timeout);

  phase = "open";
  const resp = await page.goto(opts.url, { waitUntil: "domcontentloaded", timeout });
  if (!resp || !resp.ok()) {
    throw new Error(`GET ${opts.url} answered ${resp ? resp.status() : "nothing"}`);
  }

  // The card whose binding message is exactly the expected text. The page
  // re-renders its list every ~1.5 s; locators re-resolve, so that is fine.
  phase = "find-card";
  const exact = new RegExp(`^\\s*${opts.binding.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\s*$`);
  const cards = page
    .locator("article[data-id]")
    .filter({ has: page.locator(".bm", { hasText: exact }) });
  await cards.first().waitFor({ state: "visible", timeout });
  const matching = await cards.count();
  const card = cards.first();
  const id = await card.getAttribute("data-id");
  const cardText = (await card.innerText()).replace(/\s+/g, " ").trim();
  if (opts["pending-screenshot"]) {
    await page.screenshot({ path: opts["pending-screenshot"] });
  }

  phase = "tap";
  const button = page.locator(
    `button[data-action="${opts.action}"][data-id="${id.replace(/["\\]/g, "\\$&")}"]`,
  );
  await button.tap({ timeout });

  phase = "confirmation";
  const confirmation = page.locator("#confirmation[data-result]");
  await confirmation.waitFor({ state: "visible", timeout });
  const result = await confirmation.getAttribute("data-result");
  const confirmationText = (await confirmation.innerText()).trim();

  phase = "screenshot";
  await page.screenshot({ path: opts.screenshot });

  phase = "done";
  if (result !== expected) {
    finish(1, {
      error: `page confirmed ${result}, expected ${expected}`,
      result,
      confirmation: confirmationText,
      id,
    });
  } else {
    finish(0, {
      result,
      confirmation: confirmationText,
      id,
      binding_message: opts.binding,
      matching_cards: matching,
      card: cardText,
      screenshot: opts.screenshot,
    });
  }
} catch (e) {
  finish(1, { error: String(e && e.message ? e.message : e).split("\n")[0] });
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
  clearTimeout(watchdog);
}
