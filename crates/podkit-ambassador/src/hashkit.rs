//! Key → server placement, identical to twemproxy's for every `hash` and `distribution`.
//!
//! twemproxy's hashes are C code with C's quirks, and placement depends on them: `char` is
//! signed on x86, so bytes ≥ 0x80 are sign-extended where twemproxy reads `key[i]` as a
//! `char` (one_at_a_time, the FNV family, hsieh's 3-byte tail); its crc16 never masks its
//! accumulator to 16 bits; its `fnv1a_64` is really 32-bit FNV-1a with the 64-bit constants
//! truncated. Each function below keeps those quirks on purpose; the test suite checks every
//! combination against a real nutcracker.

use std::str::FromStr;

use md5::{Digest, Md5};

/// The `hash:` of a twemproxy pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    OneAtATime,
    Md5,
    Crc16,
    Crc32,
    Crc32a,
    Fnv1_64,
    Fnv1a64,
    Fnv1_32,
    Fnv1a32,
    Hsieh,
    Murmur,
    Jenkins,
}

impl Hash {
    pub const ALL: [Hash; 12] = [
        Hash::OneAtATime,
        Hash::Md5,
        Hash::Crc16,
        Hash::Crc32,
        Hash::Crc32a,
        Hash::Fnv1_64,
        Hash::Fnv1a64,
        Hash::Fnv1_32,
        Hash::Fnv1a32,
        Hash::Hsieh,
        Hash::Murmur,
        Hash::Jenkins,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hash::OneAtATime => "one_at_a_time",
            Hash::Md5 => "md5",
            Hash::Crc16 => "crc16",
            Hash::Crc32 => "crc32",
            Hash::Crc32a => "crc32a",
            Hash::Fnv1_64 => "fnv1_64",
            Hash::Fnv1a64 => "fnv1a_64",
            Hash::Fnv1_32 => "fnv1_32",
            Hash::Fnv1a32 => "fnv1a_32",
            Hash::Hsieh => "hsieh",
            Hash::Murmur => "murmur",
            Hash::Jenkins => "jenkins",
        }
    }

    pub fn hash(self, key: &[u8]) -> u32 {
        match self {
            Hash::OneAtATime => one_at_a_time(key),
            Hash::Md5 => md5_hash(key),
            Hash::Crc16 => crc16(key),
            Hash::Crc32 => crc32(key),
            Hash::Crc32a => crc32a(key),
            Hash::Fnv1_64 => fnv1_64(key),
            Hash::Fnv1a64 => fnv1a_64(key),
            Hash::Fnv1_32 => fnv1_32(key),
            Hash::Fnv1a32 => fnv1a_32(key),
            Hash::Hsieh => hsieh(key),
            Hash::Murmur => murmur(key),
            Hash::Jenkins => jenkins(key),
        }
    }
}

impl FromStr for Hash {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hash::ALL.into_iter().find(|h| h.name() == s).ok_or_else(|| {
            let names: Vec<_> = Hash::ALL.iter().map(|h| h.name()).collect();
            format!("unknown hash {s:?}; expected one of {}", names.join(", "))
        })
    }
}

/// A byte read as C reads a (signed, on x86) `char` and widens it to 32 bits.
fn sx(b: u8) -> u32 {
    b as i8 as i32 as u32
}

fn one_at_a_time(key: &[u8]) -> u32 {
    let mut v: u32 = 0;
    for &b in key {
        v = v.wrapping_add(sx(b));
        v = v.wrapping_add(v << 10);
        v ^= v >> 6;
    }
    v = v.wrapping_add(v << 3);
    v ^= v >> 11;
    v.wrapping_add(v << 15)
}

fn md5_hash(key: &[u8]) -> u32 {
    let d = Md5::digest(key);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

/// The CRC table of a polynomial, MSB-first (crc16, CCITT 0x1021).
const fn crc16_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 8;
        let mut j = 0;
        while j < 8 {
            c = if c & 0x8000 != 0 { (c << 1) ^ 0x1021 } else { c << 1 };
            j += 1;
        }
        t[i] = c & 0xffff;
        i += 1;
    }
    t
}

/// The reflected CRC-32 table (0xEDB88320).
const fn crc32_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut j = 0;
        while j < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
            j += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC16: [u32; 256] = crc16_table();
static CRC32: [u32; 256] = crc32_table();

fn crc16(key: &[u8]) -> u32 {
    // Deliberately not masked to 16 bits: twemproxy's accumulator is a uint32_t.
    let mut crc: u32 = 0;
    for &b in key {
        crc = (crc << 8) ^ CRC16[(((crc >> 8) ^ sx(b)) & 0xff) as usize];
    }
    crc
}

fn crc32(key: &[u8]) -> u32 {
    let mut crc: u32 = u32::MAX;
    for &b in key {
        crc = (crc >> 8) ^ CRC32[((crc ^ b as u32) & 0xff) as usize];
    }
    ((!crc) >> 16) & 0x7fff
}

fn crc32a(key: &[u8]) -> u32 {
    let mut crc: u32 = !0;
    for &b in key {
        crc = CRC32[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    crc ^ !0
}

const FNV_64_INIT: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_64_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV_32_INIT: u32 = 2_166_136_261;
const FNV_32_PRIME: u32 = 16_777_619;

fn fnv1_64(key: &[u8]) -> u32 {
    let mut h = FNV_64_INIT;
    for &b in key {
        h = h.wrapping_mul(FNV_64_PRIME);
        h ^= b as i8 as i64 as u64;
    }
    h as u32
}

fn fnv1a_64(key: &[u8]) -> u32 {
    // twemproxy truncates both constants to 32 bits and hashes in 32 bits.
    let mut h = FNV_64_INIT as u32;
    for &b in key {
        h ^= sx(b);
        h = h.wrapping_mul(FNV_64_PRIME as u32);
    }
    h
}

fn fnv1_32(key: &[u8]) -> u32 {
    let mut h = FNV_32_INIT;
    for &b in key {
        h = h.wrapping_mul(FNV_32_PRIME);
        h ^= sx(b);
    }
    h
}

fn fnv1a_32(key: &[u8]) -> u32 {
    let mut h = FNV_32_INIT;
    for &b in key {
        h ^= sx(b);
        h = h.wrapping_mul(FNV_32_PRIME);
    }
    h
}

fn hsieh(key: &[u8]) -> u32 {
    if key.is_empty() {
        return 0;
    }
    let get16 = |k: &[u8]| (k[1] as u32) << 8 | k[0] as u32;
    let mut hash: u32 = 0;
    let rem = key.len() & 3;
    let mut k = key;
    for _ in 0..key.len() >> 2 {
        hash = hash.wrapping_add(get16(k));
        let tmp = (get16(&k[2..]) << 11) ^ hash;
        hash = (hash << 16) ^ tmp;
        k = &k[4..];
        hash = hash.wrapping_add(hash >> 11);
    }
    match rem {
        3 => {
            hash = hash.wrapping_add(get16(k));
            hash ^= hash << 16;
            hash ^= sx(k[2]) << 18;
            hash = hash.wrapping_add(hash >> 11);
        }
        2 => {
            hash = hash.wrapping_add(get16(k));
            hash ^= hash << 11;
            hash = hash.wrapping_add(hash >> 17);
        }
        1 => {
            hash = hash.wrapping_add(k[0] as u32);
            hash ^= hash << 10;
            hash = hash.wrapping_add(hash >> 1);
        }
        _ => {}
    }
    hash ^= hash << 3;
    hash = hash.wrapping_add(hash >> 5);
    hash ^= hash << 4;
    hash = hash.wrapping_add(hash >> 17);
    hash ^= hash << 25;
    hash.wrapping_add(hash >> 6)
}

fn murmur(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let len = key.len() as u32;
    let seed = 0xdead_beef_u32.wrapping_mul(len);
    let mut h = seed ^ len;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// Bob Jenkins' lookup3 `hashlittle` with twemproxy's initial value (13), byte by byte
/// (equal to its aligned word reads on little-endian machines).
fn jenkins(key: &[u8]) -> u32 {
    let mut a = 0xdead_beef_u32.wrapping_add(key.len() as u32).wrapping_add(13);
    let (mut b, mut c) = (a, a);
    let word = |k: &[u8]| {
        let mut w = [0u8; 4];
        w[..k.len().min(4)].copy_from_slice(&k[..k.len().min(4)]);
        u32::from_le_bytes(w)
    };
    let mut k = key;
    while k.len() > 12 {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        // lookup3's mix(a, b, c)
        mix_step(&mut a, &mut c, &mut b, 4);
        mix_step(&mut b, &mut a, &mut c, 6);
        mix_step(&mut c, &mut b, &mut a, 8);
        mix_step(&mut a, &mut c, &mut b, 16);
        mix_step(&mut b, &mut a, &mut c, 19);
        mix_step(&mut c, &mut b, &mut a, 4);
        k = &k[12..];
    }
    if k.is_empty() {
        return c;
    }
    // The last 1..=12 bytes, zero-padded.
    a = a.wrapping_add(word(&k[..k.len().min(4)]));
    if k.len() > 4 {
        b = b.wrapping_add(word(&k[4..k.len().min(8)]));
    }
    if k.len() > 8 {
        c = c.wrapping_add(word(&k[8..]));
    }
    // lookup3's final(a, b, c)
    final_step(&mut c, b, 14);
    final_step(&mut a, c, 11);
    final_step(&mut b, a, 25);
    final_step(&mut c, b, 16);
    final_step(&mut a, c, 4);
    final_step(&mut b, a, 14);
    final_step(&mut c, b, 24);
    c
}

/// One line of lookup3's `mix`: `x -= y; x ^= rot(y, k); y += z`.
fn mix_step(x: &mut u32, y: &mut u32, z: &mut u32, k: u32) {
    *x = x.wrapping_sub(*y);
    *x ^= y.rotate_left(k);
    *y = y.wrapping_add(*z);
}

/// One line of lookup3's `final`: `x ^= y; x -= rot(y, k)`.
fn final_step(x: &mut u32, y: u32, k: u32) {
    *x ^= y;
    *x = x.wrapping_sub(y.rotate_left(k));
}

// === distributions ===

/// The `distribution:` of a twemproxy pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    Ketama,
    Modula,
    Random,
}

impl FromStr for Distribution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ketama" => Ok(Distribution::Ketama),
            "modula" => Ok(Distribution::Modula),
            "random" => Ok(Distribution::Random),
            _ => Err(format!("unknown distribution {s:?}; expected ketama, modula or random")),
        }
    }
}

/// A server as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    /// The optional name after `host:port:weight`.
    pub name: Option<String>,
}

impl ServerSpec {
    /// What ketama hashes for this server: its name, else `host` when the port is 11211
    /// (libmemcached compatibility), else `host:port`.
    fn ketama_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None if self.port == 11211 => self.host.clone(),
            None => format!("{}:{}", self.host, self.port),
        }
    }
}

/// A built distribution over the live servers of a pool.
#[derive(Debug, Clone)]
pub struct Continuum {
    dist: Distribution,
    hash: Hash,
    /// (point value, server index), sorted by value for ketama; one entry per weight unit
    /// for modula.
    points: Vec<(u32, usize)>,
    nservers: usize,
    hash_tag: Option<[u8; 2]>,
}

const KETAMA_POINTS_PER_SERVER: f32 = 160.0;

impl Continuum {
    /// Builds the distribution over `servers`, all live.
    pub fn new(dist: Distribution, hash: Hash, servers: &[ServerSpec], hash_tag: Option<[u8; 2]>) -> Continuum {
        // twemproxy sorts a pool's servers by name when it loads its configuration (shorter
        // names first, then byte order) and builds the distribution in that order; modula's
        // slots depend on it. Indexes stay those of `servers`.
        let mut order: Vec<usize> = (0..servers.len()).collect();
        order.sort_by_key(|&i| {
            let n = servers[i].ketama_name();
            (n.len(), n)
        });
        let mut points = Vec::new();
        let total: u32 = servers.iter().map(|s| s.weight).sum();
        let nlive = servers.len() as f32;
        match dist {
            Distribution::Ketama => {
                for &i in &order {
                    let s = &servers[i];
                    // twemproxy computes this in single precision; so do we.
                    let pct = s.weight as f32 / total as f32;
                    let per_server =
                        ((pct * KETAMA_POINTS_PER_SERVER / 4.0 * nlive + 0.000_000_000_1_f32).floor() * 4.0) as u32;
                    let name = s.ketama_name();
                    for p in 1..=per_server / 4 {
                        let d = Md5::digest(format!("{name}-{}", p - 1).as_bytes());
                        for x in 0..4 {
                            let v = u32::from_le_bytes([d[x * 4], d[x * 4 + 1], d[x * 4 + 2], d[x * 4 + 3]]);
                            points.push((v, i));
                        }
                    }
                }
                // Stable, like twemproxy's qsort on equal values is not: ties are astronomically
                // rare (two 32-bit MD5 slices equal) and then either server is a valid answer.
                points.sort_by_key(|p| p.0);
            }
            Distribution::Modula | Distribution::Random => {
                for &i in &order {
                    for _ in 0..servers[i].weight {
                        points.push((0, i));
                    }
                }
            }
        }
        Continuum { dist, hash, points, nservers: servers.len(), hash_tag }
    }

    /// The part of `key` that is hashed: what is between the hash tag's two bytes, when both
    /// are there and enclose something.
    fn hashed<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        let Some([open, close]) = self.hash_tag else { return key };
        let Some(start) = key.iter().position(|&b| b == open) else { return key };
        match key[start + 1..].iter().position(|&b| b == close) {
            Some(len) if len > 0 => &key[start + 1..start + 1 + len],
            _ => key,
        }
    }

    /// The index of the server `key` belongs to. `random` takes a caller-supplied random value.
    pub fn pick(&self, key: &[u8], random: u32) -> usize {
        if self.nservers <= 1 || self.points.is_empty() {
            return 0;
        }
        let key = self.hashed(key);
        let hash = if key.is_empty() { 0 } else { self.hash.hash(key) };
        match self.dist {
            Distribution::Ketama => {
                let at = self.points.partition_point(|p| p.0 < hash);
                self.points[if at == self.points.len() { 0 } else { at }].1
            }
            Distribution::Modula => self.points[hash as usize % self.points.len()].1,
            Distribution::Random => self.points[random as usize % self.points.len()].1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_values() {
        // Published reference values for the standard algorithms.
        assert_eq!(crc32a(b"123456789"), 0xCBF4_3926, "CRC-32 check value");
        assert_eq!(crc16(b"123456789") & 0xffff, 0x31C3, "CRC-16/XMODEM check value");
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1_32(b"a"), 0x050c_5d7e);
        assert_eq!(fnv1_64(b"a") as u64, 0xaf63bd4c8601b7be_u64 & 0xffff_ffff);
        assert_eq!(jenkins(b""), 0xdead_beef_u32.wrapping_add(13));
    }

    #[test]
    fn signed_char_quirks_are_kept() {
        // A byte >= 0x80 must differ from its value as unsigned in the functions that read
        // a C char (otherwise twemproxy and podkit would disagree on such keys).
        assert_ne!(one_at_a_time(&[0xe9]), one_at_a_time_unsigned(&[0xe9]));
    }

    fn one_at_a_time_unsigned(key: &[u8]) -> u32 {
        let mut v: u32 = 0;
        for &b in key {
            v = v.wrapping_add(b as u32);
            v = v.wrapping_add(v << 10);
            v ^= v >> 6;
        }
        v = v.wrapping_add(v << 3);
        v ^= v >> 11;
        v.wrapping_add(v << 15)
    }

    #[test]
    fn hash_tags_narrow_what_is_hashed() {
        let s = |p| ServerSpec { host: "h".into(), port: p, weight: 1, name: None };
        let c = Continuum::new(Distribution::Ketama, Hash::Fnv1a64, &[s(1), s(2), s(3)], Some(*b"{}"));
        assert_eq!(c.pick(b"user:{42}:name", 0), c.pick(b"{42}", 0));
        assert_eq!(c.hashed(b"user:{}:x"), b"user:{}:x", "an empty tag hashes the whole key");
        assert_eq!(c.hashed(b"a{b"), b"a{b");
    }

    #[test]
    fn ketama_points_follow_weights() {
        let s = |p, w| ServerSpec { host: "10.0.0.1".into(), port: p, weight: w, name: None };
        let c = Continuum::new(Distribution::Ketama, Hash::Md5, &[s(1, 1), s(2, 3)], None);
        let n0 = c.points.iter().filter(|p| p.1 == 0).count();
        let n1 = c.points.iter().filter(|p| p.1 == 1).count();
        assert_eq!((n0, n1), (80, 240));
    }
}
