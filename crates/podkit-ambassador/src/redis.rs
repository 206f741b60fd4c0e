//! The Redis protocol (RESP): client commands, how each is sharded, answers from servers, and
//! the merging of split commands.
//!
//! A command is routed by its keys: single-key commands go to the key's server; MGET, MSET,
//! DEL, EXISTS, UNLINK and TOUCH are split by server and their answers merged; commands over
//! several keys that Redis runs atomically (RENAME, SINTERSTORE, EVAL…) go to one server when
//! all their keys are there (use a hash tag) and are refused otherwise. Commands that have no
//! key or would hold a shared server connection (KEYS, MULTI, BLPOP, SUBSCRIBE…) get a clear
//! `-ERR` and the connection stays usable. Malformed RESP gets `-ERR Protocol error` and the
//! connection is closed, as Redis does: a client that sent it is out of step.

use bytes::{Bytes, BytesMut};

/// Most arguments in one command (Redis' own limit is 1024*1024 too).
const MAX_ARGS: usize = 1024 * 1024;
/// Longest inline command line.
const INLINE_MAX: usize = 64 * 1024;
/// Longest bulk string a server's answer may hold: Redis' default `proto-max-bulk-len`, which
/// also bounds what a server stores in one string. The whole answer is buffered before it is
/// passed on, so a larger claim is treated as a broken server, not waited for.
pub(crate) const ANSWER_BULK_MAX: usize = 512 * 1024 * 1024;
/// Most elements an aggregate answer may claim: twice the 2^32 members a Redis collection can
/// hold, since RESP2 sends a hash's fields and values as one flat array.
pub(crate) const ANSWER_ELEMENTS_MAX: i64 = 1 << 33;

/// One client command: the bytes as received and its arguments (the name first).
#[derive(Debug, Clone)]
pub(crate) struct Command {
    pub(crate) raw: Bytes,
    pub(crate) args: Vec<Bytes>,
}

impl Command {
    /// The command in RESP, whatever form it came in (inline commands are re-encoded).
    pub(crate) fn wire(&self) -> Bytes {
        if self.raw.first() == Some(&b'*') { self.raw.clone() } else { encode(&self.args) }
    }

    pub(crate) fn name_upper(&self) -> String {
        String::from_utf8_lossy(&self.args[0]).to_ascii_uppercase()
    }
}

/// Encodes arguments as a RESP array of bulk strings.
pub(crate) fn encode<B: AsRef<[u8]>>(args: &[B]) -> Bytes {
    let len: usize = args.iter().map(|a| a.as_ref().len() + 16).sum();
    let mut b = BytesMut::with_capacity(len + 16);
    b.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        let a = a.as_ref();
        b.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        b.extend_from_slice(a);
        b.extend_from_slice(b"\r\n");
    }
    b.freeze()
}

/// A protocol error: the message to send before closing the connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProtocolError(pub(crate) String);

/// The next complete command in `buf` (consumed from it), or `None` for more bytes. Empty
/// inline lines are skipped, as Redis skips them.
pub(crate) fn parse(buf: &mut BytesMut, max_request: usize) -> Result<Option<Command>, ProtocolError> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        if buf[0] != b'*' {
            let Some(nl) = crate::memcache::memchr(b'\n', buf) else {
                if buf.len() > INLINE_MAX {
                    return Err(ProtocolError("too big inline request".into()));
                }
                return Ok(None);
            };
            // The same limit whether or not the line's end arrived in the same read.
            if nl > INLINE_MAX {
                return Err(ProtocolError("too big inline request".into()));
            }
            let line = buf.split_to(nl + 1).freeze();
            let text = line[..nl].strip_suffix(b"\r").unwrap_or(&line[..nl]);
            let args: Vec<Bytes> =
                text.split(|b| b.is_ascii_whitespace()).filter(|t| !t.is_empty()).map(|t| line.slice_ref(t)).collect();
            if args.is_empty() {
                continue;
            }
            return Ok(Some(Command { raw: line, args }));
        }
        let Some((n, mut at)) = header(buf, 0, b'*')? else { return Ok(None) };
        if n <= 0 {
            // `*0` and `*-1` carry no command; Redis ignores them.
            let _ = buf.split_to(at);
            continue;
        }
        if n as usize > MAX_ARGS {
            return Err(ProtocolError("invalid multibulk length".into()));
        }
        // Capacity follows what arrives, not what the header claims (`*1000000` is 7 bytes).
        let mut ranges = Vec::with_capacity((n as usize).min(64));
        for _ in 0..n {
            if at >= buf.len() {
                return Ok(None);
            }
            if buf[at] != b'$' {
                return Err(ProtocolError(format!("expected '$', got '{}'", buf[at].escape_ascii())));
            }
            let Some((len, data)) = header(buf, at, b'$')? else { return Ok(None) };
            let Ok(len) = usize::try_from(len) else { return Err(ProtocolError("invalid bulk length".into())) };
            if len > max_request {
                return Err(ProtocolError(format!(
                    "argument of {len} bytes is larger than the proxy's limit of {max_request}"
                )));
            }
            let Some(end) = data.checked_add(len).filter(|&end| end <= max_request) else {
                return Err(ProtocolError(format!("request larger than the proxy's limit of {max_request} bytes")));
            };
            if buf.len() < end + 2 {
                buf.reserve(end + 2 - buf.len());
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError("bulk string not terminated by CRLF".into()));
            }
            ranges.push(data..end);
            at = end + 2;
        }
        let raw = buf.split_to(at).freeze();
        let args = ranges.into_iter().map(|r| raw.slice(r)).collect();
        return Ok(Some(Command { raw, args }));
    }
}

/// Reads `<kind><number>\r\n` at `at`: the number and where the line ends.
fn header(buf: &[u8], at: usize, kind: u8) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(nl) = crate::memcache::memchr(b'\n', &buf[at..]) else {
        if buf.len() - at > 64 {
            return Err(ProtocolError(format!("invalid {} length", if kind == b'*' { "multibulk" } else { "bulk" })));
        }
        return Ok(None);
    };
    let line = &buf[at + 1..at + nl];
    let line = line.strip_suffix(b"\r").ok_or_else(|| ProtocolError("line not terminated by CRLF".into()))?;
    let n = std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| ProtocolError(format!("invalid {} length", if kind == b'*' { "multibulk" } else { "bulk" })))?;
    Ok(Some((n, at + nl + 1)))
}

// === routing ===

/// How a command is served.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Answered by the proxy.
    Local(Local),
    /// Sent as it is to the server of the argument at this index.
    Key(usize),
    /// Sent as it is to the one server that holds every key at these indexes; refused when
    /// they are on different servers.
    Keys(Vec<usize>),
    /// Split by server, each part re-encoded, the answers merged.
    Split(Split),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Local {
    Ping,
    Echo,
    Quit,
    Auth,
    Select,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Split {
    /// MGET: values in key order.
    Mget,
    /// MSET: +OK when every part is.
    Mset,
    /// DEL, EXISTS, UNLINK, TOUCH: the sum of the counts.
    Count,
}

/// Routes `cmd`, or says why it cannot go through the proxy (the `-ERR` text).
pub(crate) fn route(cmd: &Command) -> Result<Route, String> {
    let name = cmd.name_upper();
    let argc = cmd.args.len();
    let arity = |min: usize| -> Result<(), String> {
        if argc < min {
            Err(format!("wrong number of arguments for '{}' command", name.to_lowercase()))
        } else {
            Ok(())
        }
    };
    let route = match name.as_str() {
        "PING" => Route::Local(Local::Ping),
        "ECHO" => {
            arity(2)?;
            Route::Local(Local::Echo)
        }
        "QUIT" => Route::Local(Local::Quit),
        "AUTH" => {
            arity(2)?;
            Route::Local(Local::Auth)
        }
        "SELECT" => {
            arity(2)?;
            Route::Local(Local::Select)
        }
        "MGET" => {
            arity(2)?;
            Route::Split(Split::Mget)
        }
        "DEL" | "EXISTS" | "UNLINK" | "TOUCH" => {
            arity(2)?;
            Route::Split(Split::Count)
        }
        "MSET" => {
            if argc < 3 || argc.is_multiple_of(2) {
                return Err("wrong number of arguments for 'mset' command".into());
            }
            Route::Split(Split::Mset)
        }
        "MSETNX" => {
            if argc < 3 || argc.is_multiple_of(2) {
                return Err("wrong number of arguments for 'msetnx' command".into());
            }
            Route::Keys((1..argc).step_by(2).collect())
        }
        "RENAME" | "RENAMENX" | "RPOPLPUSH" | "LMOVE" | "SMOVE" | "COPY" | "LCS" | "ZRANGESTORE" | "GEOSEARCHSTORE" => {
            arity(3)?;
            Route::Keys(vec![1, 2])
        }
        "SDIFF" | "SINTER" | "SUNION" | "SDIFFSTORE" | "SINTERSTORE" | "SUNIONSTORE" | "PFCOUNT" | "PFMERGE" => {
            arity(2)?;
            Route::Keys((1..argc).collect())
        }
        "BITOP" => {
            arity(4)?;
            Route::Keys((2..argc).collect())
        }
        "ZDIFF" | "ZINTER" | "ZUNION" | "ZINTERCARD" | "SINTERCARD" => Route::Keys(numkeys(cmd, 1, 2, &name)?),
        "ZDIFFSTORE" | "ZINTERSTORE" | "ZUNIONSTORE" => {
            let mut keys = numkeys(cmd, 2, 3, &name)?;
            keys.insert(0, 1);
            Route::Keys(keys)
        }
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => {
            let keys = numkeys(cmd, 2, 3, &name)?;
            if keys.is_empty() {
                return Err(format!("{name} with no keys cannot be sharded; pass the keys it touches"));
            }
            Route::Keys(keys)
        }
        "SORT" | "SORT_RO" => {
            arity(2)?;
            let mut keys = vec![1];
            if let Some(i) = cmd.args.iter().position(|a| a.eq_ignore_ascii_case(b"STORE"))
                && i + 1 < argc
            {
                keys.push(i + 1);
            }
            Route::Keys(keys)
        }
        "OBJECT" | "XINFO" | "XGROUP" => {
            arity(3)?;
            Route::Key(2)
        }
        n if SINGLE_KEY.binary_search(&n).is_ok() => {
            arity(2)?;
            Route::Key(1)
        }
        n if TRANSACTIONS.contains(&n) => {
            return Err(format!(
                "'{n}' is not supported through the proxy: a transaction's commands would go to the servers of their keys, not to one connection; to change keys together, give them a common hash tag and use EVAL (a script runs atomically on their server), or talk to Redis directly"
            ));
        }
        n if BLOCKING.contains(&n) => {
            return Err(format!(
                "'{n}' is not supported through the proxy: a blocking command would hold a server connection that other clients share"
            ));
        }
        n => {
            return Err(format!(
                "'{n}' is not supported through the proxy: it has no key to shard by, or spans servers"
            ));
        }
    };
    Ok(route)
}

/// Keys given as `numkeys key…` with `numkeys` at index `at`.
fn numkeys(cmd: &Command, at: usize, first: usize, name: &str) -> Result<Vec<usize>, String> {
    let n = cmd
        .args
        .get(at)
        .and_then(|a| std::str::from_utf8(a).ok()?.parse::<usize>().ok())
        .ok_or_else(|| format!("wrong number of arguments for '{}' command", name.to_lowercase()))?;
    let Some(end) = first.checked_add(n).filter(|&end| end <= cmd.args.len()) else {
        return Err("Number of keys can't be greater than number of args".into());
    };
    Ok((first..end).collect())
}

/// Commands whose one key is the first argument (sorted, for binary search).
const SINGLE_KEY: &[&str] = &[
    "APPEND",
    "BITCOUNT",
    "BITFIELD",
    "BITFIELD_RO",
    "BITPOS",
    "DECR",
    "DECRBY",
    "DUMP",
    "EXPIRE",
    "EXPIREAT",
    "EXPIRETIME",
    "GEOADD",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GEORADIUS",
    "GEORADIUSBYMEMBER",
    "GEORADIUSBYMEMBER_RO",
    "GEORADIUS_RO",
    "GEOSEARCH",
    "GET",
    "GETBIT",
    "GETDEL",
    "GETEX",
    "GETRANGE",
    "GETSET",
    "HDEL",
    "HEXISTS",
    "HEXPIRE",
    "HEXPIREAT",
    "HEXPIRETIME",
    "HGET",
    "HGETALL",
    "HGETDEL",
    "HGETEX",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HMSET",
    "HPERSIST",
    "HPEXPIRE",
    "HPEXPIREAT",
    "HPEXPIRETIME",
    "HPTTL",
    "HRANDFIELD",
    "HSCAN",
    "HSET",
    "HSETEX",
    "HSETNX",
    "HSTRLEN",
    "HTTL",
    "HVALS",
    "INCR",
    "INCRBY",
    "INCRBYFLOAT",
    "LINDEX",
    "LINSERT",
    "LLEN",
    "LPOP",
    "LPOS",
    "LPUSH",
    "LPUSHX",
    "LRANGE",
    "LREM",
    "LSET",
    "LTRIM",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "PEXPIRETIME",
    "PFADD",
    "PSETEX",
    "PTTL",
    "RESTORE",
    "RPOP",
    "RPUSH",
    "RPUSHX",
    "SADD",
    "SCARD",
    "SET",
    "SETBIT",
    "SETEX",
    "SETNX",
    "SETRANGE",
    "SISMEMBER",
    "SMEMBERS",
    "SMISMEMBER",
    "SPOP",
    "SRANDMEMBER",
    "SREM",
    "SSCAN",
    "STRLEN",
    "SUBSTR",
    "TTL",
    "TYPE",
    "XACK",
    "XADD",
    "XAUTOCLAIM",
    "XCLAIM",
    "XDEL",
    "XLEN",
    "XPENDING",
    "XRANGE",
    "XREVRANGE",
    "XSETID",
    "XTRIM",
    "ZADD",
    "ZCARD",
    "ZCOUNT",
    "ZINCRBY",
    "ZLEXCOUNT",
    "ZMSCORE",
    "ZPOPMAX",
    "ZPOPMIN",
    "ZRANDMEMBER",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZRANK",
    "ZREM",
    "ZREMRANGEBYLEX",
    "ZREMRANGEBYRANK",
    "ZREMRANGEBYSCORE",
    "ZREVRANGE",
    "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE",
    "ZREVRANK",
    "ZSCAN",
    "ZSCORE",
];

const BLOCKING: &[&str] = &[
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BLMOVE",
    "BLMPOP",
    "BZPOPMIN",
    "BZPOPMAX",
    "BZMPOP",
    "XREAD",
    "XREADGROUP",
    "WAIT",
    "WAITAOF",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "SSUBSCRIBE",
    "MONITOR",
];

/// MULTI … EXEC and WATCH tie commands to one server connection, which the proxy shares among
/// clients and picks per key.
const TRANSACTIONS: &[&str] = &["MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH"];

/// The parts of a split command: for each server (by index), the command for its keys; and
/// for each key of the original, which part it went to. `servers[i]` is the server of the
/// i-th key.
pub(crate) fn split(cmd: &Command, kind: Split, servers: &[usize]) -> (Vec<(usize, Bytes)>, Vec<u32>) {
    let step = if kind == Split::Mset { 2 } else { 1 };
    let mut parts: Vec<(usize, Vec<&Bytes>)> = Vec::new();
    let mut groups = Vec::with_capacity(servers.len());
    for (n, i) in (1..cmd.args.len()).step_by(step).enumerate() {
        let s = servers[n];
        let g = match parts.iter().position(|p| p.0 == s) {
            Some(g) => g,
            None => {
                parts.push((s, vec![&cmd.args[0]]));
                parts.len() - 1
            }
        };
        parts[g].1.extend(&cmd.args[i..i + step]);
        groups.push(g as u32);
    }
    if parts.len() == 1 {
        return (vec![(parts[0].0, cmd.wire())], groups);
    }
    (parts.into_iter().map(|(s, args)| (s, encode(&args))).collect(), groups)
}

// === answers from servers ===

/// Bytes of the first complete RESP value in `buf`, `Ok(None)` when more are needed, or an
/// error when it is not RESP.
pub(crate) fn frame(buf: &[u8]) -> Result<Option<usize>, String> {
    frame_at(buf, 0, 0)
}

fn frame_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, String> {
    if depth > 64 {
        return Err("answer nested too deeply".into());
    }
    let Some(&kind) = buf.get(at) else { return Ok(None) };
    let Some(nl) = crate::memcache::memchr(b'\n', &buf[at..]) else { return Ok(None) };
    let line_end = at + nl + 1;
    let number = || -> Result<i64, String> {
        let t = &buf[at + 1..at + nl];
        let t = t.strip_suffix(b"\r").unwrap_or(t);
        std::str::from_utf8(t).ok().and_then(|s| s.parse().ok()).ok_or_else(|| "a malformed length".to_string())
    };
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(Some(line_end)),
        b'$' | b'=' | b'!' => {
            let n = number()?;
            // -1 is RESP2's null; no other negative length means anything.
            if n == -1 {
                return Ok(Some(line_end));
            }
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= ANSWER_BULK_MAX)
                .ok_or_else(|| format!("a bulk length of {n} (at most {ANSWER_BULK_MAX} is accepted)"))?;
            let end = line_end.checked_add(n).and_then(|e| e.checked_add(2)).ok_or("a bulk length out of range")?;
            if buf.len() < end {
                return Ok(None);
            }
            // A server out of step with its own framing would otherwise be followed blindly.
            if &buf[end - 2..end] != b"\r\n" {
                return Err("a bulk string not terminated by CRLF".into());
            }
            Ok(Some(end))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = number()?;
            if n == -1 {
                return Ok(Some(line_end));
            }
            let per = if matches!(kind, b'%' | b'|') { 2 } else { 1 };
            let elements = n
                .checked_mul(per)
                .filter(|e| (0..=ANSWER_ELEMENTS_MAX).contains(e))
                .ok_or_else(|| format!("an aggregate of {n} (at most {ANSWER_ELEMENTS_MAX} elements are accepted)"))?;
            let mut at = line_end;
            for _ in 0..elements {
                match frame_at(buf, at, depth + 1)? {
                    Some(end) => at = end,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
        other => Err(format!("not RESP (starts with {:?})", other as char)),
    }
}

/// Merges the answers of a split command (`groups[i]`: the answer index of the i-th key).
pub(crate) fn merge(kind: Split, groups: &[u32], answers: &[Bytes]) -> Bytes {
    if let Some(err) = answers.iter().find(|a| a.first() == Some(&b'-')) {
        return err.clone();
    }
    match kind {
        Split::Mset => Bytes::from_static(b"+OK\r\n"),
        Split::Count => {
            let mut sum = 0i64;
            for a in answers {
                let t = a.strip_prefix(b":").and_then(|t| t.strip_suffix(b"\r\n"));
                let n = t.and_then(|t| std::str::from_utf8(t).ok()?.parse::<i64>().ok());
                // A sum past i64 is as wrong an answer as a count that does not parse.
                match n.and_then(|n| sum.checked_add(n)) {
                    Some(total) => sum = total,
                    None => return Bytes::from_static(b"-ERR podkit: a server sent an unexpected answer\r\n"),
                }
            }
            Bytes::from(format!(":{sum}\r\n"))
        }
        Split::Mget => {
            let mut elements = Vec::with_capacity(answers.len());
            for a in answers {
                match array_elements(a) {
                    Some(e) => elements.push(e.into_iter()),
                    None => return Bytes::from_static(b"-ERR podkit: a server sent an unexpected answer\r\n"),
                }
            }
            let mut out = BytesMut::with_capacity(answers.iter().map(Bytes::len).sum::<usize>() + 16);
            out.extend_from_slice(format!("*{}\r\n", groups.len()).as_bytes());
            for &g in groups {
                match elements[g as usize].next() {
                    Some(e) => out.extend_from_slice(e),
                    None => return Bytes::from_static(b"-ERR podkit: a server sent an unexpected answer\r\n"),
                }
            }
            out.freeze()
        }
    }
}

/// The elements of an array answer, each as its bytes.
fn array_elements(a: &[u8]) -> Option<Vec<&[u8]>> {
    if a.first() != Some(&b'*') {
        return None;
    }
    let nl = crate::memcache::memchr(b'\n', a)?;
    let n: usize = std::str::from_utf8(a[1..nl].strip_suffix(b"\r")?).ok()?.parse().ok()?;
    let mut at = nl + 1;
    // Every element takes at least three bytes, whatever the header claims.
    let mut out = Vec::with_capacity(n.min(a.len() / 3));
    for _ in 0..n {
        let end = frame_at(a, at, 1).ok()??;
        out.push(&a[at..end]);
        at = end;
    }
    Some(out)
}

/// A bulk string answer.
pub(crate) fn bulk(data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 16);
    b.extend_from_slice(format!("${}\r\n", data.len()).as_bytes());
    b.extend_from_slice(data);
    b.extend_from_slice(b"\r\n");
    b.freeze()
}

/// An error answer: `-ERR <message>` (or the message as it is when it has its own code).
pub(crate) fn error(message: &str) -> Bytes {
    let message = message.replace(['\r', '\n'], " ");
    Bytes::from(format!("-ERR {message}\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Command {
        let mut buf = BytesMut::from(&encode(args)[..]);
        parse(&mut buf, 1 << 20).unwrap().unwrap()
    }

    #[test]
    fn parses_multibulk_and_inline_in_pieces() {
        let wire = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\nPING\r\n\r\n";
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in wire.iter() {
            buf.extend_from_slice(&[b]);
            while let Some(c) = parse(&mut buf, 1 << 20).unwrap() {
                got.push(c.args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>());
            }
        }
        assert_eq!(got, [vec!["GET", "hello"], vec!["PING"]]);
        assert!(buf.is_empty());
    }

    #[test]
    fn malformed_input_is_a_protocol_error() {
        for bad in [&b"*x\r\n"[..], b"*1\r\n:3\r\n", b"*1\r\n$3\r\nabcd\r\n", b"*1\r\n$-5\r\n"] {
            let mut buf = BytesMut::from(bad);
            assert!(parse(&mut buf, 1 << 20).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut buf = BytesMut::from(&b"*1\r\n$100\r\n"[..]);
        assert!(parse(&mut buf, 10).unwrap_err().0.contains("limit"));
    }

    #[test]
    fn routes() {
        assert_eq!(route(&cmd(&["get", "k"])), Ok(Route::Key(1)));
        assert_eq!(route(&cmd(&["MGET", "a", "b"])), Ok(Route::Split(Split::Mget)));
        assert_eq!(route(&cmd(&["rename", "a", "b"])), Ok(Route::Keys(vec![1, 2])));
        assert_eq!(route(&cmd(&["eval", "s", "2", "a", "b", "x"])), Ok(Route::Keys(vec![3, 4])));
        assert_eq!(route(&cmd(&["zunionstore", "d", "2", "a", "b"])), Ok(Route::Keys(vec![1, 3, 4])));
        assert!(route(&cmd(&["eval", "s", "0"])).unwrap_err().contains("no keys"));
        assert!(route(&cmd(&["keys", "*"])).unwrap_err().contains("not supported"));
        assert!(route(&cmd(&["blpop", "a", "0"])).unwrap_err().contains("blocking"));
        for tx in ["multi", "EXEC", "discard", "watch", "unwatch"] {
            let why = route(&cmd(&[tx])).unwrap_err();
            let name = tx.to_uppercase();
            assert!(why.starts_with(&format!("'{name}' is not supported through the proxy: a transaction")), "{why}");
            assert!(why.contains("hash tag") && why.contains("talk to Redis directly"), "{why}");
            assert!(!why.contains("blocking"), "{why}");
        }
        assert!(route(&cmd(&["get"])).unwrap_err().contains("wrong number"));
        assert!(SINGLE_KEY.windows(2).all(|w| w[0] < w[1]), "SINGLE_KEY must stay sorted");
    }

    #[test]
    fn split_and_merge() {
        let c = cmd(&["MGET", "a", "b", "c"]);
        let (parts, groups) = split(&c, Split::Mget, &[0, 1, 0]);
        assert_eq!(parts.len(), 2);
        assert_eq!(&parts[0].1[..], &encode(&["MGET", "a", "c"])[..]);
        assert_eq!(groups, [0, 1, 0]);
        let merged = merge(
            Split::Mget,
            &groups,
            &[Bytes::from_static(b"*2\r\n$1\r\nA\r\n$-1\r\n"), Bytes::from_static(b"*1\r\n$1\r\nB\r\n")],
        );
        assert_eq!(&merged[..], b"*3\r\n$1\r\nA\r\n$1\r\nB\r\n$-1\r\n");
        let sum = merge(Split::Count, &[0, 1], &[Bytes::from_static(b":2\r\n"), Bytes::from_static(b":1\r\n")]);
        assert_eq!(&sum[..], b":3\r\n");
    }

    #[test]
    fn frames() {
        assert_eq!(frame(b"+OK\r\n"), Ok(Some(5)));
        assert_eq!(frame(b"$3\r\nabc\r\n"), Ok(Some(9)));
        assert_eq!(frame(b"$3\r\nab"), Ok(None));
        assert_eq!(frame(b"*2\r\n$1\r\na\r\n$-1\r\n:1\r\n"), Ok(Some(16)));
        assert_eq!(frame(b"*2\r\n$1\r\na\r\n"), Ok(None));
        assert!(frame(b"hello\r\n").is_err());
    }

    #[test]
    fn answer_lengths_beyond_the_bounds_are_errors_not_waits() {
        let max = ANSWER_BULK_MAX;
        assert_eq!(frame(format!("${max}\r\n").as_bytes()), Ok(None));
        for bad in [format!("${}\r\n", max + 1), format!("${}\r\n", i64::MAX), "$-2\r\n".into()] {
            assert!(frame(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let max = ANSWER_ELEMENTS_MAX;
        assert_eq!(frame(format!("*{max}\r\n").as_bytes()), Ok(None));
        assert_eq!(frame(format!("%{}\r\n", max / 2).as_bytes()), Ok(None));
        for bad in [format!("*{}\r\n", max + 1), format!("%{}\r\n", max / 2 + 1), format!("|{}\r\n", i64::MAX)] {
            assert!(frame(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(frame(b"*-1\r\n"), Ok(Some(5)));
        assert!(frame(b"*-2\r\n").is_err());
    }

    #[test]
    fn a_bulk_answer_must_end_where_its_length_says() {
        assert!(frame(b"$3\r\nabcXY").is_err());
        assert!(frame(b"*1\r\n$1\r\nab\r\n").is_err());
    }

    #[test]
    fn merged_counts_that_overflow_are_an_error() {
        let answers = [Bytes::from_static(b":9223372036854775807\r\n"), Bytes::from_static(b":1\r\n")];
        assert!(merge(Split::Count, &[0, 1], &answers).starts_with(b"-ERR"));
    }

    #[test]
    fn a_numkeys_that_overflows_is_refused() {
        let huge = u64::MAX.to_string();
        for args in [&["eval", "s", &huge, "a"][..], &["zunionstore", "d", &huge, "a"], &["zinter", &huge, "a"]] {
            assert!(route(&cmd(args)).unwrap_err().contains("Number of keys"), "{args:?}");
        }
    }

    #[test]
    fn an_overlong_inline_line_is_refused_even_when_its_end_has_arrived() {
        let mut line = vec![b'a'; INLINE_MAX + 1];
        line.extend_from_slice(b"\r\n");
        assert!(parse(&mut BytesMut::from(&line[..]), 1 << 20).is_err());
    }
}
