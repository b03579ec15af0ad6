//! Wake-ups across hosts: one LISTEN connection per process, on a thread of its own, bumps a
//! counter that `wait_for_change` waits on; writers NOTIFY from their transaction (delivered
//! at commit, to every listening process). If the listener's connection is lost, waiters
//! fall back to polling (they wake every `POLL` and look) while it reconnects with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use postgres::fallible_iterator::FallibleIterator;

use super::pool::Pool;
use crate::store::host::ChangeToken;

/// How often a waiter looks while no listener is connected.
const POLL: Duration = Duration::from_millis(100);
/// How long the listener waits for a notification before checking its connection.
const LISTEN_SLICE: Duration = Duration::from_millis(250);
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
}

impl Default for Wakeup {
    fn default() -> Self {
        Self {
            count: Mutex::new(0),
            changed: Condvar::new(),
            listening: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            started: std::sync::Once::new(),
        }
    }
}

impl Wakeup {
    pub fn bump(&self) {
        *self.count.lock() += 1;
        self.changed.notify_all();
    }

    pub fn token(&self) -> ChangeToken {
        (*self.count.lock(), 0)
    }

    /// Starts this process's listener once (on the first wait).
    pub fn ensure_listener(self: &Arc<Self>, pool: &Arc<Pool>, schema: &str) {
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
            let connected = pool.connect().and_then(|mut client| {
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
                let mut notifications = client.notifications();
                match notifications.timeout_iter(LISTEN_SLICE).next() {
                    Ok(Some(_)) => self.bump(),
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
            self.listening.store(false, Ordering::Relaxed);
            self.bump();
        }
    }

    /// Waits until the count moves past `token`, or `timeout` passes; while no listener is
    /// connected, returns `true` every `POLL` (the caller looks for itself).
    pub fn wait(&self, (seen, _): ChangeToken, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut count = self.count.lock();
        loop {
            if *count != seen {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let listening = self.listening.load(Ordering::Relaxed);
            let pause = if listening {
                deadline - now
            } else {
                POLL.min(deadline - now)
            };
            let timed_out = self.changed.wait_for(&mut count, pause).timed_out();
            if timed_out && !listening && Instant::now() < deadline {
                return true;
            }
        }
    }
}
