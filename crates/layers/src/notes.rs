//! Entries a layer operation passed over: each is logged, and the first few are kept for the
//! caller's report.

/// How many notes a report keeps (the rest are only logged).
const MAX_NOTES: usize = 50;

/// Logs `msg` for `operation` and keeps it in `kept` while there is room.
pub(crate) fn note(kept: &mut Vec<String>, operation: &str, msg: String) {
    tracing::warn!("{operation}: {msg}");
    if kept.len() < MAX_NOTES {
        kept.push(msg);
    }
}
