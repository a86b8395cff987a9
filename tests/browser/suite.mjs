// Runs the suite's test files in this one Node process, in the order given (tests/browser/run
// passes them in SUITE_FILES): one process whose id the runner knows, browsers one after the
// other, and a deadline for the whole (SUITE_DEADLINE_S). Each file also runs alone with
// `node --test FILE` (SUITE_CONFIG set).
const files = (process.env.SUITE_FILES ?? '').split(/\s+/).filter(Boolean);
if (files.length === 0) throw new Error('SUITE_FILES is empty: run the suite with tests/browser/run');
const deadline = Number(process.env.SUITE_DEADLINE_S ?? 900);
setTimeout(() => {
  console.error(`browser suite: not finished within ${deadline} s; giving up (tests/browser/run stops the browsers)`);
  process.exit(124);
}, deadline * 1000).unref();
for (const file of files) await import(file);
