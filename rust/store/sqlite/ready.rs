//! Which ready tasks a claim takes: each group's best, read from the group's own slice of
//! `tasks_ready`, merged by priority and then id.
//!
//! The index is ordered by group first (migration 5). Ordered by priority and id across all
//! groups, as it was, a claim walked past every ready task of a held group (paused, breaker
//! open, out of tokens, at its concurrency cap) to reach the others': with 100,000 of them
//! held, a claim + finish of 100 took 14 ms instead of 1.3. Now a held group costs a claim
//! nothing, and each group with ready tasks one index seek.

use rusqlite::{OptionalExtension, Transaction};

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
                attempts + 1, max_attempts, created_at, run_at
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

/// The groups of `queue` that have ready tasks, by name: one index seek each.
pub fn groups_with_ready(tx: &Transaction<'_>, queue: &str) -> Result<Vec<Ready>> {
    let mut stmt = tx.prepare_cached(GROUP_AFTER_SQL)?;
    let mut groups: Vec<Ready> = Vec::new();
    loop {
        // Group names are never empty: "" comes before every one.
        let after = groups.last().map_or("", |g| g.group.as_str());
        let next = stmt
            .query_row((queue, after), |r| {
                Ok(Ready {
                    group: r.get(0)?,
                    best: (-r.get::<_, i64>(1)?, r.get(2)?),
                })
            })
            .optional()?;
        match next {
            Some(group) => groups.push(group),
            None => return Ok(groups),
        }
    }
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
    /// No more to read: the group had fewer, or `most` were read.
    done: bool,
    /// How many to read next round (0: none).
    next: usize,
}

/// Rank in a claim (lowest first): highest priority first, then oldest (lowest id).
fn rank(t: &ClaimedTask) -> (i64, i64) {
    (-t.priority, t.id)
}

/// The best `limit` ready tasks across `shares` (at most `cap` of each group), best first.
pub fn best(
    tx: &Transaction<'_>,
    queue: &str,
    shares: &[Share<'_>],
    limit: usize,
    now: Millis,
    token: LeaseToken,
    expires_at: Millis,
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
        let chosen = best_of(tx, queue, &shares, limit, now, token, expires_at)?;
        // Each group had a ready task, so `limit` were there, unless a group's best is not
        // due by this clock (set by a clock ahead of ours): then ask every group.
        if chosen.len() == limit {
            return Ok(chosen);
        }
        return best_of(tx, queue, &all, limit, now, token, expires_at);
    }
    best_of(tx, queue, &shares, limit, now, token, expires_at)
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
    token: LeaseToken,
    expires_at: Millis,
) -> Result<Vec<ClaimedTask>> {
    let fair = (limit.div_ceil(shares.len()) * 5).div_ceil(4);
    let mut slices: Vec<Slice> = shares
        .iter()
        .map(|s| {
            let most = s.cap.min(limit);
            Slice {
                most,
                rows: Vec::new(),
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
            let read = slice.rows.len();
            let rows = stmt.query_map(
                (queue, now, share.group, slice.next as i64, read as i64),
                |r| claimed(r, token, expires_at),
            )?;
            for row in rows {
                slice.rows.push(row?);
            }
            slice.done = slice.rows.len() - read < slice.next || slice.rows.len() >= slice.most;
            slice.next = 0;
        }
        let mut cut: Vec<&ClaimedTask> = slices.iter().flat_map(|s| &s.rows).collect();
        cut.sort_unstable_by_key(|t| rank(t));
        cut.truncate(limit);
        // The cut's worst, if the cut is full: anything ranked after it is out.
        let worst = (cut.len() == limit).then(|| rank(cut[limit - 1]));
        let mut again = false;
        for slice in slices.iter_mut().filter(|s| !s.done) {
            let last = rank(slice.rows.last().expect("a slice not done has rows"));
            if worst.is_none_or(|w| last <= w) {
                slice.next = slice.rows.len().min(slice.most - slice.rows.len());
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

fn claimed(
    r: &rusqlite::Row<'_>,
    token: LeaseToken,
    expires_at: Millis,
) -> rusqlite::Result<ClaimedTask> {
    Ok(ClaimedTask {
        id: r.get(0)?,
        token,
        name: r.get(1)?,
        resource_group: r.get(2)?,
        payload: r.get(3)?,
        priority: r.get(4)?,
        attempt: r.get(5)?,
        max_attempts: r.get(6)?,
        created_at: r.get(7)?,
        run_at: r.get(8)?,
        lease_expires_at: expires_at,
    })
}
