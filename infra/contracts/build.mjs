// Compile infra/contracts/src/*.sol with the pinned solc-js and write one artifact per contract.
//
//   node infra/contracts/build.mjs [outDir]     (default: infra/contracts/artifacts)
//
// Deterministic: fixed compiler settings, source names relative to infra/contracts, sorted keys,
// no timestamps or absolute paths, so two runs give byte-identical files (checked by
// tests/integration/test_contract_artifacts.py).
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const solc = require("solc");

const CONTRACTS_DIR = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(CONTRACTS_DIR, "..", "..");
const SRC_DIR = path.join(CONTRACTS_DIR, "src");
const NODE_MODULES = path.join(REPO_ROOT, "node_modules");
const OUT_DIR = path.resolve(process.argv[2] ?? path.join(CONTRACTS_DIR, "artifacts"));

// The contracts we ship; OpenZeppelin's own contracts get no artifact.
const SHIPPED = ["DatacoopMarket", "MockStablecoin"];

const SETTINGS = {
  evmVersion: "cancun",
  // viaIR and runs 10,000: claims and purchases run far more often than the contracts are deployed
  // (the IR pipeline saves about 2,000 gas a claim over the legacy one; see docs/payments.md).
  viaIR: true,
  optimizer: { enabled: true, runs: 10000 },
  metadata: { bytecodeHash: "ipfs" },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

function findImports(importPath) {
  const candidates = [path.join(CONTRACTS_DIR, importPath), path.join(NODE_MODULES, importPath)];
  for (const file of candidates) {
    if (fs.existsSync(file)) return { contents: fs.readFileSync(file, "utf8") };
  }
  return { error: `cannot resolve import ${importPath}; run \`npm ci\`` };
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sortKeys(value[k])]));
  }
  return value;
}

const sources = {};
for (const file of fs.readdirSync(SRC_DIR).filter((f) => f.endsWith(".sol")).sort()) {
  sources[`src/${file}`] = { content: fs.readFileSync(path.join(SRC_DIR, file), "utf8") };
}

const input = { language: "Solidity", sources, settings: SETTINGS };
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));

const problems = output.errors ?? [];
// Warnings inside OpenZeppelin (e.g. its transient-storage notice) are theirs, not ours to fix.
const ours = (p) => p.severity === "error" || !p.sourceLocation?.file?.startsWith("@openzeppelin/");
for (const p of problems.filter(ours)) console.error(p.formattedMessage ?? p.message);
if (problems.some((p) => p.severity === "error")) {
  console.error("compilation failed; fix the errors above");
  process.exit(1);
}

fs.mkdirSync(OUT_DIR, { recursive: true });
const { outputSelection: _selection, ...compilerSettings } = SETTINGS; // what the artifact records
for (const name of SHIPPED) {
  const sourceName = `src/${name}.sol`;
  const compiled = output.contracts?.[sourceName]?.[name];
  if (!compiled) {
    console.error(`contract ${name} not found in ${sourceName}`);
    process.exit(1);
  }
  const artifact = sortKeys({
    contractName: name,
    sourceName,
    abi: compiled.abi,
    bytecode: `0x${compiled.evm.bytecode.object}`,
    deployedBytecode: `0x${compiled.evm.deployedBytecode.object}`,
    compiler: { name: "solc", version: solc.version() },
    settings: compilerSettings,
  });
  fs.writeFileSync(path.join(OUT_DIR, `${name}.json`), `${JSON.stringify(artifact, null, 2)}\n`);
  console.log(`wrote ${path.relative(process.cwd(), path.join(OUT_DIR, `${name}.json`))}`);
}
