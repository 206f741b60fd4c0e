//! `syslog+tcp://host:port` and `syslog+tls://host:port`: RFC 5424 messages over TCP with
//! octet-counting framing (RFC 6587 §3.4.1; RFC 5425 over TLS), one message per record.
//!
//! Plain syslog has no acknowledgement, so "delivered" is made as strong as TCP allows: after
//! writing a batch, podkit waits until the receiver's kernel has acknowledged every byte (the
//! socket's unsent-and-unacknowledged count, `SIOCOUTQ`, is zero) before the checkpoint moves.
//! A receiver that dies with the batch in flight leaves bytes unacknowledged or resets the
//! connection: the batch is sent again on a new connection. What a receiver acknowledged and
//! then lost (it crashed before writing it out) is beyond what the protocol can tell.
//!
//! Each message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - - [SD-ID id="…" path="…" offset="…"
//! stream="…" LABEL="…"] TEXT`. The severity is err for stderr lines, info otherwise; the
//! facility (`facility=`, default user), APP-NAME (`app=`, default podkit), HOSTNAME
//! (`hostname=`, default this host's name) and SD-ID (`sd_id=`) are options. The default SD-ID
//! uses 32473, the enterprise number RFC 5612 sets aside for documentation; set your own.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Delivered, SendError, Sink};
use crate::record::{Body, Record};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_SD_ID: &str = "podkit@32473";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyslogOptions {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: Option<TlsOptions>,
    pub(crate) facility: u8,
    pub(crate) app: String,
    pub(crate) hostname: String,
    pub(crate) sd_id: String,
    pub(crate) timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsOptions {
    /// The CA certificates (PEM) the receiver's certificate must chain to; the platform's
    /// roots without it.
    pub(crate) ca: Option<PathBuf>,
    /// The name the certificate must carry; the host without it.
    pub(crate) server_name: Option<String>,
    /// A client certificate chain and its key (PEM), for receivers that authenticate senders.
    pub(crate) client: Option<(PathBuf, PathBuf)>,
}

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

impl SyslogOptions {
    pub(crate) fn parse(given: &str, url: &url::Url, tls: bool) -> Result<SyslogOptions, String> {
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| format!("{given}: no host"))?;
        let port = url.port().ok_or_else(|| format!("{given}: give the port (syslog+tcp://HOST:PORT)"))?;
        if !matches!(url.path(), "" | "/") {
            return Err(format!("{given}: a syslog URL has no path"));
        }
        let mut o = SyslogOptions {
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
            tls: tls.then_some(TlsOptions { ca: None, server_name: None, client: None }),
            facility: 1,
            app: "podkit".into(),
            hostname: nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "-".into()),
            sd_id: DEFAULT_SD_ID.into(),
            timeout: DEFAULT_TIMEOUT,
        };
        let (mut cert, mut key) = (None, None);
        for (k, v) in url.query_pairs() {
            match (&*k, o.tls.as_mut()) {
                ("facility", _) => {
                    o.facility = FACILITIES
                        .iter()
                        .position(|f| *f == v)
                        .map(|i| i as u8)
                        .or_else(|| v.parse().ok().filter(|n| *n < 24))
                        .ok_or_else(|| {
                            format!("{given}: facility={v}: expected a name (user, local0…local7, …) or 0-23")
                        })?
                }
                ("app", _) => o.app = v.into_owned(),
                ("hostname", _) => o.hostname = v.into_owned(),
                ("sd_id", _) => {
                    if v.is_empty() || v.len() > 32 || !v.bytes().all(sd_name_byte) {
                        return Err(format!("{given}: sd_id={v}: 1-32 printable characters, none of = ] \" or space"));
                    }
                    o.sd_id = v.into_owned();
                }
                ("timeout", _) => o.timeout = super::parse_timeout(given, &v)?,
                ("ca", Some(t)) if v.starts_with('/') => t.ca = Some(PathBuf::from(&*v)),
                ("ca", Some(_)) => return Err(format!("{given}: ca={v}: give an absolute path")),
                ("server_name", Some(t)) => t.server_name = Some(v.into_owned()),
                ("cert" | "key", Some(_)) if !v.starts_with('/') => {
                    return Err(format!("{given}: {k}={v}: give an absolute path"));
                }
                ("cert", Some(_)) => cert = Some(PathBuf::from(&*v)),
                ("key", Some(_)) => key = Some(PathBuf::from(&*v)),
                (other, _) => {
                    let tls_known = if tls { ", ca, server_name, cert, key" } else { "" };
                    return Err(format!(
                        "{given}: unknown option {other} (known: facility, app, hostname, sd_id, timeout{tls_known})"
                    ));
                }
            }
        }
        match (cert, key, o.tls.as_mut()) {
            (Some(c), Some(k), Some(t)) => t.client = Some((c, k)),
            (None, None, _) => {}
            _ => return Err(format!("{given}: give both cert= and key= (the client certificate and its key)")),
        }
        o.app = header_field(&o.app, 48);
        o.hostname = header_field(&o.hostname, 255);
        Ok(o)
    }
}

/// A header field as RFC 5424 allows it: printable ASCII, no spaces, bounded, `-` if empty.
fn header_field(s: &str, max: usize) -> String {
    let out: String = s.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if out.is_empty() { "-".into() } else { out }
}

fn sd_name_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'=' | b']' | b'"')
}

/// An SD-NAME made of `name`: the characters it may not hold become `_`, at most 32.
fn sd_name(name: &str) -> String {
    let out: String = name.bytes().take(32).map(|b| if sd_name_byte(b) { b as char } else { '_' }).collect();
    if out.is_empty() { "_".into() } else { out }
}

fn sd_value(out: &mut String, v: &str) {
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// A RFC 5424 TIMESTAMP (at most 6 fractional digits); the NILVALUE if `ts` is not RFC 3339.
fn timestamp(ts: &str) -> String {
    ts.parse::<jiff::Timestamp>().map_or_else(|_| "-".into(), |t| format!("{t:.6}"))
}

/// Appends one octet-counted message for `r`.
fn frame(buf: &mut Vec<u8>, o: &SyslogOptions, r: &Record) {
    use std::fmt::Write;
    let severity = if r.stream.as_deref() == Some("stderr") { 3 } else { 6 };
    let mut m = String::with_capacity(256);
    let _ = write!(
        m,
        "<{}>1 {} {} {} - - [{} id=\"{}:{}\" path=\"",
        u16::from(o.facility) * 8 + severity,
        timestamp(&r.ts),
        o.hostname,
        o.app,
        o.sd_id,
        r.key,
        r.offset
    );
    sd_value(&mut m, &r.path);
    let _ = write!(m, "\" offset=\"{}\"", r.offset);
    if let Some(s) = &r.stream {
        m.push_str(" stream=\"");
        sd_value(&mut m, s);
        m.push('"');
    }
    for (i, (k, v)) in r.labels.iter().enumerate() {
        let name = sd_name(k);
        let taken = ["id", "path", "offset", "stream"].contains(&name.as_str())
            || r.labels[..i].iter().any(|(earlier, _)| sd_name(earlier) == name);
        if !taken {
            let _ = write!(m, " {name}=\"");
            sd_value(&mut m, v);
            m.push('"');
        }
    }
    m.push_str("] ");
    match &r.body {
        Body::Line(l) => m.push_str(l),
        Body::Fields(f) => m.push_str(&serde_json::to_string(f).expect("fields serialize")),
    }
    let _ = write!(BufWrite(buf), "{} ", m.len());
    buf.extend_from_slice(m.as_bytes());
}

struct BufWrite<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for BufWrite<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(buf).await,
            Conn::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
        }
    }
}

nix::ioctl_read_bad!(unacknowledged_bytes, nix::libc::TIOCOUTQ, nix::libc::c_int);

/// Bytes written to the socket that the peer has not acknowledged yet.
fn unacknowledged(s: &TcpStream) -> std::io::Result<i32> {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through the pointer, which points at `n`;
    // the descriptor is the live socket `s` borrows.
    unsafe { unacknowledged_bytes(s.as_raw_fd(), &mut n) }.map_err(std::io::Error::from)?;
    Ok(n)
}

/// Whether the receiver has closed the connection (a zero-byte peek). A receiver never sends
/// anything else, so whatever is waiting is left where it is.
fn closed_by_peer(s: &TcpStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    let mut b = [0u8; 1];
    matches!(recv(s.as_raw_fd(), &mut b, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT), Ok(0))
}

pub(crate) struct SyslogSink {
    opts: SyslogOptions,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    conn: Option<Conn>,
}

impl std::fmt::Debug for SyslogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogSink").field("opts", &self.opts).field("connected", &self.conn.is_some()).finish()
    }
}

impl SyslogSink {
    /// Loads the TLS roots (a config error if they cannot be read); connects at the first
    /// batch.
    pub(crate) fn open(opts: SyslogOptions) -> Result<SyslogSink, String> {
        let tls = match &opts.tls {
            None => None,
            Some(t) => {
                podkit_core::http::install_crypto_provider();
                let mut roots = rustls::RootCertStore::empty();
                match &t.ca {
                    Some(ca) => {
                        use rustls::pki_types::pem::PemObject;
                        let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
                            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                            .map_err(|e| format!("ca {}: {e}", ca.display()))?;
                        if certs.is_empty() {
                            return Err(format!("ca {}: no certificate in it", ca.display()));
                        }
                        for c in certs {
                            roots.add(c).map_err(|e| format!("ca {}: {e}", ca.display()))?;
                        }
                    }
                    None => {
                        let found = rustls_native_certs::load_native_certs();
                        roots.add_parsable_certificates(found.certs);
                        if roots.is_empty() {
                            return Err("no CA certificates on this system: give ca=/path/ca.pem".into());
                        }
                    }
                }
                let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
                let config = match &t.client {
                    None => builder.with_no_client_auth(),
                    Some((cert, key)) => {
                        use rustls::pki_types::pem::PemObject;
                        let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
                            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                            .map_err(|e| format!("cert {}: {e}", cert.display()))?;
                        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
                            .map_err(|e| format!("key {}: {e}", key.display()))?;
                        builder.with_client_auth_cert(chain, key).map_err(|e| format!("client certificate: {e}"))?
                    }
                };
                let name = t.server_name.clone().unwrap_or_else(|| opts.host.clone());
                let name = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|e| format!("server name {name}: {e}"))?;
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
        };
        Ok(SyslogSink { opts, tls, conn: None })
    }

    async fn connect(&self) -> Result<Conn, String> {
        let addr = (self.opts.host.as_str(), self.opts.port);
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connecting: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Conn::Plain(tcp)),
            Some((connector, name)) => {
                let s = connector.connect(name.clone(), tcp).await.map_err(|e| format!("TLS handshake: {e}"))?;
                Ok(Conn::Tls(Box::new(s)))
            }
        }
    }

    async fn deliver(&mut self, buf: &[u8]) -> Result<(), String> {
        if self.conn.as_ref().is_some_and(|c| closed_by_peer(c.tcp())) {
            tracing::info!(host = %self.opts.host, port = self.opts.port, "the syslog receiver closed the connection; reconnecting");
            self.conn = None;
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        conn.write_all(buf).await.map_err(|e| format!("writing: {e}"))?;
        // Wait for the receiver's kernel to acknowledge every byte (see the module docs).
        let mut pause = Duration::from_micros(200);
        loop {
            let unacked = unacknowledged(conn.tcp()).map_err(|e| format!("SIOCOUTQ: {e}"))?;
            match conn.tcp().take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return Err(format!("the connection failed: {e}")),
            }
            if unacked == 0 {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        self.conn = Some(conn);
        Ok(())
    }
}

impl Sink for SyslogSink {
    async fn send(&mut self, records: Arc<[Record]>) -> Result<Delivered, SendError> {
        let mut buf = Vec::with_capacity(records.len() * 320);
        for r in records.iter() {
            frame(&mut buf, &self.opts, r);
        }
        let timeout = self.opts.timeout;
        match tokio::time::timeout(timeout, self.deliver(&buf)).await {
            Ok(Ok(())) => {
                Ok(Delivered { records: records.len() as u64, bytes: buf.len() as u64, ..Delivered::default() })
            }
            Ok(Err(why)) => {
                self.conn = None;
                Err(SendError::Retry(format!("syslog {}:{}: {why}", self.opts.host, self.opts.port)))
            }
            Err(_) => {
                self.conn = None;
                Err(SendError::Retry(format!(
                    "syslog {}:{}: the batch was not acknowledged within {timeout:?}",
                    self.opts.host, self.opts.port
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str) -> Result<SyslogOptions, String> {
        let u = url::Url::parse(s).unwrap();
        SyslogOptions::parse(s, &u, u.scheme().ends_with("tls"))
    }

    #[test]
    fn a_record_becomes_one_octet_counted_rfc5424_message() {
        let o = opts("syslog+tcp://h:514?facility=local0&app=web%20app&hostname=node-1").unwrap();
        let r = Record {
            key: Arc::from("00ab"),
            path: Arc::from("/var/log/a\"b].log"),
            offset: 7,
            ts: "2026-12-02T10:00:00.123456789Z".into(),
            stream: Some("stderr".into()),
            body: Body::Line("boom\nat main".into()),
            split: false,
            invalid_utf8: false,
            labels: Arc::new(vec![("pod name".into(), "w\\1".into()), ("id".into(), "x".into())]),
        };
        let mut buf = Vec::new();
        frame(&mut buf, &o, &r);
        let s = String::from_utf8(buf).unwrap();
        let (len, msg) = s.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert_eq!(
            msg,
            "<131>1 2026-12-02T10:00:00.123456Z node-1 webapp - - [podkit@32473 id=\"00ab:7\" \
             path=\"/var/log/a\\\"b\\].log\" offset=\"7\" stream=\"stderr\" pod_name=\"w\\\\1\"] boom\nat main"
        );
    }

    #[test]
    fn options_say_what_is_wrong() {
        assert!(opts("syslog+tcp://h").unwrap_err().contains("give the port"));
        assert!(opts("syslog+tcp://h:514?facility=local9").unwrap_err().contains("facility=local9"));
        assert!(opts("syslog+tcp://h:514?ca=/x").unwrap_err().contains("unknown option ca"));
        assert!(opts("syslog+tls://h:6514?ca=x").unwrap_err().contains("absolute path"));
        assert!(opts("syslog+tcp://h:514?sd_id=a%20b").unwrap_err().contains("sd_id"));
        assert_eq!(opts("syslog+tcp://h:514?facility=23").unwrap().facility, 23);
        let t = opts("syslog+tls://h:6514?ca=/ca.pem&server_name=logs").unwrap().tls.unwrap();
        assert_eq!(t.ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert!(opts("syslog+tls://h:6514?cert=/c.pem").unwrap_err().contains("both cert= and key="));
        let t = opts("syslog+tls://h:6514?cert=/c.pem&key=/k.pem").unwrap().tls.unwrap();
        assert_eq!(t.client, Some(("/c.pem".into(), "/k.pem".into())));
    }
}
