//! The `metrics` table: each worker adds what it recorded since its last flush into the
//! row of the current 10-second interval and of the current hour (every writer adds into
//! the same rows: one row per queue, group, metric and interval), so readers only sum over
//! time. Raw intervals are kept a day, hours a month (defaults; see `prune`).

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction};

use crate::clock::Millis;
use crate::error::Result;
use crate::metrics::recorder::TASK_RUN_PREFIX;
use crate::metrics::{Counter, Histogram, Series, SeriesMap};

/// The raw resolution.
pub use crate::metrics::INTERVAL_MS;
/// The rolled-up resolution.
pub const HOUR_MS: Millis = 3_600_000;

const WAIT: &str = "wait";
const RUN: &str = "run";

/// Adds `taken` into the current interval's and hour's rows.
pub fn flush(tx: &Transaction<'_>, taken: &SeriesMap, now: Millis) -> Result<()> {
    for bucket_ms in [INTERVAL_MS, HOUR_MS] {
        let start = now - now.rem_euclid(bucket_ms);
        for (queue, groups) in taken {
            for (group, series) in groups {
                for counter in Counter::ALL {
                    let n = series.count(counter);
                    if n > 0 {
                        add(
                            tx,
                            queue,
                            group,
                            counter.as_str(),
                            bucket_ms,
                            start,
                            n as f64,
                            None,
                        )?;
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
                    let name = name.as_str();
                    if !h.is_empty() {
                        add(
                            tx,
                            queue,
                            group,
                            name,
                            bucket_ms,
                            start,
                            h.count() as f64,
                            Some(h),
                        )?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn add(
    tx: &Transaction<'_>,
    queue: &str,
    group: &str,
    name: &str,
    bucket_ms: Millis,
    start: Millis,
    value: f64,
    histogram: Option<&Histogram>,
) -> Result<()> {
    let merged = match histogram {
        None => None,
        Some(h) => {
            let stored: Option<Option<Vec<u8>>> = tx
                .prepare_cached(
                    "SELECT histogram FROM metrics WHERE queue = ?1 AND name = ?2
                     AND bucket_ms = ?3 AND bucket_start = ?4 AND resource_group = ?5",
                )?
                .query_row((queue, name, bucket_ms, start, group), |r| r.get(0))
                .optional()?;
            let mut sum = stored
                .flatten()
                .and_then(|b| Histogram::from_bytes(&b))
                .unwrap_or_default();
            sum.merge(h);
            Some(sum.to_bytes())
        }
    };
    tx.prepare_cached(
        "INSERT INTO metrics (bucket_start, bucket_ms, queue, resource_group, name, value, histogram)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (queue, name, bucket_ms, bucket_start, resource_group)
         DO UPDATE SET value = value + excluded.value, histogram = excluded.histogram",
    )?
    .execute((start, bucket_ms, queue, group, name, value, merged))?;
    Ok(())
}

/// Sums per group over `[since, now]`: from the raw rows when the window is within a day,
/// else from the hourly rows (whole hours: the window is widened to the hour it starts in).
pub fn read(
    conn: &Connection,
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
    let mut stmt = conn.prepare_cached(
        "SELECT resource_group, name, value, histogram FROM metrics
         WHERE queue = ?1 AND bucket_ms = ?2 AND bucket_start >= ?3",
    )?;
    let mut rows = stmt.query((queue, bucket_ms, from))?;
    let mut out: HashMap<String, Series> = HashMap::new();
    while let Some(r) = rows.next()? {
        let group: String = r.get(0)?;
        let name: String = r.get(1)?;
        let value: f64 = r.get(2)?;
        let blob: Option<Vec<u8>> = r.get(3)?;
        if let Some(counter) = Counter::parse(&name) {
            out.entry(group).or_default().counts[counter as usize] += value as u64;
        } else if (name == WAIT || name == RUN)
            && let Some(h) = blob.as_deref().and_then(Histogram::from_bytes)
        {
            let series = out.entry(group).or_default();
            let into = if name == WAIT {
                &mut series.wait
            } else {
                &mut series.run
            };
            into.merge(&h);
        }
        // Other names (per-task run times, profiler figures): see `read_named`.
    }
    Ok(out)
}

/// One counter per interval of `bucket_ms` from `since` (see `Store::metric_series`).
pub fn series(
    conn: &Connection,
    queue: &str,
    group: Option<&str>,
    name: &str,
    bucket_ms: Millis,
    since: Millis,
) -> Result<Vec<(Millis, f64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT bucket_start, sum(value) FROM metrics
         WHERE queue = ?1 AND name = ?2 AND bucket_ms = ?3 AND bucket_start >= ?4
           AND (?5 IS NULL OR resource_group = ?5)
         GROUP BY bucket_start ORDER BY bucket_start",
    )?;
    let rows = stmt.query_map((queue, name, bucket_ms, since, group), |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One duration histogram ("wait" or "run") per interval of `bucket_ms` from `since`,
/// merged over groups unless `group` names one (see `Store::metric_histograms`).
pub fn histograms(
    conn: &Connection,
    queue: &str,
    group: Option<&str>,
    name: &str,
    bucket_ms: Millis,
    since: Millis,
) -> Result<Vec<(Millis, Histogram)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT bucket_start, histogram FROM metrics
         WHERE queue = ?1 AND name = ?2 AND bucket_ms = ?3 AND bucket_start >= ?4
           AND (?5 IS NULL OR resource_group = ?5) AND histogram IS NOT NULL
         ORDER BY bucket_start",
    )?;
    let mut rows = stmt.query((queue, name, bucket_ms, since, group))?;
    let mut out: Vec<(Millis, Histogram)> = Vec::new();
    while let Some(r) = rows.next()? {
        let start: Millis = r.get(0)?;
        let blob: Vec<u8> = r.get(1)?;
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

/// The histograms whose metric name starts with `prefix`, summed per (group, name) over
/// `[since, now]` as `read` picks its resolution; sorted by group, then name.
pub fn read_named(
    conn: &Connection,
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
    // A range on the name (metrics_time's second column), not LIKE: no escaping of `%`/`_`.
    let mut stmt = conn.prepare_cached(
        "SELECT resource_group, name, histogram FROM metrics
         WHERE queue = ?1 AND name >= ?2 AND name < ?2 || char(1114111)
           AND bucket_ms = ?3 AND bucket_start >= ?4",
    )?;
    let mut rows = stmt.query((queue, prefix, bucket_ms, from))?;
    let mut out: std::collections::BTreeMap<(String, String), Histogram> = Default::default();
    while let Some(r) = rows.next()? {
        let blob: Option<Vec<u8>> = r.get(2)?;
        if let Some(h) = blob.as_deref().and_then(Histogram::from_bytes) {
            out.entry((r.get(0)?, r.get(1)?)).or_default().merge(&h);
        }
    }
    Ok(out.into_iter().map(|((g, n), h)| (g, n, h)).collect())
}

/// Deletes raw rows older than `raw_keep_ms` and hourly rows older than `hour_keep_ms`, at
/// most `limit` at a time; returns how many.
pub fn prune(
    tx: &Transaction<'_>,
    now: Millis,
    raw_keep_ms: Millis,
    hour_keep_ms: Millis,
    limit: usize,
) -> Result<u64> {
    let n = tx
        .prepare_cached(
            "DELETE FROM metrics WHERE id IN (
                 SELECT id FROM metrics
                 WHERE (bucket_ms = ?1 AND bucket_start < ?2) OR (bucket_ms = ?3 AND bucket_start < ?4)
                 LIMIT ?5)",
        )?
        .execute((
            INTERVAL_MS,
            now - raw_keep_ms,
            HOUR_MS,
            now - hour_keep_ms,
            limit as i64,
        ))?;
    Ok(n as u64)
}
