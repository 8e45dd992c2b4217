#!/usr/bin/env node
// Compile anchors/contracts/AuditAnchor.sol with the pinned solc-js (node_modules/solc) through the
// standard-JSON interface, EVM version and optimizer pinned, and write a deterministic artifact.
//
//   node scripts/compile_contract.js            write anchors/contracts/AuditAnchor.json
//   node scripts/compile_contract.js --check    exit 1 if the committed artifact differs from a fresh compile
//   node scripts/compile_contract.js --out P    write the artifact to P instead
//
// Output: JSON with recursively sorted keys, 2-space indent, trailing newline. Compiler warnings go
// to stderr; any compiler error exits 2.
'use strict';

const fs = require('fs');
const path = require('path');

const ROOT = path.resolve(__dirname, '..');
const SOURCE_NAME = 'anchors/contracts/AuditAnchor.sol';
const CONTRACT_NAME = 'AuditAnchor';
const DEFAULT_OUT = path.join(ROOT, 'anchors/contracts/AuditAnchor.json');
const PINNED_SOLC = '0.8.37';

const SETTINGS = {
  evmVersion: 'cancun',
  optimizer: { enabled: true, runs: 200 },
  metadata: { bytecodeHash: 'ipfs' },
};

function parseArgs(argv) {
  const args = { check: false, out: DEFAULT_OUT };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--check') args.check = true;
    else if (a === '--out') args.out = path.resolve(argv[++i]);
    else {
      process.stderr.write(`unknown argument: ${a}\nusage: compile_contract.js [--check] [--out PATH]\n`);
      process.exit(64);
    }
  }
  return args;
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === 'object') {
    const out = {};
    for (const k of Object.keys(value).sort()) out[k] = sortKeys(value[k]);
    return out;
  }
  return value;
}

function compile() {
  const solc = require(path.join(ROOT, 'node_modules/solc'));
  const version = solc.version(); // e.g. "0.8.37+commit.xxxxxxxx.Emscripten.clang"
  if (!version.startsWith(PINNED_SOLC + '+')) {
    process.stderr.write(`solc ${version} is not the pinned ${PINNED_SOLC}; run npm ci\n`);
    process.exit(3);
  }
  const source = fs.readFileSync(path.join(ROOT, SOURCE_NAME), 'utf8');
  const input = {
    language: 'Solidity',
    sources: { [SOURCE_NAME]: { content: source } },
    settings: {
      ...SETTINGS,
      outputSelection: {
        '*': {
          '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object', 'evm.deployedBytecode.immutableReferences'],
        },
      },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  let failed = false;
  for (const e of output.errors || []) {
    process.stderr.write((e.formattedMessage || e.message) + '\n');
    if (e.severity === 'error') failed = true;
  }
  if (failed) process.exit(2);
  const c = output.contracts[SOURCE_NAME][CONTRACT_NAME];
  // Byte ranges of deployedBytecode that the constructor fills with immutables (masked when a
  // caller compares on-chain code with the artifact).
  const immutableRanges = [];
  for (const refs of Object.values(c.evm.deployedBytecode.immutableReferences || {})) {
    for (const r of refs) immutableRanges.push({ start: r.start, length: r.length });
  }
  immutableRanges.sort((a, b) => a.start - b.start);
  const artifact = {
    contractName: CONTRACT_NAME,
    sourceName: SOURCE_NAME,
    abi: c.abi,
    bytecode: '0x' + c.evm.bytecode.object,
    deployedBytecode: '0x' + c.evm.deployedBytecode.object,
    immutableRanges: immutableRanges,
    compiler: { name: 'solc', version: version },
    settings: SETTINGS,
  };
  return JSON.stringify(sortKeys(artifact), null, 2) + '\n';
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.check) {
    let current = null;
    try {
      current = fs.readFileSync(args.out, 'utf8');
    } catch (e) {
      process.stderr.write(`${path.relative(ROOT, args.out)}: missing (${e.code})\n`);
      process.exit(1);
    }
    const fresh = compile();
    if (current !== fresh) {
      process.stderr.write(
        `${path.relative(ROOT, args.out)} differs from a fresh compile of ${SOURCE_NAME}; ` +
          'run: node scripts/compile_contract.js\n'
      );
      process.exit(1);
    }
    process.stdout.write(`${path.relative(ROOT, args.out)} matches a fresh compile\n`);
    return;
  }
  const fresh = compile();
  fs.mkdirSync(path.dirname(args.out), { recursive: true });
  fs.writeFileSync(args.out, fresh);
  process.stdout.write(`wrote ${path.relative(ROOT, args.out) || args.out}\n`);
}

main();
