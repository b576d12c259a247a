// The hub's dashboard script: dashboard/dashboard.ts (on this package's own
// client) type-checked, then bundled by esbuild into one minified classic
// script, crates/switchboard-hub/assets/dashboard.js (checked in: building
// the hub never needs Node). The output is deterministic, so
// `cargo xtask codegen --check` can rebuild it and compare.
//
//   node scripts/dashboard.mjs [--out FILE] [--no-check]
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const args = process.argv.slice(2);
const at = args.indexOf("--out");
const outfile = at >= 0 ? args[at + 1] : "../../crates/switchboard-hub/assets/dashboard.js";
if (!args.includes("--no-check")) {
  execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "dashboard"], { stdio: "inherit" });
}
await build({
  entryPoints: ["dashboard/dashboard.ts"],
  bundle: true,
  format: "iife",
  minify: true,
  target: "es2022",
  platform: "browser",
  outfile,
  legalComments: "none",
  banner: { js: "// The switchboard hub's dashboard: generated from clients/typescript/dashboard/dashboard.ts by `npm run dashboard` there; do not edit." },
  logLevel: "warning",
});
const code = readFileSync(outfile);
const gz = gzipSync(code, { level: 9 }).length;
console.log(`dashboard bundle ${outfile}: ${code.length} bytes minified, ${gz} bytes gzipped`);
