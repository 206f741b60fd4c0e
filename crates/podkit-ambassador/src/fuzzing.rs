//! What the fuzz targets (`fuzz/`) and the parsers' randomized tests run: arbitrary bytes,
//! cut into arbitrary reads, through the client and server parsers. The properties: no panic,
//! and what is buffered stays within the configured limits.

use bytes::BytesMut;

use crate::{memcache, redis};

/// The limit the harness configures for values and requests.
pub const LIMIT: usize = 4096;

/// Feeds `data` to a memcache client parser in reads of the sizes `cuts` gives.
pub fn memcache_requests(data: &[u8], cuts: &[u8]) {
    let mut parser = memcache::Parser::new(LIMIT);
    let mut buf = BytesMut::new();
    for chunk in chunks(data, cuts) {
        buf.extend_from_slice(chunk);
        while parser.next(&mut buf).is_some() {}
        assert!(buf.len() <= memcache::LINE_MAX + LIMIT + 2 + chunk.len(), "the parser holds {} bytes", buf.len());
    }
}

/// Feeds `data` to a Redis client parser, routing every command it yields.
pub fn redis_requests(data: &[u8], cuts: &[u8]) {
    let mut buf = BytesMut::new();
    for chunk in chunks(data, cuts) {
        buf.extend_from_slice(chunk);
        loop {
            match redis::parse(&mut buf, LIMIT) {
                Ok(Some(cmd)) => {
                    if let Ok(redis::Route::Split(kind)) = redis::route(&cmd) {
                        let step = if kind == redis::Split::Mset { 2 } else { 1 };
                        let servers: Vec<usize> = (1..cmd.args.len()).step_by(step).map(|i| i % 3).collect();
                        let _ = redis::split(&cmd, kind, &servers);
                    }
                }
                Ok(None) => break,
                Err(_) => return, // the connection would close here
            }
        }
        assert!(buf.len() <= LIMIT + 64 * 1024 + chunk.len(), "the parser holds {} bytes", buf.len());
    }
}

/// Frames server answers of every kind, and merges whatever frames.
pub fn answers(data: &[u8]) {
    for f in [memcache::Framing::Single, memcache::Framing::UntilEnd, memcache::Framing::UntilNoop] {
        if let Ok(Some(n)) = memcache::frame(f, data) {
            assert!(n <= data.len());
            let a = bytes::Bytes::copy_from_slice(&data[..n]);
            let keys = [bytes::Bytes::from_static(b"a"), bytes::Bytes::from_static(b"b")];
            let _ = memcache::merge_get(&keys, &[0, 0], &[a]);
        }
    }
    if let Ok(Some(n)) = redis::frame(data) {
        assert!(n <= data.len());
        let a = bytes::Bytes::copy_from_slice(&data[..n]);
        for kind in [redis::Split::Mget, redis::Split::Mset, redis::Split::Count] {
            let _ = redis::merge(kind, &[0, 0], std::slice::from_ref(&a));
        }
    }
}

/// `data` cut into pieces whose sizes come from `cuts` (1..=256 bytes each, cycling).
fn chunks<'a>(data: &'a [u8], cuts: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    let mut at = 0;
    let mut i = 0;
    std::iter::from_fn(move || {
        if at >= data.len() {
            return None;
        }
        let size = cuts.get(i % cuts.len().max(1)).map_or(data.len(), |&c| c as usize + 1);
        i += 1;
        let end = (at + size).min(data.len());
        let piece = &data[at..end];
        at = end;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift) so the test is the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Inputs built from protocol fragments, so the parsers get deep, not only to their first
    /// check.
    fn input(rng: &mut Rng, pieces: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..rng.next() % 40 {
            match rng.next() % 4 {
                0 => v.extend((0..rng.next() % 8).map(|_| rng.next() as u8)),
                1 => v.extend_from_slice(format!("{}", rng.next() % 70_000).as_bytes()),
                _ => v.extend_from_slice(pieces[(rng.next() % pieces.len() as u64) as usize]),
            }
        }
        v
    }

    #[test]
    fn parsers_survive_arbitrary_input() {
        let mc: &[&[u8]] = &[
            b"get ",
            b"gets ",
            b"gat ",
            b"set ",
            b"cas ",
            b"ms ",
            b"mg ",
            b"mn",
            b"incr ",
            b"delete ",
            b" ",
            b"\r\n",
            b"\n",
            b"noreply",
            b" q",
            b" b",
            b"VALUE ",
            b"VA ",
            b"END\r\n",
            b"MN\r\n",
            b"flush_all",
            b"verbosity",
            b"stats",
            b"-1",
            b"k",
        ];
        let rd: &[&[u8]] = &[
            b"*",
            b"$",
            b"\r\n",
            b"-1",
            b"MGET",
            b"MSET",
            b"DEL",
            b"GET",
            b"EVAL",
            b"ZUNIONSTORE",
            b"k",
            b":",
            b"+OK",
            b"-ERR x",
            b"%",
            b"~",
            b"_",
            b"SORT",
            b"STORE",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let cuts: Vec<u8> = (0..rng.next() % 5).map(|_| rng.next() as u8).collect();
            let m = input(&mut rng, mc);
            memcache_requests(&m, &cuts);
            answers(&m);
            let r = input(&mut rng, rd);
            redis_requests(&r, &cuts);
            answers(&r);
        }
    }
}
