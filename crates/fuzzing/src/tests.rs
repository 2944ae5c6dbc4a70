//! Every fuzz target over its seed corpus and every crash found so far (`fuzz/regressions/`),
//! then a short, seeded mutation run from the seeds: cheap enough for every `cargo test`,
//! while coverage-guided runs are `scripts/fuzz.sh`'s.

use std::path::PathBuf;

use super::TARGETS;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Vec<u8>)> = rd
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap_or_default()))
        .collect();
    out.sort();
    out.into_iter().map(|(_, b)| b).collect()
}

/// xorshift64*: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [&[u8]; 12] = [
    b"..",
    b"/",
    b"%2e%2e",
    b"\0",
    b"\n",
    b"\xff\xfe",
    b"18446744073709551616",
    b"-1",
    b"\"",
    b"{",
    b"[",
    "\u{1F9EA}".as_bytes(),
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                let j = (i + rng.below(16)).min(b.len());
                b.drain(i..j);
            }
            2 => {
                let i = rng.below(b.len() + 1);
                let s = INTERESTING[rng.below(INTERESTING.len())];
                b.splice(i..i, s.iter().copied());
            }
            3 if !b.is_empty() => {
                let i = rng.below(b.len());
                let j = (i + rng.below(32)).min(b.len());
                let piece = b[i..j].to_vec();
                b.splice(i..i, piece);
            }
            _ => b.push(rng.next() as u8),
        }
    }
    b
}

#[test]
fn every_target_has_a_seed_corpus_and_a_cargo_fuzz_wrapper() {
    for (name, _) in TARGETS {
        let seeds = files(&fuzz_dir().join("corpus").join(name));
        assert!(!seeds.is_empty(), "fuzz/corpus/{name}/ has no seed");
        let wrapper = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(wrapper.is_file(), "{} is missing", wrapper.display());
    }
}

#[test]
fn seed_corpora_and_found_crashes_pass() {
    for (name, target) in TARGETS {
        for input in files(&fuzz_dir().join("corpus").join(name))
            .into_iter()
            .chain(files(&fuzz_dir().join("regressions").join(name)))
        {
            target(&input);
        }
    }
}

#[test]
fn a_short_mutation_run_from_the_seeds_passes() {
    for (name, target) in TARGETS {
        let seeds = files(&fuzz_dir().join("corpus").join(name));
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        for _ in 0..3000 {
            let seed = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, seed);
            target(&input);
        }
    }
}
