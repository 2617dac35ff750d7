//! The fuzzer's randomness and mutations: a seeded PRNG (so every run is
//! reproducible from its seed) and byte-level plus frame-aware mutations.

/// SplitMix64: tiny, fast, and good enough to drive mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// How a target's input is cut into units, so a mutation inside one message can
/// keep every length word right (otherwise nearly every mutant dies in framing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Tag byte, i32 length (counting itself), body: frontend and backend messages.
    Tagged,
    /// i32 length (counting itself), body: startup-phase packets.
    Untagged,
    /// One message body: byte-level mutations only.
    Raw,
}

/// Inputs grow no larger than this: bigger inputs only slow the loop down, and
/// length words (not sizes) are what reach the limits.
pub const MAX_INPUT: usize = 8 * 1024;

const INTERESTING_U8: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, b'\0', b'S', b'P', b'=', b',', b'@'];
const INTERESTING_I16: &[i16] = &[-32768, -1, 0, 1, 2, 255, 256, 0x7fff];
const INTERESTING_I32: &[i32] = &[
    i32::MIN,
    -2,
    -1,
    0,
    1,
    3,
    4,
    5,
    8,
    9,
    16,
    255,
    256,
    10_000,
    10_001,
    65_535,
    65_536,
    65_539,
    0x3fff_ffff,
    0x4000_0000,
    i32::MAX,
];

/// Mutates `data` in place with 1–4 stacked mutations. `other` is another corpus
/// entry for splices; `dict` holds tokens of the target's grammar.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, framing: Framing, other: &[u8], dict: &[&[u8]]) {
    if framing != Framing::Raw && rng.chance(2) {
        let tagged = framing == Framing::Tagged;
        let (mut units, tail) = split_units(data, tagged);
        if !units.is_empty() {
            mutate_units(rng, &mut units, tagged, other, dict);
            *data = join_units(&units, tagged);
            data.extend_from_slice(&tail);
            data.truncate(MAX_INPUT);
            return;
        }
    }
    for _ in 0..1 + rng.below(4) {
        mutate_bytes(rng, data, other, dict);
    }
    data.truncate(MAX_INPUT);
}

/// One framed message or packet: the tag (0 when untagged) and the body.
type Unit = (u8, Vec<u8>);

/// Cuts `data` into whole units; bytes after the first malformed one are the tail.
fn split_units(data: &[u8], tagged: bool) -> (Vec<Unit>, Vec<u8>) {
    let head = if tagged { 5 } else { 4 };
    let mut units = Vec::new();
    let mut rest = data;
    while rest.len() >= head {
        let at = head - 4;
        let len = i32::from_be_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
        let Ok(len) = usize::try_from(len) else { break };
        if len < 4 || rest.len() < at + len {
            break;
        }
        let tag = if tagged { rest[0] } else { 0 };
        units.push((tag, rest[head..at + len].to_vec()));
        rest = &rest[at + len..];
    }
    (units, rest.to_vec())
}

fn join_units(units: &[Unit], tagged: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, body) in units {
        if tagged {
            out.push(*tag);
        }
        out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(body);
    }
    out
}

fn mutate_units(rng: &mut Rng, units: &mut Vec<Unit>, tagged: bool, other: &[u8], dict: &[&[u8]]) {
    let i = rng.below(units.len());
    match rng.below(8) {
        0 => {
            units.remove(i);
        }
        1 => {
            let copy = units[i].clone();
            units.insert(rng.below(units.len() + 1), copy);
        }
        2 => {
            let j = rng.below(units.len());
            units.swap(i, j);
        }
        3 => {
            // A whole message from another input, at a random place in this one.
            let (theirs, _) = split_units(other, tagged);
            if !theirs.is_empty() {
                let u = rng.pick(&theirs).clone();
                units.insert(rng.below(units.len() + 1), u);
            }
        }
        4 if tagged => units[i].0 = *rng.pick(b"QPBDECSHXdcfpiF!\0"),
        _ => {
            for _ in 0..1 + rng.below(3) {
                mutate_bytes(rng, &mut units[i].1, other, dict);
            }
        }
    }
}

/// Overwrites 4 bytes at `at` (growing `data` if needed) with a big-endian i32.
fn put_i32(data: &mut Vec<u8>, at: usize, v: i32) {
    if data.len() < at + 4 {
        data.resize(at + 4, 0);
    }
    data[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8], dict: &[&[u8]]) {
    if data.is_empty() {
        data.push(*rng.pick(INTERESTING_U8));
        return;
    }
    let n = data.len();
    let at = rng.below(n);
    match rng.below(14) {
        0 => data[at] ^= 1 << rng.below(8),
        1 => data[at] = *rng.pick(INTERESTING_U8),
        2 => data[at] = rng.next() as u8,
        3 => data[at] = data[at].wrapping_add(rng.below(9) as u8).wrapping_sub(4),
        4 => {
            let v = *rng.pick(INTERESTING_I16);
            if n >= 2 {
                let at = rng.below(n - 1);
                data[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
        5 => put_i32(data, at, *rng.pick(INTERESTING_I32)),
        6 => {
            // A length word that is right, or off by a little, for the bytes after it.
            let right = (n - at) as i64 + rng.below(2) as i64 * -4;
            let delta = rng.below(5) as i64 - 2;
            put_i32(data, at, (right + delta) as i32);
        }
        7 => data.truncate(at),
        8 => {
            let end = (at + 1 + rng.below(16)).min(n);
            data.drain(at..end);
        }
        9 => {
            let count = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..count).map(|_| rng.next() as u8).collect();
            data.splice(at..at, bytes);
        }
        10 => {
            // Duplicate a chunk of this input somewhere else in it.
            let len = 1 + rng.below((n - at).min(64));
            let chunk = data[at..at + len].to_vec();
            let to = rng.below(n + 1);
            data.splice(to..to, chunk);
        }
        11 if !other.is_empty() => {
            // Splice: this input's head, another input's tail.
            let from = rng.below(other.len());
            data.truncate(at);
            data.extend_from_slice(&other[from..]);
        }
        12 if !dict.is_empty() => {
            let token = *rng.pick(dict);
            if rng.chance(2) {
                data.splice(at..at, token.iter().copied());
            } else {
                let end = (at + token.len()).min(n);
                data.splice(at..end, token.iter().copied());
            }
        }
        _ => data.insert(at, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_round_trip_and_keep_the_tail() {
        let mut data = vec![b'Q', 0, 0, 0, 6, b'x', 0, b'S', 0, 0, 0, 4];
        data.extend_from_slice(&[b'B', 0xff]);
        let (units, tail) = split_units(&data, true);
        assert_eq!(units, vec![(b'Q', b"x\0".to_vec()), (b'S', vec![])]);
        let mut again = join_units(&units, true);
        again.extend_from_slice(&tail);
        assert_eq!(again, data);
    }

    #[test]
    fn mutation_is_deterministic_and_bounded() {
        let run = || {
            let mut rng = Rng::new(7);
            let mut d = b"\0\0\0\x08\x04\xd2\x16\x2f".to_vec();
            for _ in 0..2000 {
                mutate(
                    &mut rng,
                    &mut d,
                    Framing::Untagged,
                    b"user\0x\0",
                    &[b"user\0"],
                );
                assert!(d.len() <= MAX_INPUT);
            }
            d
        };
        assert_eq!(run(), run());
    }
}
