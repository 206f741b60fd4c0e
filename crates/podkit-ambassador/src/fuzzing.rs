//! What the fuzz targets (`fuzz/`) and the parsers' randomized tests run: arbitrary bytes,
//! cut into arbitrary reads, through the client and server parsers. The properties: no panic;
//! what is buffered stays within the configured limits; a command parses back from the bytes
//! the proxy sends for it; an answer frames the same however much of it has arrived.
//!
//! Inputs the fuzzers found crashing are kept in this module's tests, byte for byte.

use bytes::{Bytes, BytesMut};

use crate::{memcache, redis};

/// The limit the harness configures for values and requests.
pub const LIMIT: usize = 4096;

/// How the request targets read a fuzzer's input: the first byte says how many of the next
/// bytes (0 to 7) are read sizes; the rest is the input. Returns (input, read sizes).
pub fn split_input(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return (&[], &[]) };
    let (cuts, input) = rest.split_at((n as usize % 8).min(rest.len()));
    (input, cuts)
}

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
                    assert_eq!(reparse(&cmd.wire()), cmd.args, "the command as sent parses back");
                    if let Ok(redis::Route::Split(kind)) = redis::route(&cmd) {
                        let step = if kind == redis::Split::Mset { 2 } else { 1 };
                        let servers: Vec<usize> = (1..cmd.args.len()).step_by(step).map(|i| i % 3).collect();
                        let (parts, _) = redis::split(&cmd, kind, &servers);
                        for (_, part) in parts {
                            assert_eq!(reparse(&part)[0], cmd.args[0], "each part parses as the same command");
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return, // the connection would close here
            }
        }
        assert!(buf.len() <= LIMIT + 64 * 1024 + chunk.len(), "the parser holds {} bytes", buf.len());
    }
}

/// The arguments of the one command in `wire`.
fn reparse(wire: &[u8]) -> Vec<Bytes> {
    let mut buf = BytesMut::from(wire);
    let cmd = redis::parse(&mut buf, usize::MAX).expect("valid RESP").expect("a whole command");
    assert!(buf.is_empty(), "one command, nothing after it");
    cmd.args
}

/// Frames server answers of every kind, and merges the first two answers that frame, as if two
/// servers had sent them.
pub fn answers(data: &[u8]) {
    for f in [memcache::Framing::Single, memcache::Framing::UntilEnd, memcache::Framing::UntilNoop] {
        let answers = framed(data, |b| memcache::frame(f, b));
        if !answers.is_empty() {
            let keys = [Bytes::from_static(b"a"), Bytes::from_static(b"b")];
            let _ = memcache::merge_get(&keys, &[0, answers.len() as u32 - 1], &answers);
            let _ = memcache::merge_all_ok(&answers);
        }
    }
    let answers = framed(data, redis::frame);
    if !answers.is_empty() {
        let groups = [0, answers.len() as u32 - 1];
        for kind in [redis::Split::Mget, redis::Split::Mset, redis::Split::Count] {
            let _ = redis::merge(kind, &groups, &answers);
        }
    }
}

/// Up to two answers framed one after the other from the start of `data`, each checked to
/// frame alone and to wait (not fail) while only part of it has arrived.
fn framed<E>(data: &[u8], frame: impl Fn(&[u8]) -> Result<Option<usize>, E>) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0;
    while out.len() < 2 {
        let rest = &data[at..];
        let Ok(Some(n)) = frame(rest) else { break };
        assert!(n > 0 && n <= rest.len(), "framed {n} of {} bytes", rest.len());
        assert_eq!(frame(&rest[..n]).ok(), Some(Some(n)), "an answer frames alone");
        for part in [n - 1, n / 2] {
            assert_eq!(frame(&rest[..part]).ok(), Some(None), "{part} of {n} bytes wait for more");
        }
        out.push(Bytes::copy_from_slice(&rest[..n]));
        at += n;
    }
    out
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
    use podkit_testkit::Xorshift;

    use super::*;

    /// Inputs built from protocol fragments, so the parsers get deep, not only to their first
    /// check.
    fn input(rng: &mut Xorshift, pieces: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..rng.next_u64() % 40 {
            match rng.next_u64() % 4 {
                0 => v.extend((0..rng.next_u64() % 8).map(|_| rng.next_u64() as u8)),
                1 => v.extend_from_slice(format!("{}", rng.next_u64() % 70_000).as_bytes()),
                _ => v.extend_from_slice(pieces[(rng.next_u64() % pieces.len() as u64) as usize]),
            }
        }
        v
    }

    // Inputs that crashed the harness, kept byte for byte.

    /// `server_answers`: a RESP3 attribute, then a map, whose pair count overflowed when doubled.
    #[test]
    fn a_pair_count_that_overflows_when_doubled_is_a_protocol_error() {
        for input in [&b"|5577777777777777775\n"[..], b"%5555555555555555555\nV"] {
            answers(input);
            assert!(redis::frame(input).is_err(), "{}", input.escape_ascii());
        }
    }

    /// `server_answers`: a `VALUE` length of `usize::MAX` (after 96 zeros); the data's end
    /// overflowed. The `VA` line is the meta command's form of the same.
    #[test]
    fn a_memcache_value_length_that_overflows_is_a_protocol_error() {
        let found = b"VALUE 0000000000000006\xd9\xd9\xd9\xd9\xd9\xd9\xd9\xd9\xd9\xd9\xd9\x07 \xa9 \
            000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
            18446744073709551615\r\nCLIENT_ERRORVAL\n\x00\x00";
        for input in [&found[..], b"VA 18446744073709551614\r\n"] {
            answers(input);
            for f in [memcache::Framing::Single, memcache::Framing::UntilEnd, memcache::Framing::UntilNoop] {
                assert!(memcache::frame(f, input).is_err(), "{f:?} {}", input.escape_ascii());
            }
        }
    }

    /// Two DEL counts whose sum overflowed (two answers near `i64::MAX` are too rare a pair for
    /// the fuzzer to have built in its runs so far).
    #[test]
    fn counts_that_overflow_when_summed_merge_to_an_error() {
        let input = b":9223372036854775807\r\n:1\r\n";
        answers(input);
        let a = [Bytes::from_static(b":9223372036854775807\r\n"), Bytes::from_static(b":1\r\n")];
        assert!(redis::merge(redis::Split::Count, &[0, 1], &a).starts_with(b"-ERR"));
    }

    /// `redis_requests`: an inline `EVALSHA_RO` with a numkeys of `u64::MAX` (zero-padded);
    /// the index of the last key overflowed. The multibulk `EVAL` is the same in RESP.
    #[test]
    fn a_numkeys_that_overflows_is_refused() {
        let found = b"\x00\x0c\t\t\tEVALSHA_RO\t\t\t\t\t\x07\t\t0000000018446744073709551615\t\tL\xef\t\n";
        let (input, cuts) = split_input(found);
        redis_requests(input, cuts);
        let eval = b"*4\r\n$4\r\nEVAL\r\n$1\r\ns\r\n$20\r\n18446744073709551615\r\n$1\r\nk\r\n";
        redis_requests(eval, &[]);
        for input in [input, &eval[..]] {
            let cmd = redis::parse(&mut BytesMut::from(input), LIMIT).unwrap().unwrap();
            assert!(redis::route(&cmd).unwrap_err().contains("Number of keys"), "{}", input.escape_ascii());
        }
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
        let mut rng = Xorshift::default();
        for _ in 0..20_000 {
            let cuts: Vec<u8> = (0..rng.next_u64() % 5).map(|_| rng.next_u64() as u8).collect();
            let m = input(&mut rng, mc);
            memcache_requests(&m, &cuts);
            answers(&m);
            let r = input(&mut rng, rd);
            redis_requests(&r, &cuts);
            answers(&r);
        }
    }
}
