//! Workers, health figures, metrics and their retention (as in the SQLite engine's
//! `health.rs` and `metrics.rs`).

use std::collections::HashMap;

use postgres::GenericClient;

use super::pool::Db;
use crate::clock::Millis;
use crate::error::Result;
use crate::metrics::recorder::TASK_RUN_PREFIX;
use crate::metrics::{Counter, Histogram, Series, SeriesMap};
use crate::store::WorkerInfo;

/// Raw intervals and hours, as in SQLite (`sqlite::metrics`).
use crate::metrics::INTERVAL_MS;
const HOUR_MS: Millis = 3_600_000;
const WAIT: &str = "wait";
const RUN: &str = "run";

pub fn worker_seen<C: GenericClient>(
    db: &mut Db<'_, C>,
    w: &WorkerInfo,
    now: Millis,
) -> Result<()> {
    db.execute(
        "INSERT INTO workers (id, queue, hostname, pid, concurrency, pool, started_at, last_seen)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
         ON CONFLICT (id) DO UPDATE SET last_seen = $7, stopped_at = NULL",
        &[
            &w.id,
            &w.queue,
            &w.hostname,
            &w.pid,
            &w.concurrency,
            &w.pool,
            &now,
        ],
    )?;
    Ok(())
}

pub fn worker_stopped<C: GenericClient>(db: &mut Db<'_, C>, id: &str, now: Millis) -> Result<()> {
    db.execute(
        "UPDATE workers SET stopped_at = $2, last_seen = $2 WHERE id = $1",
        &[&id, &now],
    )?;
    Ok(())
}

pub fn workers<C: GenericClient>(db: &mut Db<'_, C>, queue: &str) -> Result<Vec<WorkerInfo>> {
    Ok(db
        .query(
            "SELECT id, queue, hostname, pid, concurrency, pool, started_at, last_seen, stopped_at,
                 (SELECT count(*) FROM tasks
                  WHERE queue = w.queue AND status = 'running' AND lease_owner = w.id)
             FROM workers w WHERE queue = $1 ORDER BY last_seen DESC",
            &[&queue],
        )?
        .iter()
        .map(|r| WorkerInfo {
            id: r.get(0),
            queue: r.get(1),
            hostname: r.get(2),
            pid: r.get(3),
            concurrency: r.get(4),
            pool: r.get(5),
            started_at: r.get(6),
            last_seen: r.get(7),
            stopped_at: r.get(8),
            running: r.get(9),
        })
        .collect())
}

/// When the longest-waiting due task became due.
pub fn oldest_due<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    now: Millis,
) -> Result<Option<Millis>> {
    Ok(db
        .query_one(
            "SELECT least(
                 (SELECT min(run_at) FROM tasks
                  WHERE queue = $1 AND status = 'pending' AND run_at <= updated_at
                    AND run_at <= $2),
                 (SELECT min(run_at) FROM tasks
                  WHERE queue = $1 AND status = 'pending' AND run_at > updated_at
                    AND run_at <= $2))",
            &[&queue, &now],
        )?
        .get(0))
}

pub fn dead_since<C: GenericClient>(db: &mut Db<'_, C>, queue: &str, since: Millis) -> Result<u64> {
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM tasks
             WHERE queue = $1 AND status = 'dead' AND finished_at >= $2
               AND status IN ('completed', 'dead', 'cancelled')",
            &[&queue, &since],
        )?
        .get(0);
    Ok(n as u64)
}

/// Adds this process's interval into the shared rows (one per queue, name, resolution,
/// bucket and group). Histograms are merged under the row's lock: hosts flushing the same
/// bucket at once each add theirs, none overwrites another's. Keys in one order, so two
/// flushes never deadlock.
pub fn flush<C: GenericClient>(db: &mut Db<'_, C>, taken: &SeriesMap, now: Millis) -> Result<()> {
    // (queue, name, group, bucket_ms, bucket_start, value, histogram)
    type MetricRow<'a> = (
        &'a str,
        String,
        &'a str,
        Millis,
        Millis,
        f64,
        Option<&'a Histogram>,
    );
    let mut rows: Vec<MetricRow<'_>> = Vec::new();
    for bucket_ms in [INTERVAL_MS, HOUR_MS] {
        let start = now - now.rem_euclid(bucket_ms);
        for (queue, groups) in taken {
            for (group, series) in groups {
                for counter in Counter::ALL {
                    let n = series.count(counter);
                    if n > 0 {
                        rows.push((
                            queue,
                            counter.as_str().to_string(),
                            group,
                            bucket_ms,
                            start,
                            n as f64,
                            None,
                        ));
                    }
                }
                let task_runs = series
                    .task_runs
                    .iter()
                    .map(|(task, h)| (format!("{TASK_RUN_PREFIX}{task}"), h));
                let samples = series.samples.iter().map(|(n, h)| (n.clone(), h));
                let builtin = [(WAIT, &series.wait), (RUN, &series.run)]
                    .into_iter()
                    .map(|(n, h)| (n.to_string(), h));
                for (name, h) in builtin.chain(task_runs).chain(samples) {
                    if !h.is_empty() {
                        rows.push((
                            queue,
                            name,
                            group,
                            bucket_ms,
                            start,
                            h.count() as f64,
                            Some(h),
                        ));
                    }
                }
            }
        }
    }
    rows.sort_by(|a, b| (a.0, &a.1, a.3, a.4, a.2).cmp(&(b.0, &b.1, b.3, b.4, b.2)));
    for (queue, name, group, bucket_ms, start, value, histogram) in rows {
        db.execute(
            "INSERT INTO metrics (bucket_start, bucket_ms, queue, resource_group, name, value)
             VALUES ($1, $2, $3, $4, $5, 0)
             ON CONFLICT (queue, name, bucket_ms, bucket_start, resource_group) DO NOTHING",
            &[&start, &bucket_ms, &queue, &group, &name],
        )?;
        let stored: Option<Vec<u8>> = db
            .query_one(
                "SELECT histogram FROM metrics WHERE queue = $1 AND name = $2
                 AND bucket_ms = $3 AND bucket_start = $4 AND resource_group = $5 FOR UPDATE",
                &[&queue, &name, &bucket_ms, &start, &group],
            )?
            .get(0);
        let merged = histogram.map(|h| {
            let mut sum = stored
                .as_deref()
                .and_then(Histogram::from_bytes)
                .unwrap_or_default();
            sum.merge(h);
            sum.to_bytes()
        });
        db.execute(
            "UPDATE metrics SET value = value + $6, histogram = coalesce($7, histogram)
             WHERE queue = $1 AND name = $2 AND bucket_ms = $3 AND bucket_start = $4
               AND resource_group = $5",
            &[&queue, &name, &bucket_ms, &start, &group, &value, &merged],
        )?;
    }
    Ok(())
}

/// Counters and histograms per group since `since` (see `Store::metrics`).
pub fn read<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    since: Millis,
    now: Millis,
    raw_keep_ms: Millis,
) -> Result<HashMap<String, Series>> {
    let bucket_ms = if now - since <= raw_keep_ms {
        INTERVAL_MS
    } else {
        HOUR_MS
    };
    let from = since - since.rem_euclid(bucket_ms);
    let mut out: HashMap<String, Series> = HashMap::new();
    for r in db.query(
        "SELECT resource_group, name, value, histogram FROM metrics
         WHERE queue = $1 AND bucket_ms = $2 AND bucket_start >= $3",
        &[&queue, &bucket_ms, &from],
    )? {
        let group: String = r.get(0);
        let name: String = r.get(1);
        let value: f64 = r.get(2);
        let blob: Option<Vec<u8>> = r.get(3);
        let series = out.entry(group).or_default();
        if let Some(counter) = Counter::parse(&name) {
            series.counts[counter as usize] += value as u64;
        } else if let Some(h) = blob.as_deref().and_then(Histogram::from_bytes) {
            match name.as_str() {
                WAIT => series.wait.merge(&h),
                RUN => series.run.merge(&h),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The histograms whose metric name starts with `prefix`, summed per (group, name) over
/// `[since, now]` as `read` picks its resolution; sorted by group, then name.
pub fn read_named<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    prefix: &str,
    since: Millis,
    now: Millis,
    raw_keep_ms: Millis,
) -> Result<Vec<(String, String, Histogram)>> {
    let bucket_ms = if now - since <= raw_keep_ms {
        INTERVAL_MS
    } else {
        HOUR_MS
    };
    let from = since - since.rem_euclid(bucket_ms);
    // starts_with, not LIKE: no escaping of `%`/`_` in task names.
    let rows = db.query(
        "SELECT resource_group, name, histogram FROM metrics
         WHERE queue = $1 AND starts_with(name, $2) AND bucket_ms = $3 AND bucket_start >= $4",
        &[&queue, &prefix, &bucket_ms, &from],
    )?;
    let mut out: std::collections::BTreeMap<(String, String), Histogram> = Default::default();
    for r in rows {
        let blob: Option<Vec<u8>> = r.get(2);
        if let Some(h) = blob.as_deref().and_then(Histogram::from_bytes) {
            out.entry((r.get(0), r.get(1))).or_default().merge(&h);
        }
    }
    Ok(out.into_iter().map(|((g, n), h)| (g, n, h)).collect())
}

/// One stored counter per interval of `bucket_ms` from `since`, summed over groups unless
/// `group` names one (see `Store::metric_series`).
pub fn series<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    group: Option<&str>,
    name: &str,
    bucket_ms: Millis,
    since: Millis,
) -> Result<Vec<(Millis, f64)>> {
    let rows = db.query(
        "SELECT bucket_start, sum(value) FROM metrics
         WHERE queue = $1 AND name = $2 AND bucket_ms = $3 AND bucket_start >= $4
           AND ($5::text IS NULL OR resource_group = $5)
         GROUP BY bucket_start ORDER BY bucket_start",
        &[&queue, &name, &bucket_ms, &since, &group],
    )?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// One duration histogram ("wait" or "run") per interval of `bucket_ms` from `since`,
/// merged over groups unless `group` names one (see `Store::metric_histograms`).
pub fn histograms<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    group: Option<&str>,
    name: &str,
    bucket_ms: Millis,
    since: Millis,
) -> Result<Vec<(Millis, Histogram)>> {
    let rows = db.query(
        "SELECT bucket_start, histogram FROM metrics
         WHERE queue = $1 AND name = $2 AND bucket_ms = $3 AND bucket_start >= $4
           AND ($5::text IS NULL OR resource_group = $5) AND histogram IS NOT NULL
         ORDER BY bucket_start",
        &[&queue, &name, &bucket_ms, &since, &group],
    )?;
    let mut out: Vec<(Millis, Histogram)> = Vec::new();
    for r in rows {
        let start: Millis = r.get(0);
        let blob: Vec<u8> = r.get(1);
        let Some(h) = Histogram::from_bytes(&blob) else {
            continue;
        };
        match out.last_mut() {
            Some((last, sum)) if *last == start => sum.merge(&h),
            _ => out.push((start, h)),
        }
    }
    Ok(out)
}

pub fn prune_workers<C: GenericClient>(
    db: &mut Db<'_, C>,
    now: Millis,
    keep_ms: Millis,
) -> Result<u64> {
    db.execute(
        "DELETE FROM workers WHERE last_seen < $1",
        &[&(now - keep_ms)],
    )
}

/// Deletes up to `limit` events and up to `limit` metrics rows past their retention.
pub fn prune_batch<C: GenericClient>(
    db: &mut Db<'_, C>,
    now: Millis,
    keep: &crate::store::ObservabilityRetention,
    limit: usize,
) -> Result<u64> {
    let limit = limit as i64;
    let events = db.execute(
        "DELETE FROM events WHERE id IN
             (SELECT id FROM events WHERE at < $1 ORDER BY id LIMIT $2)",
        &[&(now - keep.events_ms), &limit],
    )?;
    let metrics = db.execute(
        "DELETE FROM metrics WHERE id IN (
             SELECT id FROM metrics
             WHERE (bucket_ms = $1 AND bucket_start < $2) OR (bucket_ms = $3 AND bucket_start < $4)
             LIMIT $5)",
        &[
            &INTERVAL_MS,
            &(now - keep.raw_metrics_ms),
            &HOUR_MS,
            &(now - keep.hourly_metrics_ms),
            &limit,
        ],
    )?;
    Ok(events + metrics)
}
