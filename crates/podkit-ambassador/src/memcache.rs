//! The memcache text protocol (classic and meta commands): requests from clients, answers from
//! servers, and the merging of multi-key answers.
//!
//! Parsing is incremental: [`Parser::next`] takes what is buffered and returns one request or
//! asks for more bytes. Bad input is answered the way memcached answers it (`ERROR`,
//! `CLIENT_ERROR …`) and the connection stays usable: a bad storage command's data block is
//! swallowed, an overlong line is skipped up to its end.

use bytes::{Buf, Bytes, BytesMut};

/// Longest key memcached accepts.
pub(crate) const KEY_MAX: usize = 250;
/// Longest command line. memcached allows 2048 bytes except for multi-key gets; a get of many
/// long keys is legitimately longer, so the proxy allows that much for every line.
pub(crate) const LINE_MAX: usize = 64 * 1024;
/// Largest value a server's answer may hold: memcached refuses an item size (`-I`) above 1 GiB,
/// so a longer claim is a broken server, not a value to wait for.
pub(crate) const ANSWER_VALUE_MAX: usize = 1024 * 1024 * 1024;
/// Largest data block a client may announce, as memcached checks it (longer is a bad command
/// line, not a value to swallow).
const DATA_MAX: i64 = i32::MAX as i64 - 2;

/// How a server's answer to one request ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// One line, or a `VA <n>` line and its data (meta commands).
    Single,
    /// `VALUE`/`STAT` lines (with data for `VALUE`) up to `END`, or one error line.
    UntilEnd,
    /// Anything up to `MN` (quiet meta commands are sent with a trailing `mn`).
    UntilNoop,
}

/// One parsed client request.
#[derive(Debug)]
pub(crate) enum Request {
    /// A single-key command, sent to the key's server as `bytes`. `quiet`: the client expects
    /// no answer (`noreply`, already removed from `bytes`).
    Keyed {
        key: Bytes,
        bytes: Bytes,
        framing: Framing,
        quiet: bool,
        strip_noop: bool,
    },
    /// get, gets, gat, gats: `verb` is everything before the keys (`gat 300`).
    Retrieve {
        verb: Bytes,
        keys: Vec<Bytes>,
        bytes: Bytes,
    },
    /// flush_all, verbosity: sent to every server; `OK` when every server says `OK`.
    Broadcast {
        bytes: Bytes,
        quiet: bool,
    },
    Version,
    /// `stats` with its arguments (answered by the proxy).
    Stats(Vec<Bytes>),
    /// `mn`: every earlier answer has been written.
    Noop,
    Quit,
    /// Answered by the proxy without a server: an error for bad input.
    Answer(&'static [u8]),
}

pub(crate) const ERROR: &[u8] = b"ERROR\r\n";
pub(crate) const BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad command line format\r\n";
pub(crate) const BAD_CHUNK: &[u8] = b"CLIENT_ERROR bad data chunk\r\n";
pub(crate) const TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";
pub(crate) const LINE_TOO_LONG: &[u8] = b"CLIENT_ERROR line too long\r\n";

/// The state one client connection's parser keeps between reads.
#[derive(Debug)]
pub(crate) struct Parser {
    max_value: usize,
    /// Bytes of a refused data block still to be thrown away.
    swallow: usize,
    /// Throwing away the rest of an overlong line.
    skip_line: bool,
}

impl Parser {
    pub(crate) fn new(max_value: usize) -> Self {
        Parser { max_value, swallow: 0, skip_line: false }
    }

    /// The next complete request in `buf` (consumed from it), or `None` for more bytes.
    pub(crate) fn next(&mut self, buf: &mut BytesMut) -> Option<Request> {
        if self.swallow > 0 {
            let n = self.swallow.min(buf.len());
            buf.advance(n);
            self.swallow -= n;
            if self.swallow > 0 {
                return None;
            }
        }
        if self.skip_line {
            match memchr(b'\n', buf) {
                Some(i) => {
                    buf.advance(i + 1);
                    self.skip_line = false;
                }
                None => {
                    buf.clear();
                    return None;
                }
            }
        }
        let Some(nl) = memchr(b'\n', buf) else {
            if buf.len() > LINE_MAX {
                buf.clear();
                self.skip_line = true;
                return Some(Request::Answer(LINE_TOO_LONG));
            }
            return None;
        };
        if nl > LINE_MAX {
            buf.advance(nl + 1);
            return Some(Request::Answer(LINE_TOO_LONG));
        }
        let line_end = if nl > 0 && buf[nl - 1] == b'\r' { nl - 1 } else { nl };
        match self.request(buf, line_end, nl + 1) {
            Step::Done(r) => Some(r),
            Step::More => None,
        }
    }

    /// Parses the line `buf[..line_end]` (its terminator ends at `next`).
    fn request(&mut self, buf: &mut BytesMut, line_end: usize, next: usize) -> Step {
        let kind = match Tokens::new(&buf[..line_end]).next() {
            None => Kind::Unknown,
            Some(b"get" | b"gets" | b"gat" | b"gats") => Kind::Retrieve,
            Some(b"set" | b"add" | b"replace" | b"append" | b"prepend") => Kind::Storage { cas: false },
            Some(b"cas") => Kind::Storage { cas: true },
            Some(b"ms") => Kind::MetaSet,
            Some(b"delete") => Kind::Keyed(b"delete"),
            Some(b"incr") => Kind::Keyed(b"incr"),
            Some(b"decr") => Kind::Keyed(b"decr"),
            Some(b"touch") => Kind::Keyed(b"touch"),
            Some(b"mg" | b"md" | b"ma" | b"me") => Kind::Meta,
            Some(b"mn") => Kind::Noop,
            Some(b"version") => Kind::Version,
            Some(b"quit") => Kind::Quit,
            Some(b"stats") => Kind::Stats,
            Some(b"flush_all") => Kind::Broadcast(b"flush_all"),
            Some(b"verbosity") => Kind::Broadcast(b"verbosity"),
            Some(_) => Kind::Unknown,
        };
        let request = match kind {
            Kind::Storage { cas } => return self.storage(buf, line_end, next, cas),
            Kind::MetaSet => return self.meta_set(buf, line_end, next),
            Kind::Retrieve => retrieval(buf.split_to(next).freeze(), line_end),
            Kind::Keyed(cmd) => simple_keyed(buf.split_to(next).freeze(), line_end, cmd),
            Kind::Meta => meta(buf.split_to(next).freeze(), line_end),
            Kind::Stats => {
                let line = buf.split_to(next).freeze();
                Request::Stats(Tokens::new(&line[..line_end]).skip(1).map(|t| line.slice_ref(t)).collect())
            }
            Kind::Broadcast(cmd) => broadcast(buf.split_to(next).freeze(), line_end, cmd),
            Kind::Noop | Kind::Version | Kind::Quit | Kind::Unknown => {
                // memcached ignores arguments of these (`version foo` is `version`).
                buf.advance(next);
                match kind {
                    Kind::Noop => Request::Noop,
                    Kind::Version => Request::Version,
                    Kind::Quit => Request::Quit,
                    _ => Request::Answer(ERROR),
                }
            }
        };
        Step::Done(request)
    }

    /// `set|add|replace|append|prepend <key> <flags> <exptime> <bytes> [noreply]` and
    /// `cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]`, then the data block.
    fn storage(&mut self, buf: &mut BytesMut, line_end: usize, next: usize, cas: bool) -> Step {
        let t: Vec<&[u8]> = Tokens::new(&buf[..line_end]).collect();
        let want = if cas { 6 } else { 5 };
        let noreply = t.len() == want + 1 && t[want] == b"noreply";
        let well_formed = (t.len() == want || noreply)
            && t[1].len() <= KEY_MAX
            && parse_num::<u32>(t[2]).is_some()
            && parse_num::<i64>(t[3]).is_some()
            && (!cas || parse_num::<u64>(t[5]).is_some());
        let len = t.get(4).and_then(|l| parse_num::<i64>(l));
        let (Some(len), true) = (len, well_formed) else {
            // memcached answers this without reading a data block; the block, if any, is then
            // read as commands (and answered ERROR), exactly as memcached does.
            buf.advance(next);
            return Step::Done(Request::Answer(BAD_FORMAT));
        };
        if !(0..=DATA_MAX).contains(&len) {
            buf.advance(next);
            return Step::Done(Request::Answer(BAD_FORMAT));
        }
        self.with_data(buf, next, len as usize, |line, data| {
            let key = line.slice_ref(Tokens::new(&line[..line_end]).nth(1).expect("checked above"));
            let bytes = if noreply { without_last_token(&line, line_end, &data) } else { line.clone() };
            Request::Keyed { key, bytes, framing: Framing::Single, quiet: noreply, strip_noop: false }
        })
    }

    /// `ms <key> <datalen> <flags>*`, then the data block.
    fn meta_set(&mut self, buf: &mut BytesMut, line_end: usize, next: usize) -> Step {
        let t: Vec<&[u8]> = Tokens::new(&buf[..line_end]).collect();
        let len = t.get(2).and_then(|l| parse_num::<i64>(l)).filter(|l| (0..=DATA_MAX).contains(l));
        let (Some(len), true) = (len, t.len() >= 3 && t[1].len() <= KEY_MAX * 2) else {
            buf.advance(next);
            return Step::Done(Request::Answer(BAD_FORMAT));
        };
        self.with_data(buf, next, len as usize, |line, _| meta(line, line_end))
    }

    /// Waits for a data block of `len` bytes plus `\r\n` after the line, checks it and builds
    /// the request from the whole (line and data, as one buffer) and the data alone.
    fn with_data(
        &mut self,
        buf: &mut BytesMut,
        next: usize,
        len: usize,
        build: impl FnOnce(Bytes, Bytes) -> Request,
    ) -> Step {
        if len > self.max_value {
            buf.advance(next);
            self.swallow = len + 2;
            return Step::Done(Request::Answer(TOO_LARGE));
        }
        let total = next + len + 2;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Step::More;
        }
        if &buf[total - 2..total] != b"\r\n" {
            buf.advance(total);
            return Step::Done(Request::Answer(BAD_CHUNK));
        }
        let whole = buf.split_to(total).freeze();
        let data = whole.slice(next..);
        Step::Done(build(whole, data))
    }
}

enum Step {
    Done(Request),
    More,
}

/// What a line's first token says it is.
#[derive(Clone, Copy)]
enum Kind {
    Retrieve,
    Storage { cas: bool },
    MetaSet,
    Keyed(&'static [u8]),
    Meta,
    Noop,
    Version,
    Quit,
    Stats,
    Broadcast(&'static [u8]),
    Unknown,
}

/// get/gets/gat/gats.
fn retrieval(line: Bytes, line_end: usize) -> Request {
    let mut t = Tokens::new(&line[..line_end]);
    let cmd = t.next().expect("a command");
    let touch = cmd.starts_with(b"gat");
    let mut verb_end = cmd.len();
    if touch {
        match t.next() {
            Some(exp) if parse_num::<i64>(exp).is_some() => verb_end = offset(&line, exp) + exp.len(),
            Some(_) => return Request::Answer(BAD_FORMAT),
            None => return Request::Answer(ERROR),
        }
    }
    let keys: Vec<Bytes> = t.map(|k| line.slice_ref(k)).collect();
    if keys.is_empty() {
        return Request::Answer(ERROR);
    }
    if keys.iter().any(|k| k.len() > KEY_MAX) {
        return Request::Answer(BAD_FORMAT);
    }
    Request::Retrieve { verb: line.slice(..verb_end), keys, bytes: line }
}

/// delete, incr, decr, touch: `<cmd> <key> [args] [noreply]`.
fn simple_keyed(line: Bytes, line_end: usize, cmd: &[u8]) -> Request {
    let t: Vec<&[u8]> = Tokens::new(&line[..line_end]).collect();
    let noreply = t.last() == Some(&&b"noreply"[..]);
    let args = t.len() - usize::from(noreply);
    let ok = match cmd {
        // `delete <key> [0]`: memcached still accepts a zero time for old clients.
        b"delete" => args == 2 || (args == 3 && t[2] == b"0"),
        b"incr" | b"decr" => args == 3 && parse_num::<u64>(t[2]).is_some(),
        _ => args == 3 && parse_num::<i64>(t[2]).is_some(),
    };
    if args < 2 {
        return Request::Answer(ERROR);
    }
    if !ok || t[1].len() > KEY_MAX {
        if cmd == b"incr" || cmd == b"decr" {
            if args == 3 && t[1].len() <= KEY_MAX {
                return Request::Answer(b"CLIENT_ERROR invalid numeric delta argument\r\n");
            }
        } else if cmd == b"delete" && args == 3 {
            return Request::Answer(b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n");
        }
        return Request::Answer(BAD_FORMAT);
    }
    let key = line.slice_ref(t[1]);
    let bytes = if noreply { without_last_token(&line, line_end, &Bytes::new()) } else { line.clone() };
    Request::Keyed { key, bytes, framing: Framing::Single, quiet: noreply, strip_noop: false }
}

/// flush_all [delay] [noreply], verbosity <level> [noreply], checked as memcached checks them
/// (an error is not answered under noreply, as memcached does not).
fn broadcast(line: Bytes, line_end: usize, cmd: &[u8]) -> Request {
    let t: Vec<&[u8]> = Tokens::new(&line[..line_end]).collect();
    let noreply = t.last() == Some(&&b"noreply"[..]);
    let args = &t[1..t.len() - usize::from(noreply)];
    let error: Option<&'static [u8]> = match cmd {
        b"flush_all" => match args.first() {
            Some(a) if parse_num::<i64>(a).is_none() => Some(b"CLIENT_ERROR invalid exptime argument\r\n"),
            _ => None,
        },
        _ => match args {
            [] => Some(ERROR),
            [_, _, _, ..] => Some(ERROR),
            [level, ..] if parse_num::<u32>(level).is_none() => Some(BAD_FORMAT),
            _ => None,
        },
    };
    if let Some(e) = error {
        return Request::Answer(if noreply { b"" } else { e });
    }
    let bytes = if noreply { without_last_token(&line, line_end, &Bytes::new()) } else { line.clone() };
    Request::Broadcast { bytes, quiet: noreply }
}

/// mg, ms, md, ma, me: `<cmd> <key> <flags>*`. The `q` (quiet) flag hides some answers; to keep
/// answers and requests paired, a quiet command goes to its server with an `mn` after it and
/// the proxy removes the `MN` (so the server still decides what quiet hides).
fn meta(line: Bytes, line_end: usize) -> Request {
    let mut t = Tokens::new(&line[..line_end]);
    t.next();
    let Some(key) = t.next() else { return Request::Answer(BAD_FORMAT) };
    let is_set = line.starts_with(b"ms");
    let flags: Vec<&[u8]> = t.skip(usize::from(is_set)).collect();
    let quiet = flags.iter().any(|f| f == b"q");
    let base64 = flags.iter().any(|f| f == b"b");
    let key_bytes = if base64 {
        match decode_base64(key) {
            Some(k) => Bytes::from(k),
            None => return Request::Answer(b"CLIENT_ERROR error decoding key\r\n"),
        }
    } else {
        line.slice_ref(key)
    };
    if key_bytes.len() > KEY_MAX {
        return Request::Answer(BAD_FORMAT);
    }
    if quiet {
        let mut b = BytesMut::with_capacity(line.len() + 4);
        b.extend_from_slice(&line);
        b.extend_from_slice(b"mn\r\n");
        return Request::Keyed {
            key: key_bytes,
            bytes: b.freeze(),
            framing: Framing::UntilNoop,
            quiet: false,
            strip_noop: true,
        };
    }
    Request::Keyed { key: key_bytes, bytes: line, framing: Framing::Single, quiet: false, strip_noop: false }
}

fn decode_base64(s: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// `line` without its last token (` noreply`), with `data` after it.
fn without_last_token(line: &Bytes, line_end: usize, data: &Bytes) -> Bytes {
    let head = &line[..line_end];
    let cut = head.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    let head = &head[..cut];
    let cut = head.iter().rposition(|&b| b == b' ').unwrap_or(0);
    let head = &head[..cut];
    let mut b = BytesMut::with_capacity(head.len() + 2 + data.len());
    b.extend_from_slice(head);
    b.extend_from_slice(b"\r\n");
    b.extend_from_slice(data);
    b.freeze()
}

// === answers from servers ===

/// Bytes of the first complete answer in `buf`, `Ok(None)` when more are needed, or an error
/// when the server sent something that is not memcache.
pub(crate) fn frame(framing: Framing, buf: &[u8]) -> Result<Option<usize>, String> {
    let mut at = 0;
    loop {
        let Some(nl) = memchr(b'\n', &buf[at..]) else {
            if buf.len() - at > LINE_MAX {
                return Err("an answer line longer than 64 KiB".into());
            }
            return Ok(None);
        };
        // The same limit whether or not the line's end arrived in the same read.
        if nl > LINE_MAX {
            return Err("an answer line longer than 64 KiB".into());
        }
        let line = &buf[at..at + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let after = at + nl + 1;
        let data = if line.starts_with(b"VALUE ") {
            Some(value_len(Tokens::new(line).nth(3)).ok_or("a VALUE line without a valid length")?)
        } else if line.starts_with(b"VA ") {
            Some(value_len(Tokens::new(line).nth(1)).ok_or("a VA line without a valid length")?)
        } else {
            None
        };
        at = after;
        if let Some(len) = data {
            // `len` is bounded, so this cannot overflow.
            let end = at + len + 2;
            if buf.len() < end {
                return Ok(None);
            }
            // A server out of step with its own framing would otherwise be followed blindly.
            if &buf[end - 2..end] != b"\r\n" {
                return Err("a value not terminated by CRLF".into());
            }
            at = end;
        }
        let error = line == b"ERROR" || line.starts_with(b"CLIENT_ERROR") || line.starts_with(b"SERVER_ERROR");
        match framing {
            Framing::Single => {
                if line.starts_with(b"VALUE ") || line.starts_with(b"STAT ") {
                    return Err(format!("unexpected answer {:?}", String::from_utf8_lossy(line)));
                }
                return Ok(Some(at));
            }
            Framing::UntilEnd => {
                if line == b"END" || error {
                    return Ok(Some(at));
                }
                if !(line.starts_with(b"VALUE ") || line.starts_with(b"STAT ")) {
                    return Err(format!("unexpected answer {:?}", String::from_utf8_lossy(line)));
                }
            }
            Framing::UntilNoop => {
                if line == b"MN" {
                    return Ok(Some(at));
                }
            }
        }
    }
}

/// A value's length token, when it is a number within [`ANSWER_VALUE_MAX`].
fn value_len(token: Option<&[u8]>) -> Option<usize> {
    token.and_then(parse_num::<usize>).filter(|&n| n <= ANSWER_VALUE_MAX)
}

/// A `VALUE` block of a get's answer: its key, and the whole block with its line.
type Value<'a> = (&'a [u8], &'a [u8]);

/// The `VALUE` blocks of a get's answer, in order.
fn values(answer: &[u8]) -> Result<Vec<Value<'_>>, &[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < answer.len() {
        let nl = memchr(b'\n', &answer[at..]).ok_or(answer)? + at;
        let line = &answer[at..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line == b"END" {
            return Ok(out);
        }
        if !line.starts_with(b"VALUE ") {
            return Err(answer);
        }
        let mut t = Tokens::new(line);
        t.next();
        let key = t.next().ok_or(answer)?;
        let len = value_len(Tokens::new(line).nth(3)).ok_or(answer)?;
        let end = nl + 1 + len + 2;
        out.push((key, answer.get(at..end).ok_or(answer)?));
        at = end;
    }
    Err(answer)
}

/// Merges the answers of a get split over servers: `groups[i]` is the answer index of the i-th
/// requested key, and the values come out in the order the keys were asked for (memcached's
/// order), then `END`. An answer that is an error is returned as it is.
pub(crate) fn merge_get(keys: &[Bytes], groups: &[u32], answers: &[Bytes]) -> Bytes {
    let mut parsed = Vec::with_capacity(answers.len());
    for a in answers {
        match values(a) {
            Ok(v) => parsed.push(v.into_iter().peekable()),
            Err(whole) => return Bytes::copy_from_slice(whole),
        }
    }
    let mut out = BytesMut::with_capacity(answers.iter().map(Bytes::len).sum());
    for (key, &g) in keys.iter().zip(groups) {
        let it = &mut parsed[g as usize];
        if let Some((k, _)) = it.peek()
            && *k == key.as_ref()
        {
            out.extend_from_slice(it.next().expect("peeked").1);
        }
    }
    out.extend_from_slice(b"END\r\n");
    out.freeze()
}

/// The merged answer of a command sent to every server (flush_all, verbosity): `OK` when all
/// said so, else the first other answer.
pub(crate) fn merge_all_ok(answers: &[Bytes]) -> Bytes {
    answers.iter().find(|a| a.as_ref() != b"OK\r\n").cloned().unwrap_or_else(|| Bytes::from_static(b"OK\r\n"))
}

// === helpers ===

/// Space-separated tokens, as memcached splits a line.
struct Tokens<'a> {
    rest: &'a [u8],
}

impl<'a> Tokens<'a> {
    fn new(line: &'a [u8]) -> Self {
        Tokens { rest: line }
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|&b| b != b' ')?;
        let rest = &self.rest[start..];
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        self.rest = &rest[end..];
        Some(&rest[..end])
    }
}

fn offset(base: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - base.as_ptr() as usize
}

fn parse_num<T: std::str::FromStr>(t: &[u8]) -> Option<T> {
    std::str::from_utf8(t).ok()?.parse().ok()
}

pub(crate) fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Vec<Request> {
        let mut p = Parser::new(1024);
        let mut buf = BytesMut::from(input);
        std::iter::from_fn(|| p.next(&mut buf)).collect()
    }

    #[test]
    fn storage_waits_for_its_data_and_strips_noreply() {
        let mut p = Parser::new(1024);
        let mut buf = BytesMut::from(&b"set k 1 0 5 noreply\r\nhel"[..]);
        assert!(p.next(&mut buf).is_none());
        buf.extend_from_slice(b"lo\r\nget k\r\n");
        match p.next(&mut buf).unwrap() {
            Request::Keyed { key, bytes, quiet, .. } => {
                assert_eq!(&key[..], b"k");
                assert_eq!(&bytes[..], b"set k 1 0 5\r\nhello\r\n");
                assert!(quiet);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(p.next(&mut buf), Some(Request::Retrieve { .. })));
    }

    #[test]
    fn bad_input_is_answered_and_skipped() {
        let r = parse_all(b"bogus\r\nset k 0 0 2\r\nabcd\r\nset k x 0 1\r\nget\r\nincr k z\r\nset big 0 0 2000\r\n");
        let answers: Vec<_> = r
            .iter()
            .map(|r| match r {
                Request::Answer(a) => String::from_utf8_lossy(a).trim().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            answers,
            [
                "ERROR",
                "CLIENT_ERROR bad data chunk",
                // The two bytes after a too-long block form an empty line, which memcached
                // answers with ERROR too.
                "ERROR",
                "CLIENT_ERROR bad command line format",
                "ERROR",
                "CLIENT_ERROR invalid numeric delta argument",
                "SERVER_ERROR object too large for cache"
            ]
        );
    }

    #[test]
    fn a_refused_value_is_swallowed() {
        let mut p = Parser::new(4);
        let mut buf = BytesMut::from(&b"set k 0 0 10\r\n0123"[..]);
        assert!(matches!(p.next(&mut buf), Some(Request::Answer(TOO_LARGE))));
        assert!(p.next(&mut buf).is_none());
        buf.extend_from_slice(b"456789\r\nversion\r\n");
        assert!(matches!(p.next(&mut buf), Some(Request::Version)));
    }

    #[test]
    fn overlong_lines_are_skipped() {
        let mut p = Parser::new(4);
        let mut buf = BytesMut::from(&vec![b'a'; LINE_MAX + 10][..]);
        assert!(matches!(p.next(&mut buf), Some(Request::Answer(LINE_TOO_LONG))));
        buf.extend_from_slice(b"aaaa\r\nversion\r\n");
        assert!(matches!(p.next(&mut buf), Some(Request::Version)));
    }

    #[test]
    fn quiet_meta_gets_a_noop() {
        match &parse_all(b"mg Zm9v v q b\r\n")[0] {
            Request::Keyed { key, bytes, framing, strip_noop, .. } => {
                assert_eq!(&key[..], b"foo");
                assert_eq!(&bytes[..], b"mg Zm9v v q b\r\nmn\r\n");
                assert_eq!(*framing, Framing::UntilNoop);
                assert!(strip_noop);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn framing_of_answers() {
        assert_eq!(frame(Framing::Single, b"STORED\r\nEND"), Ok(Some(8)));
        assert_eq!(frame(Framing::Single, b"VA 3 f1\r\nabc\r\n"), Ok(Some(14)));
        assert_eq!(frame(Framing::Single, b"VA 3 f1\r\nab"), Ok(None));
        assert_eq!(frame(Framing::UntilEnd, b"VALUE a 0 2\r\nEN\r\nEND\r\n"), Ok(Some(22)));
        assert_eq!(frame(Framing::UntilEnd, b"VALUE a 0 2\r\nEN\r\n"), Ok(None));
        assert_eq!(frame(Framing::UntilEnd, b"SERVER_ERROR x\r\n"), Ok(Some(16)));
        assert_eq!(frame(Framing::UntilNoop, b"EN\r\nMN\r\n"), Ok(Some(8)));
        assert!(frame(Framing::UntilEnd, b"HELLO\r\n").is_err());
    }

    #[test]
    fn answer_value_lengths_beyond_the_bound_are_errors_not_waits() {
        let max = ANSWER_VALUE_MAX;
        assert_eq!(frame(Framing::UntilEnd, format!("VALUE k 0 {max}\r\n").as_bytes()), Ok(None));
        assert_eq!(frame(Framing::Single, format!("VA {max}\r\n").as_bytes()), Ok(None));
        for len in [(max + 1).to_string(), usize::MAX.to_string(), "-1".into()] {
            assert!(frame(Framing::UntilEnd, format!("VALUE k 0 {len}\r\n").as_bytes()).is_err(), "{len}");
            assert!(frame(Framing::Single, format!("VA {len} v\r\n").as_bytes()).is_err(), "{len}");
            assert!(frame(Framing::UntilNoop, format!("VA {len}\r\n").as_bytes()).is_err(), "{len}");
        }
    }

    #[test]
    fn a_value_must_end_where_its_length_says() {
        assert!(frame(Framing::UntilEnd, b"VALUE a 0 2\r\nENXYEND\r\n").is_err());
        assert!(frame(Framing::Single, b"VA 1\r\nab\r\n").is_err());
    }

    #[test]
    fn an_overlong_answer_line_is_an_error_even_when_its_end_has_arrived() {
        let mut line = vec![b'a'; LINE_MAX + 1];
        line.extend_from_slice(b"\r\n");
        assert!(frame(Framing::UntilNoop, &line).is_err());
    }

    #[test]
    fn a_truncated_value_in_a_merged_get_is_passed_on_not_sliced() {
        let keys = [Bytes::from_static(b"a")];
        let cut = Bytes::from_static(b"VALUE a 0 5\r\nab");
        assert_eq!(merge_get(&keys, &[0], std::slice::from_ref(&cut)), cut);
        let huge = Bytes::from(format!("VALUE a 0 {}\r\n", usize::MAX));
        assert_eq!(merge_get(&keys, &[0], std::slice::from_ref(&huge)), huge);
    }

    #[test]
    fn a_data_length_beyond_memcacheds_limit_is_a_bad_command_line() {
        for line in [&b"set k 0 0 2147483646\r\n"[..], b"ms k 2147483646\r\n", b"ms k 4294967295 T0\r\n"] {
            assert!(matches!(parse_all(line)[..], [Request::Answer(BAD_FORMAT)]), "{}", String::from_utf8_lossy(line));
        }
        let mut p = Parser::new(4);
        let mut buf = BytesMut::from(&b"ms k 2147483645\r\n"[..]);
        assert!(matches!(p.next(&mut buf), Some(Request::Answer(TOO_LARGE))));
    }

    #[test]
    fn merged_gets_keep_the_asked_order() {
        let keys: Vec<Bytes> = ["a", "b", "c", "a"].iter().map(|k| Bytes::from(*k)).collect();
        let answers = [
            Bytes::from_static(b"VALUE a 0 1\r\n1\r\nVALUE a 0 1\r\n1\r\nEND\r\n"),
            Bytes::from_static(b"VALUE c 0 1\r\n3\r\nEND\r\n"),
        ];
        let merged = merge_get(&keys, &[0, 1, 1, 0], &answers);
        assert_eq!(&merged[..], b"VALUE a 0 1\r\n1\r\nVALUE c 0 1\r\n3\r\nVALUE a 0 1\r\n1\r\nEND\r\n");
    }
}
