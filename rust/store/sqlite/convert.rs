//! How core types read from SQLite columns (the core itself knows no engine).

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};

use crate::task::TaskStatus;

impl FromSql for TaskStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        Self::parse(value.as_str()?).map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}
