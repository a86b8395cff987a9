// isbot (the maintained user-agent list, UA only) on a corpus part: per label, the share of
// requests it flags as bots. The anchor Signalbox is compared with.
//
//   node tests/corpus/isbot-report.mjs [target/corpus/heldout]

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isbot } from 'isbot';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const part = path.resolve(root, process.argv[2] ?? 'target/corpus/heldout');
const lines = (file) => readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
const labels = new Map(lines(`${part}.labels.jsonl`).map((l) => [l.id, l.label]));
const rows = new Map();
for (const r of lines(`${part}.requests.jsonl`)) {
  const ua = r.headers.find(([n]) => n === 'user-agent')?.[1] ?? '';
  const label = labels.get(r.id) ?? '(none)';
  const row = rows.get(label) ?? { n: 0, flagged: 0 };
  row.n += 1;
  if (isbot(ua)) row.flagged += 1;
  rows.set(label, row);
}
console.log(`isbot on ${path.relative(root, part)}:`);
console.log(`${'label'.padEnd(12)} ${'n'.padStart(7)} ${'flagged'.padStart(9)} ${'share'.padStart(9)}`);
for (const [label, { n, flagged }] of [...rows].sort()) {
  console.log(`${label.padEnd(12)} ${String(n).padStart(7)} ${String(flagged).padStart(9)} ${(flagged * 100 / n).toFixed(2).padStart(8)}%`);
}
