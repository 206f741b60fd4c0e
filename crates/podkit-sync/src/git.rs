//! The git source, done by the `git` binary (so credential helpers, ssh config, proxies and
//! every transport work as they do for git itself), the way git-sync v4 does it: `ROOT` is a
//! repository with no checkout of its own; each sync asks the remote which commit the ref
//! names (`ls-remote`), fetches it shallowly only if it is new, and checks it out as a
//! worktree `ROOT/.worktrees/HASH`, which the publisher then links.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use podkit_process::{Exec, Reaper};

/// How submodules are checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Submodules {
    /// All of them, and theirs.
    Recursive,
    /// The first level only.
    Shallow,
    Off,
}

/// How a commit's signature is checked before it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verify {
    /// SSH signatures, against an allowed-signers file (`ssh-keygen -Y verify`'s format).
    AllowedSigners(PathBuf),
    /// OpenPGP signatures, against the keyring in a GnuPG home directory.
    GpgHome(PathBuf),
}

#[derive(Debug, Clone)]
pub(crate) struct GitOptions {
    pub(crate) repo: String,
    pub(crate) reference: String,
    /// 0: the whole history.
    pub(crate) depth: u32,
    pub(crate) submodules: Submodules,
    pub(crate) sparse_checkout_file: Option<PathBuf>,
    pub(crate) filter: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) ssh_key_file: Option<PathBuf>,
    pub(crate) ssh_known_hosts_file: Option<PathBuf>,
    pub(crate) gc: Gc,
    pub(crate) verify: Option<Verify>,
    /// Bound on each git command.
    pub(crate) timeout: Duration,
}

/// `git gc` after a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Gc {
    /// `git gc --auto`: only when git thinks it is due.
    Auto,
    Always,
    Aggressive,
    Off,
}

#[derive(Debug)]
pub(crate) struct GitSource {
    opts: GitOptions,
    root: PathBuf,
    reaper: Arc<Reaper>,
}

/// Why a sync from git failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GitError {
    #[error("git {step}: {said}")]
    Failed { step: &'static str, said: String },
    #[error("commit {hash} is not published: its signature does not verify: {said}")]
    Unverified { hash: String, said: String },
}

impl GitSource {
    pub(crate) fn new(opts: GitOptions, root: &Path, reaper: Arc<Reaper>) -> GitSource {
        GitSource { opts, root: root.to_path_buf(), reaper }
    }

    /// Runs git in `dir` with podkit's settings; its trimmed stdout, or what it said.
    async fn git(&self, step: &'static str, dir: &Path, args: &[&str]) -> Result<String, GitError> {
        self.git_with(step, dir, args, None).await
    }

    async fn git_with(
        &self,
        step: &'static str,
        dir: &Path,
        args: &[&str],
        stdin: Option<Vec<u8>>,
    ) -> Result<String, GitError> {
        let mut argv: Vec<OsString> = vec!["git".into(), "-C".into(), dir.into()];
        // The volume may belong to another uid than podkit's (an init container wrote it):
        // git's ownership check would refuse a repository that is podkit's own. gc runs only
        // when podkit asks (`tidy`), in the foreground, so its time is bounded too.
        for c in ["safe.directory=*", "core.hooksPath=/dev/null", "gc.auto=0", "gc.autoDetach=false"] {
            argv.extend(["-c".into(), c.into()]);
        }
        if self.opts.username.is_some() {
            // The password comes from its file at each call: nothing secret on a command line,
            // and a rotated password is used at the next sync. The helper is bound to the
            // repository's origin: a submodule or a redirect to another host never gets it.
            let origin = origin_of(&self.opts.repo);
            argv.extend([
                "-c".into(),
                "credential.helper=".into(),
                "-c".into(),
                format!(
                    "credential.{origin}.helper=!f() {{ test \"$1\" = get || exit 0; printf 'username=%s\\n' \"$PODKIT_SYNC_USERNAME\"; \
                     if [ -n \"$PODKIT_SYNC_PASSWORD_FILE\" ]; then printf 'password=%s\\n' \"$(tr -d '\\r\\n' < \"$PODKIT_SYNC_PASSWORD_FILE\")\"; fi; }}; f"
                )
                .into(),
            ]);
        }
        if self.is_local() && self.opts.submodules != Submodules::Off {
            // Submodules of a local repository are local too; git refuses the file transport
            // for them unless allowed (it is not, for a remote repository's submodules).
            argv.extend(["-c".into(), "protocol.file.allow=always".into()]);
        }
        argv.extend(args.iter().map(OsString::from));
        let mut spec = Exec::new(argv, self.opts.timeout).stdout(podkit_process::Keep::Head(1024 * 1024));
        if let Some(input) = stdin {
            spec = spec.stdin(input);
        }
        let mut spec = spec.env("GIT_TERMINAL_PROMPT", "0").env("LC_ALL", "C");
        if let Some(u) = &self.opts.username {
            spec = spec.env("PODKIT_SYNC_USERNAME", u);
            if let Some(p) = &self.opts.password_file {
                spec = spec.env("PODKIT_SYNC_PASSWORD_FILE", p);
            }
        }
        if let Some(ssh) = self.ssh_command() {
            spec = spec.env("GIT_SSH_COMMAND", ssh);
        }
        if let Some(Verify::GpgHome(home)) = &self.opts.verify {
            spec = spec.env("GNUPGHOME", home);
        }
        let out = podkit_process::exec(&self.reaper, &spec)
            .await
            .map_err(|e| GitError::Failed { step, said: e.to_string() })?;
        if !out.exit.success() {
            return Err(GitError::Failed { step, said: first_lines(&out.said()) });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn is_local(&self) -> bool {
        self.opts.repo.starts_with("file://") || self.opts.repo.starts_with('/')
    }

    fn ssh_command(&self) -> Option<String> {
        if self.opts.ssh_key_file.is_none() && self.opts.ssh_known_hosts_file.is_none() {
            return None;
        }
        let q = |p: &Path| shlex::try_quote(&p.to_string_lossy()).map(|s| s.into_owned()).unwrap_or_default();
        let mut cmd = "ssh -o BatchMode=yes".to_string();
        if let Some(k) = &self.opts.ssh_key_file {
            cmd.push_str(&format!(" -i {} -o IdentitiesOnly=yes", q(k)));
        }
        if let Some(h) = &self.opts.ssh_known_hosts_file {
            cmd.push_str(&format!(" -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes", q(h)));
        }
        Some(cmd)
    }

    /// Makes `ROOT` a repository (once), with the object format of the remote's hashes
    /// (SHA-1, or SHA-256 for 64-digit hashes).
    async fn init(&self, hash: &str) -> Result<(), GitError> {
        if self.root.join(".git").exists() {
            return Ok(());
        }
        let format = if hash.len() == 64 { "--object-format=sha256" } else { "--object-format=sha1" };
        self.git("init", &self.root, &["init", "--quiet", format]).await.map(drop)
    }

    /// Whether `reference` is a full commit hash (SHA-1 or SHA-256).
    fn pinned(&self) -> bool {
        let r = &self.opts.reference;
        (r.len() == 40 || r.len() == 64) && r.bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// The commit the ref names on the remote now, and the full ref name to fetch it by
    /// (asking costs one round trip and no download).
    async fn remote_hash(&self) -> Result<(String, String), GitError> {
        if self.pinned() {
            let h = self.opts.reference.to_lowercase();
            return Ok((h.clone(), h));
        }
        let out =
            self.git("ls-remote", &self.root, &["ls-remote", "--", &self.opts.repo, &self.opts.reference]).await?;
        pick_ref(&out, &self.opts.reference).ok_or_else(|| GitError::Failed {
            step: "ls-remote",
            said: format!("the repository has no ref {} (branches, tags and HEAD were looked at)", self.opts.reference),
        })
    }

    /// Looks at the remote; if its commit is not `current`, fetches it, checks its signature,
    /// and writes it as the worktree `versions/HASH`. `complete` are the versions known to be
    /// whole (published before); any other directory of that name is what a failed checkout
    /// left, and is done again. `Ok(None)`: nothing new.
    pub(crate) async fn sync(
        &self,
        versions: &Path,
        current: Option<&str>,
        complete: &[String],
    ) -> Result<Option<String>, GitError> {
        std::fs::create_dir_all(&self.root).map_err(|e| GitError::Failed { step: "init", said: e.to_string() })?;
        let (wanted, fetch_ref) = self.remote_hash().await?;
        if current == Some(wanted.as_str()) {
            return Ok(None);
        }
        self.init(&wanted).await?;
        let depth = format!("--depth={}", self.opts.depth);
        let filter = self.opts.filter.as_ref().map(|f| format!("--filter={f}"));
        let mut args = vec!["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--force"];
        if self.opts.depth > 0 {
            args.push(&depth);
        } else if self.root.join(".git/shallow").exists() {
            // --depth 0 asks for all of the history a shallow start did not fetch.
            args.push("--unshallow");
        }
        if let Some(f) = &filter {
            args.push(f);
        }
        // Fetched into a ref of podkit's own, so the commit stays reachable (a worktree of a
        // dangling commit would be collected by gc). By the full name ls-remote chose (a
        // branch and a tag of one name are not confused), or by hash when pinned.
        let refspec = format!("+{fetch_ref}:refs/podkit/sync");
        args.extend(["--", &self.opts.repo, &refspec]);
        self.git("fetch", &self.root, &args).await?;
        let hash = self.git("rev-parse", &self.root, &["rev-parse", "refs/podkit/sync^{commit}"]).await?;
        if current == Some(hash.as_str()) {
            return Ok(None);
        }
        if let Some(v) = &self.opts.verify {
            self.verify(&hash, v).await?;
        }
        if !complete.contains(&hash) {
            let dir = versions.join(&hash);
            if dir.exists() {
                remove_dir(&dir);
            }
            if let Err(e) = self.checkout(&hash, &dir).await {
                // Nothing half-written may stay under a version's name.
                remove_dir(&dir);
                let _ = self.git("worktree prune", &self.root, &["worktree", "prune"]).await;
                return Err(e);
            }
        }
        Ok(Some(hash))
    }

    async fn verify(&self, hash: &str, v: &Verify) -> Result<(), GitError> {
        let signers;
        let mut args = vec![];
        if let Verify::AllowedSigners(f) = v {
            signers = format!("gpg.ssh.allowedSignersFile={}", f.display());
            args.extend(["-c", "gpg.format=ssh", "-c", &signers]);
        }
        args.extend(["verify-commit", "--", hash]);
        self.git("verify-commit", &self.root, &args).await.map(drop).map_err(|e| match e {
            GitError::Failed { said, .. } => GitError::Unverified { hash: hash.to_string(), said },
            other => other,
        })
    }

    async fn checkout(&self, hash: &str, dir: &Path) -> Result<(), GitError> {
        let d = dir.to_string_lossy().into_owned();
        // A worktree record left by a crash (its directory already removed) would block the
        // name: it is dropped first (cheap: no network, no checkout).
        self.git("worktree prune", &self.root, &["worktree", "prune"]).await?;
        self.git(
            "worktree add",
            &self.root,
            &["worktree", "add", "--quiet", "--force", "--detach", "--no-checkout", &d, hash],
        )
        .await?;
        if let Some(f) = &self.opts.sparse_checkout_file {
            let patterns = std::fs::read(f)
                .map_err(|e| GitError::Failed { step: "sparse checkout", said: format!("{}: {e}", f.display()) })?;
            // In this worktree's own config (git turns on extensions.worktreeConfig for it):
            // the other versions, and a later run without the option, are not affected.
            self.git_with("sparse checkout", dir, &["sparse-checkout", "set", "--no-cone", "--stdin"], Some(patterns))
                .await?;
        }
        self.git("checkout", dir, &["reset", "--quiet", "--hard", hash]).await?;
        relative_gitdir(dir).map_err(|e| GitError::Failed { step: "worktree add", said: e.to_string() })?;
        if self.opts.submodules != Submodules::Off && dir.join(".gitmodules").exists() {
            let depth = format!("--depth={}", self.opts.depth);
            let mut args = vec!["submodule", "update", "--init", "--quiet"];
            if self.opts.submodules == Submodules::Recursive {
                args.push("--recursive");
            }
            if self.opts.depth > 0 {
                args.push(&depth);
            }
            self.git("submodule update", dir, &args).await?;
        }
        Ok(())
    }

    /// After old versions were removed: drops their worktree records, and collects garbage as
    /// `--git-gc` says.
    pub(crate) async fn tidy(&self) -> Result<(), GitError> {
        self.git("worktree prune", &self.root, &["worktree", "prune"]).await?;
        let args: &[&str] = match self.opts.gc {
            Gc::Off => return Ok(()),
            Gc::Auto => &["-c", "gc.auto=6700", "-c", "gc.pruneExpire=now", "gc", "--auto", "--quiet"],
            Gc::Always => &["gc", "--quiet", "--prune=now"],
            Gc::Aggressive => &["gc", "--quiet", "--aggressive", "--prune=now"],
        };
        self.git("gc", &self.root, args).await.map(drop)
    }
}

/// The commit `reference` names in `git ls-remote` output, and the full ref name that names
/// it: a branch wins over a tag of the same name, an annotated tag names the commit it tags
/// (fetched by the tag's name), `HEAD` is HEAD.
fn pick_ref(ls_remote: &str, reference: &str) -> Option<(String, String)> {
    let entries: Vec<(&str, &str)> = ls_remote.lines().filter_map(|l| l.split_once('\t')).collect();
    let find = |name: &str| entries.iter().find(|(_, r)| *r == name).map(|(h, _)| h.to_string());
    if reference == "HEAD" {
        return find("HEAD").map(|h| (h, "HEAD".to_string()));
    }
    let full = |name: String| {
        let peeled = find(&format!("{name}^{{}}"));
        peeled.or_else(|| find(&name)).map(|h| (h, name))
    };
    full(format!("refs/heads/{reference}"))
        .or_else(|| full(format!("refs/tags/{reference}")))
        .or_else(|| full(reference.to_string()))
}

/// `scheme://host[:port]` of a repository URL, for credentials bound to it (the whole URL when
/// it is not one: a path, or scp-like `host:path`).
fn origin_of(repo: &str) -> String {
    match url::Url::parse(repo) {
        Ok(u) if u.host_str().is_some() => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}", u.scheme(), u.host_str().unwrap_or_default())
        }
        _ => repo.to_string(),
    }
}

/// The repository URL without user info, for logs and `/status`.
pub(crate) fn shown_repo(repo: &str) -> String {
    match url::Url::parse(repo) {
        Ok(mut u) if u.host_str().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => repo.to_string(),
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an incomplete version");
    }
}

/// Makes the worktree's `.git` file point at its repository by a relative path, as git-sync
/// does: a consumer that mounts the volume elsewhere can still run git in the version.
fn relative_gitdir(dir: &Path) -> std::io::Result<()> {
    let file = dir.join(".git");
    let text = std::fs::read_to_string(&file)?;
    let Some(target) = text.trim().strip_prefix("gitdir: ") else { return Ok(()) };
    // The worktree is ROOT/.worktrees/HASH, its gitdir ROOT/.git/worktrees/NAME.
    let Some(root) = dir.parent().and_then(Path::parent) else { return Ok(()) };
    let Ok(rest) = Path::new(target).strip_prefix(root) else { return Ok(()) };
    podkit_core::write_durably(&file, format!("gitdir: ../../{}\n", rest.display()).as_bytes())
}

/// The lines of what git said that say what went wrong: its `fatal:` and `error:` lines and
/// whatever reports a failure (ssh's "Host key verification failed."), else its last lines.
fn first_lines(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("hint:")).collect();
    let telling: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("fatal:") || l.starts_with("error:") || l.contains("failed") || l.contains("denied"))
        .take(4)
        .collect();
    let chosen = if telling.is_empty() { lines[lines.len().saturating_sub(3)..].to_vec() } else { telling };
    if chosen.is_empty() { "failed without saying why".into() } else { chosen.join(" / ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ref_is_picked_as_git_would() {
        let out = "1111\tHEAD\n2222\trefs/heads/main\n3333\trefs/tags/v1\n4444\trefs/tags/v1^{}\n5555\trefs/tags/main";
        let pick = |r| pick_ref(out, r).map(|(h, n)| format!("{h} {n}"));
        assert_eq!(pick("HEAD").as_deref(), Some("1111 HEAD"));
        assert_eq!(pick("main").as_deref(), Some("2222 refs/heads/main"), "a branch over a tag of that name");
        assert_eq!(pick("v1").as_deref(), Some("4444 refs/tags/v1"), "the commit an annotated tag names");
        assert_eq!(pick("refs/tags/v1").as_deref(), Some("4444 refs/tags/v1"));
        assert_eq!(pick("nope"), None);
        assert_eq!(origin_of("https://u@git.example:8443/org/repo.git"), "https://git.example:8443");
        assert_eq!(shown_repo("https://user:s3cret@h/x.git"), "https://h/x.git");
        assert_eq!(shown_repo("git@github.com:org/x.git"), "git@github.com:org/x.git");
    }

    #[test]
    fn what_git_said_is_cut_to_what_went_wrong() {
        let ssh = "@@@@@@@\n@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @\nOffending key\nHost key verification failed.\nfatal: Could not read from remote repository.\n\nPlease make sure you have the correct access rights";
        assert_eq!(first_lines(ssh), "Host key verification failed. / fatal: Could not read from remote repository.");
        assert_eq!(first_lines("hint: x\nsomething odd\n"), "something odd");
        assert_eq!(first_lines(""), "failed without saying why");
    }
}
