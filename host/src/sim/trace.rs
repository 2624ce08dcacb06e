//! What happened in a simulated run, per node over virtual time: as a hash
//! (replays must match bit for bit), a readable text log, and a
//! self-contained HTML page with an SVG timeline.

use std::fmt::Write as _;

use synod_guest_sdk::NodeId;

/// One traced event; node 0 means the simulated world itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    pub nanos: u64,
    pub node: NodeId,
    pub what: String,
}

#[derive(Debug)]
pub struct Trace {
    keep: bool,
    events: Vec<TraceEvent>,
    hash: u64,
}

/// Events shown on the timeline; a longer trace shows its first ones.
const TIMELINE_EVENTS_MAX: usize = 20_000;

impl Trace {
    pub fn new(keep: bool) -> Self {
        Self {
            keep,
            events: Vec::new(),
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }

    pub fn record(&mut self, nanos: u64, node: NodeId, what: String) {
        // FNV-1a over every event, kept or not, so any divergence shows.
        for byte in nanos
            .to_le_bytes()
            .iter()
            .chain(node.to_le_bytes().iter())
            .chain(what.as_bytes())
        {
            self.hash ^= u64::from(*byte);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
        if self.keep {
            self.events.push(TraceEvent { nanos, node, what });
        }
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn into_recorded(self) -> Option<Trace> {
        self.keep.then_some(self)
    }

    pub fn events(&self) -> &[TraceEvent] {
        &self.events
    }

    /// One line per event: `  1.234567s  n2  leader (term 3)`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for event in &self.events {
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

    /// A page with a lane per node: faults in red, leadership in green,
    /// messages as ticks; hover a mark to read the event.
    pub fn to_html(&self, title: &str) -> String {
        let nodes: u64 = self.events.iter().map(|e| e.node).max().unwrap_or(0);
        let end = self.events.last().map_or(1, |e| e.nanos.max(1));
        let width = 1600.0;
        let lane = 40.0;
        let height = lane * (nodes as f64 + 2.0);
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="11">"#
        );
        for node in 0..=nodes {
            let y = lane * (node as f64 + 1.0);
            let name = if node == 0 {
                "world".to_string()
            } else {
                format!("n{node}")
            };
            let _ = write!(
                svg,
                r##"<line x1="60" y1="{y}" x2="{width}" y2="{y}" stroke="#ddd"/><text x="5" y="{}">{name}</text>"##,
                y + 4.0
            );
        }
        for event in self.events.iter().take(TIMELINE_EVENTS_MAX) {
            let x = 60.0 + (width - 70.0) * event.nanos as f64 / end as f64;
            let y = lane * (event.node as f64 + 1.0);
            let (color, size) = if event.what.starts_with("VIOLATION") {
                ("#000", 7.0)
            } else if event.what.contains("crash")
                || event.what.contains("partition")
                || event.what.contains("paused")
                || event.what.contains("lost")
            {
                ("#d33", 5.0)
            } else if event.what.contains("leader") || event.what.contains("boot") {
                ("#2a2", 5.0)
            } else {
                ("#58c", 1.5)
            };
            let text = escape(&event.what);
            let _ = write!(
                svg,
                r#"<circle cx="{x:.1}" cy="{y}" r="{size}" fill="{color}"><title>{:.6}s {text}</title></circle>"#,
                event.nanos as f64 / 1e9
            );
        }
        svg.push_str("</svg>");
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title></head><body>\
             <h1>{}</h1><p>{} events over {:.3}s of virtual time. Red: faults; green: boots and leaders; \
             blue: messages; black: violations. Hover a mark for details.</p>{svg}<pre>{}</pre></body></html>",
            escape(title),
            escape(title),
            self.events.len(),
            end as f64 / 1e9,
            escape(&self.to_text())
        )
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
