//! Reading columns that may not hold what the schema says.
//!
//! SQLite stores whatever a writer gives it: a row edited by hand (Python's `sqlite3` stores
//! a `str` as TEXT, in a BLOB column too, and in an INTEGER one when it is not a number)
//! holds values of another type. Read with `Row::get`, such a row failed the whole
//! statement: a claim failed forever on one bad row, and a listing on every page holding it.
//! Here each value is read raw (`ValueRef`) and classified, so the caller can set the row
//! aside (claims) or show it with its raw bytes (listings).

use rusqlite::Row;
use rusqlite::types::ValueRef;

use crate::task::CorruptColumn;

/// A value of the wrong type in `column`.
pub fn bad(column: &'static str, value: ValueRef<'_>, expected: &str) -> CorruptColumn {
    let found = match value {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "INTEGER",
        ValueRef::Real(_) => "REAL",
        ValueRef::Text(t) if std::str::from_utf8(t).is_err() => "TEXT that is not valid UTF-8",
        ValueRef::Text(_) => "TEXT",
        ValueRef::Blob(_) => "BLOB",
    };
    CorruptColumn {
        column,
        problem: format!("column {column} holds {found}, expected {expected}"),
        raw: raw(value),
    }
}

/// The bytes of a value: a text's or a blob's own, a number's decimal form.
pub fn raw(value: ValueRef<'_>) -> Vec<u8> {
    match value {
        ValueRef::Null => Vec::new(),
        ValueRef::Integer(i) => i.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
        ValueRef::Text(b) | ValueRef::Blob(b) => b.to_vec(),
    }
}

pub type Decoded<T> = Result<T, CorruptColumn>;

pub fn int(v: ValueRef<'_>, column: &'static str) -> Decoded<i64> {
    match v {
        ValueRef::Integer(i) => Ok(i),
        other => Err(bad(column, other, "INTEGER")),
    }
}

pub fn text(v: ValueRef<'_>, column: &'static str) -> Decoded<String> {
    match v {
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(bad(column, v, "TEXT")),
        },
        other => Err(bad(column, other, "TEXT")),
    }
}

pub fn blob(v: ValueRef<'_>, column: &'static str) -> Decoded<Vec<u8>> {
    match v {
        ValueRef::Blob(b) => Ok(b.to_vec()),
        other => Err(bad(column, other, "BLOB")),
    }
}

fn real(v: ValueRef<'_>, column: &'static str) -> Decoded<f64> {
    match v {
        ValueRef::Real(f) => Ok(f),
        ValueRef::Integer(i) => Ok(i as f64),
        other => Err(bad(column, other, "REAL")),
    }
}

/// NULL, or what `f` reads.
fn optional<T>(
    v: ValueRef<'_>,
    column: &'static str,
    f: fn(ValueRef<'_>, &'static str) -> Decoded<T>,
) -> Decoded<Option<T>> {
    match v {
        ValueRef::Null => Ok(None),
        other => f(other, column).map(Some),
    }
}

/// Reads a row column by column, keeping the first bad value (and a default in its
/// field) instead of failing: for listings, which show such a row rather than stop.
pub struct Lenient<'a, 'r> {
    row: &'a Row<'r>,
    pub bad: Option<CorruptColumn>,
}

impl<'a, 'r> Lenient<'a, 'r> {
    pub fn new(row: &'a Row<'r>) -> Self {
        Self { row, bad: None }
    }

    fn take<T: Default>(
        &mut self,
        i: usize,
        column: &'static str,
        f: impl Fn(ValueRef<'_>, &'static str) -> Decoded<T>,
    ) -> rusqlite::Result<T> {
        match f(self.row.get_ref(i)?, column) {
            Ok(v) => Ok(v),
            Err(bad) => {
                self.bad.get_or_insert(bad);
                Ok(T::default())
            }
        }
    }

    pub fn int(&mut self, i: usize, column: &'static str) -> rusqlite::Result<i64> {
        self.take(i, column, int)
    }

    pub fn text(&mut self, i: usize, column: &'static str) -> rusqlite::Result<String> {
        self.take(i, column, text)
    }

    pub fn blob(&mut self, i: usize, column: &'static str) -> rusqlite::Result<Vec<u8>> {
        self.take(i, column, blob)
    }

    pub fn opt_int(&mut self, i: usize, column: &'static str) -> rusqlite::Result<Option<i64>> {
        self.take(i, column, |v, c| optional(v, c, int))
    }

    pub fn opt_text(&mut self, i: usize, column: &'static str) -> rusqlite::Result<Option<String>> {
        self.take(i, column, |v, c| optional(v, c, text))
    }

    pub fn opt_blob(
        &mut self,
        i: usize,
        column: &'static str,
    ) -> rusqlite::Result<Option<Vec<u8>>> {
        self.take(i, column, |v, c| optional(v, c, blob))
    }

    pub fn opt_real(&mut self, i: usize, column: &'static str) -> rusqlite::Result<Option<f64>> {
        self.take(i, column, |v, c| optional(v, c, real))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_column_the_type_found_and_the_type_expected() {
        let e = blob(ValueRef::Text(b"{}"), "payload").unwrap_err();
        assert_eq!(e.problem, "column payload holds TEXT, expected BLOB");
        assert_eq!(e.raw, b"{}");
        let e = int(ValueRef::Real(1.5), "priority").unwrap_err();
        assert_eq!(e.problem, "column priority holds REAL, expected INTEGER");
        assert_eq!(e.raw, b"1.5");
        let e = text(ValueRef::Text(b"\xff"), "name").unwrap_err();
        assert_eq!(
            e.problem,
            "column name holds TEXT that is not valid UTF-8, expected TEXT"
        );
        assert_eq!(int(ValueRef::Integer(7), "priority").unwrap(), 7);
    }
}
