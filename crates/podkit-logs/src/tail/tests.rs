//! Every kind of rotation, driven step by step: the tailer is synchronous, so each case says
//! exactly when podkit looks, and checks that every sequence number written is read once.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use super::*;

fn settings(dir: &Path, glob: &str, format: Format) -> Arc<Settings> {
    Arc::new(Settings {
        patterns: vec![glob::Pattern::new(&format!("{}/{glob}", dir.display())).unwrap()],
        format,
        max_record: 1024,
        overlong: Overlong::Split,
        rotate_wait: Duration::ZERO,
        labels: Vec::new(),
        multiline: None,
    })
}

fn append(path: &Path, seqs: std::ops::Range<u32>) {
    let mut f = OpenOptions::new().create(true).append(true).open(path).unwrap();
    for n in seqs {
        writeln!(f, "seq {n:06} some text to make the line longer").unwrap();
    }
}

fn text(r: &Record) -> String {
    match &r.body {
        Body::Line(l) => l.clone(),
        Body::Fields(f) => Value::Object(f.clone()).to_string(),
    }
}

use serde_json::Value;

/// Reads batches of at most `per_batch` records until nothing is left, acknowledging each.
fn drain(t: &mut Tailer, per_batch: usize) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
        let b = t.read_batch(usize::MAX, per_batch);
        if b.is_empty() {
            return out;
        }
        t.commit(&b);
        out.extend(b.records);
    }
}

/// Sequence number → how many times it was read.
fn counts(records: &[Record]) -> BTreeMap<u32, u32> {
    let mut m = BTreeMap::new();
    for r in records {
        let l = text(r);
        let n: u32 = l
            .strip_prefix("seq ")
            .and_then(|s| s.get(..6))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a sequence line: {l:?}"));
        *m.entry(n).or_insert(0) += 1;
    }
    m
}

#[track_caller]
fn assert_exactly_once(records: &[Record], expected: std::ops::Range<u32>) {
    let c = counts(records);
    let missing: Vec<u32> = expected.clone().filter(|n| !c.contains_key(n)).collect();
    let doubled: Vec<u32> = c.iter().filter(|(_, k)| **k > 1).map(|(n, _)| *n).collect();
    let extra: Vec<u32> = c.keys().filter(|n| !expected.contains(n)).copied().collect();
    assert!(
        missing.is_empty() && doubled.is_empty() && extra.is_empty(),
        "lost {missing:?}, doubled {doubled:?}, unexpected {extra:?}"
    );
}

#[test]
fn rename_rotation_reads_the_old_file_to_its_end_then_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let (log, old) = (dir.path().join("app.log"), dir.path().join("app.log.1"));
    let mut t = Tailer::new(settings(dir.path(), "app.log", Format::Raw), Vec::new());
    append(&log, 0..100);
    t.scan();
    let mut read = drain_n(&mut t, 30);
    std::fs::rename(&log, &old).unwrap();
    append(&log, 100..200);
    // The writer had not reopened yet: its last lines still go to the renamed file.
    append(&old, 200..210);
    t.scan();
    read.extend(drain(&mut t, 50));
    assert_exactly_once(&read, 0..210);
    // Read to its end and idle: the rotated file is closed, and stays read.
    scan_until_open(&mut t, 1);
    assert!(t.take_events().closed >= 1);
}

/// Scans until `n` files are followed (the watcher may hand a rotated file back once more,
/// late: it is then closed again), asserting that nothing is read twice meanwhile.
fn scan_until_open(t: &mut Tailer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        t.scan();
        let again = drain(t, 1000);
        assert!(again.is_empty(), "read again: {:?}", again.iter().map(text).collect::<Vec<_>>());
        if t.views().len() == n {
            return;
        }
        assert!(Instant::now() < deadline, "still followed: {:?}", t.views());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads one batch of `n` records and acknowledges it.
fn drain_n(t: &mut Tailer, n: usize) -> Vec<Record> {
    let b = t.read_batch(usize::MAX, n);
    t.commit(&b);
    b.records
}

#[test]
fn copytruncate_continues_in_the_copy_where_the_original_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (log, copy) = (dir.path().join("app.log"), dir.path().join("app.log.1"));
    let mut t = Tailer::new(settings(dir.path(), "app.log*", Format::Raw), Vec::new());
    append(&log, 0..100);
    t.scan();
    let mut read = drain_n(&mut t, 40);
    // logrotate copytruncate: copy, then truncate in place; the writer goes on at offset 0.
    std::fs::copy(&log, &copy).unwrap();
    OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    append(&log, 100..150);
    t.scan();
    read.extend(drain(&mut t, 1000));
    assert_exactly_once(&read, 0..150);
    let e = t.take_events();
    assert_eq!((e.truncated, e.lost.len()), (1, 0));
}

#[test]
fn copytruncate_without_the_copy_in_the_glob_counts_what_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut t = Tailer::new(settings(dir.path(), "app.log", Format::Raw), Vec::new());
    append(&log, 0..100);
    t.scan();
    drain_n(&mut t, 40);
    let acked = t.saved()[0].offset;
    let size_before = std::fs::metadata(&log).unwrap().len();
    t.scan();
    OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    append(&log, 100..110);
    t.scan();
    let read = drain(&mut t, 1000);
    assert_exactly_once(&read, 100..110);
    assert!(t.take_events().lost.is_empty(), "a copy may still turn up within --rotate-wait");
    t.scan();
    assert_eq!(t.take_events().lost, vec![(log.display().to_string(), size_before - acked)]);
}

#[test]
fn a_truncated_file_that_regrew_past_the_offset_is_read_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut t = Tailer::new(settings(dir.path(), "app.log", Format::Raw), Vec::new());
    append(&log, 0..10);
    t.scan();
    let mut read = drain(&mut t, 100);
    // `> app.log`, then more lines than before, all between two looks.
    OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    std::fs::write(&log, b"").unwrap();
    append(&log, 10..40);
    t.scan();
    read.extend(drain(&mut t, 100));
    assert_exactly_once(&read, 0..40);
}

#[test]
fn delete_and_recreate_reads_both_files_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut t = Tailer::new(settings(dir.path(), "app.log", Format::Raw), Vec::new());
    append(&log, 0..50);
    t.scan();
    let mut read = drain_n(&mut t, 10);
    // The old file goes while 40 of its lines are unread; the descriptor keeps them.
    std::fs::remove_file(&log).unwrap();
    append(&log, 50..80);
    t.scan();
    read.extend(drain(&mut t, 7));
    assert_exactly_once(&read, 0..80);
}

#[test]
fn a_restart_resumes_at_the_acknowledged_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let s = settings(dir.path(), "app.log", Format::Raw);
    let mut t = Tailer::new(s.clone(), Vec::new());
    append(&log, 0..100);
    t.scan();
    let mut read = drain_n(&mut t, 30);
    // Read but never acknowledged: a crash in the middle of a batch.
    let _in_flight = t.read_batch(usize::MAX, 20);
    let saved = t.saved();
    drop(t);
    let mut t = Tailer::new(s, saved);
    t.scan();
    read.extend(drain(&mut t, 1000));
    assert_exactly_once(&read, 0..100);
}

#[test]
fn a_rotation_while_stopped_finds_the_renamed_file_in_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (log, old) = (dir.path().join("app.log"), dir.path().join("app.log.1"));
    let s = settings(dir.path(), "app.log", Format::Raw);
    let mut t = Tailer::new(s.clone(), Vec::new());
    append(&log, 0..100);
    t.scan();
    let mut read = drain_n(&mut t, 30);
    let saved = t.saved();
    drop(t);
    append(&log, 100..120);
    std::fs::rename(&log, &old).unwrap();
    append(&log, 120..150);
    let mut t = Tailer::new(s, saved);
    t.scan();
    read.extend(drain(&mut t, 1000));
    assert_exactly_once(&read, 0..150);
}

#[test]
fn a_reused_inode_is_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let s = settings(dir.path(), "app.log", Format::Raw);
    let mut t = Tailer::new(s.clone(), Vec::new());
    append(&log, 0..100);
    t.scan();
    drain(&mut t, 1000);
    let saved = t.saved();
    drop(t);
    // Deleted and recreated while stopped: the new file often gets the same inode number.
    // Its birth time and head differ, so it is read from its start.
    std::fs::remove_file(&log).unwrap();
    append(&log, 100..200);
    let mut t = Tailer::new(s, saved);
    t.scan();
    let read = drain(&mut t, 1000);
    assert_exactly_once(&read, 100..200);
}

#[test]
fn a_file_deleted_while_stopped_with_unread_lines_is_counted_as_lost() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let s = settings(dir.path(), "app.log", Format::Raw);
    let mut t = Tailer::new(s.clone(), Vec::new());
    append(&log, 0..100);
    t.scan();
    drain_n(&mut t, 40);
    t.scan();
    let saved = t.saved();
    let unread = saved[0].size - saved[0].offset;
    drop(t);
    std::fs::remove_file(&log).unwrap();
    let mut t = Tailer::new(s, saved);
    t.scan();
    assert_eq!(t.take_events().lost, vec![(log.display().to_string(), unread)]);
    assert!(t.saved().is_empty(), "a settled loss leaves the checkpoint");
}

#[test]
fn a_partial_last_line_waits_for_its_newline() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut t = Tailer::new(settings(dir.path(), "app.log", Format::Raw), Vec::new());
    std::fs::write(&log, b"one\ntw").unwrap();
    t.scan();
    let r = drain(&mut t, 100);
    assert_eq!(r.iter().map(text).collect::<Vec<_>>(), ["one"]);
    OpenOptions::new().append(true).open(&log).unwrap().write_all(b"o\n").unwrap();
    let r = drain(&mut t, 100);
    assert_eq!(r.iter().map(text).collect::<Vec<_>>(), ["two"]);
    assert_eq!(r[0].offset, 4);
}

#[test]
fn the_last_line_of_a_rotated_file_is_kept_without_its_newline() {
    let dir = tempfile::tempdir().unwrap();
    let (log, old) = (dir.path().join("app.log"), dir.path().join("app.log.1"));
    let mut t = Tailer::new(settings(dir.path(), "app.log", Format::Raw), Vec::new());
    std::fs::write(&log, b"one\nlast words").unwrap();
    t.scan();
    drain(&mut t, 100);
    std::fs::rename(&log, &old).unwrap();
    t.scan();
    let r = drain(&mut t, 100);
    assert_eq!(r.iter().map(text).collect::<Vec<_>>(), ["last words"]);
    scan_until_open(&mut t, 0); // then it is closed
}

#[test]
fn overlong_lines_are_split_and_binary_lines_kept() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut t = Tailer::new(settings(dir.path(), "app.log", Format::Raw), Vec::new());
    let mut data = vec![b'x'; 2500];
    data.push(b'\n');
    data.extend_from_slice(b"bad \xff\xfe bytes\nafter\n");
    std::fs::write(&log, &data).unwrap();
    t.scan();
    let r = drain(&mut t, 100);
    let lens: Vec<usize> = r.iter().map(|r| text(r).len()).collect();
    assert_eq!(&lens[..3], [1024, 1024, 452]);
    assert!(r[..3].iter().all(|r| r.split));
    assert!(r[3].invalid_utf8 && text(&r[3]).starts_with("bad "));
    assert_eq!(text(&r[4]), "after");
    assert_eq!(r[4].offset, 2501 + b"bad \xff\xfe bytes\n".len() as u64);
}

#[test]
fn overlong_lines_without_a_newline_yet_are_split_as_they_come() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let s =
        Arc::new(Settings { overlong: Overlong::Truncate, ..(*settings(dir.path(), "app.log", Format::Raw)).clone() });
    let mut t = Tailer::new(s, Vec::new());
    std::fs::write(&log, vec![b'y'; 3000]).unwrap();
    t.scan();
    let r = drain(&mut t, 100);
    assert_eq!(r.len(), 1, "the first piece, then the rest is skipped");
    OpenOptions::new().append(true).open(&log).unwrap().write_all(b"yyy\nnext\n").unwrap();
    let r = drain(&mut t, 100);
    assert_eq!(r.iter().map(text).collect::<Vec<_>>(), ["next"]);
    assert_eq!(t.take_events().skipped_bytes, 3000 - 1024 + 3);
}

#[test]
fn cri_partial_lines_are_joined_even_across_reads() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0.log");
    let mut t = Tailer::new(settings(dir.path(), "0.log", Format::Cri), Vec::new());
    std::fs::write(&log, "2024-01-01T00:00:00.1Z stdout P hello \n2024-01-01T00:00:00.2Z stdout P wor").unwrap();
    t.scan();
    assert!(drain(&mut t, 100).is_empty(), "a join waits for its full line");
    OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"ld\n2024-01-01T00:00:00.3Z stdout F !\n2024-01-01T00:00:01Z stderr F next\n")
        .unwrap();
    let r = drain(&mut t, 100);
    assert_eq!(r.iter().map(text).collect::<Vec<_>>(), ["hello world!", "next"]);
    assert_eq!((r[0].offset, r[0].ts.as_str(), r[1].stream.as_deref()), (0, "2024-01-01T00:00:00.1Z", Some("stderr")));
}

#[test]
fn a_scan_between_copytruncate_s_copy_and_its_truncate_reads_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (log, copy) = (dir.path().join("app.log"), dir.path().join("app.log.1"));
    let s = Arc::new(Settings {
        rotate_wait: Duration::from_secs(3600),
        ..(*settings(dir.path(), "app.log*", Format::Raw)).clone()
    });
    let mut t = Tailer::new(s, Vec::new());
    append(&log, 0..100);
    t.scan();
    let mut read = drain_n(&mut t, 40);
    std::fs::copy(&log, &copy).unwrap();
    t.scan(); // the copy is there, the original not truncated yet: the copy is held
    read.extend(drain_n(&mut t, 20));
    OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    append(&log, 100..130);
    t.scan();
    read.extend(drain(&mut t, 1000));
    assert_exactly_once(&read, 0..130);
}

#[test]
fn a_plain_copy_under_the_glob_is_a_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (log, backup) = (dir.path().join("app.log"), dir.path().join("app.log.bak"));
    let mut t = Tailer::new(settings(dir.path(), "app.log*", Format::Raw), Vec::new());
    append(&log, 0..10);
    t.scan();
    let mut read = drain(&mut t, 100);
    std::fs::copy(&log, &backup).unwrap();
    t.scan();
    t.scan(); // idle for rotate_wait (0 here) and no truncation came: read from its start
    read.extend(drain(&mut t, 100));
    assert!(counts(&read).values().all(|&n| n == 2), "both files read whole: {:?}", counts(&read));
}

#[test]
fn copytruncate_of_a_file_that_grew_between_scans_is_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let (log, copy) = (dir.path().join("app.log"), dir.path().join("app.log.1"));
    let mut t = Tailer::new(settings(dir.path(), "app.log*", Format::Raw), Vec::new());
    std::fs::write(&log, b"").unwrap();
    t.scan(); // followed while empty: its fingerprint covers nothing yet
    append(&log, 0..100);
    let mut read = drain_n(&mut t, 40); // read with no scan in between
    std::fs::copy(&log, &copy).unwrap();
    OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    append(&log, 100..130);
    t.scan();
    read.extend(drain(&mut t, 1000));
    assert_exactly_once(&read, 0..130);
}

/// The fuzz target's harness on deterministic pseudo-random input made of the bytes that
/// matter to the formats (newlines, CRI tags, JSON), so the normal suite runs it too.
#[test]
fn reading_keeps_its_invariants_on_random_input() {
    let dir = tempfile::tempdir().unwrap();
    let alphabet: &[&[u8]] = &[
        b"\n",
        b" ",
        b"x",
        b"\xff",
        b"\r",
        b"2024-01-01T00:00:00Z ",
        b"stdout ",
        b"P ",
        b"F ",
        b"P",
        b"{\"log\":\"a",
        b"\\n\"}",
        b"\"}",
        b"{\"k\":1}",
        b"\xe2\x82",
        b"\tat ",
    ];
    let mut rng = podkit_testkit::Xorshift::default();
    for _ in 0..300 {
        let mut data = vec![(rng.next_u64() % 256) as u8, (rng.next_u64() % 8) as u8];
        rng.pieces(alphabet, 400, &mut data);
        crate::fuzzing::reading(dir.path(), &data);
    }
}

#[test]
fn a_rotated_cri_file_ending_in_a_partial_piece_is_read_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let data = b"2024-01-01T00:00:00Z stdout F whole\n2024-01-01T00:00:01Z stdout P never finished\n";
    check_reading(&dir.path().join("0.log"), Format::Cri, data, data.len(), 1024);
}

#[test]
fn copytruncate_and_regrowth_between_two_reads_without_a_scan_reads_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (log, copy) = (dir.path().join("app.log"), dir.path().join("app.log.1"));
    let mut t = Tailer::new(settings(dir.path(), "app.log*", Format::Raw), Vec::new());
    append(&log, 0..100);
    t.scan();
    let mut read = drain_n(&mut t, 40);
    std::fs::copy(&log, &copy).unwrap();
    OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    // The writer goes on fast: the new content is past the old read position at once.
    append(&log, 100..300);
    read.extend(drain(&mut t, 1000)); // reads go on with no scan in between
    t.scan();
    read.extend(drain(&mut t, 1000));
    assert_exactly_once(&read, 0..300);
}

#[test]
fn several_copytruncates_between_two_scans_each_continue_in_their_own_copy() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut t = Tailer::new(settings(dir.path(), "app.log*", Format::Raw), Vec::new());
    std::fs::write(&log, b"").unwrap();
    t.scan();
    let mut read = Vec::new();
    for part in 0..3u32 {
        append(&log, part * 100..(part + 1) * 100);
        read.extend(drain_n(&mut t, 30)); // reads go on; no scan until the end
        std::fs::copy(&log, dir.path().join(format!("app.log.{part}"))).unwrap();
        OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    }
    append(&log, 300..320);
    read.extend(drain(&mut t, 1000));
    t.scan();
    read.extend(drain(&mut t, 1000));
    assert_exactly_once(&read, 0..320);
}

/// Settings with lines joined under `--multiline-start '^\S'` (a stack trace's `  at …` lines
/// continue the record their first line started).
fn multiline(dir: &Path, glob: &str, format: Format, timeout: Duration) -> Arc<Settings> {
    let start = regex::Regex::new(r"^\S").unwrap();
    Arc::new(Settings { multiline: Some(Multiline { start, timeout }), ..(*settings(dir, glob, format)).clone() })
}

fn write(path: &Path, data: &[u8]) {
    OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(data).unwrap();
}

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn a_stack_trace_is_joined_into_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut t = Tailer::new(multiline(dir.path(), "app.log", Format::Raw, HOUR), Vec::new());
    let trace = "ERROR boom\r\n  at a.b(C.java:1)\n  at d.e(F.java:2)\n\n  ... 3 more\n";
    write(&log, format!("  orphan 1\n  orphan 2\n{trace}INFO next\nINFO last\n").as_bytes());
    t.scan();
    let r = drain(&mut t, 100);
    // The last record waits: more of it may come.
    assert_eq!(
        r.iter().map(text).collect::<Vec<_>>(),
        ["  orphan 1\n  orphan 2", "ERROR boom\n  at a.b(C.java:1)\n  at d.e(F.java:2)\n\n  ... 3 more", "INFO next"]
    );
    assert_eq!(r.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 22, 22 + trace.len() as u64]);
    assert!(r.iter().all(|r| !r.split));
    let last = t.views()[0].clone();
    assert_eq!(last.offset, 22 + trace.len() as u64 + 10, "acknowledged up to the record still open");
    write(&log, b"  at the end\nWARN after\n");
    let r = drain(&mut t, 100);
    assert_eq!(r.iter().map(text).collect::<Vec<_>>(), ["INFO last\n  at the end"]);
    assert_eq!(r[0].offset, last.offset);
}

#[test]
fn the_last_record_is_saved_once_its_file_is_idle_for_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let timeout = Duration::from_millis(500);
    let mut t = Tailer::new(multiline(dir.path(), "app.log", Format::Raw, timeout), Vec::new());
    write(&log, b"ERROR boom\n  at a\n");
    t.scan();
    let written = Instant::now();
    assert!(drain(&mut t, 100).is_empty(), "more of the record may come");
    // More of it, before the timeout: still one record.
    let grown = Instant::now();
    write(&log, b"  at b\n");
    assert!(drain(&mut t, 100).is_empty());
    let deadline = written + Duration::from_secs(10);
    let r = loop {
        let r = drain(&mut t, 100);
        if !r.is_empty() {
            break r;
        }
        assert!(Instant::now() < deadline, "never saved");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(grown.elapsed() >= timeout, "saved after {:?}, before the timeout", grown.elapsed());
    assert_eq!(r.iter().map(text).collect::<Vec<_>>(), ["ERROR boom\n  at a\n  at b"]);
    assert!(!r[0].split);
    // What comes after a record ended by the timeout is a record of its own.
    write(&log, b"  at c\nINFO next\n");
    let r = drain(&mut t, 100);
    assert_eq!(r.iter().map(text).collect::<Vec<_>>(), ["  at c"]);
}

#[test]
fn a_restart_in_the_middle_of_a_record_reads_it_again_from_its_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let s = multiline(dir.path(), "app.log", Format::Raw, HOUR);
    let mut t = Tailer::new(s.clone(), Vec::new());
    write(&log, b"INFO one\nERROR boom\n  at a\n");
    t.scan();
    let first = drain(&mut t, 100);
    assert_eq!(first.iter().map(text).collect::<Vec<_>>(), ["INFO one"]);
    assert_eq!(t.saved()[0].offset, 9, "the checkpoint stays before the open record");
    let saved = t.saved();
    drop(t);
    write(&log, b"  at b\nINFO two\n");
    let mut t = Tailer::new(s.clone(), saved);
    t.scan();
    let again = drain(&mut t, 100);
    assert_eq!(again.iter().map(text).collect::<Vec<_>>(), ["ERROR boom\n  at a\n  at b"]);
    // The same id as the file read in one go gives it.
    let mut whole = Tailer::new(s, Vec::new());
    whole.scan();
    let w = drain(&mut whole, 100);
    assert_eq!((again[0].key.clone(), again[0].offset), (w[1].key.clone(), w[1].offset));
    assert_eq!(again[0].offset, 9);
}

#[test]
fn a_multiline_record_over_the_maximum_is_split_between_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut t = Tailer::new(multiline(dir.path(), "app.log", Format::Raw, HOUR), Vec::new());
    let mut data = String::from("ERROR boom\n");
    for n in 0..8 {
        data.push_str(&format!("  at {n} {}\n", "x".repeat(290)));
    }
    data.push_str("INFO next\n");
    write(&log, data.as_bytes());
    t.scan();
    let r = drain(&mut t, 100);
    let texts: Vec<String> = r.iter().map(text).collect();
    assert!(texts.iter().all(|l| l.len() <= 1024), "{texts:?}");
    // Cut short where the next line would not fit: marked split. The last part is whole (and
    // "INFO next" waits for what may follow it).
    assert_eq!(r.iter().map(|r| r.split).collect::<Vec<_>>(), [true, true, false]);
    // Nothing lost, nothing doubled: the parts joined again are the record.
    assert_eq!(texts.join("\n") + "\nINFO next\n", data);
}

#[test]
fn a_rotated_file_s_last_multiline_record_is_saved_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (log, old) = (dir.path().join("app.log"), dir.path().join("app.log.1"));
    let mut t = Tailer::new(multiline(dir.path(), "app.log", Format::Raw, HOUR), Vec::new());
    write(&log, b"INFO one\nERROR boom\n  at a\n  at b, no newline");
    t.scan();
    assert_eq!(drain(&mut t, 100).iter().map(text).collect::<Vec<_>>(), ["INFO one"]);
    std::fs::rename(&log, &old).unwrap();
    t.scan();
    let r = drain(&mut t, 100);
    assert_eq!(r.iter().map(text).collect::<Vec<_>>(), ["ERROR boom\n  at a\n  at b, no newline"]);
    assert_eq!((r[0].offset, r[0].split), (9, false));
    scan_until_open(&mut t, 0); // read to its end: closed
}

#[test]
fn an_overlong_line_ends_the_record_being_joined() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut t = Tailer::new(multiline(dir.path(), "app.log", Format::Raw, HOUR), Vec::new());
    write(&log, format!("ERROR boom\n  at a\n  {}\nINFO next\n", "y".repeat(1500)).as_bytes());
    t.scan();
    let r = drain(&mut t, 100);
    let got: Vec<(usize, bool)> = r.iter().map(|r| (text(r).len(), r.split)).collect();
    // The record is cut by a line that continued it; the line's pieces are records of their own.
    assert_eq!(got, [(17, true), (1024, true), (478, true)]);
}

#[test]
fn cri_lines_are_joined_once_their_pieces_are_and_a_stream_change_ends_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0.log");
    let mut t = Tailer::new(multiline(dir.path(), "0.log", Format::Cri, HOUR), Vec::new());
    write(
        &log,
        b"2024-01-01T00:00:00Z stderr F ERROR boom\n\
          2024-01-01T00:00:01Z stderr P   at \n\
          2024-01-01T00:00:02Z stderr F a\n\
          2024-01-01T00:00:03Z stdout F   not part of it\n\
          2024-01-01T00:00:04Z stdout F INFO next\n",
    );
    t.scan();
    let r = drain(&mut t, 100);
    assert_eq!(r.iter().map(text).collect::<Vec<_>>(), ["ERROR boom\n  at a", "  not part of it"]);
    assert_eq!((r[0].ts.as_str(), r[0].stream.as_deref(), r[0].split), ("2024-01-01T00:00:00Z", Some("stderr"), false));
    assert_eq!(r[1].stream.as_deref(), Some("stdout"));
}

#[test]
fn json_lines_are_joined_then_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let s = Arc::new(Settings {
        multiline: Some(Multiline { start: regex::Regex::new(r"^\{").unwrap(), timeout: HOUR }),
        ..(*settings(dir.path(), "app.log", Format::Json)).clone()
    });
    let mut t = Tailer::new(s, Vec::new());
    write(&log, b"{\n  \"level\": \"info\",\n  \"msg\": \"hi\"\n}\n{\"msg\": \"next\"}\n");
    t.scan();
    let r = drain(&mut t, 100);
    assert_eq!(r.len(), 1);
    assert_eq!(text(&r[0]), r#"{"level":"info","msg":"hi"}"#);
    assert_eq!(t.take_events().bad_lines, 0);
}

#[test]
fn a_multiline_record_longer_than_a_read_chunk_does_not_block_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0.log");
    let mut t = Tailer::new(multiline(dir.path(), "0.log", Format::Cri, HOUR), Vec::new());
    // Each continuation line is made of many empty partial pieces: a record of a few dozen
    // bytes that takes more than a chunk of the file.
    let mut data = b"2024-01-01T00:00:00Z stdout F ERROR boom\n".to_vec();
    for n in 0..12 {
        for _ in 0..1000 {
            data.extend_from_slice(b"2024-01-01T00:00:00Z stdout P \n");
        }
        data.extend_from_slice(format!("2024-01-01T00:00:00Z stdout F   at {n}\n").as_bytes());
    }
    data.extend_from_slice(b"2024-01-01T00:00:00Z stdout F INFO next\n");
    assert!(data.len() > chunk_size(1024));
    write(&log, &data);
    t.scan();
    let r = drain(&mut t, 100);
    assert!(r.len() >= 2, "{:?}", r.iter().map(text).collect::<Vec<_>>());
    assert!(r[0].split && text(&r[0]).starts_with("ERROR boom\n  at 0"));
    // Every line once, in order; the file was read past them all.
    let lines: Vec<String> =
        r.iter().flat_map(|r| text(r).split('\n').map(str::to_string).collect::<Vec<_>>()).collect();
    let expected: Vec<String> =
        std::iter::once("ERROR boom".to_string()).chain((0..12).map(|n| format!("  at {n}"))).collect();
    assert_eq!(lines, expected);
}
