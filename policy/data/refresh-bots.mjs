// refresh-bots.mjs: build policy/examples/lists/declared-bots.json from isbot's pattern list.
//
//   node policy/data/refresh-bots.mjs           rewrite the file, then print the self-check
//   node policy/data/refresh-bots.mjs --check   exit 1 if the file on disk is not what this would write
//
// Source: the npm package `isbot` 5.2.3, licence Unlicense (public domain), pinned with its
// integrity hash in tests/corpus/package-lock.json and installed in tests/corpus/node_modules.
// isbot is data here, not code: we take its list of 206 regex source strings (`list`) and
// translate each one into our own small token language. No isbot code is shipped.
//
// Token language (what the Rust scanner implements). A user agent is matched as its raw bytes,
// trimmed of surrounding ASCII whitespace, ASCII case-insensitively. An entry matches when
// `token` occurs at a position where every flag that is present holds:
//   token            a literal substring (non-empty, lower-case).
//   at_start         the token starts at byte 0.
//   word_start       the byte before the token is not an ASCII letter or digit (or there is none).
//   word_end         the byte after the token is not an ASCII letter or digit (or there is none).
//   digit_after      the byte after the token is an ASCII digit.
//   not_preceded_by  none of these literals ends exactly where the token starts.
//   not_followed_by  none of these literals starts exactly where the token ends.
// word_start/word_end treat `_` as a boundary. That is exactly isbot's `(?:\b|_)`, and for a
// plain regex `\b` it is very slightly looser (`perl_x` matches `\bperl\b` here, not in isbot).
//
// Translation expands escapes, `\s` (to one space), small classes like `[ /]`, `(?:a|b)` groups
// and `x?` into several tokens; `(?<!a|b)` and `(?:^|[^g])` into not_preceded_by, `(?!...)` into
// not_followed_by, `^` into at_start, `\b` into word_start/word_end and a trailing `\d` into
// digit_after. Anything else (repetition, `\w`, `$`, negated classes ...) is a shape, not a token,
// and is listed under `not_translated`.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const ISBOT_VERSION = '5.2.3';
const ISBOT_RELEASED = '2026-11-09'; // `npm view isbot@5.2.3 time --json` -> "2026-11-09T11:12:25+00:00"
const corpus = fileURLToPath(new URL('../../tests/corpus/', import.meta.url));
const outFile = fileURLToPath(new URL('../examples/lists/declared-bots.json', import.meta.url));
const require = createRequire(corpus + 'package.json');
const pkg = require('isbot/package.json');
if (pkg.version !== ISBOT_VERSION) {
  throw new Error(`isbot is ${pkg.version}, expected ${ISBOT_VERSION}: update ISBOT_VERSION and ISBOT_RELEASED`);
}
const { list } = require('isbot');

// ---- translator -------------------------------------------------------------------------
class NoToken extends Error {}
const no = (why) => { throw new NoToken(why); };
const isWordChar = (c) => /[A-Za-z0-9_]/.test(c);
const product = (sets) => sets.reduce((acc, set) => acc.flatMap((a) => set.map((b) => a + b)), ['']);

// Parse a sequence up to `)` or `|` (inside a group) or the end. Nodes are { lit: [strings] }
// (alternatives for one position) or zero-width/boundary markers { k: '^' | 'b' | 'b_' | 'd' |
// 'nlb' | 'nla' | 'notpre', set }.
function parseSeq(src, i, inGroup) {
  const nodes = [];
  while (i < src.length) {
    const c = src[i];
    if (c === ')' || c === '|') { if (!inGroup) no(`top-level \`${c}\``); break; }
    if (c === '\\') {
      const e = src[i + 1];
      if (e === 's') nodes.push({ lit: [' '] });
      else if (e === 'b') nodes.push({ k: 'b' });
      else if (e === 'd') nodes.push({ k: 'd' });
      else if (/[A-Za-z0-9]/.test(e)) no(`needs a character class (\`\\${e}\`)`);
      else nodes.push({ lit: [e] });
      i += 2;
    } else if (c === '[') {
      const m = /^\[((?:\\.|[^\]\\])*)\]/.exec(src.slice(i)) || no('unclosed class');
      if (m[1][0] === '^') no(`needs a negated class (\`${m[0]}\`)`);
      const chars = [];
      for (let j = 0; j < m[1].length; j++) {
        let ch = m[1][j];
        if (ch === '\\') {
          ch = m[1][++j];
          if (ch === 's') ch = ' ';
          else if (/[A-Za-z0-9]/.test(ch)) no(`needs a character class (\`\\${ch}\` in \`${m[0]}\`)`);
        } else if (ch === '-' && j > 0 && j < m[1].length - 1) no(`needs a range (\`${m[0]}\`)`);
        chars.push(ch);
      }
      if (chars.length > 4) no(`class too large (\`${m[0]}\`)`);
      nodes.push({ lit: chars });
      i += m[0].length;
    } else if (c === '(') {
      const rest = src.slice(i);
      let m;
      if (rest.startsWith('(?:\\b|_)')) { nodes.push({ k: 'b_' }); i += 8; }
      else if ((m = /^\(\?:\^\|\[\^([^\]\\]+)\]\)/.exec(rest))) { nodes.push({ k: 'notpre', set: [...m[1]] }); i += m[0].length; }
      else if (rest.startsWith('(?<!')) { const [set, j] = parseAlts(src, i + 4); nodes.push({ k: 'nlb', set }); i = j; }
      else if (rest.startsWith('(?!')) { const [set, j] = parseAlts(src, i + 3); nodes.push({ k: 'nla', set }); i = j; }
      else if (rest.startsWith('(?:')) { const [set, j] = parseAlts(src, i + 3); nodes.push({ lit: set }); i = j; }
      else no('capturing or unknown group');
    } else if (c === '?') {
      const last = nodes[nodes.length - 1];
      if (!last || !last.lit) no('`?` after a non-literal');
      last.lit = ['', ...last.lit];
      i++;
    } else if ('*+{'.includes(c)) no(`repeats (\`${c}\`)`);
    else if (c === '.') no('needs any character (`.`)');
    else if (c === '$') no('anchored at the end (`$`)');
    else if (c === '^') { nodes.push({ k: '^' }); i++; }
    else { nodes.push({ lit: [c] }); i++; }
  }
  return [nodes, i];
}

// Parse `a|b|...)` whose alternatives are plain literals; return [strings, index after `)`].
function parseAlts(src, i) {
  const out = [];
  for (;;) {
    const [nodes, j] = parseSeq(src, i, true);
    if (nodes.some((n) => !n.lit)) no('an assertion inside a group');
    out.push(...product(nodes.map((n) => n.lit)));
    if (src[j] === ')') return [out, j + 1];
    if (src[j] !== '|') no('unclosed group');
    i = j + 1;
  }
}

function translate(src) {
  const nodes = parseSeq(src, 0, false)[0];
  const f = { at_start: false, word_start: false, word_end: false, digit_after: false, pre: [], fol: [] };
  while (nodes.length && !nodes[0].lit) {
    const n = nodes.shift();
    if (n.k === '^') f.at_start = true;
    else if (n.k === 'b') f.word_start = true;
    else if (n.k === 'nlb' || n.k === 'notpre') f.pre.push(...n.set);
    else no(`\`${n.k}\` at the start`);
  }
  if (nodes.length && nodes[nodes.length - 1].k === 'd') { nodes.pop(); f.digit_after = true; }
  while (!f.digit_after && nodes.length && !nodes[nodes.length - 1].lit) {
    const n = nodes.pop();
    if (n.k === 'b' || n.k === 'b_') f.word_end = true;
    else if (n.k === 'nla') f.fol.push(...n.set);
    else no(`\`${n.k}\` at the end`);
  }
  if (nodes.some((n) => !n.lit)) no('an anchor, boundary or digit in the middle');
  const tokens = product(nodes.map((n) => n.lit)).map((t) => t.toLowerCase());
  return tokens.map((token) => {
    if (!token) no('can match the empty string');
    if (f.word_start && !isWordChar(token[0])) no('`\\b` next to a non-word character');
    if (f.word_end && !isWordChar(token[token.length - 1])) no('`\\b` next to a non-word character');
    const e = { token };
    for (const k of ['at_start', 'word_start', 'word_end', 'digit_after']) if (f[k]) e[k] = true;
    if (f.pre.length) e.not_preceded_by = [...new Set(f.pre.map((s) => s.toLowerCase()))];
    if (f.fol.length) e.not_followed_by = [...new Set(f.fol.map((s) => s.toLowerCase()))];
    e.from = src;
    return e;
  });
}

// ---- matcher: exactly the semantics the Rust scanner implements ---------------------------
const isAlnum = (c) => c !== undefined && /[a-z0-9]/.test(c);
const normalise = (ua) => ua.replace(/^[\t\n\f\r ]+|[\t\n\f\r ]+$/g, '').replace(/[A-Z]/g, (c) => c.toLowerCase());
export function matches(entry, ua) {
  const s = normalise(ua);
  const t = entry.token;
  for (let p = s.indexOf(t); p !== -1; p = s.indexOf(t, p + 1)) {
    const end = p + t.length;
    if (entry.at_start && p !== 0) continue;
    if (entry.word_start && isAlnum(s[p - 1])) continue;
    if (entry.word_end && isAlnum(s[end])) continue;
    if (entry.digit_after && !/[0-9]/.test(s[end] ?? '')) continue;
    if ((entry.not_preceded_by ?? []).some((l) => p >= l.length && s.startsWith(l, p - l.length))) continue;
    if ((entry.not_followed_by ?? []).some((l) => s.startsWith(l, end))) continue;
    return true;
  }
  return false;
}

// ---- build --------------------------------------------------------------------------------
const patterns = [];
const notTranslated = [];
const bySource = new Map();
for (const src of list) {
  try {
    const entries = translate(src);
    patterns.push(...entries);
    bySource.set(src, entries);
  } catch (err) {
    if (!(err instanceof NoToken)) throw err;
    notTranslated.push({ from: src, why: `a shape, not a token: ${err.message}` });
  }
}
const line = (o) => '{ ' + Object.entries(o).map(([k, v]) =>
  `${JSON.stringify(k)}: ${Array.isArray(v) ? '[' + v.map((x) => JSON.stringify(x)).join(', ') + ']' : JSON.stringify(v)}`,
).join(', ') + ' }';
const block = (items) => items.length ? '[\n' + items.map((o) => '    ' + line(o)).join(',\n') + '\n  ]' : '[]';
const text = '{\n'
  + `  "source": ${JSON.stringify(`npm isbot ${ISBOT_VERSION} (Unlicense): its pattern list, translated by policy/data/refresh-bots.mjs`)},\n`
  + `  "as_of": ${JSON.stringify(ISBOT_RELEASED)},\n`
  + `  "patterns": ${block(patterns)},\n`
  + `  "not_translated": ${block(notTranslated)}\n}\n`;
JSON.parse(text); // must be valid JSON

if (process.argv.includes('--check')) {
  const onDisk = fs.existsSync(outFile) ? fs.readFileSync(outFile, 'utf8') : null;
  if (onDisk !== text) {
    console.error(`${outFile} is out of date: run node policy/data/refresh-bots.mjs`);
    process.exit(1);
  }
  console.log(`${outFile} is up to date`);
} else {
  fs.writeFileSync(outFile, text);
  console.log(`wrote ${outFile}`);
}

// ---- self-check: each translated pattern vs its regex, on real user agents ----------------
const humans = JSON.parse(fs.readFileSync(corpus + 'node_modules/user-agents/dist/user-agents.json', 'utf8'))
  .map((u) => u.userAgent);
const crawlers = JSON.parse(fs.readFileSync(corpus + 'node_modules/crawler-user-agents/crawler-user-agents.json', 'utf8'))
  .flatMap((c) => c.instances ?? []);
const sample = [...humans, ...crawlers];
let total = 0;
for (const [src, entries] of bySource) {
  const re = new RegExp(src, 'i');
  const bad = sample.filter((ua) => re.test(ua) !== entries.some((e) => matches(e, ua)));
  total += bad.length;
  if (bad.length) {
    const ex = bad.slice(0, 2).map((ua) => `${re.test(ua) ? 'regex only' : 'tokens only'}: ${JSON.stringify(ua)}`);
    console.log(`  ${JSON.stringify(src)}: ${bad.length} disagreement(s)\n    ${ex.join('\n    ')}`);
  }
}
console.log(`${list.length} isbot patterns: ${bySource.size} translated into ${patterns.length} tokens, ${notTranslated.length} not translated`);
console.log(`self-check on ${humans.length} browser UAs + ${crawlers.length} crawler instances: ${total} disagreement(s) in total`);
const whole = new RegExp(list.join('|'), 'i');
const ours = (ua) => patterns.some((e) => matches(e, ua));
for (const [name, uas] of [['browser UAs', humans], ['crawler instances', crawlers]]) {
  console.log(`  ${name}: whole isbot list flags ${uas.filter((ua) => whole.test(ua)).length}/${uas.length}, `
    + `our tokens flag ${uas.filter(ours).length}/${uas.length}`);
}
