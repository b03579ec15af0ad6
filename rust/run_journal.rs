//! The run journal: which claimed tasks a worker actually started, kept where a rescuer on
//! the same host can read it after the worker died.
//!
//! A claim takes more tasks than a worker runs at once (its prefetch buffer), and counts an
//! attempt on each. When a worker dies, the rescuer must tell the runs it started (charged
//! one attempt: a task that kills its worker must go dead after `max_attempts` runs) from
//! those still buffered (given back with the attempt returned). A write to the database
//! before every start would halve the drain rate; instead each worker maps a small file of
//! its own into memory and notes each start and each return there: a few stores to memory,
//! and the kernel keeps them when the process is killed (SIGKILL, OOM, `os._exit`). A power
//! loss can lose them; the rescue then treats a started run as not started (no attempt
//! charged), the lenient side.
//!
//! One file per running worker, `<db>-runs/<worker>.<nonce>.runs`, locked (flock) while its
//! worker lives. Entries are 24 bytes: state, task id, lease token.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::task::{LeaseToken, TaskId};

const ENTRY_BYTES: usize = 24;
const FREE: u64 = 0;
const STARTED: u64 = 1;
const RETURNED: u64 = 2;
/// Handed to a child process (`pool="process"`), which notes the start itself: a worker
/// killed before its child called the processor did not start the run.
const HANDED: u64 = 3;

/// What the journals say of one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Its processor was called and had not returned: the run died with its worker.
    Started,
    /// Its processor returned; the worker died before recording the outcome.
    Returned,
    /// Its worker kept a journal and never started it (still in its buffer).
    NotStarted,
    /// No journal of its worker was found (an older ferroq, or a worker that could not
    /// create one): treated as started.
    Unknown,
}

/// The folder of the journals of the queue file `db`.
pub fn dir_for(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push("-runs");
    db.with_file_name(name)
}

/// One worker's journal, open for writing.
pub struct RunJournal {
    map: MmapMut,
    path: PathBuf,
    // Held for the worker's life: a journal whose lock can be taken belongs to a dead worker.
    _file: File,
    free: Mutex<Vec<u32>>,
}

impl std::fmt::Debug for RunJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunJournal")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RunJournal {
    /// Creates the journal of `worker` beside `db`, with room for `capacity` runs started
    /// and not yet recorded.
    pub fn create(db: &Path, worker: &str, capacity: usize) -> Result<Self> {
        let dir = dir_for(db);
        create_private_dir(&dir)?;
        let capacity = capacity.clamp(1, u32::MAX as usize);
        let path = dir.join(format!(
            "{}.{:016x}.runs",
            encode(worker),
            fastrand::u64(..)
        ));
        let file = private_file(&path)?;
        let journal = (|| {
            file.try_lock()
                .map_err(|e| io_error(&path, e.to_string()))?;
            file.set_len((capacity * ENTRY_BYTES) as u64)?;
            // SAFETY: the file is ours alone to write (created above under a fresh name, and
            // locked); other processes only read it.
            let map = unsafe { MmapMut::map_mut(&file)? };
            Ok(Self {
                map,
                path: path.clone(),
                _file: file,
                free: Mutex::new((0..capacity as u32).rev().collect()),
            })
        })();
        if journal.is_err() {
            let _ = fs::remove_file(&path);
        }
        journal
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn word(&self, slot: u32, index: usize) -> &AtomicU64 {
        word(&self.map, slot, index)
    }

    /// Notes that task `id` (lease `token`) is handed to a child process, which will note
    /// its start (`JournalView::started`). Returns its slot, or `None` if the journal is full.
    pub fn handed(&self, id: TaskId, token: LeaseToken) -> Option<u32> {
        self.note(id, token, HANDED)
    }

    /// Notes that the processor of task `id` (under lease `token`) is about to be called.
    /// Returns its slot, or `None` if the journal is full (the run is then unrecorded).
    pub fn started(&self, id: TaskId, token: LeaseToken) -> Option<u32> {
        self.note(id, token, STARTED)
    }

    fn note(&self, id: TaskId, token: LeaseToken, state: u64) -> Option<u32> {
        let slot = self.free.lock().pop()?;
        self.word(slot, 1).store(id as u64, Ordering::Relaxed);
        self.word(slot, 2).store(token as u64, Ordering::Relaxed);
        // Last, so a reader never sees a state over another run's id.
        self.word(slot, 0).store(state, Ordering::Release);
        Some(slot)
    }

    /// Notes that the run in `slot` returned (its outcome is on its way to the database).
    pub fn returned(&self, slot: u32, id: TaskId) {
        if self.holds(slot, id) {
            self.word(slot, 0).store(RETURNED, Ordering::Release);
        }
    }

    /// Frees `slots` once their runs' outcomes are committed (or the tasks were given back).
    /// The caller frees each slot once; slots out of range are skipped.
    pub fn forget(&self, slots: impl IntoIterator<Item = u32>) {
        let mut free = self.free.lock();
        for slot in slots {
            if (slot as usize + 1) * ENTRY_BYTES <= self.map.len()
                && self.word(slot, 0).swap(FREE, Ordering::AcqRel) != FREE
            {
                free.push(slot);
            }
        }
    }

    fn holds(&self, slot: u32, id: TaskId) -> bool {
        holds(&self.map, slot, id)
    }
}

/// Entry `slot`'s word `index` (0 state, 1 task id, 2 token) in a mapped journal.
fn word(map: &[u8], slot: u32, index: usize) -> &AtomicU64 {
    let offset = slot as usize * ENTRY_BYTES + index * 8;
    assert!(offset + 8 <= map.len());
    // SAFETY: in bounds (checked), 8-byte aligned (the map is page-aligned and entries are
    // 24 bytes), and only ever accessed atomically (here and in the processes sharing it).
    unsafe { AtomicU64::from_ptr(map.as_ptr().add(offset) as *mut u64) }
}

/// Whether entry `slot` is in use by task `id`.
fn holds(map: &[u8], slot: u32, id: TaskId) -> bool {
    (slot as usize + 1) * ENTRY_BYTES <= map.len()
        && word(map, slot, 0).load(Ordering::Acquire) != FREE
        && word(map, slot, 1).load(Ordering::Relaxed) == id as u64
}

/// A worker's journal as its child processes write it (`pool="process"`): the child notes
/// when it calls and when it leaves a processor the worker handed it.
pub struct JournalView {
    map: MmapMut,
}

impl JournalView {
    /// Maps the journal at `path` (created by the worker).
    pub fn attach(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_error(path, e.to_string()))?;
        // SAFETY: the worker and its children write distinct states of an entry, atomically.
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok(Self { map })
    }

    /// The processor of the run handed in `slot` (task `id`) is about to be called.
    pub fn started(&self, slot: u32, id: TaskId) {
        if holds(&self.map, slot, id) {
            let _ = word(&self.map, slot, 0).compare_exchange(
                HANDED,
                STARTED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// The processor of the run in `slot` (task `id`) returned.
    pub fn returned(&self, slot: u32, id: TaskId) {
        if holds(&self.map, slot, id) {
            word(&self.map, slot, 0).store(RETURNED, Ordering::Release);
        }
    }
}

impl Drop for RunJournal {
    /// A worker that stops cleanly has given back or recorded every run: nothing to keep.
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The journal files beside `db`, each with the worker it belongs to.
fn journals(db: &Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = fs::read_dir(dir_for(db)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let stem = name.strip_suffix(".runs")?;
            let (worker, _nonce) = stem.rsplit_once('.')?;
            Some((path.clone(), decode(worker)?))
        })
        .collect()
}

/// The runs a journal file notes, by (task, lease token).
fn read_runs(path: &Path) -> HashMap<(TaskId, LeaseToken), RunState> {
    let Ok(bytes) = fs::read(path) else {
        return HashMap::new();
    };
    bytes
        .chunks_exact(ENTRY_BYTES)
        .filter_map(|e| {
            let word = |i: usize| u64::from_ne_bytes(e[i * 8..i * 8 + 8].try_into().unwrap());
            let state = match word(0) {
                STARTED => RunState::Started,
                RETURNED => RunState::Returned,
                _ => return None, // free, or handed to a child that never started it
            };
            Some(((word(1) as TaskId, word(2) as LeaseToken), state))
        })
        .collect()
}

/// What the journals beside `db` say of each lease `(task, token, worker)`.
pub fn classify(db: &Path, leases: &[(TaskId, LeaseToken, String)]) -> Vec<RunState> {
    if leases.is_empty() {
        return Vec::new();
    }
    let owners: HashSet<&str> = leases.iter().map(|(_, _, w)| w.as_str()).collect();
    let mut known = HashSet::new();
    let mut runs = HashMap::new();
    for (path, worker) in journals(db) {
        if owners.contains(worker.as_str()) {
            runs.extend(read_runs(&path));
            known.insert(worker);
        }
    }
    leases
        .iter()
        .map(|(id, token, worker)| match runs.get(&(*id, *token)) {
            Some(state) => *state,
            None if known.contains(worker) => RunState::NotStarted,
            None => RunState::Unknown,
        })
        .collect()
}

/// Deletes the journals of dead workers (their lock is free) that hold no running task any
/// more (`holds_leases(worker)`): every lease they held was rescued or finished. Not sooner:
/// a journal notes only the runs its worker started, so the claimed tasks it never started
/// are known as such only while its journal is there (without it a rescue charges each one
/// an attempt). Returns how many went.
pub fn collect_garbage(db: &Path, holds_leases: impl Fn(&str) -> bool) -> usize {
    let mut deleted = 0;
    for (path, worker) in journals(db) {
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if file.try_lock().is_err() {
            continue; // its worker is alive
        }
        if !holds_leases(&worker) && fs::remove_file(&path).is_ok() {
            deleted += 1;
        }
    }
    deleted
}

fn create_private_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_error(dir, e.to_string())),
        }
    }
    #[cfg(not(unix))]
    fs::create_dir_all(dir).map_err(|e| io_error(dir, e.to_string()))
}

fn private_file(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map_err(|e| io_error(path, e.to_string()))
}

fn io_error(path: &Path, reason: String) -> Error {
    Error::Storage(format!("run journal {}: {reason}", path.display()))
}

/// A worker id as a file name: `[A-Za-z0-9_-]` kept, every other byte as `%XX`.
fn encode(worker: &str) -> String {
    let mut out = String::with_capacity(worker.len());
    for b in worker.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: TaskId, token: LeaseToken, worker: &str) -> (TaskId, LeaseToken, String) {
        (id, token, worker.to_string())
    }

    #[test]
    fn tells_started_returned_and_buffered_runs_apart() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        let journal = RunJournal::create(&db, "host:1:ab.c", 4).unwrap();
        let a = journal.started(1, 11).unwrap();
        let b = journal.started(2, 22).unwrap();
        journal.returned(b, 2);
        let c = journal.started(3, 33).unwrap();
        journal.forget([c]); // recorded: no longer noted
        let _ = a;
        let got = classify(
            &db,
            &[
                lease(1, 11, "host:1:ab.c"),
                lease(2, 22, "host:1:ab.c"),
                lease(3, 33, "host:1:ab.c"),
                lease(4, 44, "host:1:ab.c"),
                lease(1, 99, "host:1:ab.c"), // another claim of task 1
                lease(5, 55, "elsewhere"),
            ],
        );
        use RunState::*;
        assert_eq!(
            got,
            [
                Started, Returned, NotStarted, NotStarted, NotStarted, Unknown
            ]
        );
    }

    #[test]
    fn a_run_handed_to_a_child_counts_as_started_only_once_the_child_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        let journal = RunJournal::create(&db, "w", 4).unwrap();
        let a = journal.handed(1, 11).unwrap();
        let b = journal.handed(2, 22).unwrap();
        let c = journal.handed(3, 33).unwrap();
        let child = JournalView::attach(journal.path()).unwrap();
        child.started(b, 2);
        child.started(c, 3);
        child.returned(c, 3);
        child.started(a, 99); // another task's slot: ignored
        let leases = [lease(1, 11, "w"), lease(2, 22, "w"), lease(3, 33, "w")];
        use RunState::*;
        assert_eq!(classify(&db, &leases), [NotStarted, Started, Returned]);
    }

    #[test]
    fn a_slot_is_reused_only_after_it_is_forgotten_and_stale_calls_do_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        let journal = RunJournal::create(&db, "w", 1).unwrap();
        let slot = journal.started(1, 1).unwrap();
        assert_eq!(journal.started(2, 2), None, "full");
        journal.forget([slot]);
        journal.forget([slot]); // twice: freed once
        let again = journal.started(2, 2).unwrap();
        assert_eq!(again, slot);
        assert_eq!(journal.started(3, 3), None, "still one slot");
        journal.returned(slot, 1); // a late call for the slot's previous run
        assert_eq!(classify(&db, &[lease(2, 2, "w")]), [RunState::Started]);
    }

    #[test]
    fn a_dead_workers_journal_goes_once_it_holds_no_lease() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        let alive = RunJournal::create(&db, "alive", 4).unwrap();
        alive.started(7, 7).unwrap();
        let dead = RunJournal::create(&db, "dead", 4).unwrap();
        dead.started(8, 8).unwrap();
        // A killed worker leaves its file behind, unlocked.
        let dead_path = dead.path().to_path_buf();
        let kept = dead_path.with_extension("keep");
        fs::copy(&dead_path, &kept).unwrap();
        drop(dead);
        fs::rename(&kept, &dead_path).unwrap();
        assert_eq!(
            collect_garbage(&db, |worker| worker == "dead"),
            0,
            "it still holds a lease"
        );
        assert_eq!(collect_garbage(&db, |_| false), 1);
        assert!(!dead_path.exists());
        assert!(alive.path().exists(), "a live worker's journal stays");
        let alive_path = alive.path().to_path_buf();
        drop(alive);
        assert!(!alive_path.exists(), "removed on a clean stop");
    }

    #[test]
    fn worker_names_round_trip_through_file_names() {
        for name in ["host:12:ab", "a.b/c d", "ünï", "plain-name_1"] {
            assert_eq!(decode(&encode(name)).as_deref(), Some(name));
            assert!(!encode(name).contains(['.', '/']));
        }
    }
}
