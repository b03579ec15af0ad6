//! The one mapping from core errors to Python exceptions (defined in `ferroq.errors`).

use pyo3::PyErr;
use pyo3::import_exception;

use crate::error::Error;

import_exception!(ferroq.errors, InvalidArgument);
import_exception!(ferroq.errors, PayloadError);
import_exception!(ferroq.errors, PayloadTooLarge);
import_exception!(ferroq.errors, UnknownTask);
import_exception!(ferroq.errors, LeaseLost);
import_exception!(ferroq.errors, InvalidTransition);
import_exception!(ferroq.errors, DatabasePathError);
import_exception!(ferroq.errors, CorruptDatabase);
import_exception!(ferroq.errors, CorruptTask);
import_exception!(ferroq.errors, ForeignDatabase);
import_exception!(ferroq.errors, DiskFull);
import_exception!(ferroq.errors, SchemaTooNew);
import_exception!(ferroq.errors, StorageError);

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let message = err.to_string();
        match err {
            Error::InvalidArgument(_) => InvalidArgument::new_err(message),
            Error::PayloadTooLarge { .. } => PayloadTooLarge::new_err(message),
            Error::UnknownTask(_) => UnknownTask::new_err(message),
            Error::LeaseLost(_) => LeaseLost::new_err(message),
            Error::InvalidTransition { .. } | Error::Refused(_) => {
                InvalidTransition::new_err(message)
            }
            Error::Path { .. } => DatabasePathError::new_err(message),
            Error::Corrupt { .. } => CorruptDatabase::new_err(message),
            // The Python class turns `raw` (a list of ints here) into bytes.
            Error::CorruptTask {
                id, column, raw, ..
            } => CorruptTask::new_err((message, id, column, raw)),
            Error::Foreign { .. } => ForeignDatabase::new_err(message),
            Error::DiskFull(_) => DiskFull::new_err(message),
            Error::SchemaTooNew { .. } => SchemaTooNew::new_err(message),
            Error::Storage(_) => StorageError::new_err(message),
        }
    }
}
