//! Which ready tasks a claim takes: each group's best, read from the group's own slice of
//! `tasks_ready`, merged by priority and then id.
//!
//! The index is ordered by group first (migration 5). Ordered by priority and id across all
//! groups, as it was, a claim walked past every ready task of a held group (paused, breaker
//! open, out of tokens, at its concurrency cap) to reach the others': with 100,000 of them
//! held, a claim + finish of 100 took 14 ms instead of 1.3. Now a held group costs a claim
//! nothing, and each group with ready tasks one index seek.

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{OptionalExtension, ToSql, Transaction};

use super::decode;
use super::quarantine::{self, Corrupt};
use crate::clock::Millis;
use crate::error::Result;
use crate::task::{ClaimedTask, LeaseToken};

/// The first group after `?2` (by name) with a ready task, and its best task's rank.
pub(super) const GROUP_AFTER_SQL: &str =
    "SELECT resource_group, priority, id FROM tasks INDEXED BY tasks_ready
         WHERE queue = ?1 AND status = 'pending' AND run_at <= updated_at
           AND resource_group > ?2
         ORDER BY resource_group, priority DESC, id LIMIT 1";

/// A group's ready tasks, best first, as the claim hands them out (attempt counted).
/// `status` and `run_at <= updated_at` are the index's own condition, written out so that
/// SQLite may use it; `run_at <= ?2` still guards against a clock behind the enqueuer's.
pub(super) const GROUP_BEST_SQL: &str = "SELECT id, name, resource_group, payload, priority,
                attempts, max_attempts, created_at, run_at
         FROM tasks INDEXED BY tasks_ready
         WHERE queue = ?1 AND status = 'pending' AND run_at <= updated_at AND run_at <= ?2
           AND resource_group = ?3
         ORDER BY priority DESC, id
         LIMIT ?4 OFFSET ?5";

/// A group with ready tasks, and the rank of its best one.
pub struct Ready {
    pub group: String,
    pub best: (i64, i64),
}

/// A group name as stored, to seek past it: text, or (in a row edited by hand) a BLOB,
/// which sorts after every text.
enum GroupKey {
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl ToSql for GroupKey {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            GroupKey::Text(t) => ValueRef::Text(t),
            GroupKey::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// Rank of a group's best task; one whose priority is not a number ranks first, so that
/// the claim reads it and sets it aside.
fn best_rank(priority: ValueRef<'_>, id: i64) -> (i64, i64) {
    let p = decode::int(priority, "priority").map_or(i64::MIN, i64::saturating_neg);
    (p, id)
}

/// The ready tasks of a group whose stored name is not text (`key`), to set aside.
const GROUP_TASKS_SQL: &str = "SELECT id FROM tasks INDEXED BY tasks_ready
         WHERE queue = ?1 AND status = 'pending' AND run_at <= updated_at
           AND resource_group = ?2";

/// The groups of `queue` that have ready tasks, by name: one index seek each. The ready
/// tasks of a group whose name is not text (a row edited by hand) are set aside.
pub fn groups_with_ready(tx: &Transaction<'_>, queue: &str, now: Millis) -> Result<Vec<Ready>> {
    let mut stmt = tx.prepare_cached(GROUP_AFTER_SQL)?;
    let mut groups: Vec<Ready> = Vec::new();
    let mut corrupt: Vec<Corrupt> = Vec::new();
    // The last group seen, if its name is not text.
    let mut odd: Option<GroupKey> = None;
    loop {
        // Group names are never empty: "" comes before every one.
        let last = groups.last().map_or("", |g| g.group.as_str());
        let after: &dyn ToSql = match &odd {
            Some(key) => key,
            None => &last,
        };
        let next = stmt
            .query_row((queue, after), |r| {
                let group = r.get_ref(0)?;
                let name = decode::text(group, "resource_group").map_err(|bad| {
                    let key = match group {
                        ValueRef::Blob(b) => GroupKey::Blob(b.to_vec()),
                        other => GroupKey::Text(decode::raw(other)),
                    };
                    (bad, key)
                });
                Ok((name, best_rank(r.get_ref(1)?, r.get(2)?)))
            })
            .optional()?;
        match next {
            None => break,
            Some((Ok(group), best)) => {
                groups.push(Ready { group, best });
                odd = None;
            }
            Some((Err((bad, key)), _)) => {
                let ids = tx
                    .prepare_cached(GROUP_TASKS_SQL)?
                    .query_map((queue, &key), |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<i64>>>()?;
                corrupt.extend(ids.into_iter().map(|id| Corrupt {
                    id,
                    bad: bad.clone(),
                }));
                odd = Some(key);
            }
        }
    }
    if !corrupt.is_empty() {
        quarantine::set_aside(tx, &mut corrupt, now)?;
    }
    Ok(groups)
}

/// What a claim may take of one group: at most `cap` tasks. `best`: the rank of its best
/// ready task, if known.
pub struct Share<'a> {
    pub group: &'a str,
    pub cap: usize,
    pub best: Option<(i64, i64)>,
}

/// One group's tasks read so far, best first.
struct Slice {
    /// The most this group can give: its cap, or the claim's limit.
    most: usize,
    rows: Vec<ClaimedTask>,
    /// Rows read, those that could not be decoded (set aside) included.
    read: usize,
    /// No more to read: the group had fewer, or `most` were read.
    done: bool,
    /// How many to read next round (0: none).
    next: usize,
}

/// Rank in a claim (lowest first): highest priority first, then oldest (lowest id).
fn rank(t: &ClaimedTask) -> (i64, i64) {
    (t.priority.saturating_neg(), t.id)
}

/// What a claim hands out with each task.
#[derive(Clone, Copy)]
struct Terms {
    token: LeaseToken,
    expires_at: Millis,
}

/// The best `limit` ready tasks across `shares` (at most `cap` of each group), best first,
/// with their payloads. Rows that cannot be decoded (edited by hand) are set aside, in this
/// transaction, and the tasks behind them taken instead.
pub fn best(
    tx: &Transaction<'_>,
    queue: &str,
    shares: &[Share<'_>],
    limit: usize,
    now: Millis,
    token: LeaseToken,
    expires_at: Millis,
) -> Result<Vec<ClaimedTask>> {
    let terms = Terms { token, expires_at };
    loop {
        let mut corrupt = Vec::new();
        let mut chosen = choose(tx, queue, shares, limit, now, terms, &mut corrupt)?;
        read_apart(tx, &mut chosen, &mut corrupt)?;
        if corrupt.is_empty() {
            return Ok(chosen);
        }
        quarantine::set_aside(tx, &mut corrupt, now)?;
        if chosen.len() == limit {
            return Ok(chosen);
        }
        // What was set aside left the index: choose again, so that the good tasks it
        // stood for run now. Each round sets aside at least one row.
    }
}

/// `best`, without payloads stored apart; rows that cannot be decoded go to `corrupt`.
fn choose(
    tx: &Transaction<'_>,
    queue: &str,
    shares: &[Share<'_>],
    limit: usize,
    now: Millis,
    terms: Terms,
    corrupt: &mut Vec<Corrupt>,
) -> Result<Vec<ClaimedTask>> {
    let mut shares: Vec<&Share<'_>> = shares.iter().filter(|s| s.cap > 0).collect();
    if shares.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    // The best `limit` tasks come from at most `limit` groups, those with the best first
    // tasks: a group whose best is behind `limit` others' bests has nothing in the cut.
    let narrowed = shares.len() > limit && shares.iter().all(|s| s.best.is_some());
    if narrowed {
        let all = shares.clone();
        shares.sort_unstable_by_key(|s| s.best);
        shares.truncate(limit);
        let chosen = best_of(tx, queue, &shares, limit, now, terms, corrupt)?;
        // Each group had a ready task, so `limit` were there, unless a group's best is not
        // due by this clock (set by a clock ahead of ours), or could not be decoded: then
        // ask every group.
        if chosen.len() == limit {
            return Ok(chosen);
        }
        return best_of(tx, queue, &all, limit, now, terms, corrupt);
    }
    best_of(tx, queue, &shares, limit, now, terms, corrupt)
}

/// Fills in the payloads stored apart (schema 4: the row keeps an empty one); a task whose
/// payload there is not a BLOB goes to `corrupt` instead.
fn read_apart(
    tx: &Transaction<'_>,
    tasks: &mut Vec<ClaimedTask>,
    corrupt: &mut Vec<Corrupt>,
) -> Result<()> {
    if !tasks.iter().any(|t| t.payload.is_empty()) {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached("SELECT payload FROM task_payloads WHERE task_id = ?1")?;
    let mut kept = Vec::with_capacity(tasks.len());
    for mut t in tasks.drain(..) {
        if t.payload.is_empty() {
            // No row: a payload that really is empty.
            let apart = stmt
                .query_row([t.id], |r| Ok(decode::blob(r.get_ref(0)?, "payload")))
                .optional()?;
            match apart {
                None => {}
                Some(Ok(payload)) => t.payload = payload,
                Some(Err(mut bad)) => {
                    bad.problem =
                        bad.problem
                            .replacen("column payload", "column task_payloads.payload", 1);
                    corrupt.push(Corrupt { id: t.id, bad });
                    continue;
                }
            }
        }
        kept.push(t);
    }
    *tasks = kept;
    Ok(())
}

/// `best` over every one of `shares`.
///
/// Reads a fair part of each group first, a quarter over `limit / groups` (tasks spread
/// evenly over the groups need no second read), then more of any group whose last task read
/// made the cut, since its next ones may too, doubling what it read, until none does. A
/// group whose last task read is outside the cut has nothing more to give: its next ones
/// rank lower still.
fn best_of(
    tx: &Transaction<'_>,
    queue: &str,
    shares: &[&Share<'_>],
    limit: usize,
    now: Millis,
    terms: Terms,
    corrupt: &mut Vec<Corrupt>,
) -> Result<Vec<ClaimedTask>> {
    let fair = (limit.div_ceil(shares.len()) * 5).div_ceil(4);
    let mut slices: Vec<Slice> = shares
        .iter()
        .map(|s| {
            let most = s.cap.min(limit);
            Slice {
                most,
                rows: Vec::new(),
                read: 0,
                done: false,
                next: most.min(fair),
            }
        })
        .collect();
    let mut stmt = tx.prepare_cached(GROUP_BEST_SQL)?;
    loop {
        for (slice, share) in slices.iter_mut().zip(shares) {
            if slice.next == 0 {
                continue;
            }
            let rows = stmt.query_map(
                (
                    queue,
                    now,
                    share.group,
                    slice.next as i64,
                    slice.read as i64,
                ),
                |r| claimed(r, terms),
            )?;
            let mut got = 0;
            for row in rows {
                got += 1;
                match row? {
                    Ok(task) => slice.rows.push(task),
                    Err(bad) => corrupt.push(bad),
                }
            }
            slice.read += got;
            slice.done = got < slice.next || slice.rows.len() >= slice.most;
            slice.next = 0;
        }
        let mut cut: Vec<&ClaimedTask> = slices.iter().flat_map(|s| &s.rows).collect();
        cut.sort_unstable_by_key(|t| rank(t));
        cut.truncate(limit);
        // The cut's worst, if the cut is full: anything ranked after it is out.
        let worst = (cut.len() == limit).then(|| rank(cut[limit - 1]));
        let mut again = false;
        for slice in slices.iter_mut().filter(|s| !s.done) {
            // A slice that read only rows it could not decode has read nothing yet.
            let last = slice.rows.last().map(rank);
            if last.is_none_or(|last| worst.is_none_or(|w| last <= w)) {
                slice.next = slice.read.min(slice.most - slice.rows.len());
                again = true;
            }
        }
        if !again {
            let mut all: Vec<ClaimedTask> = slices.into_iter().flat_map(|s| s.rows).collect();
            all.sort_unstable_by_key(rank);
            all.truncate(limit);
            return Ok(all);
        }
    }
}

/// A row of `GROUP_BEST_SQL` as a claimed task, or why it cannot be one (a value of the
/// wrong type: see `decode`).
fn claimed(r: &rusqlite::Row<'_>, terms: Terms) -> rusqlite::Result<Result<ClaimedTask, Corrupt>> {
    let id = r.get(0)?;
    let v = |i| r.get_ref(i);
    let (name, group, payload, priority) = (v(1)?, v(2)?, v(3)?, v(4)?);
    let (attempts, max_attempts, created_at, run_at) = (v(5)?, v(6)?, v(7)?, v(8)?);
    let task = || -> decode::Decoded<ClaimedTask> {
        Ok(ClaimedTask {
            id,
            token: terms.token,
            name: decode::text(name, "name")?,
            resource_group: decode::text(group, "resource_group")?,
            payload: decode::blob(payload, "payload")?,
            priority: decode::int(priority, "priority")?,
            attempt: decode::int(attempts, "attempts")?.saturating_add(1),
            max_attempts: decode::int(max_attempts, "max_attempts")?,
            created_at: decode::int(created_at, "created_at")?,
            run_at: decode::int(run_at, "run_at")?,
            lease_expires_at: terms.expires_at,
        })
    };
    Ok(task().map_err(|bad| Corrupt { id, bad }))
}
