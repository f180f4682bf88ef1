//! Which server errors are worth a retry, decided from the SQLSTATE alone.
//!
//! Every connection pgbridge makes (the replication source, the copy, the
//! Postgres sink, the pipeline lock) asks [`is_transient`], so a server
//! error is retried or stops the pipeline the same way wherever it comes
//! from. The message text is never looked at: servers translate it.

/// True for a SQLSTATE worth a retry after reconnecting: the same
/// statement may succeed later without anyone changing anything.
///
/// The list:
/// - class `08`, connection exception: the connection broke or could not
///   be made;
/// - class `53`, insufficient resources (disk full, out of memory, too
///   many connections);
/// - `57P`, operator intervention: admin or crash shutdown, the server
///   cannot accept connections yet, idle-session timeout (and a dropped
///   database, whose retry then stops on `3D000`);
/// - `40001` serialization failure and `40P01` deadlock: the server rolled
///   the transaction back because of another one, and the same
///   transaction normally succeeds when run again;
/// - `40003` statement completion unknown: the connection went while the
///   server was finishing the statement. Retrying is safe because every
///   writer stores its position in the same transaction as its data, so
///   the retry finds out what committed.
///
/// Definite, though in class 40: `40000` (a rollback without a stated
/// cause) and `40002` integrity constraint violation (a deferred
/// constraint failed at COMMIT: the same data fails again). Everything
/// else — privileges, missing objects, bad data, constraint violations —
/// needs an operator.
pub fn is_transient(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || matches!(code, "40001" | "40P01" | "40003")
}

#[cfg(test)]
mod tests {
    use super::is_transient;

    #[test]
    fn the_documented_list() {
        for c in [
            "08000", "08006", "08P01", "53100", "53200", "53300", "57P01", "57P02", "57P03",
            "57P05", "40001", "40P01", "40003",
        ] {
            assert!(is_transient(c), "{c}");
        }
        for c in [
            "40000", "40002", "42703", "42P01", "42501", "22P02", "23505", "23502", "23503",
            "57014", "55P03", "25006", "25P02", "28P01", "3D000", "XX000", "",
        ] {
            assert!(!is_transient(c), "{c}");
        }
    }
}
