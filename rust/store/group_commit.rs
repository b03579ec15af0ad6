//! Group commit: concurrent callers share one transaction, each still returning only
//! after its own data is committed.
//!
//! No extra thread: the first caller to arrive becomes the leader, runs every request
//! waiting at that moment in one transaction, hands each caller its own answer, and
//! repeats while more have queued up meanwhile. A lone caller pays nothing extra.

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::error::Result;

/// One caller's answer, filled in by the leader.
type Slot<T> = Arc<(Mutex<Option<Result<T>>>, Condvar)>;

struct State<R, T> {
    waiting: Vec<(R, Slot<T>)>,
    leader: bool,
}

/// Merges concurrent requests of type `R` (answered with `T`) into shared transactions.
pub struct GroupCommit<R, T> {
    state: Mutex<State<R, T>>,
}

impl<R, T> Default for GroupCommit<R, T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                waiting: Vec::new(),
                leader: false,
            }),
        }
    }
}

impl<R, T: Clone> GroupCommit<R, T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Submits `request`; `run` executes a whole group in one transaction and returns one
    /// answer per request, in order. If the group's transaction fails, every caller in it
    /// gets the error and nothing of the group is committed.
    pub fn submit(&self, request: R, run: impl Fn(&[R]) -> Result<Vec<T>>) -> Result<T> {
        let slot: Slot<T> = Arc::new((Mutex::new(None), Condvar::new()));
        let lead = {
            let mut state = lock(&self.state);
            state.waiting.push((request, slot.clone()));
            !std::mem::replace(&mut state.leader, true)
        };
        if lead {
            self.lead(&run);
        }
        let (answer, ready) = &*slot;
        let mut answer = answer.lock();
        loop {
            if let Some(result) = answer.take() {
                return result;
            }
            ready.wait(&mut answer);
        }
    }

    fn lead(&self, run: &impl Fn(&[R]) -> Result<Vec<T>>) {
        loop {
            let group = {
                let mut state = lock(&self.state);
                if state.waiting.is_empty() {
                    state.leader = false;
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            let (requests, slots): (Vec<R>, Vec<Slot<T>>) = group.into_iter().unzip();
            let outcome = run(&requests);
            for (i, slot) in slots.iter().enumerate() {
                let answer = match &outcome {
                    Ok(answers) => Ok(answers[i].clone()),
                    Err(e) => Err(e.clone()),
                };
                *lock(&slot.0) = Some(answer);
                slot.1.notify_one();
            }
        }
    }
}

fn lock<X>(m: &Mutex<X>) -> parking_lot::MutexGuard<'_, X> {
    m.lock()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_caller_gets_its_own_answer_and_groups_form_under_load() {
        let group: Arc<GroupCommit<usize, usize>> = Arc::new(GroupCommit::new());
        let transactions = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let group = group.clone();
                let transactions = transactions.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let request = t * 1000 + i;
                        let answer = group
                            .submit(request, |reqs| {
                                transactions.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_micros(200));
                                Ok(reqs.iter().map(|r| r * 2).collect())
                            })
                            .unwrap();
                        assert_eq!(answer, request * 2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = transactions.load(Ordering::SeqCst);
        assert!(n < 16 * 200, "no grouping happened: {n} transactions");
    }

    #[test]
    fn a_failed_group_fails_every_caller_in_it() {
        let group: GroupCommit<u8, u8> = GroupCommit::new();
        let err = group
            .submit(1, |_| Err(crate::Error::Storage("disk on fire".into())))
            .unwrap_err();
        assert!(err.to_string().contains("disk on fire"));
        assert_eq!(group.submit(2, |r| Ok(r.to_vec())).unwrap(), 2);
    }
}
