//! The HTTP source: one URL whose body becomes a version.
//!
//! A version is named by the hex SHA-256 of the body as downloaded, so the same bytes always
//! make the same version and a download of unchanged content publishes nothing. The body
//! streams to a temporary file in the versions directory, hashed on the way (a large body is
//! never held in memory), and then becomes `VERSIONS/<digest>/`:
//!
//! - a URL path ending in `.tar.gz` or `.tgz` is a gzip-compressed tar, `.tar` a tar and `.zip`
//!   a zip (compared without case); the archive is extracted into the version directory;
//! - any other URL is one file, saved as `<digest>/<last path segment>` (`index` when the path
//!   ends with `/`).
//!
//! Only the path's suffix decides, never the Content-Type: many servers label every download
//! `application/octet-stream`, and a rule that depends on the server's labelling would change
//! what users get when the server is reconfigured. The query string is not looked at.
//!
//! Extraction happens in a `.podkit-tmp-` directory beside the versions, every file and
//! directory is fsynced, and one `rename(2)` gives the version its name: a version directory
//! that exists is complete, even after a crash. An archive entry that would put anything outside
//! the version refuses the whole archive, naming the entry: a `..` component, an absolute path, a
//! symlink whose target is absolute or leads out (checked lexically against the link's directory,
//! then followed through the other links once all exist), a hard link to outside, a path that
//! goes through a symlink, and device, fifo and socket entries. Modes are kept less setuid and
//! setgid; directories stay writable by their owner, so that old versions can be removed.
//!
//! Conditional GET: the ETag and Last-Modified of the last 200 are kept with the digest of its
//! body and sent back (If-None-Match, If-Modified-Since) while that digest is the current
//! version; a 304 then answers "unchanged" without a download.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fmt::Display;
use std::fs;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{self, HeaderValue};
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;
use tokio::io::AsyncWriteExt;

/// A body larger than this is refused: nothing worth syncing into a pod is that big, and a
/// server that sends more is broken or hostile.
const MAX_BODY_BYTES: u64 = 1 << 30;
/// An archive whose content adds up to more than this is refused (a zip bomb).
const MAX_EXPANDED_BYTES: u64 = 4 << 30;
/// An archive with more entries than this is refused (a bomb made of empty files).
const MAX_ENTRIES: u64 = 1_000_000;
/// Links followed when checking where a symlink leads; Linux gives up after as many.
const MAX_LINK_HOPS: u32 = 40;
/// Longest zip symlink target read (Linux's PATH_MAX).
const MAX_LINK_TARGET: u64 = 4096;
/// How much of an error answer's body goes into the error.
const ERROR_BODY_BYTES: usize = 200;
/// Prefix of the temporary names made in the versions directory: the publisher removes what a
/// crash leaves there.
const TMP_PREFIX: &str = ".podkit-tmp-";

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

#[derive(Debug, Clone)]
pub(crate) struct HttpOptions {
    pub(crate) url: url::Url,
    /// Expected SHA-256 (hex) of the downloaded body; a mismatch is refused.
    pub(crate) sha256: Option<String>,
    /// Bound on the whole request.
    pub(crate) timeout: Duration,
    /// A bearer token file, read again at each fetch (optional).
    pub(crate) bearer_file: Option<PathBuf>,
}

/// A new version, complete at `versions_dir.join(&name)`.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) name: String,
    /// Bytes downloaded.
    pub(crate) bytes: u64,
}

/// What the body becomes, decided by the URL's path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    TarGz,
    Tar,
    Zip,
    /// One file, saved under this name.
    File(OsString),
}

/// Bounds on what one fetch may write; fields so that tests can make them small.
#[derive(Debug, Clone, Copy)]
struct Limits {
    body: u64,
    expanded: u64,
    entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { body: MAX_BODY_BYTES, expanded: MAX_EXPANDED_BYTES, entries: MAX_ENTRIES }
    }
}

/// The validators of a 200, with the digest of the body they came with.
#[derive(Debug, Clone)]
struct Validators {
    digest: String,
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
}

#[derive(Debug)]
pub(crate) struct HttpSource {
    client: reqwest::Client,
    opts: HttpOptions,
    /// The URL as errors show it (a password in it redacted).
    shown: String,
    kind: Kind,
    limits: Limits,
    last: Option<Validators>,
}

// === impl HttpSource ===

impl HttpSource {
    pub(crate) fn new(mut opts: HttpOptions) -> Result<HttpSource, String> {
        let shown = shown_url(&opts.url);
        if !matches!(opts.url.scheme(), "http" | "https") {
            return Err(format!("{shown}: expected an http:// or https:// URL"));
        }
        if let Some(want) = &opts.sha256 {
            if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("sha256 {want:?}: expected 64 hexadecimal digits"));
            }
            opts.sha256 = Some(want.to_ascii_lowercase());
        }
        let kind = Kind::of(&opts.url)?;
        let client = podkit_core::http::build(
            reqwest::Client::builder()
                .timeout(opts.timeout)
                .user_agent(concat!("podkit-sync/", env!("CARGO_PKG_VERSION"))),
        )?;
        Ok(HttpSource { client, opts, shown, kind, limits: Limits::default(), last: None })
    }

    /// Asks for the content, conditionally (If-None-Match / If-Modified-Since from the last
    /// answer whose version is `current`). Ok(None): unchanged (304, or a 200 whose body digest
    /// equals `current`). Ok(Some(f)): a new complete version now exists at
    /// `versions_dir.join(&f.name)`; `f.bytes` = bytes downloaded.
    pub(crate) async fn fetch(
        &mut self,
        versions_dir: &Path,
        current: Option<&str>,
    ) -> Result<Option<Fetched>, String> {
        let url = &self.shown;
        let mut req = self.client.get(self.opts.url.clone());
        if let Some(path) = &self.opts.bearer_file {
            req = req.header(header::AUTHORIZATION, bearer(path).await?);
        }
        // Validators belong to one body: sent only while that body is what is published, so a
        // 304 never confirms a version the caller does not have.
        let mut conditional = false;
        if let Some(v) = self.last.as_ref().filter(|v| Some(v.digest.as_str()) == current) {
            if let Some(etag) = &v.etag {
                req = req.header(header::IF_NONE_MATCH, etag.clone());
                conditional = true;
            }
            if let Some(modified) = &v.last_modified {
                req = req.header(header::IF_MODIFIED_SINCE, modified.clone());
                conditional = true;
            }
        }
        let mut resp = req.send().await.map_err(|e| self.request_error(e))?;
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED {
            if conditional {
                return Ok(None);
            }
            return Err(format!("GET {url}: answered {status} to a request that was not conditional"));
        }
        if !status.is_success() {
            let body = error_body(&mut resp).await;
            return Err(format!("GET {url}: answered {status}: {body}"));
        }
        let etag = resp.headers().get(header::ETAG).cloned();
        let last_modified = resp.headers().get(header::LAST_MODIFIED).cloned();
        let max = self.limits.body;
        if let Some(len) = resp.content_length()
            && len > max
        {
            return Err(format!("GET {url}: the body has {len} bytes, more than the {max} accepted; refused"));
        }

        let body = tempfile::Builder::new()
            .prefix(&format!("{TMP_PREFIX}http-"))
            .tempfile_in(versions_dir)
            .map_err(|e| format!("creating a temporary file in {}: {e}", versions_dir.display()))?;
        let write_error = |e: io::Error| format!("writing {}: {e}", body.path().display());
        let mut out = tokio::fs::File::from_std(body.as_file().try_clone().map_err(write_error)?);
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.body_error(e))? {
            bytes += chunk.len() as u64;
            if bytes > max {
                return Err(format!("GET {url}: the body is larger than the {max} bytes accepted; refused"));
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(write_error)?;
        }
        out.flush().await.map_err(write_error)?;
        drop(out);
        let name = hex::encode(hasher.finalize());

        if let Some(want) = &self.opts.sha256
            && *want != name
        {
            return Err(format!("GET {url}: the body's SHA-256 is {name}, expected {want}; refused"));
        }
        let validators = Validators { digest: name.clone(), etag, last_modified };
        if current == Some(name.as_str()) {
            self.last = Some(validators);
            return Ok(None);
        }
        let dest = versions_dir.join(&name);
        if !is_dir(&dest) {
            let (kind, limits, dir, n) = (self.kind.clone(), self.limits, versions_dir.to_path_buf(), name.clone());
            tokio::task::spawn_blocking(move || build_version(body, &kind, limits, &dir, &n))
                .await
                .map_err(|e| format!("building version {name}: {e}"))?
                .map_err(|e| format!("{url}: {e}"))?;
        }
        self.last = Some(validators);
        Ok(Some(Fetched { name, bytes }))
    }

    fn request_error(&self, e: reqwest::Error) -> String {
        if e.is_timeout() {
            return format!("GET {}: no answer within {:?}", self.shown, self.opts.timeout);
        }
        format!("GET {}: {}", self.shown, podkit_core::error_chain(&e.without_url()))
    }

    fn body_error(&self, e: reqwest::Error) -> String {
        if e.is_timeout() {
            return format!("GET {}: the body did not arrive within {:?}", self.shown, self.opts.timeout);
        }
        format!("GET {}: reading the body: {}", self.shown, podkit_core::error_chain(&e.without_url()))
    }
}

// === impl Kind ===

impl Kind {
    fn of(url: &url::Url) -> Result<Kind, String> {
        let last = url.path_segments().and_then(|mut s| s.next_back()).unwrap_or("");
        let name: Vec<u8> = percent_encoding::percent_decode_str(last).collect();
        let lower = String::from_utf8_lossy(&name).to_ascii_lowercase();
        Ok(if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Kind::TarGz
        } else if lower.ends_with(".tar") {
            Kind::Tar
        } else if lower.ends_with(".zip") {
            Kind::Zip
        } else if name.is_empty() {
            Kind::File(OsString::from("index"))
        } else if name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
            return Err(format!("{}: the last path segment {last:?} is not usable as a file name", shown_url(url)));
        } else {
            Kind::File(OsString::from_vec(name))
        })
    }
}

/// Writes version `name` from `body` into `versions_dir`: built in a temporary directory,
/// fsynced, then renamed into place.
fn build_version(
    body: NamedTempFile,
    kind: &Kind,
    limits: Limits,
    versions_dir: &Path,
    name: &str,
) -> Result<(), String> {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{TMP_PREFIX}version-"))
        .tempdir_in(versions_dir)
        .map_err(|e| format!("creating a temporary directory in {}: {e}", versions_dir.display()))?;
    let root = tmp.path();
    let io_error = |what: &Path, e: io::Error| format!("{}: {e}", what.display());
    match kind {
        Kind::File(file_name) => {
            let dest = root.join(file_name);
            // The temporary file is private (0600); readers in other containers need to read it.
            body.as_file().set_permissions(fs::Permissions::from_mode(0o644)).map_err(|e| io_error(body.path(), e))?;
            body.as_file().sync_all().map_err(|e| io_error(body.path(), e))?;
            body.persist(&dest).map_err(|e| io_error(&dest, e.error))?;
        }
        Kind::TarGz | Kind::Tar | Kind::Zip => {
            let file = body.reopen().map_err(|e| io_error(body.path(), e))?;
            let mut ex = Extractor::new(root, limits);
            match kind {
                Kind::TarGz => extract_tar(&mut ex, flate2::read::MultiGzDecoder::new(BufReader::new(file)))?,
                Kind::Tar => extract_tar(&mut ex, BufReader::new(file))?,
                _ => extract_zip(&mut ex, file)?,
            }
            ex.finish()?;
        }
    }
    // tempdir makes it 0700; the version is for every reader of the volume.
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).map_err(|e| io_error(root, e))?;
    sync_dir(root).map_err(|e| io_error(root, e))?;
    let staged = tmp.keep();
    let dest = versions_dir.join(name);
    if let Err(e) = fs::rename(&staged, &dest) {
        let _ = fs::remove_dir_all(&staged);
        // Made meanwhile by another fetch of the same bytes: the same content, complete.
        if is_dir(&dest) {
            return Ok(());
        }
        return Err(format!("renaming {} to {}: {e}", staged.display(), dest.display()));
    }
    sync_dir(versions_dir).map_err(|e| io_error(versions_dir, e))
}

fn extract_tar(ex: &mut Extractor<'_>, reader: impl Read) -> Result<(), String> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| format!("reading the tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading the tar archive: {e}"))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        ex.count(&shown)?;
        let header = entry.header();
        let ty = header.entry_type();
        if ty == tar::EntryType::XGlobalHeader {
            // Defaults for the whole archive (pax): nothing to extract.
            continue;
        }
        let rel = inside(&shown, Path::new(OsStr::from_bytes(&raw)))?;
        let mode = header.mode().map_err(|e| format!("reading the tar archive: entry {shown:?}: {e}"))?;
        let link = entry.link_name_bytes().map(|l| PathBuf::from(OsString::from_vec(l.into_owned())));
        match ty {
            tar::EntryType::Directory => ex.dir(&shown, &rel, mode)?,
            // Old tars mark directories by a trailing slash on a regular entry.
            tar::EntryType::Regular | tar::EntryType::Continuous if raw.ends_with(b"/") => {
                ex.dir(&shown, &rel, mode)?
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                ex.file(&shown, &rel, mode, &mut entry)?
            }
            tar::EntryType::Symlink => {
                let target = link.ok_or_else(|| refused(&shown, "a symlink without a target"))?;
                ex.symlink(&shown, &rel, &target)?
            }
            tar::EntryType::Link => {
                let target = link.ok_or_else(|| refused(&shown, "a hard link without a target"))?;
                ex.hard_link(&shown, &rel, &target)?
            }
            tar::EntryType::Char | tar::EntryType::Block => return Err(refused(&shown, "a device")),
            tar::EntryType::Fifo => return Err(refused(&shown, "a fifo")),
            other => return Err(refused(&shown, format!("an entry of unsupported type {other:?}"))),
        }
    }
    Ok(())
}

fn extract_zip(ex: &mut Extractor<'_>, file: fs::File) -> Result<(), String> {
    let mut archive =
        zip::ZipArchive::new(BufReader::new(file)).map_err(|e| format!("reading the zip archive: {e}"))?;
    // The central directory says how many entries there are: refused before writing any.
    if archive.len() as u64 > ex.limits.entries {
        return Err(format!("the archive has more than {} entries; refused", ex.limits.entries));
    }
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| format!("reading the zip archive: entry {i}: {e}"))?;
        let shown = entry.name().to_string();
        ex.count(&shown)?;
        if shown.contains('\0') {
            return Err(refused(&shown, "its name has a NUL byte"));
        }
        // Zip names separate with `/`, but some Windows tools write `\`; the zip crate reads
        // both as separators, and so does this check, so the two cannot disagree.
        let rel = inside(&shown, Path::new(&shown.replace('\\', "/")))?;
        if entry.enclosed_name().is_none() {
            return Err(refused(&shown, "its path leaves the directory"));
        }
        let mode = entry.unix_mode();
        let file_type = mode.map_or(0, |m| m & S_IFMT);
        if entry.is_dir() || file_type == S_IFDIR {
            ex.dir(&shown, &rel, mode.unwrap_or(0o755))?;
        } else if file_type == S_IFLNK {
            let mut target = Vec::new();
            (&mut entry)
                .take(MAX_LINK_TARGET + 1)
                .read_to_end(&mut target)
                .map_err(|e| format!("reading the zip archive: entry {shown:?}: {e}"))?;
            if target.len() as u64 > MAX_LINK_TARGET {
                return Err(refused(&shown, format!("a symlink target longer than {MAX_LINK_TARGET} bytes")));
            }
            ex.symlink(&shown, &rel, Path::new(OsStr::from_bytes(&target)))?;
        } else if file_type == 0 || file_type == S_IFREG {
            ex.file(&shown, &rel, mode.unwrap_or(0o644), &mut entry)?;
        } else {
            return Err(refused(&shown, format!("a device, fifo or socket (mode {:06o})", mode.unwrap_or(0))));
        }
    }
    Ok(())
}

/// Writes archive entries under `root`, which only this process writes into (a fresh 0700
/// temporary directory), so checks made on it stay true until the rename.
#[derive(Debug)]
struct Extractor<'a> {
    root: &'a Path,
    limits: Limits,
    entries: u64,
    expanded: u64,
    /// Every directory made (relative to root), with the mode it gets at the end: modes are
    /// applied last so that a read-only directory in the archive can still be filled.
    dirs: BTreeMap<PathBuf, u32>,
    /// Every symlink made: the entry's name and the link's path, followed once all exist.
    links: Vec<(String, PathBuf)>,
}

// === impl Extractor ===

impl<'a> Extractor<'a> {
    fn new(root: &'a Path, limits: Limits) -> Self {
        Extractor { root, limits, entries: 0, expanded: 0, dirs: BTreeMap::new(), links: Vec::new() }
    }

    fn count(&mut self, shown: &str) -> Result<(), String> {
        self.entries += 1;
        if self.entries > self.limits.entries {
            return Err(format!("the archive has more than {} entries (at {shown:?}); refused", self.limits.entries));
        }
        Ok(())
    }

    fn dir(&mut self, shown: &str, rel: &Path, mode: u32) -> Result<(), String> {
        if rel.as_os_str().is_empty() {
            // `./`: the version directory itself, whose mode is podkit's.
            return Ok(());
        }
        let abs = self.parents(shown, rel)?;
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(refused(shown, "an earlier entry of the same name is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&abs).map_err(|e| extract_error(shown, e))?
            }
            Err(e) => return Err(extract_error(shown, e)),
        }
        self.dirs.insert(rel.to_path_buf(), mode);
        Ok(())
    }

    fn file(&mut self, shown: &str, rel: &Path, mode: u32, data: &mut dyn Read) -> Result<(), String> {
        if rel.as_os_str().is_empty() {
            return Err(refused(shown, "a file in place of the top directory"));
        }
        let abs = self.parents(shown, rel)?;
        self.clear(shown, &abs)?;
        // create_new: O_EXCL never follows a symlink at the last component.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&abs)
            .map_err(|e| extract_error(shown, e))?;
        let room = self.limits.expanded - self.expanded;
        let n = io::copy(&mut data.take(room.saturating_add(1)), &mut f).map_err(|e| extract_error(shown, e))?;
        if n > room {
            return Err(format!("the archive expands past {} bytes (at {shown:?}); refused", self.limits.expanded));
        }
        self.expanded += n;
        f.set_permissions(fs::Permissions::from_mode(kept_mode(mode))).map_err(|e| extract_error(shown, e))?;
        f.sync_all().map_err(|e| extract_error(shown, e))
    }

    fn symlink(&mut self, shown: &str, rel: &Path, target: &Path) -> Result<(), String> {
        if rel.as_os_str().is_empty() {
            return Err(refused(shown, "a symlink in place of the top directory"));
        }
        if target.as_os_str().is_empty() {
            return Err(refused(shown, "a symlink with an empty target"));
        }
        if target.is_absolute() {
            return Err(refused(shown, format!("a symlink to the absolute path {target:?}")));
        }
        // Lexically, from the link's directory: the depth may never go below the root.
        let mut depth = rel.components().count() - 1;
        for c in target.components() {
            match c {
                Component::ParentDir if depth == 0 => {
                    return Err(refused(shown, format!("a symlink to {target:?}, outside the directory")));
                }
                Component::ParentDir => depth -= 1,
                Component::Normal(_) => depth += 1,
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => {
                    return Err(refused(shown, format!("a symlink to the absolute path {target:?}")));
                }
            }
        }
        let abs = self.parents(shown, rel)?;
        self.clear(shown, &abs)?;
        std::os::unix::fs::symlink(target, &abs).map_err(|e| extract_error(shown, e))?;
        self.links.push((shown.to_string(), rel.to_path_buf()));
        Ok(())
    }

    /// A tar hard link names an earlier entry by its path in the archive.
    fn hard_link(&mut self, shown: &str, rel: &Path, target: &Path) -> Result<(), String> {
        if rel.as_os_str().is_empty() {
            return Err(refused(shown, "a hard link in place of the top directory"));
        }
        let mut target_rel = PathBuf::new();
        for c in target.components() {
            match c {
                Component::Normal(n) => target_rel.push(n),
                Component::CurDir => {}
                _ => return Err(refused(shown, format!("a hard link to {target:?}, outside the directory"))),
            }
        }
        let not_before = || refused(shown, format!("a hard link to {target:?}, which no earlier entry made"));
        // link(2) follows symlinks in the source's directories: they must be real ones too.
        let mut at = self.root.to_path_buf();
        for c in target_rel.parent().unwrap_or(Path::new("")).components() {
            at.push(c);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(refused(shown, format!("a hard link to {target:?}, through a non-directory"))),
                Err(_) => return Err(not_before()),
            }
        }
        let src = self.root.join(&target_rel);
        let meta = fs::symlink_metadata(&src).map_err(|_| not_before())?;
        if meta.is_dir() {
            return Err(refused(shown, format!("a hard link to the directory {target:?}")));
        }
        if meta.file_type().is_symlink() {
            // link(2) would make a second symlink whose relative target means something else
            // from its new directory: made as a symlink, and checked as one, instead.
            let link_target = fs::read_link(&src).map_err(|e| extract_error(shown, e))?;
            return self
                .symlink(shown, rel, &link_target)
                .map_err(|e| format!("{e} (made for a hard link to the symlink {target:?})"));
        }
        if target_rel == rel {
            return Ok(());
        }
        let abs = self.parents(shown, rel)?;
        self.clear(shown, &abs)?;
        fs::hard_link(&src, &abs).map_err(|e| extract_error(shown, e))
    }

    /// Makes the directories above `rel` (relative, only normal components) and returns its
    /// absolute path. An existing symlink on the way is refused: writing through one would
    /// put the entry wherever that link (perhaps combined with others) leads.
    fn parents(&mut self, shown: &str, rel: &Path) -> Result<PathBuf, String> {
        let mut at = self.root.to_path_buf();
        let mut at_rel = PathBuf::new();
        for c in rel.parent().unwrap_or(Path::new("")).components() {
            at.push(c);
            at_rel.push(c);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(refused(shown, format!("its path goes through the symlink {at_rel:?}")));
                }
                Ok(_) => return Err(refused(shown, format!("its path goes through the non-directory {at_rel:?}"))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&at).map_err(|e| extract_error(shown, e))?;
                    self.dirs.entry(at_rel.clone()).or_insert(0o755);
                }
                Err(e) => return Err(extract_error(shown, e)),
            }
        }
        Ok(self.root.join(rel))
    }

    /// Makes room for a non-directory: a later entry replaces an earlier one, as tar does.
    fn clear(&self, shown: &str, abs: &Path) -> Result<(), String> {
        match fs::symlink_metadata(abs) {
            Ok(m) if m.is_dir() => Err(refused(shown, "an earlier entry of the same name is a directory")),
            Ok(_) => fs::remove_file(abs).map_err(|e| extract_error(shown, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(extract_error(shown, e)),
        }
    }

    /// Checks every symlink through the links beside it, gives directories their modes and
    /// fsyncs them.
    fn finish(self) -> Result<(), String> {
        // Each link was checked against its own directory, which is not enough: with `a/b ->
        // ..`, the link `c -> a/b/..` stays inside lexically but leads to the root's parent.
        for (shown, rel) in &self.links {
            self.follow(shown, rel)?;
        }
        for (rel, mode) in &self.dirs {
            let abs = self.root.join(rel);
            let mode = kept_mode(*mode) | 0o700;
            fs::set_permissions(&abs, fs::Permissions::from_mode(mode))
                .map_err(|e| format!("{}: {e}", abs.display()))?;
            sync_dir(&abs).map_err(|e| format!("{}: {e}", abs.display()))?;
        }
        Ok(())
    }

    /// Follows the link at `rel` the way the kernel would (through every link on the way),
    /// refusing it if that ever climbs above the root.
    fn follow(&self, shown: &str, rel: &Path) -> Result<(), String> {
        let Ok(target) = fs::read_link(self.root.join(rel)) else {
            // Replaced by a later entry.
            return Ok(());
        };
        let out = || {
            refused(shown, format!("a symlink to {target:?}, which leads outside the directory through other links"))
        };
        let mut at: Vec<OsString> = rel.parent().into_iter().flat_map(|p| p.iter().map(OsStr::to_os_string)).collect();
        let mut todo: VecDeque<OsString> = VecDeque::new();
        push_front(&mut todo, &target);
        let mut hops = 0;
        while let Some(part) = todo.pop_front() {
            if part == ".." {
                at.pop().ok_or_else(out)?;
                continue;
            }
            at.push(part);
            let here: PathBuf = self.root.join(at.iter().collect::<PathBuf>());
            if let Ok(next) = fs::read_link(&here) {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return Err(refused(shown, format!("a symlink loop (more than {MAX_LINK_HOPS} links)")));
                }
                if next.is_absolute() {
                    return Err(out());
                }
                at.pop();
                push_front(&mut todo, &next);
            }
        }
        Ok(())
    }
}

/// Puts the components of the relative path `p` at the front of `todo`, `..` kept as such.
fn push_front(todo: &mut VecDeque<OsString>, p: &Path) {
    let parts: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    for part in parts.into_iter().rev() {
        todo.push_front(part);
    }
}

/// `path` as a relative path of normal components; `..` and absolute paths are refused.
fn inside(shown: &str, path: &Path) -> Result<PathBuf, String> {
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => rel.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(refused(shown, "its path has a `..` component")),
            Component::RootDir | Component::Prefix(_) => return Err(refused(shown, "its path is absolute")),
        }
    }
    Ok(rel)
}

fn refused(shown: &str, why: impl Display) -> String {
    format!("archive entry {shown:?} refused: {why}")
}

fn extract_error(shown: &str, e: io::Error) -> String {
    format!("extracting archive entry {shown:?}: {e}")
}

/// The permission bits kept: everything but setuid and setgid (a synced file must not grant
/// the privileges of whoever owns it on disk).
fn kept_mode(mode: u32) -> u32 {
    mode & 0o1777
}

fn is_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

fn sync_dir(p: &Path) -> io::Result<()> {
    fs::File::open(p)?.sync_all()
}

/// `Authorization: Bearer <token>` from the file, read at each fetch so a rotated token is
/// picked up without a restart.
async fn bearer(path: &Path) -> Result<HeaderValue, String> {
    let raw =
        tokio::fs::read_to_string(path).await.map_err(|e| format!("bearer token file {}: {e}", path.display()))?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(format!("bearer token file {}: empty", path.display()));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| format!("bearer token file {}: the token has characters a header cannot carry", path.display()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The start of an error answer's body, for the error message.
async fn error_body(resp: &mut reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < ERROR_BODY_BYTES {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(ERROR_BODY_BYTES);
    let text = String::from_utf8_lossy(&buf).trim().to_string();
    if text.is_empty() { "(empty body)".to_string() } else { text }
}

/// The URL for messages, with a password in it redacted.
fn shown_url(url: &url::Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("redacted"));
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;

    // === a tiny HTTP/1.1 server ===

    /// What the test server answers, and what it was asked.
    #[derive(Debug, Default)]
    struct Site {
        /// 0: 200.
        status: u16,
        body: Vec<u8>,
        etag: Option<String>,
        last_modified: Option<String>,
        /// Ends the body by closing the connection instead of sending Content-Length.
        no_length: bool,
        /// Reads the request and never answers.
        stall: bool,
        requests: Vec<Request>,
    }

    #[derive(Debug, Clone)]
    struct Request {
        path: String,
        /// Names lowercased.
        headers: Vec<(String, String)>,
    }

    impl Request {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
        }
    }

    struct Server {
        addr: SocketAddr,
        site: Arc<Mutex<Site>>,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Server {
        fn start(body: Vec<u8>) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let site = Arc::new(Mutex::new(Site { body, ..Site::default() }));
            let stop = Arc::new(AtomicBool::new(false));
            let thread = {
                let (site, stop) = (site.clone(), stop.clone());
                std::thread::spawn(move || serve(listener, &site, &stop))
            };
            Server { addr, site, stop, thread: Some(thread) }
        }

        fn url(&self, path: &str) -> url::Url {
            url::Url::parse(&format!("http://{}{path}", self.addr)).unwrap()
        }

        fn set(&self, f: impl FnOnce(&mut Site)) {
            f(&mut self.site.lock().unwrap())
        }

        fn requests(&self) -> Vec<Request> {
            self.site.lock().unwrap().requests.clone()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            // Wakes the accept loop, which then sees `stop`.
            let _ = TcpStream::connect(self.addr);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn serve(listener: TcpListener, site: &Mutex<Site>, stop: &AtomicBool) {
        // Connections of stalled requests, held open until the server stops.
        let mut held = Vec::new();
        for conn in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let Ok(mut conn) = conn else { continue };
            let Some(req) = read_request(&mut conn) else { continue };
            let mut site = site.lock().unwrap();
            site.requests.push(req.clone());
            if site.stall {
                held.push(conn);
                continue;
            }
            let same = |have: &Option<String>, sent: Option<&str>| have.is_some() && have.as_deref() == sent;
            let unchanged = same(&site.etag, req.header("if-none-match"))
                || same(&site.last_modified, req.header("if-modified-since"));
            let status = if unchanged {
                304
            } else if site.status == 0 {
                200
            } else {
                site.status
            };
            let reason = match status {
                200 => "OK",
                304 => "Not Modified",
                404 => "Not Found",
                _ => "Whatever",
            };
            let body: &[u8] = if status == 304 { &[] } else { &site.body };
            let mut head = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
            if let Some(etag) = &site.etag {
                head.push_str(&format!("ETag: {etag}\r\n"));
            }
            if let Some(modified) = &site.last_modified {
                head.push_str(&format!("Last-Modified: {modified}\r\n"));
            }
            if !site.no_length || status == 304 {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            head.push_str("\r\n");
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body);
        }
    }

    fn read_request(conn: &mut TcpStream) -> Option<Request> {
        // A guard against a client that connects and sends nothing, not a synchronisation.
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut chunk).ok()?;
            if n == 0 || buf.len() > 64 * 1024 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let mut lines = text.split("\r\n");
        let path = lines.next()?.split(' ').nth(1)?.to_string();
        let headers = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Some(Request { path, headers })
    }

    // === helpers ===

    fn options(url: url::Url) -> HttpOptions {
        HttpOptions { url, sha256: None, timeout: Duration::from_secs(30), bearer_file: None }
    }

    fn source(url: url::Url) -> HttpSource {
        HttpSource::new(options(url)).unwrap()
    }

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    /// Names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b).unwrap();
        enc.finish().unwrap()
    }

    fn tar(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn tar_file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn tar_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        b.append_data(&mut h, path, io::empty()).unwrap();
    }

    /// An entry written byte for byte: `Header::set_path` refuses the names these tests need.
    fn tar_raw(b: &mut tar::Builder<Vec<u8>>, name: &str, ty: tar::EntryType, link: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(ty);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn zip(build: impl FnOnce(&mut zip::ZipWriter<io::Cursor<Vec<u8>>>)) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        build(&mut w);
        w.finish().unwrap().into_inner()
    }

    fn zip_opts(mode: u32) -> zip::write::SimpleFileOptions {
        zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode)
    }

    /// Sets the unix mode (type bits included) of `name` in the central directory of `zip`.
    fn zip_set_mode(zip: &mut [u8], name: &str, mode: u32) {
        let mut i = 0;
        while let Some(at) = zip[i..].windows(4).position(|w| w == b"PK\x01\x02") {
            let h = i + at;
            let name_len = u16::from_le_bytes([zip[h + 28], zip[h + 29]]) as usize;
            if &zip[h + 46..h + 46 + name_len] == name.as_bytes() {
                zip[h + 38..h + 42].copy_from_slice(&(mode << 16).to_le_bytes());
            }
            i = h + 4;
        }
    }

    // === tests ===

    #[tokio::test]
    async fn a_tar_gz_is_extracted_with_dirs_links_and_modes() {
        let body = gzip(&tar(|b| {
            tar_dir(b, "d", 0o750);
            tar_file(b, "d/a.txt", 0o640, b"alpha");
            tar_file(b, "run.sh", 0o4755, b"#!/bin/sh\n");
            tar_raw(b, "link", tar::EntryType::Symlink, "d/a.txt", b"");
            // Climbs, but stays inside.
            tar_raw(b, "d/up", tar::EntryType::Symlink, "../run.sh", b"");
            tar_raw(b, "hard", tar::EntryType::Link, "d/a.txt", b"");
            tar_file(b, "deep/er/b.txt", 0o600, b"beta");
        }));
        let server = Server::start(body.clone());
        let versions = tempfile::tempdir().unwrap();
        let mut src = source(server.url("/site.tar.gz"));

        let f = src.fetch(versions.path(), None).await.unwrap().expect("a new version");
        assert_eq!(f.name, sha(&body));
        assert_eq!(f.bytes, body.len() as u64);
        assert_eq!(names(versions.path()), vec![f.name.clone()], "only the version is left");
        let v = versions.path().join(&f.name);
        assert_eq!(fs::read(v.join("d/a.txt")).unwrap(), b"alpha");
        assert_eq!(fs::read(v.join("link")).unwrap(), b"alpha");
        assert_eq!(fs::read_link(v.join("link")).unwrap(), Path::new("d/a.txt"));
        assert_eq!(fs::read(v.join("d/up")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(fs::read(v.join("hard")).unwrap(), b"alpha");
        assert_eq!(fs::read(v.join("deep/er/b.txt")).unwrap(), b"beta");
        assert_eq!(mode_of(&v.join("d")), 0o750);
        assert_eq!(mode_of(&v.join("d/a.txt")), 0o640);
        assert_eq!(mode_of(&v.join("run.sh")), 0o755, "setuid stripped, the rest kept");
        assert_eq!(mode_of(&v.join("deep/er/b.txt")), 0o600);
        assert_eq!(mode_of(&v), 0o755);
    }

    #[tokio::test]
    async fn a_plain_tar_is_extracted_and_read_only_dirs_stay_removable() {
        let body = tar(|b| {
            tar_dir(b, "./", 0o700);
            tar_dir(b, "ro", 0o555);
            tar_file(b, "ro/f", 0o444, b"x");
        });
        let server = Server::start(body.clone());
        let versions = tempfile::tempdir().unwrap();
        let f = source(server.url("/a/B.TAR")).fetch(versions.path(), None).await.unwrap().unwrap();
        let v = versions.path().join(&f.name);
        assert_eq!(fs::read(v.join("ro/f")).unwrap(), b"x");
        assert_eq!(mode_of(&v.join("ro")), 0o755);
        assert_eq!(mode_of(&v.join("ro/f")), 0o444);
        fs::remove_dir_all(&v).unwrap();
    }

    #[tokio::test]
    async fn a_zip_is_extracted() {
        let body = zip(|w| {
            w.add_directory("bin/", zip_opts(0o755)).unwrap();
            w.start_file("bin/tool", zip_opts(0o755)).unwrap();
            w.write_all(b"tool").unwrap();
            w.start_file("conf/app.yaml", zip_opts(0o644)).unwrap();
            w.write_all(&b"key: value\n".repeat(100)).unwrap();
            w.add_symlink("current", "conf/app.yaml", zip_opts(0o777)).unwrap();
        });
        let server = Server::start(body.clone());
        let versions = tempfile::tempdir().unwrap();
        let f = source(server.url("/bundle.zip")).fetch(versions.path(), None).await.unwrap().unwrap();
        assert_eq!(f.name, sha(&body));
        let v = versions.path().join(&f.name);
        assert_eq!(fs::read(v.join("bin/tool")).unwrap(), b"tool");
        assert_eq!(mode_of(&v.join("bin/tool")), 0o755);
        assert_eq!(fs::read(v.join("conf/app.yaml")).unwrap(), b"key: value\n".repeat(100));
        assert_eq!(mode_of(&v.join("conf/app.yaml")), 0o644);
        assert_eq!(fs::read_link(v.join("current")).unwrap(), Path::new("conf/app.yaml"));
        assert_eq!(names(versions.path()), vec![f.name]);
    }

    #[tokio::test]
    async fn any_other_url_is_one_file_named_by_its_last_segment() {
        let server = Server::start(b"{\"a\":1}".to_vec());
        let versions = tempfile::tempdir().unwrap();
        let f =
            source(server.url("/config/app%20v1.json?x=1.zip")).fetch(versions.path(), None).await.unwrap().unwrap();
        let v = versions.path().join(&f.name);
        assert_eq!(names(&v), vec!["app v1.json"]);
        assert_eq!(fs::read(v.join("app v1.json")).unwrap(), b"{\"a\":1}");
        assert_eq!(mode_of(&v.join("app v1.json")), 0o644);
        assert_eq!(server.requests()[0].path, "/config/app%20v1.json?x=1.zip");

        let versions = tempfile::tempdir().unwrap();
        let f = source(server.url("/config/")).fetch(versions.path(), None).await.unwrap().unwrap();
        assert_eq!(names(&versions.path().join(&f.name)), vec!["index"]);

        assert!(HttpSource::new(options(server.url("/a%2Fb"))).unwrap_err().contains("not usable as a file name"));
        assert!(HttpSource::new(options("ftp://x/y".parse().unwrap())).unwrap_err().contains("http://"));
    }

    #[tokio::test]
    async fn an_etag_makes_the_next_fetch_conditional() {
        let server = Server::start(b"one".to_vec());
        server.set(|s| s.etag = Some("\"v1\"".into()));
        let versions = tempfile::tempdir().unwrap();
        let mut src = source(server.url("/file.txt"));

        let first = src.fetch(versions.path(), None).await.unwrap().unwrap();
        assert_eq!(server.requests()[0].header("if-none-match"), None);
        assert!(src.fetch(versions.path(), Some(&first.name)).await.unwrap().is_none());
        let reqs = server.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[1].header("if-none-match"), Some("\"v1\""));

        // The validators belong to `first`: with another version current they are not sent,
        // and the existing version directory is reused.
        let again = src.fetch(versions.path(), Some("something-else")).await.unwrap().unwrap();
        assert_eq!(again.name, first.name);
        assert_eq!(server.requests()[2].header("if-none-match"), None);
        assert_eq!(names(versions.path()), vec![first.name]);
    }

    #[tokio::test]
    async fn last_modified_makes_the_next_fetch_conditional() {
        let server = Server::start(b"one".to_vec());
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        server.set(|s| s.last_modified = Some(date.into()));
        let versions = tempfile::tempdir().unwrap();
        let mut src = source(server.url("/file.txt"));
        let first = src.fetch(versions.path(), None).await.unwrap().unwrap();
        assert!(src.fetch(versions.path(), Some(&first.name)).await.unwrap().is_none());
        assert_eq!(server.requests()[1].header("if-modified-since"), Some(date));
    }

    #[tokio::test]
    async fn a_changed_body_is_a_new_version_and_the_same_body_is_none() {
        let server = Server::start(b"one".to_vec());
        server.set(|s| s.etag = Some("\"v1\"".into()));
        let versions = tempfile::tempdir().unwrap();
        let mut src = source(server.url("/f"));
        let first = src.fetch(versions.path(), None).await.unwrap().unwrap();

        server.set(|s| {
            s.body = b"two".to_vec();
            s.etag = Some("\"v2\"".into());
        });
        let second = src.fetch(versions.path(), Some(&first.name)).await.unwrap().unwrap();
        assert_eq!(server.requests()[1].header("if-none-match"), Some("\"v1\""));
        assert_eq!(second.name, sha(b"two"));
        assert_ne!(second.name, first.name);
        assert_eq!(fs::read(versions.path().join(&second.name).join("f")).unwrap(), b"two");

        // A server that ignores the validators answers 200 with the same body: its digest
        // says it is unchanged.
        server.set(|s| s.etag = None);
        assert!(src.fetch(versions.path(), Some(&second.name)).await.unwrap().is_none());
        assert_eq!(server.requests()[2].header("if-none-match"), Some("\"v2\""));
        // And so does a fresh source, which has no validators to send.
        assert!(source(server.url("/f")).fetch(versions.path(), Some(&second.name)).await.unwrap().is_none());
        assert_eq!(server.requests()[3].header("if-none-match"), None);
        let mut want = vec![first.name, second.name];
        want.sort();
        assert_eq!(names(versions.path()), want);
    }

    #[tokio::test]
    async fn a_sha256_mismatch_is_refused_and_nothing_is_left() {
        let server = Server::start(gzip(&tar(|b| tar_file(b, "a", 0o644, b"a"))));
        let versions = tempfile::tempdir().unwrap();
        let wrong = "ab".repeat(32);
        let mut opts = options(server.url("/x.tgz"));
        opts.sha256 = Some(wrong.to_uppercase());
        let err = HttpSource::new(opts).unwrap().fetch(versions.path(), None).await.unwrap_err();
        let got = sha(&server.site.lock().unwrap().body);
        assert!(err.contains(&wrong) && err.contains(&got), "{err}");
        assert!(names(versions.path()).is_empty());

        let mut opts = options(server.url("/x.tgz"));
        opts.sha256 = Some(got.to_uppercase());
        let f = HttpSource::new(opts).unwrap().fetch(versions.path(), None).await.unwrap().unwrap();
        assert_eq!(f.name, got);

        let mut opts = options(server.url("/x.tgz"));
        opts.sha256 = Some("abc".into());
        assert!(HttpSource::new(opts).unwrap_err().contains("64 hexadecimal digits"));
    }

    #[tokio::test]
    async fn escaping_tar_entries_are_refused_one_by_one() {
        use tar::EntryType::{Char, Fifo, Link, Regular, Symlink};
        type Case = (&'static str, Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>);
        let cases: Vec<Case> = vec![
            ("../x", Box::new(|b| tar_raw(b, "../x", Regular, "", b"evil"))),
            ("a/../../x", Box::new(|b| tar_raw(b, "a/../../x", Regular, "", b"evil"))),
            ("/etc/x", Box::new(|b| tar_raw(b, "/etc/x", Regular, "", b"evil"))),
            ("l", Box::new(|b| tar_raw(b, "l", Symlink, "../../x", b""))),
            ("d/l", Box::new(|b| tar_raw(b, "d/l", Symlink, "../..", b""))),
            ("l", Box::new(|b| tar_raw(b, "l", Symlink, "/etc", b""))),
            ("h", Box::new(|b| tar_raw(b, "h", Link, "../x", b""))),
            ("h", Box::new(|b| tar_raw(b, "h", Link, "/etc/passwd", b""))),
            ("p", Box::new(|b| tar_raw(b, "p", Fifo, "", b""))),
            ("null", Box::new(|b| tar_raw(b, "null", Char, "", b""))),
            // Each link inside on its own, out together: a/b is the root, so c is its parent.
            (
                "c",
                Box::new(|b| {
                    tar_raw(b, "a/b", Symlink, "..", b"");
                    tar_raw(b, "c", Symlink, "a/b/..", b"");
                }),
            ),
            // Writing through a symlink, even one that points inside.
            (
                "l/f",
                Box::new(|b| {
                    tar_dir(b, "sub", 0o755);
                    tar_raw(b, "l", Symlink, "sub", b"");
                    tar_raw(b, "l/f", Regular, "", b"evil");
                }),
            ),
            // A hard link to a symlink would move a relative target to another directory.
            (
                "h",
                Box::new(|b| {
                    tar_raw(b, "a/s", Symlink, "../x", b"");
                    tar_raw(b, "h", Link, "a/s", b"");
                }),
            ),
        ];
        let server = Server::start(Vec::new());
        let versions = tempfile::tempdir().unwrap();
        for (entry, build) in cases {
            let body = gzip(&tar(|b| {
                tar_file(b, "fine", 0o644, b"fine");
                build(b);
            }));
            server.set(|s| s.body = body);
            let err = source(server.url("/evil.tar.gz")).fetch(versions.path(), None).await.unwrap_err();
            assert!(err.contains(&format!("archive entry {entry:?} refused")), "{entry}: {err}");
            assert!(names(versions.path()).is_empty(), "{entry}: left {:?}", names(versions.path()));
        }
    }

    #[tokio::test]
    async fn escaping_zip_entries_are_refused() {
        type Case = (&'static str, Box<dyn Fn(&mut zip::ZipWriter<io::Cursor<Vec<u8>>>)>);
        let cases: Vec<Case> = vec![
            (
                "../x",
                Box::new(|w| {
                    w.start_file("../x", zip_opts(0o644)).unwrap();
                    w.write_all(b"evil").unwrap();
                }),
            ),
            (
                "/etc/x",
                Box::new(|w| {
                    w.start_file("/etc/x", zip_opts(0o644)).unwrap();
                    w.write_all(b"evil").unwrap();
                }),
            ),
            ("..\\x", Box::new(|w| w.start_file("..\\x", zip_opts(0o644)).unwrap())),
            ("l", Box::new(|w| w.add_symlink("l", "../../x", zip_opts(0o777)).unwrap())),
            ("l", Box::new(|w| w.add_symlink("l", "/etc", zip_opts(0o777)).unwrap())),
            // The writer only takes permission bits: the fifo type is patched in below.
            ("p", Box::new(|w| w.start_file("p", zip_opts(0o644)).unwrap())),
        ];
        let server = Server::start(Vec::new());
        let versions = tempfile::tempdir().unwrap();
        for (entry, build) in cases {
            let mut body = zip(|w| {
                w.start_file("fine", zip_opts(0o644)).unwrap();
                build(w);
            });
            zip_set_mode(&mut body, "p", 0o010644);
            server.set(|s| s.body = body);
            let err = source(server.url("/evil.zip")).fetch(versions.path(), None).await.unwrap_err();
            assert!(err.contains(&format!("archive entry {entry:?} refused")), "{entry}: {err}");
            assert!(names(versions.path()).is_empty(), "{entry}: left {:?}", names(versions.path()));
        }
    }

    #[tokio::test]
    async fn an_error_answer_is_named_with_the_start_of_its_body() {
        let server = Server::start(format!("no such thing{}", "!".repeat(500)).into_bytes());
        server.set(|s| s.status = 404);
        let versions = tempfile::tempdir().unwrap();
        let url = server.url("/missing.tar.gz");
        let err = source(url.clone()).fetch(versions.path(), None).await.unwrap_err();
        assert!(err.starts_with(&format!("GET {url}: answered 404 Not Found: no such thing!")), "{err}");
        assert!(err.len() < url.as_str().len() + 250, "the body is cut: {err}");
        assert!(names(versions.path()).is_empty());
    }

    #[tokio::test]
    async fn connection_and_timeout_errors_say_what_happened() {
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let versions = tempfile::tempdir().unwrap();
        let url: url::Url = format!("http://{dead}/f").parse().unwrap();
        let err = source(url.clone()).fetch(versions.path(), None).await.unwrap_err();
        assert!(err.starts_with(&format!("GET {url}: ")), "{err}");
        assert!(err.to_lowercase().contains("connect"), "the cause is named: {err}");

        let server = Server::start(b"never".to_vec());
        server.set(|s| s.stall = true);
        let mut opts = options(server.url("/f"));
        opts.timeout = Duration::from_millis(200);
        let err = HttpSource::new(opts).unwrap().fetch(versions.path(), None).await.unwrap_err();
        assert!(err.contains("no answer within 200ms"), "{err}");
    }

    #[tokio::test]
    async fn the_bearer_file_is_read_at_each_fetch() {
        let server = Server::start(b"x".to_vec());
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        fs::write(&token, "  first\n").unwrap();
        let mut opts = options(server.url("/f"));
        opts.bearer_file = Some(token.clone());
        let mut src = HttpSource::new(opts).unwrap();
        let versions = tempfile::tempdir().unwrap();
        src.fetch(versions.path(), None).await.unwrap();
        fs::write(&token, "second").unwrap();
        src.fetch(versions.path(), None).await.unwrap();
        let reqs = server.requests();
        assert_eq!(reqs[0].header("authorization"), Some("Bearer first"));
        assert_eq!(reqs[1].header("authorization"), Some("Bearer second"));

        fs::remove_file(&token).unwrap();
        let err = src.fetch(versions.path(), None).await.unwrap_err();
        assert!(err.contains(&token.display().to_string()), "{err}");
        assert_eq!(server.requests().len(), 2, "nothing sent without the token");
    }

    #[tokio::test]
    async fn limits_refuse_large_bodies_and_bombs() {
        let server = Server::start(vec![b'x'; 100]);
        let versions = tempfile::tempdir().unwrap();
        for no_length in [false, true] {
            server.set(|s| s.no_length = no_length);
            let mut src = source(server.url("/big.bin"));
            src.limits.body = 10;
            let err = src.fetch(versions.path(), None).await.unwrap_err();
            assert!(err.contains("than the 10 bytes accepted") || err.contains("more than the 10 accepted"), "{err}");
            assert!(names(versions.path()).is_empty());
        }
        server.set(|s| s.no_length = false);

        server.set(|s| s.body = gzip(&tar(|b| tar_file(b, "zeros", 0o644, &[0; 1000]))));
        let mut src = source(server.url("/bomb.tgz"));
        src.limits.expanded = 999;
        let err = src.fetch(versions.path(), None).await.unwrap_err();
        assert!(err.contains("expands past 999 bytes"), "{err}");
        assert!(names(versions.path()).is_empty());
        src.limits.expanded = 1000;
        src.fetch(versions.path(), None).await.unwrap().unwrap();

        let versions = tempfile::tempdir().unwrap();
        let many = |n: usize| {
            zip(|w| {
                for i in 0..n {
                    w.start_file(format!("f{i}"), zip_opts(0o644)).unwrap();
                }
            })
        };
        server.set(|s| s.body = many(3));
        let mut src = source(server.url("/many.zip"));
        src.limits.entries = 2;
        let err = src.fetch(versions.path(), None).await.unwrap_err();
        assert!(err.contains("more than 2 entries"), "{err}");
        assert!(names(versions.path()).is_empty());

        server.set(|s| s.body = gzip(&tar(|b| (0..3).for_each(|i| tar_file(b, &format!("f{i}"), 0o644, b"")))));
        let mut src = source(server.url("/many.tgz"));
        src.limits.entries = 2;
        let err = src.fetch(versions.path(), None).await.unwrap_err();
        assert!(err.contains("more than 2 entries"), "{err}");
        assert!(names(versions.path()).is_empty());
    }
}
