// The browser build: one minified, tree-shaken ESM file, dist/browser/switchboard.min.js,
// and its size (raw, and gzipped) printed and written to dist/browser/size.json.
import { build } from "esbuild";
import { readFileSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const outfile = "dist/browser/switchboard.min.js";
await build({
  entryPoints: ["src/index.ts"],
  bundle: true,
  format: "esm",
  minify: true,
  target: "es2022",
  platform: "browser",
  outfile,
  legalComments: "none",
});
const code = readFileSync(outfile);
const size = { file: outfile, bytes: code.length, gzip_bytes: gzipSync(code, { level: 9 }).length };
writeFileSync("dist/browser/size.json", JSON.stringify(size) + "\n");
console.log(`browser bundle ${outfile}: ${(size.bytes / 1024).toFixed(1)} KiB minified, ${(size.gzip_bytes / 1024).toFixed(1)} KiB gzipped`);
