//! A bounded, deterministic mutation fuzzer of the layer applier, for the
//! normal test suite (the open-ended one is the cargo-fuzz target in
//! `plugins/diff/fuzz/`). It mutates a seed corpus of valid and hostile
//! layers (header fields with the checksum fixed up or not, bit flips,
//! truncation, blocks spliced in from other layers) and applies each result,
//! in both whiteout forms, onto the root of a sandbox, in a thread with a
//! watchdog. Every case must return (Ok or Err) without panicking or hanging,
//! and leave everything outside the root as it was: the check is
//! `sandbox::apply_and_check`, the same as the cargo-fuzz target's.
//!
//! `CRATED_APPLY_FUZZ_ITERATIONS` and `CRATED_APPLY_FUZZ_SEED` change the run;
//! a failure names its seed and iteration, and writes the failing layer to
//! the temporary directory. `CRATED_APPLY_FUZZ_CORPUS_OUT=<dir>` also writes
//! the seed corpus there (the cargo-fuzz target's starting corpus).
//! Runs as root (ownership, device nodes, trusted xattrs).

mod sandbox;

use std::{sync::mpsc, time::Duration};

use crated_plugin_diff::apply::Whiteouts;
use sandbox::{apply_and_check, corpus, Sandbox};

/// How long one case may take before it counts as a hang: far above the few
/// milliseconds a case takes in a debug build on a loaded machine.
const WATCHDOG: Duration = Duration::from_secs(60);

/// A small deterministic PRNG (xorshift64*), so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Header fields of a ustar/GNU header: (offset, length).
const NAME: (usize, usize) = (0, 100);
const MODE: (usize, usize) = (100, 8);
const UID: (usize, usize) = (108, 8);
const SIZE: (usize, usize) = (124, 12);
const MTIME: (usize, usize) = (136, 12);
const TYPEFLAG: (usize, usize) = (156, 1);
const LINKNAME: (usize, usize) = (157, 100);
const DEVMAJOR: (usize, usize) = (329, 8);
const PREFIX: (usize, usize) = (345, 155);
/// GNU: the first sparse chunk's offset, and the "is extended" flag.
const GNU_SPARSE0: (usize, usize) = (386, 12);
const GNU_ISEXTENDED: (usize, usize) = (482, 1);

/// Every type flag tar knows, and a few it does not.
const TYPEFLAGS: &[u8] = b"\x0001234567gxLKSDMNVAz";

/// Path pieces that aim at the sentinels or at the applier's special cases.
const TOKENS: &[&str] = &[
    "../",
    "/",
    "./",
    "..",
    ".wh.",
    ".wh..wh..opq",
    "sentinel",
    "outside/",
    "secret",
    "up/",
    "evil/",
    "a/",
    "x",
    "\0",
    "//",
];

/// A numeric field: octal of some interesting value, or base-256.
fn number(rng: &mut Rng, len: usize) -> Vec<u8> {
    let values = [0u64, 1, 511, 512, 513, 0o7777, 0o100644, u32::MAX as u64, 1 << 33, u64::MAX, rng.next()];
    let v = *rng.pick(&values);
    if rng.below(4) == 0 {
        // Base-256: the high bit of the first byte set.
        let mut out = vec![0u8; len];
        out[0] = 0x80 | (rng.below(2) as u8) << 6;
        let bytes = v.to_be_bytes();
        let n = bytes.len().min(len - 1);
        out[len - n..].copy_from_slice(&bytes[8 - n..]);
        out
    } else {
        let s = format!("{v:o}");
        let mut out = s.into_bytes();
        out.truncate(len);
        if out.len() < len {
            out.push(if rng.below(2) == 0 { 0 } else { b' ' });
        }
        out
    }
}

/// Mutates one header block in place; the checksum is recomputed unless
/// `keep_checksum` (then the parser should refuse the header).
fn mutate_header(rng: &mut Rng, t: &mut [u8], block: usize, keep_checksum: bool) {
    let b = block * 512;
    let fields = [NAME, MODE, UID, SIZE, MTIME, TYPEFLAG, LINKNAME, DEVMAJOR, PREFIX, GNU_SPARSE0, GNU_ISEXTENDED];
    let (start, len) = *rng.pick(&fields);
    let field = &mut t[b + start..b + start + len];
    match (start, len) {
        TYPEFLAG => field[0] = *rng.pick(TYPEFLAGS),
        GNU_ISEXTENDED => field[0] = rng.below(2) as u8,
        NAME | LINKNAME | PREFIX => {
            // Splice tokens into the name at a random place.
            let mut name: Vec<u8> = field.iter().copied().take_while(|&c| c != 0).collect();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(name.len() + 1);
                let token = rng.pick(TOKENS).as_bytes();
                name.splice(at..at, token.iter().copied());
            }
            if rng.below(8) == 0 {
                name = vec![b'n'; len];
            }
            name.resize(len, 0);
            field.copy_from_slice(&name[..len]);
        }
        _ => {
            let v = number(rng, len);
            field.fill(0);
            field[..v.len()].copy_from_slice(&v);
        }
    }
    if !keep_checksum {
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(&t[b..b + 512]);
        h.set_cksum();
        t[b..b + 512].copy_from_slice(h.as_bytes());
    }
}

/// One to four mutations of `tar`, some with blocks from `other`.
fn mutate(rng: &mut Rng, tar: &[u8], other: &[u8]) -> Vec<u8> {
    let mut t = tar.to_vec();
    for _ in 0..1 + rng.below(4) {
        let blocks = t.len() / 512;
        if blocks == 0 {
            break;
        }
        match rng.below(8) {
            0..=2 => {
                let block = rng.below(blocks);
                let keep_checksum = rng.below(8) == 0;
                mutate_header(rng, &mut t, block, keep_checksum);
            }
            3 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(t.len());
                    t[i] ^= 1 << rng.below(8);
                }
            }
            4 => t.truncate(rng.below(t.len())),
            5 => {
                let ob = other.len() / 512;
                if ob > 0 {
                    let src = rng.below(ob) * 512;
                    let dst = rng.below(blocks) * 512;
                    t[dst..dst + 512].copy_from_slice(&other[src..src + 512]);
                }
            }
            6 => {
                // Duplicate a block (an entry applied twice, or a header
                // where data was expected).
                let src = rng.below(blocks) * 512;
                let block = t[src..src + 512].to_vec();
                let dst = rng.below(blocks + 1) * 512;
                t.splice(dst..dst, block);
            }
            _ => {
                // Append another layer's entries after this one's (its end
                // blocks dropped), so that hostile entries meet valid ones.
                let end = t.len().saturating_sub(1024) / 512 * 512;
                t.truncate(end);
                t.extend_from_slice(other);
            }
        }
    }
    t
}

/// Runs one case in a thread and waits for it at most [`WATCHDOG`]. A panic
/// or a hang fails the test; so does an escape.
fn run_case(sandbox: &std::sync::Arc<Sandbox>, tar: Vec<u8>, whiteouts: Whiteouts, what: &str) {
    let (done, wait) = mpsc::channel();
    let s = sandbox.clone();
    let tar_for_case = tar.clone();
    let worker = std::thread::spawn(move || {
        let outcome = apply_and_check(&s, &tar_for_case, whiteouts);
        let _ = done.send(());
        outcome
    });
    let save = |why: &str| {
        let path = std::env::temp_dir().join(format!("crated-apply-fuzz-{}.tar", std::process::id()));
        std::fs::write(&path, &tar).unwrap();
        format!("{what} ({whiteouts:?}) {why}; the layer is in {}", path.display())
    };
    if wait.recv_timeout(WATCHDOG).is_err() && !worker.is_finished() {
        // The worker is left running: the process is about to fail anyway.
        panic!("{}", save("did not return (hang)"));
    }
    match worker.join() {
        Err(_) => panic!("{}", save("panicked")),
        Ok(Err(escape)) => panic!("{}: {escape}", save("escaped the root")),
        Ok(Ok(_applied_or_refused)) => {}
    }
    sandbox.reset_root();
}

#[test]
fn seed_corpus_never_escapes() {
    let sandbox = std::sync::Arc::new(Sandbox::new());
    let seeds = corpus(sandbox.host_path());
    if let Ok(dir) = std::env::var("CRATED_APPLY_FUZZ_CORPUS_OUT") {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, (_, tar)) in seeds.iter().enumerate() {
            std::fs::write(std::path::Path::new(&dir).join(format!("seed-{i:02}.tar")), tar).unwrap();
        }
    }
    for (name, tar) in &seeds {
        for wh in [Whiteouts::Remove, Whiteouts::Overlay] {
            run_case(&sandbox, tar.clone(), wh, &format!("seed {name:?}"));
        }
    }
}

#[test]
fn valid_seed_applies() {
    // The corpus' first layer is valid: the applier must take it, or the
    // fuzzer would only ever exercise error paths.
    let sandbox = Sandbox::new();
    let (_, valid) = &corpus(sandbox.host_path())[0];
    sandbox.apply(valid, Whiteouts::Remove).unwrap();
    assert_eq!(std::fs::read(sandbox.root().join("a/h")).unwrap(), b"data");
    assert_eq!(std::fs::read(sandbox.root().join("o/keep")).unwrap(), b"k");
    sandbox.check_outside_unchanged().unwrap();
}

#[test]
fn mutated_layers_never_escape_panic_or_hang() {
    let iterations: usize =
        std::env::var("CRATED_APPLY_FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(4000);
    let seed: u64 = std::env::var("CRATED_APPLY_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_cafe);
    let sandbox = std::sync::Arc::new(Sandbox::new());
    let seeds: Vec<Vec<u8>> = corpus(sandbox.host_path()).into_iter().map(|(_, t)| t).collect();
    let mut rng = Rng(seed | 1);
    for i in 0..iterations {
        let base = rng.pick(&seeds);
        let other = rng.pick(&seeds);
        let tar = mutate(&mut rng, base, other);
        let wh = if rng.below(2) == 0 { Whiteouts::Remove } else { Whiteouts::Overlay };
        run_case(&sandbox, tar, wh, &format!("iteration {i} (seed {seed:#x})"));
    }
}
