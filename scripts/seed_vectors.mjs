// Test vectors for the seed's cohort assignment, computed by the seed's own
// JavaScript (assignCohort, verbatim logic) under Node's Web Crypto:
//   node scripts/seed_vectors.mjs > tests/vectors/seed_assignment.json
const experiments = [
  { name: 'extended-title-ttl', cohorts: [{ name: 'control', weight: 0.5 }, { name: 'treatment', weight: 0.5 }] },
  { name: 'three-way', cohorts: [{ name: 'a', weight: 0.2 }, { name: 'b', weight: 0.3 }, { name: 'c', weight: 0.5 }] },
  { name: 'tenths', cohorts: [{ name: 'x', weight: 0.1 }, { name: 'y', weight: 0.7 }, { name: 'z', weight: 0.2 }] },
];
async function assignCohort(cacheKey, experiment) {
  const hash = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(cacheKey + experiment.name));
  const hashValue = new Uint8Array(hash)[0] / 255;
  let cumWeight = 0;
  for (const cohort of experiment.cohorts) {
    cumWeight += cohort.weight;
    if (hashValue < cumWeight) return { cohort: cohort.name, byte: new Uint8Array(hash)[0] };
  }
  return { cohort: experiment.cohorts[0].name, byte: new Uint8Array(hash)[0] };
}
const keys = ['search:title:q=hamlet', 'search:isbn:9780141439600', 'search:author:q=brontë', '', 'ключ',
  'search:title:q=<script>', 'a'.repeat(300)];
for (let i = 0; i < 200; i++) keys.push(`search:title:q=book-${i}`);
const out = [];
for (const e of experiments) {
  for (const k of keys) {
    const r = await assignCohort(k, e);
    out.push({ experiment: e.name, weights: e.cohorts.map(c => c.weight), key: k, cohort: r.cohort,
               index: e.cohorts.findIndex(c => c.name === r.cohort), byte: r.byte });
  }
}
console.log(JSON.stringify(out, null, 1));
