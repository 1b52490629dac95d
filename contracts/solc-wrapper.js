#!/usr/bin/env node
// Makes npm's solcjs look like a native `solc` binary to forge (which cannot download solc here).
// forge calls: `solc --version` and `solc --standard-json [--allow-paths ...] [--base-path ...]`
// with the standard-JSON input on stdin. We answer exactly those two and nothing else.
'use strict';
const path = require('path');
const fs = require('fs');
const solc = require(path.join(__dirname, 'node_modules', 'solc'));

const args = process.argv.slice(2);
if (args.includes('--version') || args.includes('-v')) {
  // solc's format: "solc, the solidity compiler commandline interface\nVersion: 0.8.30+commit.73712a01.Linux.g++"
  const v = solc.version().replace('.Emscripten.clang', '.Linux.g++');
  process.stdout.write('solc, the solidity compiler commandline interface\nVersion: ' + v + '\n');
  process.exit(0);
}
if (!args.includes('--standard-json')) {
  process.stderr.write('solc-wrapper: only --version and --standard-json are supported\n');
  process.exit(2);
}
let basePath = process.cwd();
const bi = args.indexOf('--base-path');
if (bi >= 0 && args[bi + 1]) basePath = args[bi + 1];
const includePaths = [];
args.forEach((a, i) => { if (a === '--include-path' && args[i + 1]) includePaths.push(args[i + 1]); });

function findImports(p) {
  for (const root of [basePath, ...includePaths, process.cwd()]) {
    const full = path.isAbsolute(p) ? p : path.join(root, p);
    if (fs.existsSync(full)) return { contents: fs.readFileSync(full, 'utf8') };
  }
  return { error: 'File not found: ' + p };
}

const chunks = [];
process.stdin.on('data', (c) => chunks.push(c));
process.stdin.on('end', () => {
  const input = Buffer.concat(chunks).toString('utf8');
  const out = solc.compile(input, { import: findImports });
  process.stdout.write(out);
});
