//! Progress lines on stderr, stamped with the seconds since the start of the run. A leaf: the
//! macro is declared first in `main.rs` so every module can use it.

use std::sync::OnceLock;
use std::time::Instant;

pub static START: OnceLock<Instant> = OnceLock::new();

/// `eprintln!` with the elapsed time in front.
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("[rf-bench +{:6.1}s] {}", $crate::progress::START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64(), format!($($arg)*))
    };
}
