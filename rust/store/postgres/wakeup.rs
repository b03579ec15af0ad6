//! Wake-ups across hosts: one LISTEN connection per process, on a thread of its own, bumps a
//! counter that `wait_for_change` waits on; writers NOTIFY from their transaction (delivered
//! at commit, to every listening process). If the listener's connection is lost, waiters
//! fall back to polling (they wake every `POLL` and look) while it reconnects with backoff.
//! Behind PgBouncer in transaction mode there is no listener (waiters always poll) unless the
//! URL names the server's own address for it (`listen_host`, `listen_port`).
//!
//! Enqueues NOTIFY at most once per `NOTIFY_EVERY` per queue from a process (a NOTIFY
//! serialises commits on the server): one skipped is sent by the listener thread once the
//! window has passed, after the skipped transaction committed, so no enqueue goes unheard.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use postgres::fallible_iterator::FallibleIterator;

use super::pool::Pool;
use crate::store::host::ChangeToken;

/// How often a waiter looks while no listener is connected.
const POLL: Duration = Duration::from_millis(100);
/// How long the listener waits for a notification before checking its connection and the
/// notifications it owes (`trail`).
const LISTEN_SLICE: Duration = Duration::from_millis(20);
/// Enqueues of a queue NOTIFY at most this often from one process.
const NOTIFY_EVERY: Duration = Duration::from_millis(5);
/// Reconnection backoff, doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The channel of a schema's changes (NOTIFY and LISTEN agree on it).
pub fn channel(schema: &str) -> String {
    format!("ferroq_{schema}")
}

pub struct Wakeup {
    count: Mutex<u64>,
    changed: Condvar,
    listening: AtomicBool,
    stop: AtomicBool,
    started: std::sync::Once,
    /// When this process last had an enqueue NOTIFY, by queue.
    sent: Mutex<HashMap<String, Instant>>,
    /// NOTIFYs skipped by committed enqueues, by queue: when the listener sends each.
    trailing: Mutex<HashMap<String, Instant>>,
    /// Polling periods count from here (see `poll_period`).
    origin: Instant,
    /// When to wake every waiter without a notification (`bump_after`).
    bump_at: Mutex<Option<Instant>>,
}

impl Default for Wakeup {
    fn default() -> Self {
        Self {
            count: Mutex::new(0),
            changed: Condvar::new(),
            listening: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            started: std::sync::Once::new(),
            sent: Mutex::new(HashMap::new()),
            trailing: Mutex::new(HashMap::new()),
            origin: Instant::now(),
            bump_at: Mutex::new(None),
        }
    }
}

impl Wakeup {
    pub fn bump(&self) {
        *self.count.lock() += 1;
        self.changed.notify_all();
    }

    /// Wakes every waiter `delay` from now (the earliest of those asked for wins), though
    /// nothing commits: the listener does it, and while polling, waiters look anyway.
    pub fn bump_after(&self, delay: Duration) {
        let at = Instant::now() + delay;
        let mut bump_at = self.bump_at.lock();
        if bump_at.is_none_or(|due| at < due) {
            *bump_at = Some(at);
        }
    }

    /// The listener's turn: bumps if a `bump_after` came due.
    fn bump_if_due(&self) {
        let due = {
            let mut bump_at = self.bump_at.lock();
            match *bump_at {
                Some(at) if at <= Instant::now() => bump_at.take().is_some(),
                _ => false,
            }
        };
        if due {
            self.bump();
        }
    }

    /// The count, and while no listener is connected the polling period: a waiter whose
    /// token is from an earlier period looks again, however its wait is sliced (a caller
    /// waiting in 50 ms slices would otherwise never see a 100 ms poll come due).
    pub fn token(&self) -> ChangeToken {
        (*self.count.lock(), self.poll_period())
    }

    /// The number of `POLL`s since `origin` while polling; 0 while listening.
    fn poll_period(&self) -> i64 {
        if self.listening.load(Ordering::Relaxed) {
            0
        } else {
            (self.origin.elapsed().as_millis() / POLL.as_millis()) as i64 + 1
        }
    }

    /// Starts this process's listener once (on the first wait). Behind PgBouncer none (a
    /// LISTEN holds a session, which transaction pooling does not keep: waiters poll) unless
    /// the URL names the server's own address for it.
    pub fn ensure_listener(self: &Arc<Self>, pool: &Arc<Pool>, schema: &str) {
        if !pool.can_listen() {
            return;
        }
        self.started.call_once(|| {
            let me = self.clone();
            let pool = pool.clone();
            let channel = channel(schema);
            let spawned = std::thread::Builder::new()
                .name("ferroq-pg-listen".into())
                .spawn(move || me.listen(&pool, &channel));
            if let Err(e) = spawned {
                log::warn!("cannot start the PostgreSQL listener ({e}); polling instead");
            }
        });
    }

    /// Whether an enqueue of `queue` should NOTIFY now: not if one did within
    /// `NOTIFY_EVERY` (then `trail` it once committed).
    pub fn notify_now(&self, queue: &str) -> bool {
        let now = Instant::now();
        let mut sent = self.sent.lock();
        match sent.get(queue) {
            Some(at) if now.duration_since(*at) < NOTIFY_EVERY => false,
            _ => {
                sent.insert(queue.to_string(), now);
                true
            }
        }
    }

    /// After the commit of enqueues whose NOTIFY was skipped: the listener sends one for
    /// each queue when the window has passed (the caller makes sure it runs).
    pub fn trail(&self, queues: Vec<String>) {
        let due = Instant::now() + NOTIFY_EVERY;
        let mut trailing = self.trailing.lock();
        for queue in queues {
            trailing.entry(queue).or_insert(due);
        }
    }

    /// Sends the skipped NOTIFYs that are due; any that fail stay owed.
    fn send_trailing(&self, client: &mut postgres::Client, channel: &str) {
        let now = Instant::now();
        let due: Vec<String> = {
            let mut trailing = self.trailing.lock();
            let due: Vec<String> = trailing
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(q, _)| q.clone())
                .collect();
            for q in &due {
                trailing.remove(q);
            }
            due
        };
        for (i, queue) in due.iter().enumerate() {
            if client
                .execute("SELECT pg_notify($1, $2)", &[&channel, queue])
                .is_err()
            {
                self.trail(due[i..].to_vec());
                return;
            }
            self.sent.lock().insert(queue.clone(), now);
        }
    }

    /// Whether the listener is connected and listening (for tests).
    #[cfg(test)]
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn listen(&self, pool: &Pool, channel: &str) {
        let mut backoff = BACKOFF_FIRST;
        while !self.stop.load(Ordering::Relaxed) {
            let connected = pool.connect_listener().and_then(|mut client| {
                client.batch_execute(&format!("LISTEN {channel}"))?;
                Ok(client)
            });
            let mut client = match connected {
                Ok(client) => client,
                Err(e) => {
                    log::debug!("PostgreSQL listener: {e}; retrying in {backoff:?}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_FIRST;
            self.listening.store(true, Ordering::Relaxed);
            // Anything may have changed while no one listened.
            self.bump();
            while !self.stop.load(Ordering::Relaxed) && !client.is_closed() {
                let heard = client.notifications().timeout_iter(LISTEN_SLICE).next();
                match heard {
                    Ok(Some(_)) => self.bump(),
                    Ok(None) => {}
                    Err(_) => break,
                }
                self.send_trailing(&mut client, channel);
                self.bump_if_due();
            }
            self.listening.store(false, Ordering::Relaxed);
            self.bump();
        }
    }

    /// Waits until the count moves past `token`, or `timeout` passes; while no listener is
    /// connected, returns `true` once a polling period has begun since the token was taken
    /// (the caller looks for itself).
    pub fn wait(&self, (seen, period): ChangeToken, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut count = self.count.lock();
        loop {
            if *count != seen {
                return true;
            }
            let polling = !self.listening.load(Ordering::Relaxed);
            if polling && self.poll_period() != period {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let pause = if polling {
                let into = self.origin.elapsed().as_millis() % POLL.as_millis();
                let to_next = POLL - Duration::from_millis(into as u64);
                to_next.min(deadline - now)
            } else {
                deadline - now
            };
            self.changed.wait_for(&mut count, pause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While polling, a waiter sees the next poll come due however it slices its wait (the
    /// Python binding waits in 50 ms slices, to run signal handlers): it used to time out
    /// every slice and look only at its caller's own timeout (0.5 s for an idle worker).
    #[test]
    fn a_sliced_wait_sees_the_next_poll_while_polling() {
        let wakeup = Wakeup::default();
        let token = wakeup.token();
        let slices = (0..40)
            .position(|_| wakeup.wait(token, Duration::from_millis(30)))
            .expect("a poll came due within 40 slices of 30 ms (12 polls)");
        assert!(slices < 40);
        // A bump wakes at once, polling or not.
        let token = wakeup.token();
        wakeup.bump();
        assert!(wakeup.wait(token, Duration::from_secs(60)));
    }

    /// While a listener is connected nothing wakes a waiter but a bump.
    #[test]
    fn a_listening_waiter_wakes_only_on_a_bump() {
        let wakeup = Wakeup::default();
        wakeup.listening.store(true, Ordering::Relaxed);
        let token = wakeup.token();
        assert_eq!(token.1, 0);
        assert!(!wakeup.wait(token, Duration::from_millis(250)));
        wakeup.bump();
        assert!(wakeup.wait(token, Duration::from_millis(250)));
    }
}
