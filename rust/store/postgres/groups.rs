//! Resource groups in the database: settings, pauses, token buckets, adaptive caps and
//! breaker state. Every decision is the engine-neutral `resource_group::GroupState`'s; this
//! module loads it, saves it and records the events it returns (as the SQLite engine's
//! `resource_groups.rs`). A claim or a finish that changes a group holds its row locked
//! until it commits, so caps, tokens and breakers hold across every host.

use std::collections::HashMap;

use postgres::GenericClient;

use super::events;
use super::pool::Db;
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::policy::breaker::{BreakerConfig, BreakerState, CircuitState};
use crate::policy::throttle::{Adaptive, ThrottleConfig};
use crate::resource_group::{GroupConfig, GroupEvent, GroupInfo, GroupState};
use crate::store::{CircuitCommand, CircuitView};
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

fn u32_of(v: Option<i64>) -> Option<u32> {
    v.map(|v| v.clamp(0, i64::from(u32::MAX)) as u32)
}

fn from_row(r: &postgres::Row) -> GroupState {
    let rate: Option<f64> = r.get(2);
    let max_concurrency = u32_of(r.get(6));
    let adaptive: bool = r.get(7);
    let throttle = (rate.is_some() || max_concurrency.is_some()).then(|| ThrottleConfig {
        rate,
        burst: r.get::<_, Option<f64>>(3).unwrap_or(1.0),
        max_concurrency,
        adaptive: adaptive.then(|| Adaptive {
            min_concurrency: u32_of(r.get(8)).unwrap_or(1),
            target_latency_ms: r.get(9),
            error_rate: r.get::<_, Option<f64>>(10).unwrap_or(0.1),
            cooldown_ms: r.get::<_, Option<i64>>(11).unwrap_or(1000),
        }),
    });
    let breaker = u32_of(r.get(15)).map(|failure_threshold| BreakerConfig {
        failure_threshold,
        window_ms: r.get(16),
        open_ms: r.get(17),
        max_open_ms: r.get(18),
        half_open_probes: u32_of(r.get(19)).unwrap_or(1),
    });
    let state: Option<String> = r.get(20);
    let failures: Option<String> = r.get(21);
    GroupState {
        name: r.get(0),
        paused: r.get(1),
        config: GroupConfig { breaker, throttle },
        tokens: r.get(4),
        tokens_at: r.get(5),
        concurrency_limit: r.get(12),
        last_cut_at: r.get(13),
        blocked_until: r.get(14),
        breaker: BreakerState {
            state: state
                .as_deref()
                .and_then(CircuitState::parse)
                .unwrap_or(CircuitState::Closed),
            failures: parse_times(failures.as_deref().unwrap_or("[]")),
            opened_at: r.get(22),
            open_until: r.get(23),
            trips: u32_of(r.get(24)).unwrap_or(0),
        },
    }
}

/// Every group of `queue` that has a row; with `lock`, their rows stay locked (in name
/// order, so two claims never deadlock) until the transaction ends.
pub fn load_all<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    lock: bool,
) -> Result<Vec<GroupState>> {
    let sql = if lock {
        format!("{SELECT_GROUPS} WHERE g.queue = $1 ORDER BY g.resource_group FOR UPDATE OF g")
    } else {
        format!("{SELECT_GROUPS} WHERE g.queue = $1 ORDER BY g.resource_group")
    };
    Ok(db.query(&sql, &[&queue])?.iter().map(from_row).collect())
}

/// One group's row (locked, in a transaction), if it has one.
pub fn load<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    group: &str,
    lock: bool,
) -> Result<Option<GroupState>> {
    let sql = format!(
        "{SELECT_GROUPS} WHERE g.queue = $1 AND g.resource_group = $2{}",
        if lock { " FOR UPDATE OF g" } else { "" }
    );
    Ok(db
        .query_opt(&sql, &[&queue, &group])?
        .as_ref()
        .map(from_row))
}

/// Writes back a group's moving state (tokens, cap, hold, breaker).
pub fn save<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    g: &GroupState,
    now: Millis,
) -> Result<()> {
    db.execute(
        "UPDATE resource_groups SET tokens = $3, tokens_at = $4, concurrency_limit = $5,
             last_cut_at = $6, blocked_until = $7
         WHERE queue = $1 AND resource_group = $2",
        &[
            &queue,
            &g.name,
            &g.tokens,
            &g.tokens_at,
            &g.concurrency_limit,
            &g.last_cut_at,
            &g.blocked_until,
        ],
    )?;
    let b = &g.breaker;
    db.execute(
        "INSERT INTO circuit_breaker_state
             (queue, resource_group, state, failures, opened_at, open_until, recent_failures,
              trips, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (queue, resource_group) DO UPDATE SET state = $3, failures = $4,
             opened_at = $5, open_until = $6, recent_failures = $7, trips = $8, updated_at = $9",
        &[
            &queue,
            &g.name,
            &b.state.as_str(),
            &(b.failures.len() as i64),
            &b.opened_at,
            &b.open_until,
            &format_times(&b.failures),
            &i64::from(b.trips),
            &now,
        ],
    )?;
    Ok(())
}

/// Records a change of group `group` as an event (logged too if an operator should hear).
pub fn record_event<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    group: &str,
    event: &GroupEvent,
    now: Millis,
) -> Result<()> {
    event.log(queue, group);
    events::record_task(
        db,
        queue,
        Some(group),
        None,
        event.kind(),
        &event.detail(),
        now,
    )
}

/// Running tasks per group (live leases only: a crashed worker's slot frees at expiry).
pub fn running_by_group<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    now: Millis,
) -> Result<HashMap<String, u32>> {
    Ok(db
        .query(
            "SELECT resource_group, count(*) FROM tasks
             WHERE queue = $1 AND status = 'running' AND lease_expires_at > $2
             GROUP BY resource_group",
            &[&queue, &now],
        )?
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u32))
        .collect())
}

/// Feeds finished runs to their groups (`GroupState::account`), each group's row locked.
pub fn account<C: GenericClient>(db: &mut Db<'_, C>, ends: &[RunEnd], now: Millis) -> Result<()> {
    let mut keys: Vec<(&str, &str)> = ends
        .iter()
        .map(|e| (e.queue.as_str(), e.group.as_str()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for (queue, name) in keys {
        let Some(mut g) = load(db, queue, name, true)? else {
            continue;
        };
        let mine = ends.iter().filter(|e| e.queue == queue && e.group == name);
        for event in g.account(mine, now) {
            record_event(db, queue, name, &event, now)?;
        }
        save(db, queue, &g, now)?;
    }
    Ok(())
}

/// Creates the group's row if it has none.
fn ensure_row<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    name: &str,
    now: Millis,
) -> Result<()> {
    db.execute(
        "INSERT INTO resource_groups (queue, resource_group, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
        &[&queue, &name, &now],
    )?;
    Ok(())
}

/// Stores a group's settings (creating its row), keeping its moving state where it applies.
pub fn configure<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    name: &str,
    config: &GroupConfig,
    now: Millis,
) -> Result<()> {
    ensure_row(db, queue, name, now)?;
    let mut g = load(db, queue, name, true)?.expect("row ensured above");
    g.configure(config, now);
    let t = config.throttle;
    let b = config.breaker;
    let adaptive = t.and_then(|t| t.adaptive);
    let rate = t.and_then(|t| t.rate);
    let i = |v: Option<u32>| v.map(i64::from);
    db.execute(
        "UPDATE resource_groups SET rate = $3, burst = $4, tokens = $5, tokens_at = $6,
             max_concurrency = $7, adaptive = $8, min_concurrency = $9, target_latency_ms = $10,
             error_rate = $11, cooldown_ms = $12, concurrency_limit = $13,
             breaker_threshold = $14, breaker_window_ms = $15, breaker_open_ms = $16,
             breaker_max_open_ms = $17, breaker_probes = $18, updated_at = $19
         WHERE queue = $1 AND resource_group = $2",
        &[
            &queue,
            &name,
            &rate,
            &rate.and(t.map(|t| t.burst)),
            &g.tokens,
            &g.tokens_at,
            &i(t.and_then(|t| t.max_concurrency)),
            &adaptive.is_some(),
            &i(adaptive.map(|a| a.min_concurrency)),
            &adaptive.and_then(|a| a.target_latency_ms),
            &adaptive.map(|a| a.error_rate),
            &adaptive.map(|a| a.cooldown_ms),
            &g.concurrency_limit,
            &i(b.map(|b| b.failure_threshold)),
            &b.map(|b| b.window_ms),
            &b.map(|b| b.open_ms),
            &b.map(|b| b.max_open_ms),
            &i(b.map(|b| b.half_open_probes)),
            &now,
        ],
    )?;
    Ok(())
}

/// Pauses or resumes a group (claims skip a paused group; its tasks stay pending).
pub fn set_paused<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    name: &str,
    paused: bool,
    now: Millis,
) -> Result<bool> {
    ensure_row(db, queue, name, now)?;
    let changed = db.execute(
        "UPDATE resource_groups SET paused = $3, updated_at = $4
         WHERE queue = $1 AND resource_group = $2 AND paused <> $3",
        &[&queue, &name, &paused, &now],
    )?;
    if changed > 0 {
        let kind = if paused {
            "group_paused"
        } else {
            "group_resumed"
        };
        events::record_task(db, queue, Some(name), None, kind, "{}", now)?;
    }
    Ok(changed > 0)
}

/// A group's pending and running tasks, one arm per partial index.
const GROUP_COUNTS_SQL: &str = "SELECT
         (SELECT count(*) FROM tasks WHERE queue = $1 AND resource_group = $2
            AND status = 'pending' AND run_at <= updated_at)
       + (SELECT count(*) FROM tasks WHERE queue = $1 AND resource_group = $2
            AND status = 'pending' AND run_at > updated_at),
         (SELECT count(*) FROM tasks WHERE queue = $1 AND resource_group = $2
            AND status = 'running')";

fn group_counts<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    name: &str,
) -> Result<(i64, i64)> {
    let r = db.query_one(GROUP_COUNTS_SQL, &[&queue, &name])?;
    Ok((r.get(0), r.get(1)))
}

/// Forgets a group's stored settings, pause and breaker state; refused while it has
/// unfinished tasks unless `force`.
pub fn forget<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    name: &str,
    force: bool,
    now: Millis,
) -> Result<bool> {
    if !force {
        let (pending, running) = group_counts(db, queue, name)?;
        if pending + running > 0 {
            return Err(Error::Refused(format!(
                "group {name:?} of queue {queue:?} has {pending} pending and {running} running \
                 task(s): forgetting its settings would let them run without its limits \
                 (wait until they finish, or force)"
            )));
        }
    }
    let mut gone = db.execute(
        "DELETE FROM resource_groups WHERE queue = $1 AND resource_group = $2",
        &[&queue, &name],
    )?;
    gone += db.execute(
        "DELETE FROM circuit_breaker_state WHERE queue = $1 AND resource_group = $2",
        &[&queue, &name],
    )?;
    if gone > 0 {
        events::record_task(db, queue, Some(name), None, "group_forgotten", "{}", now)?;
    }
    Ok(gone > 0)
}

/// Applies an operator's command to a group's breaker; returns the state after it.
pub fn command<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    name: &str,
    command: &CircuitCommand,
    reason: &str,
    now: Millis,
) -> Result<CircuitState> {
    ensure_row(db, queue, name, now)?;
    let mut g = load(db, queue, name, true)?.expect("row ensured above");
    if let Some(event) = g.command(command, reason, now) {
        record_event(db, queue, name, &event, now)?;
    }
    save(db, queue, &g, now)?;
    Ok(g.breaker.state)
}

/// Moves due breakers of `groups` from open to half-open (recorded), in the claim.
pub fn poll_breakers<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    groups: &mut [GroupState],
    now: Millis,
) -> Result<()> {
    for g in groups.iter_mut() {
        if let Some(event) = g.poll(now) {
            record_event(db, queue, &g.name, &event, now)?;
            save(db, queue, g, now)?;
        }
    }
    Ok(())
}

pub fn circuit_view<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    name: &str,
    now: Millis,
) -> Result<CircuitView> {
    Ok(load(db, queue, name, false)?
        .unwrap_or_else(|| GroupState::unconfigured(name))
        .circuit_view(now))
}

pub fn info<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    name: &str,
    now: Millis,
) -> Result<GroupInfo> {
    let g = load(db, queue, name, false)?;
    let (pending, running) = group_counts(db, queue, name)?;
    let g = g.unwrap_or_else(|| GroupState::unconfigured(name));
    Ok(g.info(queue, running as u64, pending as u64, now))
}

/// Names of the groups of `queue`: those with unfinished tasks, or with a row.
pub fn names<C: GenericClient>(db: &mut Db<'_, C>, queue: &str) -> Result<Vec<String>> {
    Ok(db
        .query(
            "SELECT resource_group FROM resource_groups WHERE queue = $1
             UNION SELECT DISTINCT resource_group FROM tasks
                   WHERE queue = $1 AND status IN ('pending', 'running')
             ORDER BY 1",
            &[&queue],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The earliest future time a group of `queue` held by time may start a task again.
pub fn next_unblock_at<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    now: Millis,
) -> Result<Option<Millis>> {
    if super::admin::queue_paused(db, queue)? {
        return Ok(None);
    }
    Ok(crate::resource_group::state::next_unblock_at(
        &load_all(db, queue, false)?,
        now,
    ))
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
