//! What a process needs of this engine beyond storing tasks (`store::Host`): its clock,
//! wake-ups (LISTEN/NOTIFY, see `wakeup`), settings, schema checks, the run journal.

use std::sync::Arc;
use std::time::Duration;

use super::{PgStore, admin, migrations};
use crate::clock::{Clock, Millis};
use crate::error::Result;
use crate::run_journal::RunJournal;
use crate::store::{ChangeToken, Host};
use crate::validate;

impl Host for PgStore {
    fn location(&self) -> String {
        self.target.shown.clone()
    }

    fn max_payload(&self) -> usize {
        self.options.max_payload
    }

    fn now_ms(&self) -> Millis {
        self.clock.now_ms()
    }

    fn clock_lead_ms(&self) -> Millis {
        self.clock.lead_ms()
    }

    fn change_token(&self) -> Result<ChangeToken> {
        Ok(self.local.get()?.wakeup.token())
    }

    fn try_change_token(&self) -> Option<Result<ChangeToken>> {
        Some(self.change_token())
    }

    fn wait_for_change(&self, token: ChangeToken, timeout: Duration) -> Result<bool> {
        let local = self.local.get()?;
        local
            .wakeup
            .ensure_listener(&local.pool, &self.target.schema);
        Ok(local.wakeup.wait(token, timeout))
    }

    fn notify(&self) {
        if let Ok(local) = self.local.get() {
            local.wakeup.bump();
        }
    }

    fn close(&self) {
        // What this process counted since its last flush is kept (a producer's arrivals).
        if let Err(e) = crate::store::Store::flush_metrics(self) {
            log::debug!("metrics flush on close failed: {e}");
        }
        if let Ok(local) = self.local.get() {
            local.pool.clear();
        }
    }

    fn before_fork(&self) {}

    fn after_fork_in_parent(&self) {}

    fn settings(&self) -> Result<Vec<(String, String)>> {
        self.read(|db, _| admin::settings(db))
    }

    fn schema_versions(&self) -> Result<Vec<i64>> {
        self.read(|db, _| migrations::versions(db.c, &self.target.schema))
    }

    fn integrity_check(&self) -> Result<Vec<String>> {
        // The server keeps its own data consistent; what ferroq can check is its schema.
        let versions = self.schema_versions()?;
        if versions.last() == Some(&migrations::LATEST) {
            Ok(vec!["ok".to_string()])
        } else {
            Ok(vec![format!(
                "schema versions {versions:?}, expected up to {}",
                migrations::LATEST
            )])
        }
    }

    fn run_journal(&self, worker: &str, capacity: usize) -> Result<RunJournal> {
        validate::name("worker", worker)?;
        self.collect_run_journals();
        RunJournal::create(&self.journal_db, worker, capacity)
    }

    fn close_in_background(self: Arc<Self>) {
        // Nothing to flush: dropping the pool closes its connections.
        drop(self);
    }
}
