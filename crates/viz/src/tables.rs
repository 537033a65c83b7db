//! The three tables of `switchyard top` (routes, pools, endpoints), built from a frame as plain
//! rows of text plus the values to sort on, so that sorting and drawing are one code path for
//! all three and can be tested without a terminal.

use std::cmp::Ordering;

use crate::format::{count, millis, number, percent};
use crate::model::{EndpointStats, Frame, PoolStats, RouteStats};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Routes,
    Pools,
    Endpoints,
    /// The last `inference` picks of each pool, with each candidate's scores.
    Picks,
}

impl View {
    pub const ALL: [View; 4] = [View::Routes, View::Pools, View::Endpoints, View::Picks];

    pub fn title(self) -> &'static str {
        match self {
            View::Routes => "Routes",
            View::Pools => "Pools",
            View::Endpoints => "Endpoints",
            View::Picks => "Picks",
        }
    }

    pub fn index(self) -> usize {
        match self {
            View::Routes => 0,
            View::Pools => 1,
            View::Endpoints => 2,
            View::Picks => 3,
        }
    }

    pub fn next(self) -> View {
        View::ALL[(self.index() + 1) % View::ALL.len()]
    }

    pub fn previous(self) -> View {
        View::ALL[(self.index() + View::ALL.len() - 1) % View::ALL.len()]
    }

    pub fn columns(self) -> &'static [Column] {
        match self {
            View::Routes => ROUTE_COLUMNS,
            View::Pools => POOL_COLUMNS,
            View::Endpoints => ENDPOINT_COLUMNS,
            View::Picks => PICK_COLUMNS,
        }
    }

    /// Where sorting starts: the busiest first (requests per second, then in flight); picks
    /// newest first.
    pub fn default_sort(self) -> usize {
        self.columns()
            .iter()
            .position(|c| c.title == "RPS" || c.title == "WHEN")
            .unwrap_or(0)
    }

    /// The sortable column after `current`, wrapping around.
    pub fn next_sort(self, current: usize) -> usize {
        let columns = self.columns();
        (1..=columns.len())
            .map(|step| (current + step) % columns.len())
            .find(|&i| columns[i].sort != Order::None)
            .unwrap_or(current)
    }

    /// The view's rows, sorted by column `sort`.
    pub fn rows(self, frame: &Frame, sort: usize) -> Vec<TableRow> {
        let mut rows: Vec<TableRow> = match self {
            View::Routes => frame.routes.iter().map(route_row).collect(),
            View::Pools => frame.pools.iter().map(pool_row).collect(),
            View::Endpoints => frame
                .pools
                .iter()
                .flat_map(|p| p.endpoints.iter().map(|e| endpoint_row(&p.pool, e)))
                .collect(),
            View::Picks => frame
                .pools
                .iter()
                .flat_map(|p| p.recent_picks.iter().map(|k| pick_row(&p.pool, k)))
                .collect(),
        };
        let order = self.columns().get(sort).map_or(Order::None, |c| c.sort);
        rows.sort_by(|a, b| {
            let by_column = match order {
                Order::None => Ordering::Equal,
                Order::Descending => descending(a.keys[sort], b.keys[sort]),
                Order::Ascending => a.cells[sort].cmp(&b.cells[sort]),
            };
            by_column
                .then_with(|| descending(a.rps, b.rps))
                .then_with(|| descending(a.in_flight, b.in_flight))
                .then_with(|| a.cells.cmp(&b.cells))
        });
        rows
    }
}

/// Larger first, "no data" last.
fn descending(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => b.total_cmp(&a),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    None,
    Descending,
    /// Text columns: names read best A to Z.
    Ascending,
}

#[derive(Debug)]
pub struct Column {
    pub title: &'static str,
    pub width: u16,
    pub sort: Order,
}

const fn text(title: &'static str, width: u16) -> Column {
    Column {
        title,
        width,
        sort: Order::Ascending,
    }
}

const fn num(title: &'static str, width: u16) -> Column {
    Column {
        title,
        width,
        sort: Order::Descending,
    }
}

const fn plain(title: &'static str, width: u16) -> Column {
    Column {
        title,
        width,
        sort: Order::None,
    }
}

#[derive(Debug, Clone)]
pub struct TableRow {
    pub cells: Vec<String>,
    /// The number behind each cell, for sorting (`None` for text and "no data").
    pub keys: Vec<Option<f64>>,
    /// Drawn in the alarm colour: errors, ejection, panic.
    pub alarm: bool,
    rps: Option<f64>,
    in_flight: Option<f64>,
}

/// Builds a row from `(text, sort key)` pairs in column order.
fn row(cells: Vec<(String, Option<f64>)>, rps: Option<f64>, in_flight: Option<f64>) -> TableRow {
    let (cells, keys) = cells.into_iter().unzip();
    TableRow {
        cells,
        keys,
        alarm: false,
        rps,
        in_flight,
    }
}

fn name(text: &str) -> (String, Option<f64>) {
    (if text.is_empty() { "-" } else { text }.to_owned(), None)
}

fn with(format: fn(Option<f64>) -> String, value: Option<f64>) -> (String, Option<f64>) {
    (format(value), value)
}

const ROUTE_COLUMNS: &[Column] = &[
    text("ROUTE", 18),
    text("POOL", 14),
    num("RPS", 8),
    num("ERR%", 6),
    num("P50ms", 7),
    num("P99ms", 7),
    num("TTFT50", 7),
    num("TTFT99", 7),
    num("ITL50", 6),
    num("ITL99", 6),
    num("TOK/S", 8),
    num("RETRY/S", 7),
    num("INFL", 5),
];

fn route_row(r: &RouteStats) -> TableRow {
    let t = &r.traffic;
    let mut row = row(
        vec![
            name(&r.route),
            name(&r.pool),
            with(number, t.rps),
            with(percent, t.error_rate),
            with(millis, t.p50_ms),
            with(millis, t.p99_ms),
            with(millis, t.ttft_p50_ms),
            with(millis, t.ttft_p99_ms),
            with(millis, t.itl_p50_ms),
            with(millis, t.itl_p99_ms),
            with(number, t.tokens_per_s),
            with(number, t.retries_per_s),
            with(count, r.in_flight),
        ],
        t.rps,
        r.in_flight,
    );
    row.alarm = t.error_rate.is_some_and(|e| e >= 0.05);
    row
}

const PICK_COLUMNS: &[Column] = &[
    text("POOL", 14),
    num("WHEN", 12),
    text("CHOSEN", 22),
    plain("CANDIDATES: SCORE (PARTS), BEST FIRST", 120),
];

fn pick_row(pool: &str, k: &crate::model::Pick) -> TableRow {
    row(
        vec![
            name(pool),
            (crate::format::clock(k.time_ms), k.time_ms.map(|t| t as f64)),
            name(k.endpoint.as_deref().unwrap_or("")),
            name(k.explanation.as_deref().unwrap_or("")),
        ],
        None,
        None,
    )
}

const POOL_COLUMNS: &[Column] = &[
    text("POOL", 14),
    plain("BALANCER", 11),
    num("RPS", 8),
    num("ERR%", 6),
    num("P50ms", 7),
    num("P99ms", 7),
    num("TTFT99", 7),
    num("TOK/S", 8),
    num("RETRY/S", 7),
    num("SHED/S", 6),
    num("INFL/LIM", 8),
    num("QUEUE", 5),
    plain("UP", 5),
    plain("PANIC", 5),
];

fn pool_row(p: &PoolStats) -> TableRow {
    let t = &p.traffic;
    let in_flight = p.in_flight();
    let limit = p.concurrency.as_ref().and_then(|c| c.limit);
    let in_flight_text = match limit {
        Some(limit) => format!("{}/{}", count(in_flight), count(Some(limit))),
        None => count(in_flight),
    };
    let queued = p.concurrency.as_ref().and_then(|c| c.queued);
    let up = p
        .endpoints
        .iter()
        .filter(|e| matches!(e.state(), "ok" | "-"))
        .count();
    let mut row = row(
        vec![
            name(&p.pool),
            name(&p.balancer),
            with(number, t.rps),
            with(percent, t.error_rate),
            with(millis, t.p50_ms),
            with(millis, t.p99_ms),
            with(millis, t.ttft_p99_ms),
            with(number, t.tokens_per_s),
            with(number, t.retries_per_s),
            with(number, t.shed_per_s),
            (in_flight_text, in_flight),
            with(count, queued),
            (format!("{up}/{}", p.endpoints.len()), None),
            ((if p.panic { "PANIC" } else { "" }).to_owned(), None),
        ],
        t.rps,
        in_flight,
    );
    row.alarm = p.panic || t.error_rate.is_some_and(|e| e >= 0.05);
    row
}

const ENDPOINT_COLUMNS: &[Column] = &[
    text("POOL", 14),
    text("ADDRESS", 22),
    text("ZONE", 6),
    text("STATE", 9),
    num("INFL", 5),
    num("RPS", 8),
    num("ERR%", 6),
    num("EWMAms", 7),
    num("QUEUE", 5),
    num("RUN", 5),
    num("KV%", 5),
    num("PFX%", 5),
];

fn endpoint_row(pool: &str, e: &EndpointStats) -> TableRow {
    let state = e.state();
    let mut row = row(
        vec![
            name(pool),
            name(&e.address),
            name(e.zone.as_deref().unwrap_or("")),
            name(state),
            with(count, e.in_flight),
            with(number, e.rps),
            with(percent, e.error_rate),
            with(millis, e.latency_ewma_ms),
            with(count, e.waiting),
            with(count, e.running),
            (percent(e.kv_usage), e.kv_usage),
            (percent(e.prefix_hit_share), e.prefix_hit_share),
        ],
        e.rps,
        e.in_flight,
    );
    row.alarm = !matches!(state, "ok" | "-");
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Frame {
        serde_json::from_str(include_str!("../testdata/frame.json")).unwrap()
    }

    fn first_cells(view: View, sort: usize) -> Vec<String> {
        view.rows(&fixture(), sort)
            .into_iter()
            .map(|r| r.cells[if view == View::Endpoints { 1 } else { 0 }].clone())
            .collect()
    }

    #[test]
    fn every_view_starts_busiest_first() {
        assert_eq!(
            first_cells(View::Routes, View::Routes.default_sort()),
            ["chat", "embed", "batch"]
        );
        assert_eq!(
            first_cells(View::Pools, View::Pools.default_sort()),
            ["gpu-a", "cpu"]
        );
        assert_eq!(
            first_cells(View::Endpoints, View::Endpoints.default_sort()),
            [
                "10.0.0.1:8000",
                "10.0.0.3:8000",
                "10.0.1.5:8080",
                "10.0.0.2:8000"
            ]
        );
    }

    #[test]
    fn cells_show_numbers_and_dashes() {
        let rows = View::Routes.rows(&fixture(), View::Routes.default_sort());
        assert_eq!(
            rows[0].cells,
            [
                "chat", "gpu-a", "120.5", "1.25", "412", "2876", "95", "640", "21", "48", "15230",
                "0.80", "57"
            ]
        );
        assert_eq!(rows[2].cells[2..6], ["-", "-", "-", "-"]);
        let pools = View::Pools.rows(&fixture(), View::Pools.default_sort());
        assert_eq!(pools[0].cells[10..], ["57/256", "3", "2/3", "PANIC"]);
        assert!(pools[0].alarm);
        let endpoints = View::Endpoints.rows(&fixture(), View::Endpoints.default_sort());
        assert_eq!(endpoints[0].cells[10..], ["81.5", "62.0"]);
        assert_eq!(endpoints[2].cells[9..], ["-", "-", "-"]);
        assert_eq!(endpoints[3].cells[3], "ejected");
        assert!(endpoints[3].alarm);
    }

    #[test]
    fn sort_cycles_through_sortable_columns_and_wraps() {
        let view = View::Pools;
        let mut sort = view.default_sort();
        let mut seen = vec![view.columns()[sort].title];
        for _ in 0..view.columns().len() {
            sort = view.next_sort(sort);
            seen.push(view.columns()[sort].title);
        }
        assert_eq!(
            seen[..12],
            [
                "RPS", "ERR%", "P50ms", "P99ms", "TTFT99", "TOK/S", "RETRY/S", "SHED/S",
                "INFL/LIM", "QUEUE", "POOL", "RPS"
            ],
            "BALANCER, UP and PANIC are skipped"
        );
    }

    #[test]
    fn sorting_by_another_column_reorders() {
        let view = View::Endpoints;
        let err = view
            .columns()
            .iter()
            .position(|c| c.title == "ERR%")
            .unwrap();
        assert_eq!(first_cells(view, err)[0], "10.0.0.2:8000");
        let address = view.next_sort(0);
        assert_eq!(view.columns()[address].title, "ADDRESS");
        assert_eq!(
            first_cells(view, address),
            [
                "10.0.0.1:8000",
                "10.0.0.2:8000",
                "10.0.0.3:8000",
                "10.0.1.5:8080"
            ]
        );
        // A column with nulls puts them last whichever way it sorts.
        let kv = view
            .columns()
            .iter()
            .position(|c| c.title == "KV%")
            .unwrap();
        assert_eq!(first_cells(view, kv).last().unwrap(), "10.0.1.5:8080");
    }
}
