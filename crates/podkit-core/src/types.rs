//! Small value types shared by every command's configuration.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

// === impl Duration ===

/// A duration written the way operators write them: `30s`, `500ms`, `2m`, `1h 30m`.
///
/// A newtype rather than `std::time::Duration` so that flags, environment variables and config
/// files all accept (and `/config` prints) the same human form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// The longest duration any option takes: long enough for any real timeout, short enough
    /// that adding it to a clock reading cannot overflow.
    pub const MAX: Duration = Duration::from_secs(100 * 86_400);

    /// Parses a duration that must be more than zero.
    pub fn parse_positive(s: &str) -> Result<Duration, String> {
        let d: Duration = s.parse()?;
        if d.0.is_zero() {
            return Err("must be more than zero".into());
        }
        Ok(d)
    }

    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| format!("{e}; expected a duration such as 30s, 500ms or 2m"))?;
        if d > Duration::MAX.0 {
            return Err(format!("{s} is too long; at most {}", Duration::MAX));
        }
        Ok(Duration(d))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Duration {
    /// Config files write durations as humans do (`2s`, `500ms`), the same form as the flags.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

// === impl Argv ===

/// A command to run, as argv. On the command line it is one string split the way a POSIX
/// shell splits words (quotes and backslashes honoured), but it is never given to a shell: no
/// globbing, no variables, no pipes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(Vec<String>);

impl Argv {
    pub fn new(argv: Vec<String>) -> Result<Self, String> {
        if argv.is_empty() || argv[0].is_empty() {
            return Err("expected a command, got an empty one".into());
        }
        Ok(Self(argv))
    }

    pub fn program(&self) -> &str {
        &self.0[0]
    }

    pub fn args(&self) -> &[String] {
        &self.0[1..]
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl FromStr for Argv {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let words = shlex::split(s).ok_or_else(|| {
            "unbalanced quotes; expected a command such as: curl -fsS http://127.0.0.1:8080/ready".to_string()
        })?;
        Argv::new(words)
    }
}

impl fmt::Display for Argv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joined = shlex::try_join(self.0.iter().map(String::as_str)).map_err(|_| fmt::Error)?;
        f.write_str(&joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_in_human_form() {
        assert_eq!("30s".parse::<Duration>().unwrap(), Duration::from_secs(30));
        assert_eq!("1m 30s".parse::<Duration>().unwrap(), Duration::from_secs(90));
        assert_eq!(" 250ms".parse::<Duration>().unwrap(), Duration::from_millis(250));
        assert_eq!(Duration::from_secs(90).to_string(), "1m 30s");
        let err = "30".parse::<Duration>().unwrap_err();
        assert!(err.contains("expected a duration such as 30s"), "{err}");
        assert!("1000000h".parse::<Duration>().unwrap_err().contains("too long"));
        assert!(Duration::parse_positive("0s").is_err());
    }

    #[test]
    fn argv_splits_like_a_shell_but_keeps_metacharacters_literal() {
        let argv: Argv = r#"sh -c 'echo "a b" > /tmp/x' $HOME"#.parse().unwrap();
        assert_eq!(argv.program(), "sh");
        assert_eq!(argv.args(), ["-c", r#"echo "a b" > /tmp/x"#, "$HOME"]);
        assert!("echo 'unterminated".parse::<Argv>().is_err());
        assert!("".parse::<Argv>().is_err());
    }
}

// === impl HttpUrl ===

/// A URL that podkit calls: `http` or `https` with a host, checked when the option is parsed, so
/// `--notify-url ftp://…` or a relative URL stops podkit at start (exit 64) rather than failing
/// at the first call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(reqwest::Url);

impl HttpUrl {
    pub fn into_inner(self) -> reqwest::Url {
        self.0
    }
}

impl FromStr for HttpUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "expected an http:// or https:// URL such as http://127.0.0.1:8080/path";
        let url = reqwest::Url::parse(s.trim()).map_err(|e| format!("{e}; {EXPECTED}"))?;
        match url.scheme() {
            "http" | "https" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(HttpUrl(url)),
            "http" | "https" => Err(format!("{s:?} has no host; {EXPECTED}")),
            other => Err(format!("scheme {other:?} is not supported; {EXPECTED}")),
        }
    }
}

impl std::ops::Deref for HttpUrl {
    type Target = reqwest::Url;

    fn deref(&self) -> &reqwest::Url {
        &self.0
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod http_url_tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        assert_eq!("http://127.0.0.1:8080/x".parse::<HttpUrl>().unwrap().port(), Some(8080));
        assert!("https://example.test/".parse::<HttpUrl>().is_ok());
        assert!("ftp://h/x".parse::<HttpUrl>().unwrap_err().contains("scheme \"ftp\""));
        assert!("/relative".parse::<HttpUrl>().unwrap_err().contains("expected an http://"));
        assert!("localhost:8080".parse::<HttpUrl>().is_err(), "a host:port is not a URL");
    }
}
