//! A small connection pool: idle connections kept for reuse, each with its prepared
//! statements (a statement prepared once per connection, not once per call: a prepare is a
//! round trip). A connection that broke is dropped, never handed out again; the next call
//! connects afresh.

use std::collections::HashMap;

use parking_lot::Mutex;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::{Client, GenericClient, NoTls, Row, Statement};

use super::url::{self, Target};
use crate::error::{Error, Result};

/// Idle connections kept at most (more may be open while in use).
const MAX_IDLE: usize = 16;

/// A connection and its prepared statements.
pub struct Conn {
    pub client: Client,
    stmts: HashMap<String, Statement>,
    /// Behind PgBouncer (transaction mode): what each transaction runs first (see
    /// `Target::schema_per_transaction`). Then every statement runs in a transaction, and the statements it
    /// prepared are closed before it ends: the next transaction may run on another server
    /// connection, where they do not exist (or where another client's of the same name do).
    set_schema: Option<String>,
}

pub struct Pool {
    target: Target,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    idle: Mutex<Vec<Conn>>,
    /// Set when a connection was found closed by the server (see `saw_closed`).
    closed: std::sync::atomic::AtomicBool,
}

impl Pool {
    pub fn new(target: Target) -> Result<Self> {
        let tls = if url::wants_tls(&target.config) {
            Some(super::tls::connector(&target.tls)?)
        } else {
            None
        };
        Ok(Self {
            target,
            tls,
            idle: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether this process can LISTEN: not through PgBouncer in transaction mode
    /// (`pgbouncer=true`), unless the URL names the server's own address for it.
    pub fn can_listen(&self) -> bool {
        !self.target.pgbouncer || self.target.listen.is_some()
    }

    /// A new connection (not pooled).
    pub fn connect(&self) -> Result<Client> {
        self.connect_to(&self.target.config)
    }

    /// The listener's connection: to the server itself when the URL names its address
    /// (behind PgBouncer), else as any other.
    pub fn connect_listener(&self) -> Result<Client> {
        self.connect_to(self.target.listen.as_ref().unwrap_or(&self.target.config))
    }

    fn connect_to(&self, config: &postgres::Config) -> Result<Client> {
        let connected = match &self.tls {
            Some(tls) => config.connect(tls.clone()),
            None => config.connect(NoTls),
        };
        connected.map_err(|e| {
            let why = describe(&e);
            // PgBouncer refuses the startup options that set the schema.
            let hint = if why.contains("unsupported startup parameter") && !self.target.pgbouncer {
                " (behind PgBouncer in transaction mode? add pgbouncer=true to the URL)"
            } else {
                ""
            };
            Error::Storage(format!(
                "cannot connect to PostgreSQL at {}: {why}{hint}",
                self.target.shown,
            ))
        })
    }

    /// A pooled connection, returned to the pool when dropped (unless it broke).
    pub fn get(&self) -> Result<Pooled<'_>> {
        let idle = self.idle.lock().pop();
        let conn = match idle {
            Some(conn) if !conn.client.is_closed() => conn,
            _ => Conn {
                client: self.connect()?,
                stmts: HashMap::new(),
                set_schema: self.target.schema_per_transaction(),
            },
        };
        Ok(Pooled {
            pool: self,
            conn: Some(conn),
        })
    }

    /// Whether a connection was found closed by the server since the last time this was
    /// asked: the failure just seen was the connection's, and a call may run again.
    pub fn saw_closed(&self) -> bool {
        self.closed.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// The server's process id of each idle connection (for tests of lost connections).
    #[cfg(test)]
    pub fn idle_backend_pids(&self) -> Vec<i32> {
        self.idle
            .lock()
            .iter_mut()
            .filter_map(|c| c.client.query_one("SELECT pg_backend_pid()", &[]).ok())
            .map(|r| r.get(0))
            .collect()
    }

    /// Drops every idle connection (close, fork): the next call connects afresh.
    pub fn clear(&self) {
        self.idle.lock().clear();
    }
}

/// The server's message if it sent one, else the client's.
fn describe(err: &postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    }
}

pub struct Pooled<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
}

impl Pooled<'_> {
    pub fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if conn.client.is_closed() {
                // The server went away (a restart): the idle ones are most likely closed
                // too, and each would cost the next calls a failure to find out.
                self.pool.clear();
                self.pool
                    .closed
                    .store(true, std::sync::atomic::Ordering::Release);
                return;
            }
            let mut idle = self.pool.idle.lock();
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
    }
}

impl Conn {
    /// Runs `f` in one transaction, committing on success; also says what it notified.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Db<'_, postgres::Transaction<'_>>) -> Result<T>,
    ) -> std::result::Result<(T, Notes), TxError> {
        let Conn {
            client,
            stmts,
            set_schema,
        } = self;
        let mut tx = client.transaction().map_err(TxError::Begin)?;
        if let Some(set_schema) = set_schema {
            tx.batch_execute(set_schema).map_err(TxError::Begin)?;
        }
        let mut db = Db {
            c: &mut tx,
            stmts,
            transient: false,
            notified: false,
            skipped: Vec::new(),
        };
        let done = f(&mut db);
        if set_schema.is_some() {
            db.stmts.clear(); // closed inside the transaction, on its server connection
        }
        let out = match done {
            Ok(out) => out,
            Err(e) if db.transient => return Err(TxError::Transient(e)),
            Err(e) => return Err(TxError::Core(e)),
        };
        let notes = Notes {
            notified: db.notified,
            skipped: std::mem::take(&mut db.skipped),
        };
        tx.commit().map_err(TxError::Pg)?;
        Ok((out, notes))
    }

    /// Runs `f`'s statements outside a transaction, each its own; behind PgBouncer, in one
    /// transaction (a statement's Parse and Execute must reach the same server connection).
    pub fn outside<T>(&mut self, f: impl FnOnce(&mut Db<'_, Client>) -> Result<T>) -> Result<T> {
        let Some(set_schema) = &self.set_schema else {
            return f(&mut self.plain());
        };
        self.client.batch_execute(&format!("BEGIN; {set_schema}"))?;
        let done = f(&mut self.plain());
        self.stmts.clear(); // closed inside the transaction, on its server connection
        let end = if done.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = self.client.batch_execute(end);
        let out = done?;
        ended?;
        Ok(out)
    }

    /// Whether the server closed this connection (a restart, an idle timeout).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Statements outside a transaction (each its own).
    fn plain(&mut self) -> Db<'_, Client> {
        let Conn { client, stmts, .. } = self;
        Db {
            c: client,
            stmts,
            transient: false,
            notified: false,
            skipped: Vec::new(),
        }
    }
}

/// Why a transaction failed: the server (maybe transient), or the work inside it.
pub enum TxError {
    /// BEGIN failed: nothing ran (a pooled connection the server closed meanwhile).
    Begin(postgres::Error),
    Pg(postgres::Error),
    Transient(Error),
    Core(Error),
}

/// A client (or transaction) with its connection's statement cache.
pub struct Db<'a, C: GenericClient> {
    pub c: &'a mut C,
    stmts: &'a mut HashMap<String, Statement>,
    /// Set when a statement failed in a way that rolls back the transaction and may
    /// succeed if it runs again (deadlock, serialization failure).
    transient: bool,
    /// Set when the transaction notified other processes of a change (`events::notify`):
    /// this process's waiters are woken too once it commits. Only then: an empty claim
    /// must not wake anyone (they would claim again, and so on).
    pub notified: bool,
    /// Queues whose enqueue NOTIFY was skipped (rate-limited): owed once this commits.
    pub skipped: Vec<String>,
}

/// What a committed transaction told other processes, and what it still owes them.
pub struct Notes {
    pub notified: bool,
    pub skipped: Vec<String>,
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl<C: GenericClient> Db<'_, C> {
    fn seen<T>(&mut self, r: std::result::Result<T, postgres::Error>) -> Result<T> {
        r.map_err(|e| {
            self.transient |= super::errors::is_transient(&e);
            e.into()
        })
    }

    fn stmt(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let prepared = self.c.prepare(sql);
        let s = self.seen(prepared)?;
        self.stmts.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    pub fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
        let s = self.stmt(sql)?;
        let r = self.c.query(&s, params);
        self.seen(r)
    }

    pub fn query_opt(&mut self, sql: &str, params: Params<'_>) -> Result<Option<Row>> {
        let s = self.stmt(sql)?;
        let r = self.c.query_opt(&s, params);
        self.seen(r)
    }

    pub fn query_one(&mut self, sql: &str, params: Params<'_>) -> Result<Row> {
        let s = self.stmt(sql)?;
        let r = self.c.query_one(&s, params);
        self.seen(r)
    }

    pub fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64> {
        let s = self.stmt(sql)?;
        let r = self.c.execute(&s, params);
        self.seen(r)
    }

    /// `COPY ... FROM STDIN (FORMAT binary)` of the rows `fill` writes; returns how many.
    pub fn copy_in(
        &mut self,
        sql: &str,
        types: &[Type],
        fill: impl FnOnce(&mut BinaryCopyInWriter<'_>) -> std::result::Result<(), postgres::Error>,
    ) -> Result<u64> {
        let copied = (|| {
            let mut writer = BinaryCopyInWriter::new(self.c.copy_in(sql)?, types);
            fill(&mut writer)?;
            writer.finish()
        })();
        self.seen(copied)
    }
}
