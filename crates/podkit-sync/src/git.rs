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
        let mut argv: Vec<OsString> = vec!["git".into(), "-C".into(), dir.into()];
        // The volume may belong to another uid than podkit's (an init container wrote it):
        // git's ownership check would refuse a repository that is podkit's own.
        for c in ["safe.directory=*", "core.hooksPath=/dev/null", "gc.auto=0"] {
            argv.extend(["-c".into(), c.into()]);
        }
        if self.opts.username.is_some() {
            // The password comes from its file at each call: nothing secret on a command line,
            // and a rotated password is used at the next sync.
            argv.extend([
                "-c".into(),
                "credential.helper=".into(),
                "-c".into(),
                "credential.helper=!f() { test \"$1\" = get || exit 0; echo \"username=$PODKIT_SYNC_USERNAME\"; \
                 if [ -n \"$PODKIT_SYNC_PASSWORD_FILE\" ]; then printf 'password=%s\\n' \"$(cat \"$PODKIT_SYNC_PASSWORD_FILE\")\"; fi; }; f"
                    .into(),
            ]);
        }
        if self.is_local() && self.opts.submodules != Submodules::Off {
            // Submodules of a local repository are local too; git refuses the file transport
            // for them unless allowed (it is not, for a remote repository's submodules).
            argv.extend(["-c".into(), "protocol.file.allow=always".into()]);
        }
        argv.extend(args.iter().map(OsString::from));
        let mut spec = Exec::new(argv, self.opts.timeout)
            .stdout(podkit_process::Keep::Head(1024 * 1024))
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C");
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

    /// Makes `ROOT` a repository (once).
    pub(crate) async fn init(&self) -> Result<(), GitError> {
        if self.root.join(".git").exists() {
            return Ok(());
        }
        self.git("init", &self.root, &["init", "--quiet"]).await.map(drop)
    }

    /// Whether `reference` is a full commit hash (SHA-1 or SHA-256).
    fn pinned(&self) -> bool {
        let r = &self.opts.reference;
        (r.len() == 40 || r.len() == 64) && r.bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// The commit the ref names on the remote now (asking costs one round trip and no
    /// download).
    async fn remote_hash(&self) -> Result<String, GitError> {
        if self.pinned() {
            return Ok(self.opts.reference.to_lowercase());
        }
        let out =
            self.git("ls-remote", &self.root, &["ls-remote", "--", &self.opts.repo, &self.opts.reference]).await?;
        pick_ref(&out, &self.opts.reference).ok_or_else(|| GitError::Failed {
            step: "ls-remote",
            said: format!("the repository has no ref {} (branches, tags and HEAD were looked at)", self.opts.reference),
        })
    }

    /// Looks at the remote; if its commit is not `current`, fetches it, checks its signature,
    /// and writes it as the worktree `versions/HASH`. `Ok(None)`: nothing new.
    pub(crate) async fn sync(&self, versions: &Path, current: Option<&str>) -> Result<Option<String>, GitError> {
        self.init().await?;
        let wanted = self.remote_hash().await?;
        if current == Some(wanted.as_str()) {
            return Ok(None);
        }
        let depth = format!("--depth={}", self.opts.depth);
        let filter = self.opts.filter.as_ref().map(|f| format!("--filter={f}"));
        let mut args = vec!["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--force"];
        if self.opts.depth > 0 {
            args.push(&depth);
        }
        if let Some(f) = &filter {
            args.push(f);
        }
        // Fetched into a ref of podkit's own, so the commit stays reachable (a worktree of a
        // dangling commit would be collected by gc). By name unless pinned: every server can
        // serve a ref, not every one a bare commit; and a push since ls-remote is then taken.
        let source = if self.pinned() { wanted.as_str() } else { self.opts.reference.as_str() };
        let refspec = format!("+{source}:refs/podkit/sync");
        args.extend(["--", &self.opts.repo, &refspec]);
        self.git("fetch", &self.root, &args).await?;
        let hash = self.git("rev-parse", &self.root, &["rev-parse", "refs/podkit/sync^{commit}"]).await?;
        if current == Some(hash.as_str()) {
            return Ok(None);
        }
        if let Some(v) = &self.opts.verify {
            self.verify(&hash, v).await?;
        }
        let dir = versions.join(&hash);
        if !dir.exists() {
            self.checkout(&hash, &dir).await?;
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
            let info = self.git("sparse checkout", dir, &["rev-parse", "--git-path", "info/sparse-checkout"]).await?;
            let info = dir.join(info);
            if let Some(parent) = info.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| GitError::Failed { step: "sparse checkout", said: e.to_string() })?;
            }
            std::fs::write(&info, patterns)
                .map_err(|e| GitError::Failed { step: "sparse checkout", said: e.to_string() })?;
            self.git("sparse checkout", dir, &["config", "core.sparseCheckout", "true"]).await?;
        }
        self.git("checkout", dir, &["reset", "--quiet", "--hard", hash]).await?;
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
            Gc::Auto => &["-c", "gc.auto=6700", "gc", "--auto", "--quiet"],
            Gc::Always => &["gc", "--quiet", "--prune=now"],
            Gc::Aggressive => &["gc", "--quiet", "--aggressive", "--prune=now"],
        };
        self.git("gc", &self.root, args).await.map(drop)
    }
}

/// The commit `reference` names in `git ls-remote` output: a peeled tag (`^{}`) wins over the
/// tag object, a branch over a tag of the same name, `HEAD` is HEAD.
fn pick_ref(ls_remote: &str, reference: &str) -> Option<String> {
    let entries: Vec<(&str, &str)> = ls_remote.lines().filter_map(|l| l.split_once('\t')).collect();
    let find = |name: &str| entries.iter().find(|(_, r)| *r == name).map(|(h, _)| h.to_string());
    if reference == "HEAD" {
        return find("HEAD");
    }
    find(&format!("refs/heads/{reference}"))
        .or_else(|| find(&format!("refs/tags/{reference}^{{}}")))
        .or_else(|| find(&format!("refs/tags/{reference}")))
        .or_else(|| find(&format!("{reference}^{{}}")))
        .or_else(|| find(reference))
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
        assert_eq!(pick_ref(out, "HEAD").as_deref(), Some("1111"));
        assert_eq!(pick_ref(out, "main").as_deref(), Some("2222"), "a branch over a tag of that name");
        assert_eq!(pick_ref(out, "v1").as_deref(), Some("4444"), "the commit an annotated tag names");
        assert_eq!(pick_ref(out, "refs/tags/v1").as_deref(), Some("4444"));
        assert_eq!(pick_ref(out, "nope"), None);
    }

    #[test]
    fn what_git_said_is_cut_to_what_went_wrong() {
        let ssh = "@@@@@@@\n@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @\nOffending key\nHost key verification failed.\nfatal: Could not read from remote repository.\n\nPlease make sure you have the correct access rights";
        assert_eq!(first_lines(ssh), "Host key verification failed. / fatal: Could not read from remote repository.");
        assert_eq!(first_lines("hint: x\nsomething odd\n"), "something odd");
        assert_eq!(first_lines(""), "failed without saying why");
    }
}
