#!/usr/bin/env node
// Copies ABI + creation/runtime bytecode of the deployable contracts from forge's out/ into abi/,
// which the Rust crate reads with alloy's `sol!` (so `cargo build` never needs forge).
//   node scripts/export-abi.js          write abi/*.json
//   node scripts/export-abi.js --check  exit 1 if abi/ differs from what out/ would produce
'use strict';
const fs = require('fs');
const path = require('path');
const root = path.join(__dirname, '..');
const CONTRACTS = ['Settlement', 'AdapterRegistry', 'DatanetRegistry'];
const check = process.argv.includes('--check');
let stale = [];
fs.mkdirSync(path.join(root, 'abi'), { recursive: true });
for (const name of CONTRACTS) {
  const art = JSON.parse(fs.readFileSync(path.join(root, 'out', `${name}.sol`, `${name}.json`), 'utf8'));
  const slim = {
    contractName: name,
    abi: art.abi,
    bytecode: { object: art.bytecode.object },
    deployedBytecode: { object: art.deployedBytecode.object },
  };
  const text = JSON.stringify(slim, null, 1) + '\n';
  const dest = path.join(root, 'abi', `${name}.json`);
  if (check) {
    const cur = fs.existsSync(dest) ? fs.readFileSync(dest, 'utf8') : '';
    if (cur !== text) stale.push(dest);
  } else {
    fs.writeFileSync(dest, text);
  }
}
if (stale.length) {
  console.error('contracts/abi is stale (run: node contracts/scripts/export-abi.js):\n  ' + stale.join('\n  '));
  process.exit(1);
}
