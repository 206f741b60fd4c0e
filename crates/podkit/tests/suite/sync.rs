//! `podkit sync` end to end: the real binary syncing from real git (a bare repository over
//! file://, `git daemon` over git://, sshd over ssh://) into a root a reader watches.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{Mode, Podkit, run_plain};
use nix::sys::signal::Signal;
use podkit_testkit::assert_eventually;

/// A repository to push to: a work tree and its bare origin.
struct Repo {
    dir: tempfile::TempDir,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "protocol.file.allow=always"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let r = Repo { dir };
        git(r.dir.path(), &["init", "--quiet", "--bare", "--initial-branch=main", "origin.git"]);
        git(r.dir.path(), &["init", "--quiet", "--initial-branch=main", "work"]);
        git(&r.work(), &["remote", "add", "origin", r.origin().to_str().unwrap()]);
        r
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn origin(&self) -> PathBuf {
        self.dir.path().join("origin.git")
    }

    fn url(&self) -> String {
        format!("file://{}", self.origin().display())
    }

    /// Writes `files`, commits (with `extra` commit options) and pushes; returns the hash.
    fn commit_with(&self, files: &[(&str, &str)], extra: &[&str]) -> String {
        for (name, content) in files {
            let p = self.work().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        git(&self.work(), &["add", "-A"]);
        let mut args = vec!["commit", "--quiet", "--allow-empty", "-m", "change"];
        args.extend_from_slice(extra);
        git(&self.work(), &args);
        git(&self.work(), &["push", "--quiet", "--force", "origin", "HEAD:refs/heads/main"]);
        git(&self.work(), &["rev-parse", "HEAD"])
    }

    fn commit(&self, files: &[(&str, &str)]) -> String {
        self.commit_with(files, &[])
    }
}

struct Sync {
    p: Podkit,
    root: PathBuf,
    dir: tempfile::TempDir,
}

fn start_in(root_dir: tempfile::TempDir, repo: &str, extra: &[&str]) -> Sync {
    let root = root_dir.path().join("root");
    let mut args = vec!["sync", "--repo", repo, "--root", root.to_str().unwrap(), "--link", "site"];
    args.extend_from_slice(extra);
    let p = Podkit::start(Mode::Subreaper, &args);
    assert_eventually!(p.admin().healthy(), "never healthy: {}", p.stderr());
    Sync { p, root, dir: root_dir }
}

fn start(repo: &str, extra: &[&str]) -> Sync {
    start_in(tempfile::tempdir().unwrap(), repo, extra)
}

impl Sync {
    fn version(&self) -> Option<String> {
        self.p.admin().get("/status").json()["version"].as_str().map(str::to_string)
    }

    fn site(&self) -> PathBuf {
        self.root.join("site")
    }

    #[track_caller]
    fn wait_for(&self, hash: &str) {
        assert_eventually!(
            timeout = Duration::from_secs(30),
            self.version().as_deref() == Some(hash),
            "{hash} not published: {}\n{}",
            self.p.admin().get("/status").json(),
            self.p.stderr()
        );
    }

    fn syncs(&self) -> f64 {
        self.p.admin().metric_sum("podkit_sync_syncs_total")
    }

    fn stop(self) {
        self.stop_keeping_root();
    }

    /// Stops podkit; its root stays, for the next start.
    fn stop_keeping_root(mut self) -> tempfile::TempDir {
        self.p.signal(Signal::SIGTERM);
        assert_eq!(self.p.wait(), 0, "{}", self.p.stderr());
        self.dir
    }
}

#[test]
fn new_commits_are_published_on_the_period_and_on_sighup_through_a_relative_symlink() {
    let repo = Repo::new();
    let first = repo.commit(&[("index.html", "one")]);
    let s = start(&repo.url(), &["--period", "300ms"]);
    s.wait_for(&first);
    assert!(s.p.admin().ready(), "{:?}", s.p.admin().not_ready_reasons());
    assert_eq!(std::fs::read_to_string(s.site().join("index.html")).unwrap(), "one");
    // git-sync's contract: the link's target is .worktrees/HASH, relative.
    assert_eq!(std::fs::read_link(s.site()).unwrap(), Path::new(".worktrees").join(&first));
    let second = repo.commit(&[("index.html", "two")]);
    s.wait_for(&second);
    assert_eq!(std::fs::read_to_string(s.site().join("index.html")).unwrap(), "two");
    s.stop();

    // A long period: only SIGHUP makes it look.
    let s = start(&repo.url(), &["--period", "1h"]);
    s.wait_for(&second);
    let third = repo.commit(&[("index.html", "three")]);
    s.p.signal(Signal::SIGHUP);
    s.wait_for(&third);
    s.stop();
}

fn hmac(secret: &[u8], body: &[u8]) -> String {
    // HMAC-SHA256 by its definition (RFC 2104), so the test does not share podkit's code.
    use std::process::Stdio;
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", std::str::from_utf8(secret).unwrap(), "-hex"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256={}", text.trim().rsplit(' ').next().unwrap())
}

#[test]
fn a_trigger_syncs_only_when_it_proves_it_knows_the_secret() {
    let repo = Repo::new();
    let first = repo.commit(&[("a", "1")]);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let addr_file = dir.path().join("trigger.addr");
    let s = start_in(
        dir,
        &repo.url(),
        &[
            "--period",
            "1h",
            "--trigger-listen",
            "127.0.0.1:0",
            "--trigger-listen-addr-file",
            addr_file.to_str().unwrap(),
            "--trigger-secret-file",
            secret.to_str().unwrap(),
            "--trigger-min-interval",
            "10ms",
        ],
    );
    s.wait_for(&first);
    let url = format!("http://{}/sync", std::fs::read_to_string(&addr_file).unwrap().trim());
    let client = reqwest::blocking::Client::new();
    let second = repo.commit(&[("a", "2")]);
    let body = br#"{"ref":"refs/heads/main"}"#;
    let good = hmac(b"s3cret", body);
    let before = s.syncs();
    // Refused: no proof, a wrong signature, the right signature over another body, a wrong
    // token. None of them syncs.
    let refused: Vec<reqwest::blocking::RequestBuilder> = vec![
        client.post(&url).body(body.to_vec()),
        client.post(&url).header("X-Hub-Signature-256", hmac(b"guess", body)).body(body.to_vec()),
        client.post(&url).header("X-Hub-Signature-256", &good).body(b"{\"ref\":\"refs/heads/evil\"}".to_vec()),
        client.post(&url).header("X-Gitlab-Token", "guess"),
        client.post(&url).bearer_auth("guess"),
    ];
    for r in refused {
        assert_eq!(r.send().unwrap().status(), 401);
    }
    assert_eq!(s.p.admin().metric_sum("podkit_sync_triggers_total"), 5.0);
    assert_eq!(s.syncs(), before, "a refused trigger changes nothing");
    assert_eq!(s.version().as_deref(), Some(first.as_str()));
    // Accepted: GitHub's signature.
    let r = client.post(&url).header("X-Hub-Signature-256", &good).body(body.to_vec()).send().unwrap();
    assert_eq!(r.status(), 202);
    s.wait_for(&second);
    // GitLab's token and a bearer token work too.
    let third = repo.commit(&[("a", "3")]);
    assert_eq!(client.post(&url).header("X-Gitlab-Token", "s3cret").send().unwrap().status(), 202);
    s.wait_for(&third);
    let fourth = repo.commit(&[("a", "4")]);
    assert_eq!(client.post(&url).bearer_auth("s3cret").send().unwrap().status(), 202);
    s.wait_for(&fourth);
    s.stop();
}

#[test]
fn a_reader_never_sees_a_mix_of_two_versions_through_200_publishes() {
    let repo = Repo::new();
    let first = repo.commit(&[("a/x", "0"), ("b/y", "0")]);
    let s = start(&repo.url(), &["--period", "1h", "--keep", "2", "--trigger-min-interval", "1ms"]);
    s.wait_for(&first);
    let site = s.site();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut reads, mut bad) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Both files through the link at once: one version's pair, whichever it is.
                let dir = std::fs::canonicalize(&site);
                let pair = dir.and_then(|d| {
                    Ok((std::fs::read_to_string(d.join("a/x"))?, std::fs::read_to_string(d.join("b/y"))?))
                });
                match pair {
                    Ok((x, y)) if x == y => reads += 1,
                    other => bad.push(format!("{other:?}")),
                }
            }
            (reads, bad)
        })
    };
    for i in 1..=200 {
        let n = i.to_string();
        let hash = repo.commit(&[("a/x", &n), ("b/y", &n)]);
        s.p.signal(Signal::SIGHUP);
        s.wait_for(&hash);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, bad) = reader.join().unwrap();
    assert!(bad.is_empty(), "{} bad reads of {reads}: {:?}", bad.len(), &bad[..bad.len().min(5)]);
    assert!(reads > 200, "the reader read {reads} times");
    // --keep 2: the published version and two more.
    let versions = std::fs::read_dir(s.root.join(".worktrees")).unwrap().count();
    assert_eq!(versions, 3);
    s.stop();
}

#[test]
fn copy_mode_publishes_a_directory_and_keep_bounds_the_versions() {
    let repo = Repo::new();
    let first = repo.commit(&[("conf", "1")]);
    let s = start(&repo.url(), &["--period", "1h", "--copy", "--keep", "0"]);
    s.wait_for(&first);
    let meta = std::fs::symlink_metadata(s.site()).unwrap();
    assert!(meta.is_dir() && !meta.file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(s.site().join("conf")).unwrap(), "1");
    assert!(!s.site().join(".git").exists(), "a copy is the content only");
    let second = repo.commit(&[("conf", "2")]);
    s.p.signal(Signal::SIGHUP);
    s.wait_for(&second);
    assert_eq!(std::fs::read_to_string(s.site().join("conf")).unwrap(), "2");
    let versions: Vec<_> =
        std::fs::read_dir(s.root.join(".worktrees")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(versions, [std::ffi::OsString::from(&second)]);
    s.stop();
}

#[test]
fn one_time_syncs_once_and_says_how_it_went() {
    let repo = Repo::new();
    let hash = repo.commit(&[("f", "x")]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let (code, err) = run_plain(
        &["sync", "--one-time", "--repo", &repo.url(), "--root", root.to_str().unwrap(), "--admin", "127.0.0.1:0"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    // The default link is the repository's name (git-sync's default).
    assert_eq!(std::fs::read_link(root.join("origin")).unwrap(), Path::new(".worktrees").join(&hash));
    let (code, err) = run_plain(
        &[
            "sync",
            "--one-time",
            "--repo",
            "file:///nonexistent/repo.git",
            "--root",
            root.to_str().unwrap(),
            "--admin",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ls-remote") && err.contains("nonexistent"), "{err}");
    // The version published before is still there.
    assert_eq!(std::fs::read_link(root.join("origin")).unwrap(), Path::new(".worktrees").join(&hash));
}

#[test]
fn tags_pinned_commits_sparse_checkouts_and_submodules() {
    let sub = Repo::new();
    sub.commit(&[("lib.txt", "library")]);
    let repo = Repo::new();
    let v1 = repo.commit(&[("docs/a.md", "a"), ("src/main.rs", "fn main() {}")]);
    git(&repo.work(), &["tag", "-a", "v1", "-m", "v1"]);
    git(&repo.work(), &["push", "--quiet", "origin", "v1"]);
    git(&repo.work(), &["submodule", "add", "--quiet", &sub.url(), "vendor/lib"]);
    let v2 = repo.commit(&[("docs/a.md", "a2")]);

    // A tag names its commit, not the tag object.
    let s = start(&repo.url(), &["--ref", "v1", "--period", "1h"]);
    s.wait_for(&v1);
    s.stop();
    // A pinned commit.
    let s = start(&repo.url(), &["--ref", &v1, "--period", "1h"]);
    s.wait_for(&v1);
    s.stop();
    // Submodules, recursively by default.
    let s = start(&repo.url(), &["--ref", "main", "--period", "1h"]);
    s.wait_for(&v2);
    assert_eq!(std::fs::read_to_string(s.site().join("vendor/lib/lib.txt")).unwrap(), "library");
    s.stop();
    // A sparse checkout, without submodules.
    let dir = tempfile::tempdir().unwrap();
    let patterns = dir.path().join("sparse");
    std::fs::write(&patterns, "/docs/\n").unwrap();
    let s = start_in(
        dir,
        &repo.url(),
        &["--period", "1h", "--sparse-checkout-file", patterns.to_str().unwrap(), "--submodules", "off"],
    );
    s.wait_for(&v2);
    assert!(s.site().join("docs/a.md").exists());
    assert!(!s.site().join("src/main.rs").exists(), "outside the sparse patterns");
    s.stop();
}

#[test]
fn a_force_push_publishes_the_new_history_and_bad_refs_keep_the_old_version() {
    let repo = Repo::new();
    repo.commit(&[("f", "1")]);
    let second = repo.commit(&[("f", "2")]);
    let s = start(&repo.url(), &["--period", "1h"]);
    s.wait_for(&second);
    git(&repo.work(), &["reset", "--quiet", "--hard", "HEAD~1"]);
    let rewritten = repo.commit(&[("f", "rewritten")]);
    s.p.signal(Signal::SIGHUP);
    s.wait_for(&rewritten);
    assert_eq!(std::fs::read_to_string(s.site().join("f")).unwrap(), "rewritten");
    let root = s.stop_keeping_root();

    let s = start_in(root, &repo.url(), &["--ref", "no-such-branch", "--period", "1h"]);
    let admin = s.p.admin();
    assert_eventually!(
        admin.get("/status").json()["last_error"].as_str().is_some_and(|e| e.contains("no ref no-such-branch")),
        "{}",
        admin.get("/status").json()
    );
    // The version an earlier run published is still served, and ready says so.
    assert_eq!(s.version().as_deref(), Some(rewritten.as_str()));
    assert!(admin.ready());
    s.stop();
}

#[test]
fn signed_commits_are_published_and_unsigned_ones_refused() {
    let repo = Repo::new();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("signer");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = std::fs::read_to_string(keys.path().join("signer.pub")).unwrap();
    let allowed = keys.path().join("allowed_signers");
    std::fs::write(&allowed, format!("test@example.com {public}")).unwrap();
    let sign = ["-c", "gpg.format=ssh", "-c"];
    let signing_key = format!("user.signingkey={}", key.display());
    let signed = {
        // `commit -S` with the ssh key: the options go before the subcommand.
        let mut args = sign.to_vec();
        args.push(&signing_key);
        std::fs::write(repo.work().join("f"), "signed").unwrap();
        git(&repo.work(), &["add", "-A"]);
        args.extend(["commit", "--quiet", "-S", "-m", "signed"]);
        git(&repo.work(), &args);
        git(&repo.work(), &["push", "--quiet", "origin", "HEAD:main"]);
        git(&repo.work(), &["rev-parse", "HEAD"])
    };
    let s =
        start(&repo.url(), &["--period", "1h", "--verify-signatures", "--allowed-signers", allowed.to_str().unwrap()]);
    s.wait_for(&signed);
    let unsigned = repo.commit(&[("f", "unsigned")]);
    s.p.signal(Signal::SIGHUP);
    let admin = s.p.admin();
    assert_eventually!(admin.metric_sum("podkit_sync_verification_refusals_total") >= 1.0, "{}", s.p.stderr());
    assert!(admin.get("/status").json()["last_error"].as_str().unwrap().contains(&unsigned));
    assert_eq!(s.version().as_deref(), Some(signed.as_str()), "the signed version stays");
    assert_eq!(std::fs::read_to_string(s.site().join("f")).unwrap(), "signed");
    s.stop();
}

#[test]
fn git_and_ssh_transports() {
    let repo = Repo::new();
    let hash = repo.commit(&[("f", "x")]);
    let daemon = podkit_testkit::git_daemon(repo.dir.path());
    let s = start(&format!("git://127.0.0.1:{}/origin.git", daemon.port()), &["--period", "1h"]);
    s.wait_for(&hash);
    s.stop();

    let sshd = podkit_testkit::sshd();
    let user = nix::unistd::User::from_uid(nix::unistd::getuid()).unwrap().unwrap().name;
    let url = format!("ssh://{user}@127.0.0.1:{}{}", sshd.port(), repo.origin().display());
    let key = sshd.dir().join("client_key");
    let known = sshd.dir().join("known_hosts");
    let s = start(
        &url,
        &["--period", "1h", "--ssh-key-file", key.to_str().unwrap(), "--ssh-known-hosts-file", known.to_str().unwrap()],
    );
    s.wait_for(&hash);
    s.stop();
    // A host key that is not the server's: refused, nothing published.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("known_hosts");
    std::fs::write(
        &wrong,
        format!("[127.0.0.1]:{} {}", sshd.port(), std::fs::read_to_string(sshd.dir().join("client_key.pub")).unwrap()),
    )
    .unwrap();
    let s = start_in(
        dir,
        &url,
        &["--period", "1h", "--ssh-key-file", key.to_str().unwrap(), "--ssh-known-hosts-file", wrong.to_str().unwrap()],
    );
    let admin = s.p.admin();
    assert_eventually!(
        admin.get("/status").json()["last_error"].as_str().is_some_and(|e| e.contains("Host key verification failed")),
        "{}",
        admin.get("/status").json()
    );
    assert!(!admin.ready());
    s.stop();
}

#[test]
fn kill_9_mid_sync_leaves_a_complete_version_and_the_leftovers_are_cleaned() {
    let repo = Repo::new();
    let first = repo.commit(&[("f", "1")]);
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("hook-ran");
    let hook = format!("sh -c 'touch {}; sleep 600'", marker.display());
    let root = dir.path().join("root");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> =
            ["sync", "--repo", &repo.url(), "--root", root.to_str().unwrap(), "--link", "site", "--period", "1h"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let a = args(&[]);
    let mut p = Podkit::start(Mode::Subreaper, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eventually!(p.admin().get("/status").json()["version"] == first.as_str(), "{}", p.stderr());
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0);

    // Killed after the new version's worktree is written, before it is published: in a
    // pre-publish hook that never ends.
    let second = repo.commit(&[("f", "2")]);
    let a = args(&["--exechook-command", &hook, "--exechook-when", "pre-publish"]);
    let mut p = Podkit::start(Mode::Subreaper, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eventually!(marker.exists(), "the hook never ran: {}", p.stderr());
    assert!(root.join(".worktrees").join(&second).exists());
    p.signal(Signal::SIGKILL);
    assert_eq!(p.wait(), 137);
    assert_eq!(std::fs::read_to_string(root.join("site/f")).unwrap(), "1", "the old version stays published");

    let a = args(&[]);
    let mut p = Podkit::start(Mode::Subreaper, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eventually!(p.admin().get("/status").json()["version"] == second.as_str(), "{}", p.stderr());
    assert_eq!(std::fs::read_to_string(root.join("site/f")).unwrap(), "2");
    // Killed while asking a server that never answers: nothing changes, and the next start
    // works.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_url = format!("http://{}/repo.git", hung.local_addr().unwrap());
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0);
    let mut a = args(&[]);
    a[2] = hung_url;
    let mut p = Podkit::start(Mode::Subreaper, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eventually!(p.admin().healthy(), "{}", p.stderr());
    p.signal(Signal::SIGKILL);
    assert_eq!(p.wait(), 137);
    drop(hung);
    let leftovers: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".podkit-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(std::fs::read_to_string(root.join("site/f")).unwrap(), "2");
}

#[test]
fn hooks_run_with_the_version_and_a_failing_pre_publish_hook_stops_the_publish() {
    let repo = Repo::new();
    let first = repo.commit(&[("f", "1")]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hook.log");
    let hook = format!("sh -c 'echo $GITSYNC_HASH $(cat f) >> {}'", log.display());
    let webhook = crate::support::TestHttp::start(None);
    let s = start_in(
        dir,
        &repo.url(),
        &["--period", "1h", "--exechook-command", &hook, "--webhook-url", &webhook.url("/published")],
    );
    s.wait_for(&first);
    assert_eventually!(std::fs::read_to_string(&log).unwrap_or_default() == format!("{first} 1\n"), "{}", s.p.stderr());
    assert_eventually!(webhook.seen.lock().unwrap().iter().any(|l| l.starts_with("POST /published")), "no webhook");
    s.stop();

    let dir = tempfile::tempdir().unwrap();
    let check = "sh -c 'test \"$(cat f)\" = 1'";
    let s =
        start_in(dir, &repo.url(), &["--period", "1h", "--exechook-command", check, "--exechook-when", "pre-publish"]);
    s.wait_for(&first);
    let second = repo.commit(&[("f", "2")]);
    s.p.signal(Signal::SIGHUP);
    let admin = s.p.admin();
    // Version 2 fails its check: never published, and the error says why.
    assert_eventually!(
        admin.get("/status").json()["last_error"].as_str().is_some_and(|e| e.contains("pre-publish exechook failed")),
        "{}",
        admin.get("/status").json()
    );
    assert_eq!(s.version().as_deref(), Some(first.as_str()));
    assert!(admin.get("/status").json()["last_error"].as_str().is_some());
    assert_eq!(std::fs::read_to_string(s.site().join("f")).unwrap(), "1", "not {second}");
    s.stop();
}

#[test]
fn bad_configuration_exits_64_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let root = dir.path().join("root").display().to_string();
    let under_file = file.join("root").display().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["sync", "--root", &root], "--repo"),
        (&["sync", "--repo", "file:///x", "--http", "http://h/x.tar.gz", "--root", &root], "cannot be used with"),
        (&["sync", "--repo", "file:///x", "--root", &under_file], "--root"),
        (
            &["sync", "--repo", "file:///x", "--root", &root, "--password-file", "/nonexistent", "--username", "u"],
            "/nonexistent",
        ),
        (&["sync", "--repo", "file:///x", "--root", &root, "--verify-signatures"], "--allowed-signers"),
        (&["sync", "--repo", "file:///x", "--root", &root, "--sync-on-signal", "SIGUSR1"], "only SIGHUP"),
        (&["sync", "--repo", "file:///x", "--root", &root, "--trigger-listen", "127.0.0.1:0"], "--trigger-secret-file"),
        (&["sync", "--http", "http://h/x.tgz", "--root", &root, "--sha256", "abc"], "64 hex digits"),
    ];
    for (args, says) in cases {
        let (code, err) = run_plain(args, &[]);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: expected {says:?} in {err}");
    }
}

/// Serves `body()` at any path with an ETag of its length and content; answers 304 when the
/// request's If-None-Match is that ETag. Returns the address and the requests' header blocks.
fn archive_server(
    body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut out = conn.try_clone().unwrap();
            let mut r = BufReader::new(conn);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let b = body.lock().unwrap().clone();
            let etag = format!("\"{}-{}\"", b.len(), b.iter().map(|x| u64::from(*x)).sum::<u64>());
            let not_modified =
                head.to_ascii_lowercase().contains(&format!("if-none-match: {}", etag.to_ascii_lowercase()));
            s.lock().unwrap().push(head);
            let reply = if not_modified {
                format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n").into_bytes()
            } else {
                let mut v = format!(
                    "HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    b.len()
                )
                .into_bytes();
                v.extend_from_slice(&b);
                v
            };
            let _ = out.write_all(&reply);
        }
    });
    (addr, seen)
}

fn tar_gz(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("tar").arg("-C").arg(dir).args(["-czf", "-"]).args(args).output().expect("tar");
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn the_http_source_publishes_an_archive_asks_conditionally_and_refuses_escapes() {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("site")).unwrap();
    std::fs::write(src.path().join("site/index.html"), "v1").unwrap();
    let body = std::sync::Arc::new(std::sync::Mutex::new(tar_gz(src.path(), &["site"])));
    let (addr, seen) = archive_server(body.clone());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let url = format!("http://{addr}/content.tar.gz");
    let p =
        Podkit::start(Mode::Subreaper, &["sync", "--http", &url, "--root", root.to_str().unwrap(), "--period", "1h"]);
    let admin = p.admin();
    assert_eventually!(admin.get("/status").json()["version"].is_string(), "{}", p.stderr());
    let v1 = admin.get("/status").json()["version"].as_str().unwrap().to_string();
    assert_eq!(v1.len(), 64, "the version is the content's SHA-256");
    assert_eq!(std::fs::read_to_string(root.join("current/site/index.html")).unwrap(), "v1");
    // Unchanged: the next look is conditional and answered 304; nothing is downloaded again.
    let bytes = admin.metric_sum("podkit_sync_fetched_bytes_total");
    p.signal(Signal::SIGHUP);
    assert_eventually!(admin.metric_sum("podkit_sync_syncs_total") >= 2.0, "{}", p.stderr());
    assert!(seen.lock().unwrap().last().unwrap().to_ascii_lowercase().contains("if-none-match"));
    assert_eq!(admin.metric_sum("podkit_sync_fetched_bytes_total"), bytes);
    // Changed: a new version.
    std::fs::write(src.path().join("site/index.html"), "v2").unwrap();
    *body.lock().unwrap() = tar_gz(src.path(), &["site"]);
    p.signal(Signal::SIGHUP);
    assert_eventually!(admin.get("/status").json()["version"] != v1.as_str(), "{}", p.stderr());
    assert_eq!(std::fs::read_to_string(root.join("current/site/index.html")).unwrap(), "v2");
    // An archive with an entry outside its directory: refused, v2 stays.
    std::fs::write(dir.path().join("evil"), "x").unwrap();
    *body.lock().unwrap() = tar_gz(&root, &["-P", "../evil"]);
    p.signal(Signal::SIGHUP);
    assert_eventually!(
        admin.get("/status").json()["last_error"].as_str().is_some_and(|e| e.contains("../evil")),
        "{}",
        admin.get("/status").json()
    );
    assert_eq!(std::fs::read_to_string(root.join("current/site/index.html")).unwrap(), "v2");
    let mut p = p;
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait(), 0);
}

#[test]
fn a_failed_checkout_is_never_published_and_is_done_again_next_time() {
    let sub = Repo::new();
    sub.commit(&[("lib.txt", "library")]);
    let repo = Repo::new();
    git(&repo.work(), &["submodule", "add", "--quiet", &sub.url(), "lib"]);
    let hash = repo.commit(&[("app", "1")]);
    // The submodule's repository goes away: the checkout of its commit cannot complete.
    let moved = sub.dir.path().join("moved.git");
    std::fs::rename(sub.origin(), &moved).unwrap();
    let s = start(&repo.url(), &["--period", "1h"]);
    let admin = s.p.admin();
    assert_eventually!(
        admin.get("/status").json()["last_error"].as_str().is_some_and(|e| e.contains("submodule")),
        "{}",
        admin.get("/status").json()
    );
    assert_eq!(s.version(), None, "a half checkout is not published");
    assert!(!s.root.join(".worktrees").join(&hash).exists(), "and not kept under its name");
    // Another try, even with nothing new upstream, is not fooled by a directory of that name.
    s.p.signal(Signal::SIGHUP);
    assert_eventually!(admin.metric_sum("podkit_sync_syncs_total") >= 2.0, "{}", s.p.stderr());
    assert_eq!(s.version(), None);
    std::fs::rename(&moved, sub.origin()).unwrap();
    s.p.signal(Signal::SIGHUP);
    s.wait_for(&hash);
    assert_eq!(std::fs::read_to_string(s.site().join("lib/lib.txt")).unwrap(), "library");
    // The version's .git points at the repository relatively: git works in it wherever the
    // volume is mounted.
    let dotgit = std::fs::read_to_string(s.site().join(".git")).unwrap();
    assert!(dotgit.starts_with("gitdir: ../../.git/worktrees/"), "{dotgit}");
    assert_eq!(git(&s.site(), &["rev-parse", "HEAD"]), hash);
    s.stop();
}

#[test]
fn a_branch_wins_over_a_tag_of_its_name_and_sha256_repositories_sync() {
    let repo = Repo::new();
    repo.commit(&[("f", "tagged")]);
    git(&repo.work(), &["tag", "main"]);
    git(&repo.work(), &["push", "--quiet", "origin", "refs/tags/main"]);
    let branch = repo.commit(&[("f", "branch")]);
    let s = start(&repo.url(), &["--ref", "main", "--period", "1h"]);
    s.wait_for(&branch);
    assert_eq!(std::fs::read_to_string(s.site().join("f")).unwrap(), "branch");
    s.stop();

    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "--quiet", "--object-format=sha256", "--initial-branch=main", "work"]);
    let work = dir.path().join("work");
    std::fs::write(work.join("f"), "sha256").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "one"]);
    let hash = git(&work, &["rev-parse", "HEAD"]);
    assert_eq!(hash.len(), 64);
    let s = start(&format!("file://{}", work.display()), &["--period", "1h"]);
    s.wait_for(&hash);
    assert_eq!(std::fs::read_to_string(s.site().join("f")).unwrap(), "sha256");
    s.stop();
}

#[test]
fn one_time_waits_for_its_hooks_and_fails_when_they_fail() {
    let repo = Repo::new();
    repo.commit(&[("f", "x")]);
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("hook-ran");
    let root = dir.path().join("root").display().to_string();
    let hook = format!("sh -c 'cat f > {}'", marker.display());
    let (code, err) = run_plain(
        &[
            "sync",
            "--one-time",
            "--repo",
            &repo.url(),
            "--root",
            &root,
            "--admin",
            "127.0.0.1:0",
            "--exechook-command",
            &hook,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "x", "the hook ran before the exit");
    let (code, err) = run_plain(
        &[
            "sync",
            "--one-time",
            "--repo",
            &repo.url(),
            "--root",
            &root,
            "--admin",
            "127.0.0.1:0",
            "--exechook-command",
            "false",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the exechook failed"), "{err}");
}

/// git's smart HTTP (`git http-backend` as CGI) over the repositories under `base`, asking for
/// basic authentication as `user:password`. Returns the address; requests without the right
/// credentials get 401.
fn git_http(base: &Path, user: &'static str, password: &'static str) -> std::net::SocketAddr {
    git_http_holding(base, user, password, std::sync::Arc::default())
}

/// [`git_http`], holding every fetch (`POST …/git-upload-pack`) unanswered while `hold` is
/// non-zero, and counting each one held in it (so `hold - 1` fetches are held).
fn git_http_holding(
    base: &Path,
    user: &'static str,
    password: &'static str,
    hold: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let base = base.to_path_buf();
    let expected = {
        let out =
            Command::new("sh").arg("-c").arg(format!("printf '%s' '{user}:{password}' | base64")).output().unwrap();
        format!("Basic {}", String::from_utf8(out.stdout).unwrap().trim())
    };
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut out = conn.try_clone().unwrap();
            let mut r = BufReader::new(conn);
            let mut first = String::new();
            if r.read_line(&mut first).unwrap_or(0) == 0 {
                continue;
            }
            let mut headers = std::collections::HashMap::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let mut body = vec![0; headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0)];
            let _ = r.read_exact(&mut body);
            if headers.get("authorization") != Some(&expected) {
                let _ = out.write_all(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
            let mut parts = first.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if method == "POST"
                && target.ends_with("git-upload-pack")
                && hold.load(std::sync::atomic::Ordering::SeqCst) > 0
            {
                hold.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // A fetch that never gets its pack: the connection stays open, unanswered.
                std::thread::spawn(move || {
                    let _keep = (out, r);
                    std::thread::sleep(Duration::from_secs(3600));
                });
                continue;
            }
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let mut cgi = Command::new("git")
                .arg("http-backend")
                .env("GIT_PROJECT_ROOT", &base)
                .env("GIT_HTTP_EXPORT_ALL", "1")
                .env("REQUEST_METHOD", method)
                .env("PATH_INFO", path)
                .env("QUERY_STRING", query)
                .env("CONTENT_TYPE", headers.get("content-type").cloned().unwrap_or_default())
                .env("CONTENT_LENGTH", body.len().to_string())
                .env("REMOTE_USER", user)
                .env("HTTP_GIT_PROTOCOL", headers.get("git-protocol").cloned().unwrap_or_default())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            cgi.stdin.take().unwrap().write_all(&body).unwrap();
            let reply = cgi.wait_with_output().unwrap().stdout;
            // CGI headers, a blank line, the body: becomes an HTTP/1.1 answer.
            let split = reply.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
            let split = split.or_else(|| reply.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
            let Some((at, sep)) = split else { continue };
            let head = String::from_utf8_lossy(&reply[..at]).to_string();
            let status = head.lines().find_map(|l| l.strip_prefix("Status: ")).unwrap_or("200 OK").to_string();
            let payload = &reply[at + sep..];
            let mut answer = format!("HTTP/1.1 {status}\r\n");
            for l in head.lines().filter(|l| !l.starts_with("Status:")) {
                answer.push_str(l.trim_end());
                answer.push_str("\r\n");
            }
            answer.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", payload.len()));
            let _ = out.write_all(answer.as_bytes()).and_then(|()| out.write_all(payload));
        }
    });
    addr
}

#[test]
fn https_style_credentials_come_from_a_file_and_a_wrong_password_is_reported() {
    let repo = Repo::new();
    let hash = repo.commit(&[("f", "private")]);
    let addr = git_http(repo.dir.path(), "alice", "s3cret");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    std::fs::write(&good, "s3cret\n").unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "guess\n").unwrap();
    let url = format!("http://{addr}/origin.git");
    let s = start(&url, &["--period", "1h", "--username", "alice", "--password-file", good.to_str().unwrap()]);
    s.wait_for(&hash);
    assert_eq!(std::fs::read_to_string(s.site().join("f")).unwrap(), "private");
    s.stop();
    let s = start_in(dir, &url, &["--period", "1h", "--username", "alice", "--password-file", bad.to_str().unwrap()]);
    let admin = s.p.admin();
    assert_eventually!(
        admin.get("/status").json()["last_error"].as_str().is_some_and(|e| e.contains("Authentication failed")),
        "{}",
        admin.get("/status").json()
    );
    assert!(!admin.ready());
    assert!(!s.p.stderr().contains("guess"), "the password is never logged");
    s.stop();
}

#[test]
fn kill_9_during_a_fetch_and_during_a_publish() {
    let repo = Repo::new();
    let first = repo.commit(&[("f", "1")]);
    let hold = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let addr = git_http_holding(repo.dir.path(), "u", "p", hold.clone());
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "p").unwrap();
    let root = dir.path().join("root");
    let url = format!("http://{addr}/origin.git");
    let args: Vec<String> =
        ["sync", "--repo", &url, "--root", root.to_str().unwrap(), "--link", "site", "--period", "1h"]
            .iter()
            .map(|s| s.to_string())
            .chain(["--username".into(), "u".into(), "--password-file".into(), password.display().to_string()])
            .collect();
    let start = |extra: &[&str]| {
        let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
        a.extend_from_slice(extra);
        Podkit::start(Mode::Subreaper, &a)
    };
    let version = |p: &Podkit| p.admin().get("/status").json()["version"].as_str().map(str::to_string);
    let p = start(&["--copy"]);
    assert_eventually!(version(&p).as_deref() == Some(first.as_str()), "{}", p.stderr());
    drop(p);

    // During a fetch: the server holds the pack; podkit is killed while it waits.
    let second = repo.commit(&[("f", "2")]);
    hold.store(1, std::sync::atomic::Ordering::SeqCst);
    let mut p = start(&["--copy"]);
    // The fetch is under way: the server holds it.
    assert_eventually!(hold.load(std::sync::atomic::Ordering::SeqCst) >= 2, "no fetch came: {}", p.stderr());
    p.signal(Signal::SIGKILL);
    assert_eq!(p.wait(), 137);
    assert_eq!(std::fs::read_to_string(root.join("site/f")).unwrap(), "1", "the old version stays");
    assert!(!root.join(".worktrees").join(&second).exists());
    hold.store(0, std::sync::atomic::Ordering::SeqCst);

    // During a publish: a --copy of a tree of 3,000 files takes a while; killed once the state
    // names the version being published.
    let files: Vec<(String, String)> = (0..3000).map(|i| (format!("d{}/f{i}", i / 300), format!("{i}"))).collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).chain([("f", "3")]).collect();
    let third = repo.commit(&refs);
    let mut p = start(&["--copy"]);
    let state = root.join(".podkit-sync.json");
    assert_eventually!(
        timeout = Duration::from_secs(60),
        std::fs::read_to_string(&state).unwrap_or_default().contains(&format!("\"publishing\": \"{third}\"")),
        "{}",
        p.stderr()
    );
    p.signal(Signal::SIGKILL);
    assert_eq!(p.wait(), 137);
    let f = std::fs::read_to_string(root.join("site/f")).unwrap();
    assert!(f == "1" || f == "3", "a whole version is published, not a mix: {f}");
    // The next start finishes that publish, and cleans what the kill left.
    let p = start(&["--copy"]);
    assert_eventually!(
        timeout = Duration::from_secs(60),
        version(&p).as_deref() == Some(third.as_str()),
        "{}",
        p.stderr()
    );
    assert_eq!(std::fs::read_to_string(root.join("site/f")).unwrap(), "3");
    assert_eq!(std::fs::read_to_string(root.join("site/d9/f2999")).unwrap(), "2999");
    let leftovers: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".podkit-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn gpg_signatures_are_checked_against_the_given_keyring() {
    let homes = tempfile::tempdir().unwrap();
    let gpg = |home: &Path, args: &[&str]| {
        let out = Command::new("gpg")
            .env("GNUPGHOME", home)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .output()
            .expect("gpg");
        assert!(out.status.success(), "gpg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let home = |name: &str| {
        let h = homes.path().join(name);
        std::fs::create_dir(&h).unwrap();
        std::fs::set_permissions(&h, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        h
    };
    let (signer, stranger, trusted) = (home("signer"), home("stranger"), home("trusted"));
    gpg(&signer, &["--quick-gen-key", "Signer <signer@example.com>", "ed25519", "sign", "never"]);
    gpg(&stranger, &["--quick-gen-key", "Stranger <stranger@example.com>", "ed25519", "sign", "never"]);
    // podkit's keyring holds the signer's public key only.
    let public = gpg(&signer, &["--export", "--armor", "signer@example.com"]);
    let key_file = homes.path().join("signer.asc");
    std::fs::write(&key_file, public).unwrap();
    gpg(&trusted, &["--import", key_file.to_str().unwrap()]);

    let repo = Repo::new();
    let signed_by = |home: &Path, who: &str, content: &str| {
        std::fs::write(repo.work().join("f"), content).unwrap();
        git(&repo.work(), &["add", "-A"]);
        let out = Command::new("git")
            .arg("-C")
            .arg(repo.work())
            .args(["-c", "user.name=Test", "-c", &format!("user.email={who}"), "-c", &format!("user.signingkey={who}")])
            .args(["commit", "--quiet", "-S", "-m", content])
            .env("GNUPGHOME", home)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        git(&repo.work(), &["push", "--quiet", "origin", "HEAD:refs/heads/main"]);
        git(&repo.work(), &["rev-parse", "HEAD"])
    };
    let good = signed_by(&signer, "signer@example.com", "good");
    let s = start(&repo.url(), &["--period", "1h", "--verify-signatures", "--gpg-home", trusted.to_str().unwrap()]);
    s.wait_for(&good);
    let bad = signed_by(&stranger, "stranger@example.com", "bad");
    s.p.signal(Signal::SIGHUP);
    let admin = s.p.admin();
    assert_eventually!(admin.metric_sum("podkit_sync_verification_refusals_total") >= 1.0, "{}", s.p.stderr());
    assert!(admin.get("/status").json()["last_error"].as_str().unwrap().contains(&bad));
    assert_eq!(std::fs::read_to_string(s.site().join("f")).unwrap(), "good");
    s.stop();
    for h in [&signer, &stranger, &trusted] {
        let _ = Command::new("gpgconf").env("GNUPGHOME", h).args(["--kill", "gpg-agent"]).output();
    }
}
