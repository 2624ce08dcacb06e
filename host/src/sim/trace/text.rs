//! The text trace: one line per event.

use std::fmt::Write as _;

use super::Trace;

impl Trace {
    /// One line per event: `  1.234567s  n2  leader (term 3)`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for event in self.events() {
            let who = if event.node == 0 {
                "world".to_string()
            } else {
                format!("n{}", event.node)
            };
            let _ = writeln!(
                out,
                "{:>12.6}s  {who:<5}  {}",
                event.nanos as f64 / 1e9,
                event.what
            );
        }
        out
    }
}
