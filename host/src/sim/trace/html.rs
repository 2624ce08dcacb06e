//! The trace page: one self-contained HTML file (no network access) with
//! the run's data as compact columnar JSON and a small canvas renderer
//! (`page.js`, `page.css`): a space-time diagram with a lane per node and
//! per client, zoom, pan and filters.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use synod_guest_sdk::NodeId;

use super::Trace;
use super::model::NodeChange;

const PAGE_JS: &str = include_str!("page.js");
const PAGE_CSS: &str = include_str!("page.css");

/// Interns strings so repeated kinds, roles and keys cost one index each.
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, u32>,
}

impl Strings {
    fn id(&mut self, text: &str) -> u32 {
        if let Some(id) = self.index.get(text) {
            return *id;
        }
        let id = u32::try_from(self.table.len()).unwrap_or(u32::MAX);
        self.table.push(text.to_string());
        self.index.insert(text.to_string(), id);
        id
    }
}

/// Times are whole microseconds of virtual time; `-1` means "never".
fn micros(nanos: u64) -> i64 {
    i64::try_from(nanos / 1_000).unwrap_or(i64::MAX)
}

#[derive(Serialize, Default)]
struct Messages {
    /// Send times, delta-coded (each the difference to the previous one).
    t: Vec<i64>,
    /// Arrival minus send, or -1 (never arrived).
    lat: Vec<i64>,
    from: Vec<NodeId>,
    to: Vec<NodeId>,
    kind: Vec<u32>,
    bytes: Vec<u64>,
    fate: Vec<u8>,
    dup: Vec<u8>,
}

#[derive(Serialize, Default)]
struct Roles {
    t: Vec<i64>,
    node: Vec<NodeId>,
    role: Vec<u32>,
    term: Vec<u64>,
    epoch: Vec<u64>,
}

/// Down (0) and paused (1) spans of a node; `b` -1 lasts to the end.
#[derive(Serialize, Default)]
struct Spans {
    a: Vec<i64>,
    b: Vec<i64>,
    node: Vec<NodeId>,
    kind: Vec<u8>,
    label: Vec<u32>,
}

#[derive(Serialize, Default)]
struct Partitions {
    a: Vec<i64>,
    b: Vec<i64>,
    side: Vec<Vec<NodeId>>,
    rest: Vec<Vec<NodeId>>,
    oneway: Vec<u8>,
}

#[derive(Serialize, Default)]
struct Ops {
    a: Vec<i64>,
    b: Vec<i64>,
    client: Vec<u64>,
    node: Vec<NodeId>,
    key: Vec<u32>,
    what: Vec<u32>,
    outcome: Vec<u8>,
    result: Vec<u32>,
}

#[derive(Serialize, Default)]
struct Logs {
    t: Vec<i64>,
    node: Vec<NodeId>,
    text: Vec<u32>,
}

#[derive(Serialize, Default)]
struct Marks {
    t: Vec<i64>,
    node: Vec<NodeId>,
    kind: Vec<u8>,
    text: Vec<u32>,
}

#[derive(Serialize)]
struct PageData {
    title: String,
    end: i64,
    nodes: Vec<NodeId>,
    clients: u64,
    events: usize,
    strings: Vec<String>,
    msg: Messages,
    roles: Roles,
    spans: Spans,
    parts: Partitions,
    ops: Ops,
    logs: Logs,
    marks: Marks,
}

/// Spans begun and not yet ended, per (node, kind): start and label.
type OpenSpans = HashMap<(NodeId, u8), (i64, u32)>;

fn close(spans: &mut Spans, node: NodeId, kind: u8, at: i64, open: &mut OpenSpans) {
    if let Some((start, label)) = open.remove(&(node, kind)) {
        spans.a.push(start);
        spans.b.push(at);
        spans.node.push(node);
        spans.kind.push(kind);
        spans.label.push(label);
    }
}

impl Trace {
    /// The page's data: every structured event, as columns.
    fn page_data(&self, title: &str) -> PageData {
        let model = self.model();
        let mut strings = Strings::default();
        let end = self
            .events()
            .iter()
            .map(|e| e.nanos)
            .chain(model.marks.iter().map(|m| m.nanos))
            .max()
            .unwrap_or(0);
        let mut nodes: BTreeSet<NodeId> = self
            .events()
            .iter()
            .map(|e| e.node)
            .filter(|n| *n != 0)
            .collect();
        nodes.extend(model.nodes.iter().map(|n| n.node));

        let mut msg = Messages::default();
        let mut previous = 0;
        for m in &model.messages {
            let sent = micros(m.sent);
            msg.t.push(sent - previous);
            previous = sent;
            msg.lat.push(m.arrived.map_or(-1, |at| micros(at) - sent));
            msg.from.push(m.from);
            msg.to.push(m.to);
            msg.kind.push(strings.id(&m.kind));
            msg.bytes.push(m.bytes);
            msg.fate.push(m.fate.code());
            msg.dup.push(u8::from(m.duplicate));
        }

        let mut roles = Roles::default();
        for r in &model.roles {
            roles.t.push(micros(r.nanos));
            roles.node.push(r.node);
            roles.role.push(strings.id(r.role));
            roles.term.push(r.term);
            roles.epoch.push(r.epoch);
        }

        let mut spans = Spans::default();
        let mut open = OpenSpans::new();
        for mark in &model.nodes {
            let at = micros(mark.nanos);
            match &mark.change {
                NodeChange::Crash { why } => {
                    close(&mut spans, mark.node, 1, at, &mut open);
                    let label = if why.is_empty() {
                        "down".to_string()
                    } else {
                        format!("down: {why}")
                    };
                    open.insert((mark.node, 0), (at, strings.id(&label)));
                }
                NodeChange::Boot { .. } => close(&mut spans, mark.node, 0, at, &mut open),
                NodeChange::Pause => {
                    open.insert((mark.node, 1), (at, strings.id("paused")));
                }
                NodeChange::Resume => close(&mut spans, mark.node, 1, at, &mut open),
            }
        }
        let mut left: Vec<_> = open.into_iter().collect();
        left.sort();
        for ((node, kind), (start, label)) in left {
            spans.a.push(start);
            spans.b.push(-1);
            spans.node.push(node);
            spans.kind.push(kind);
            spans.label.push(label);
        }

        let mut parts = Partitions::default();
        for p in &model.partitions {
            parts.a.push(micros(p.start));
            parts.b.push(p.end.map_or(-1, micros));
            parts.side.push(p.side.clone());
            parts.rest.push(p.rest.clone());
            parts.oneway.push(u8::from(p.one_way));
        }

        let mut ops = Ops::default();
        for op in &model.ops {
            ops.a.push(micros(op.call));
            ops.b.push(op.ret.map_or(-1, micros));
            ops.client.push(op.client);
            ops.node.push(op.node);
            ops.key.push(strings.id(&op.key));
            ops.what.push(strings.id(&op.what));
            ops.outcome.push(op.outcome.code());
            ops.result.push(strings.id(&op.result));
        }
        let clients = model.ops.iter().map(|o| o.client + 1).max().unwrap_or(0);

        let mut logs = Logs::default();
        for line in &model.logs {
            logs.t.push(micros(line.nanos));
            logs.node.push(line.node);
            logs.text.push(strings.id(&line.line));
        }

        let mut marks = Marks::default();
        for mark in &model.marks {
            marks.t.push(micros(mark.nanos));
            marks.node.push(mark.node);
            marks.kind.push(mark.kind.code());
            marks.text.push(strings.id(&mark.text));
        }

        PageData {
            title: title.to_string(),
            end: micros(end).max(1),
            nodes: nodes.into_iter().collect(),
            clients,
            events: self.events().len(),
            strings: strings.table,
            msg,
            roles,
            spans,
            parts,
            ops,
            logs,
            marks,
        }
    }

    /// The self-contained page (see the module comment).
    pub fn to_html(&self, title: &str) -> String {
        let data = self.page_data(title);
        let json = serde_json::to_string(&data).unwrap_or_else(|_| "{}".to_string());
        // Inside <script>, `<` only occurs in JSON strings: escape it so
        // no plugin log line can close the element.
        let json = json.replace('<', "\\u003c");
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\
             <style>{PAGE_CSS}</style></head><body>\n\
             <header><h1>{title}</h1><div id=\"summary\"></div><div id=\"violations\"></div>\
             <div id=\"controls\"></div><div id=\"legend\"></div></header>\n\
             <div id=\"view\"><canvas id=\"canvas\"></canvas><div id=\"tip\"></div></div>\n\
             <div id=\"help\">Wheel: zoom · drag: pan · double-click: zoom in · hover: details. \
             The full event list is the text trace (seed-N.txt).</div>\n\
             <pre id=\"selfcheck\"></pre>\n\
             <script id=\"data\" type=\"application/json\">{json}</script>\n\
             <script>{PAGE_JS}</script>\n</body></html>\n",
            title = escape(title)
        )
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
