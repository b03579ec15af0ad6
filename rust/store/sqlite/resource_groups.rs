//! Resource groups in the file: settings, pause, token buckets, adaptive caps and breaker
//! state, read and written inside the claim's and the finish's transactions so that every
//! worker process sees one set of limits. Every decision is `resource_group::GroupState`'s:
//! this module loads it, saves it and records the events it returns.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Row, Transaction};

use super::events;
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::policy::breaker::{BreakerConfig, BreakerState, CircuitState};
use crate::policy::throttle::{Adaptive, ThrottleConfig};
use crate::resource_group::{GroupConfig, GroupEvent, GroupInfo, GroupState, state};
use crate::store::CircuitView;
use crate::store::model::CircuitCommand;
use crate::task::RunEnd;

const SELECT_GROUPS: &str =
    "SELECT g.resource_group, g.paused, g.rate, g.burst, g.tokens, g.tokens_at,
        g.max_concurrency, g.adaptive, g.min_concurrency, g.target_latency_ms, g.error_rate,
        g.cooldown_ms, g.concurrency_limit, g.last_cut_at, g.blocked_until,
        g.breaker_threshold, g.breaker_window_ms, g.breaker_open_ms, g.breaker_max_open_ms,
        g.breaker_probes,
        b.state, b.recent_failures, b.opened_at, b.open_until, b.trips
    FROM resource_groups g
    LEFT JOIN circuit_breaker_state b
        ON b.queue = g.queue AND b.resource_group = g.resource_group";

fn from_row(r: &Row<'_>) -> rusqlite::Result<GroupState> {
    let rate: Option<f64> = r.get(2)?;
    let max_concurrency: Option<u32> = r.get(6)?;
    let adaptive: bool = r.get(7)?;
    let throttle = (rate.is_some() || max_concurrency.is_some()).then(|| ThrottleConfig {
        rate,
        burst: r.get::<_, Option<f64>>(3).ok().flatten().unwrap_or(1.0),
        max_concurrency,
        adaptive: adaptive.then(|| Adaptive {
            min_concurrency: r.get::<_, Option<u32>>(8).ok().flatten().unwrap_or(1),
            target_latency_ms: r.get(9).ok().flatten(),
            error_rate: r.get::<_, Option<f64>>(10).ok().flatten().unwrap_or(0.1),
            cooldown_ms: r.get::<_, Option<i64>>(11).ok().flatten().unwrap_or(1000),
        }),
    });
    let threshold: Option<u32> = r.get(15)?;
    let breaker = match threshold {
        Some(failure_threshold) => Some(BreakerConfig {
            failure_threshold,
            window_ms: r.get(16)?,
            open_ms: r.get(17)?,
            max_open_ms: r.get(18)?,
            half_open_probes: r.get(19)?,
        }),
        None => None,
    };
    let state: Option<String> = r.get(20)?;
    let failures: Option<String> = r.get(21)?;
    Ok(GroupState {
        name: r.get(0)?,
        paused: r.get(1)?,
        config: GroupConfig { breaker, throttle },
        tokens: r.get(4)?,
        tokens_at: r.get(5)?,
        concurrency_limit: r.get(12)?,
        last_cut_at: r.get(13)?,
        blocked_until: r.get(14)?,
        breaker: BreakerState {
            state: state
                .as_deref()
                .and_then(CircuitState::parse)
                .unwrap_or(CircuitState::Closed),
            failures: parse_times(failures.as_deref().unwrap_or("[]")),
            opened_at: r.get(22)?,
            open_until: r.get(23)?,
            trips: r.get::<_, Option<u32>>(24)?.unwrap_or(0),
        },
    })
}

/// Every group of `queue` that has a row (settings, a pause or a forced breaker).
pub fn load_all(conn: &Connection, queue: &str) -> Result<Vec<GroupState>> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT_GROUPS} WHERE g.queue = ?1"))?;
    let rows = stmt.query_map([queue], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One group's row, if it has one.
pub fn load(conn: &Connection, queue: &str, group: &str) -> Result<Option<GroupState>> {
    Ok(conn
        .prepare_cached(&format!(
            "{SELECT_GROUPS} WHERE g.queue = ?1 AND g.resource_group = ?2"
        ))?
        .query_row((queue, group), from_row)
        .optional()?)
}

/// Writes back a group's moving state (tokens, cap, hold, breaker).
pub fn save(tx: &Transaction<'_>, queue: &str, g: &GroupState, now: Millis) -> Result<()> {
    tx.prepare_cached(
        "UPDATE resource_groups SET tokens = ?3, tokens_at = ?4, concurrency_limit = ?5,
             last_cut_at = ?6, blocked_until = ?7
         WHERE queue = ?1 AND resource_group = ?2",
    )?
    .execute((
        queue,
        &g.name,
        g.tokens,
        g.tokens_at,
        g.concurrency_limit,
        g.last_cut_at,
        g.blocked_until,
    ))?;
    let b = &g.breaker;
    tx.prepare_cached(
        "INSERT INTO circuit_breaker_state
             (queue, resource_group, state, failures, opened_at, open_until, recent_failures,
              trips, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (queue, resource_group) DO UPDATE SET state = ?3, failures = ?4,
             opened_at = ?5, open_until = ?6, recent_failures = ?7, trips = ?8, updated_at = ?9",
    )?
    .execute((
        queue,
        &g.name,
        b.state.as_str(),
        b.failures.len() as i64,
        b.opened_at,
        b.open_until,
        format_times(&b.failures),
        b.trips,
        now,
    ))?;
    Ok(())
}

/// Records a change of group `group` as an event (logged too if an operator should hear).
pub fn record_event(
    tx: &Transaction<'_>,
    queue: &str,
    group: &str,
    event: &GroupEvent,
    now: Millis,
) -> Result<()> {
    event.log(queue, group);
    events::record(tx, queue, Some(group), event.kind(), &event.detail(), now)
}

/// Records `events` of group `group`, in order.
fn record_events(
    tx: &Transaction<'_>,
    queue: &str,
    group: &str,
    events: &[GroupEvent],
    now: Millis,
) -> Result<()> {
    for event in events {
        record_event(tx, queue, group, event, now)?;
    }
    Ok(())
}

/// Running tasks per group (live leases only: a crashed worker's slot frees at expiry).
pub fn running_by_group(
    conn: &Connection,
    queue: &str,
    now: Millis,
) -> Result<HashMap<String, u32>> {
    let mut stmt = conn.prepare_cached(
        "SELECT resource_group, count(*) FROM tasks INDEXED BY tasks_leases
         WHERE queue = ?1 AND status = 'running' AND lease_expires_at > ?2
         GROUP BY resource_group",
    )?;
    let rows = stmt.query_map((queue, now), |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Feeds finished runs to their groups (`GroupState::account`). Groups without a row
/// cost one indexed lookup per flush.
pub fn account(tx: &Transaction<'_>, ends: &[RunEnd], now: Millis) -> Result<()> {
    let mut keys: Vec<(&str, &str)> = ends
        .iter()
        .map(|e| (e.queue.as_str(), e.group.as_str()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for (queue, name) in keys {
        let Some(mut g) = load(tx, queue, name)? else {
            continue;
        };
        let mine = ends.iter().filter(|e| e.queue == queue && e.group == name);
        let events = g.account(mine, now);
        record_events(tx, queue, name, &events, now)?;
        save(tx, queue, &g, now)?;
    }
    Ok(())
}

/// Stores a group's settings (creating its row), keeping its moving state where it still
/// applies.
pub fn configure(
    tx: &Transaction<'_>,
    queue: &str,
    name: &str,
    config: &GroupConfig,
    now: Millis,
) -> Result<()> {
    ensure_row(tx, queue, name, now)?;
    let mut g = load(tx, queue, name)?.expect("row ensured above");
    g.configure(config, now);
    let t = config.throttle;
    let b = config.breaker;
    let adaptive = t.and_then(|t| t.adaptive);
    let rate = t.and_then(|t| t.rate);
    tx.prepare_cached(
        "UPDATE resource_groups SET rate = ?3, burst = ?4, tokens = ?5, tokens_at = ?6,
             max_concurrency = ?7, adaptive = ?8, min_concurrency = ?9, target_latency_ms = ?10,
             error_rate = ?11, cooldown_ms = ?12, concurrency_limit = ?13,
             breaker_threshold = ?14, breaker_window_ms = ?15, breaker_open_ms = ?16,
             breaker_max_open_ms = ?17, breaker_probes = ?18, updated_at = ?19
         WHERE queue = ?1 AND resource_group = ?2",
    )?
    .execute(rusqlite::params![
        queue,
        name,
        rate,
        rate.and(t.map(|t| t.burst)),
        g.tokens,
        g.tokens_at,
        t.and_then(|t| t.max_concurrency),
        adaptive.is_some(),
        adaptive.map(|a| a.min_concurrency),
        adaptive.and_then(|a| a.target_latency_ms),
        adaptive.map(|a| a.error_rate),
        adaptive.map(|a| a.cooldown_ms),
        g.concurrency_limit,
        b.map(|b| b.failure_threshold),
        b.map(|b| b.window_ms),
        b.map(|b| b.open_ms),
        b.map(|b| b.max_open_ms),
        b.map(|b| b.half_open_probes),
        now,
    ])?;
    Ok(())
}

/// Creates the group's row if it has none.
pub fn ensure_row(tx: &Transaction<'_>, queue: &str, name: &str, now: Millis) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO resource_groups (queue, resource_group, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT DO NOTHING",
    )?
    .execute((queue, name, now))?;
    Ok(())
}

/// Pauses or resumes a group (claims skip a paused group; its tasks stay pending).
pub fn set_paused(
    tx: &Transaction<'_>,
    queue: &str,
    name: &str,
    paused: bool,
    now: Millis,
) -> Result<bool> {
    ensure_row(tx, queue, name, now)?;
    let changed = tx
        .prepare_cached(
            "UPDATE resource_groups SET paused = ?3, updated_at = ?4
             WHERE queue = ?1 AND resource_group = ?2 AND paused != ?3",
        )?
        .execute((queue, name, paused, now))?;
    if changed > 0 {
        let kind = if paused {
            "group_paused"
        } else {
            "group_resumed"
        };
        events::record(tx, queue, Some(name), kind, "{}", now)?;
    }
    Ok(changed > 0)
}

/// Forgets a group's stored settings, pause and breaker state (a phantom group made by a
/// typo, or one no longer used); its events stay. Refused while the group has pending or
/// running tasks, unless `force`: they would run under no limits. Returns whether there was
/// anything to forget.
pub fn forget(
    tx: &Transaction<'_>,
    queue: &str,
    name: &str,
    force: bool,
    now: Millis,
) -> Result<bool> {
    if !force {
        let (pending, running): (i64, i64) = tx
            .prepare_cached(GROUP_COUNTS_SQL)?
            .query_row((queue, name), |r| Ok((r.get(0)?, r.get(1)?)))?;
        if pending + running > 0 {
            return Err(Error::Refused(format!(
                "group {name:?} of queue {queue:?} has {pending} pending and {running} running \
                 task(s): forgetting its settings would let them run without its limits \
                 (wait until they finish, or force)"
            )));
        }
    }
    let mut gone = tx
        .prepare_cached("DELETE FROM resource_groups WHERE queue = ?1 AND resource_group = ?2")?
        .execute((queue, name))?;
    gone += tx
        .prepare_cached(
            "DELETE FROM circuit_breaker_state WHERE queue = ?1 AND resource_group = ?2",
        )?
        .execute((queue, name))?;
    if gone > 0 {
        events::record(tx, queue, Some(name), "group_forgotten", "{}", now)?;
    }
    Ok(gone > 0)
}

/// Pauses or resumes a whole queue. Resuming deletes the queue's row (a pause is all it
/// holds): a queue paused by mistake leaves nothing behind once resumed.
pub fn set_queue_paused(
    tx: &Transaction<'_>,
    queue: &str,
    paused: bool,
    now: Millis,
) -> Result<bool> {
    let changed = if paused {
        tx.prepare_cached(
            "INSERT INTO queues (queue, updated_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?
        .execute((queue, now))?;
        tx.prepare_cached(
            "UPDATE queues SET paused = 1, updated_at = ?2 WHERE queue = ?1 AND paused != 1",
        )?
        .execute((queue, now))?
    } else {
        let was_paused = queue_paused(tx, queue)?;
        tx.prepare_cached("DELETE FROM queues WHERE queue = ?1")?
            .execute([queue])?;
        usize::from(was_paused)
    };
    if changed > 0 {
        let kind = if paused {
            "queue_paused"
        } else {
            "queue_resumed"
        };
        events::record(tx, queue, None, kind, "{}", now)?;
    }
    Ok(changed > 0)
}

/// Whether the whole queue is paused.
pub fn queue_paused(conn: &Connection, queue: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT paused FROM queues WHERE queue = ?1")?
        .query_row([queue], |r| r.get(0))
        .optional()?
        .unwrap_or(false))
}

/// Applies an operator's command to a group's breaker; returns the state after it.
pub fn command(
    tx: &Transaction<'_>,
    queue: &str,
    name: &str,
    command: &CircuitCommand,
    reason: &str,
    now: Millis,
) -> Result<CircuitState> {
    ensure_row(tx, queue, name, now)?;
    let mut g = load(tx, queue, name)?.expect("row ensured above");
    if let Some(event) = g.command(command, reason, now) {
        record_event(tx, queue, name, &event, now)?;
    }
    save(tx, queue, &g, now)?;
    Ok(g.breaker.state)
}

/// Moves due breakers of `groups` from open to half-open (recorded), in the claim.
pub fn poll_breakers(
    tx: &Transaction<'_>,
    queue: &str,
    groups: &mut [GroupState],
    now: Millis,
) -> Result<()> {
    for g in groups.iter_mut() {
        if let Some(event) = g.poll(now) {
            record_event(tx, queue, &g.name, &event, now)?;
            save(tx, queue, g, now)?;
        }
    }
    Ok(())
}

/// The circuit of group `name` as the next claim will see it (closed if it has no row),
/// with how long it stays open and its settings.
pub fn circuit_view(
    conn: &Connection,
    queue: &str,
    name: &str,
    now: Millis,
) -> Result<CircuitView> {
    Ok(load(conn, queue, name)?
        .unwrap_or_else(|| GroupState::unconfigured(name))
        .circuit_view(now))
}

/// A group's pending and running tasks, counted by one arm per partial index (pending tasks
/// are in two: ready and delayed), so no arm walks the table.
pub(super) const GROUP_COUNTS_SQL: &str = "SELECT
         (SELECT count(*) FROM tasks WHERE queue = ?1 AND resource_group = ?2
            AND status = 'pending' AND run_at <= updated_at)
       + (SELECT count(*) FROM tasks WHERE queue = ?1 AND resource_group = ?2
            AND status = 'pending' AND run_at > updated_at),
         (SELECT count(*) FROM tasks WHERE queue = ?1 AND resource_group = ?2
            AND status = 'running')";

/// One group as it stands, with its pending and running counts.
pub fn info(conn: &Connection, queue: &str, name: &str, now: Millis) -> Result<GroupInfo> {
    let g = load(conn, queue, name)?;
    let (pending, running): (i64, i64) = conn
        .prepare_cached(GROUP_COUNTS_SQL)?
        .query_row((queue, name), |r| Ok((r.get(0)?, r.get(1)?)))?;
    let g = g.unwrap_or_else(|| GroupState::unconfigured(name));
    Ok(g.info(queue, running as u64, pending as u64, now))
}

/// One arm per partial index, so no arm walks the table.
pub(super) const GROUP_NAMES_SQL: &str =
    "SELECT resource_group FROM resource_groups WHERE queue = ?1
     UNION SELECT DISTINCT resource_group FROM tasks
           WHERE queue = ?1 AND status = 'pending' AND run_at <= updated_at
     UNION SELECT DISTINCT resource_group FROM tasks
           WHERE queue = ?1 AND status = 'pending' AND run_at > updated_at
     UNION SELECT DISTINCT resource_group FROM tasks WHERE queue = ?1 AND status = 'running'
     ORDER BY 1";

/// Names of the groups of `queue`: those with tasks pending or running, or with a row.
pub fn names(conn: &Connection, queue: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(GROUP_NAMES_SQL)?;
    let rows = stmt.query_map([queue], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The earliest future time a group of `queue` held by time may start a task again.
pub fn next_unblock_at(conn: &Connection, queue: &str, now: Millis) -> Result<Option<Millis>> {
    if queue_paused(conn, queue)? {
        return Ok(None);
    }
    Ok(state::next_unblock_at(&load_all(conn, queue)?, now))
}

fn parse_times(json: &str) -> Vec<Millis> {
    json.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect()
}

fn format_times(times: &[Millis]) -> String {
    let list: Vec<String> = times.iter().map(|t| t.to_string()).collect();
    format!("[{}]", list.join(","))
}
