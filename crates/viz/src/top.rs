//! `switchyard top`: the admin API's live stats as a refreshing terminal table, or, with
//! `--once`, as one plain-text screen for scripts and tests.
//!
//! The screen is drawn into a ratatui `Buffer` by one function for both modes, so what the tests
//! read from `--once` is what the terminal shows. Frames arrive from `/stats/stream` on a task of
//! their own, which reconnects with backoff when the stream breaks or goes quiet and reports
//! why in the status line; keys come from a thread blocked in crossterm's `read`. The terminal
//! is restored on every exit: a guard on return and error, ratatui's panic hook on panic.

use std::io::IsTerminal;
use std::time::Duration;

use ratatui::buffer::{Buffer, CellWidth};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row, Table, Widget};
use tokio::sync::mpsc;

use crate::client::{Admin, EventStream};
use crate::format::clock;
use crate::model::Frame;
use crate::tables::{Order, View};

const STREAM_PATH: &str = "/stats/stream";
/// Frames come every second; this long without one means the stream is stuck.
const STALL: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What is on screen.
#[derive(Debug)]
pub struct TopState {
    admin: String,
    frame: Option<Frame>,
    view: View,
    /// The sort column of each view, by `View::index`.
    sort: [usize; View::ALL.len()],
    /// Why the stream is down, while it is.
    trouble: Option<String>,
}

impl TopState {
    pub fn new(admin: &str) -> TopState {
        TopState {
            admin: admin.to_owned(),
            frame: None,
            view: View::Routes,
            sort: View::ALL.map(View::default_sort),
            trouble: None,
        }
    }

    /// Keeps the newest frame: a reconnected stream replays history first.
    pub fn on_frame(&mut self, frame: Frame) {
        let older = match (&self.frame, frame.time_ms) {
            (Some(shown), Some(time)) => shown.time_ms.is_some_and(|t| t > time),
            _ => false,
        };
        if !older {
            self.frame = Some(frame);
        }
    }

    /// Applies a key; true when it asks to quit.
    pub fn on_key(&mut self, key: KeyEvent) -> bool {
        if key.kind == KeyEventKind::Release {
            return false;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return true,
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return true,
            KeyCode::Tab => self.view = self.view.next(),
            KeyCode::BackTab => self.view = self.view.previous(),
            KeyCode::Char('1') => self.view = View::Routes,
            KeyCode::Char('2') => self.view = View::Pools,
            KeyCode::Char('3') => self.view = View::Endpoints,
            KeyCode::Char('4') => self.view = View::Picks,
            KeyCode::Char('s') => {
                let sort = &mut self.sort[self.view.index()];
                *sort = self.view.next_sort(*sort);
            }
            _ => {}
        }
        false
    }

    fn sort_of(&self, view: View) -> usize {
        self.sort[view.index()]
    }

    /// The whole interactive screen: header, view tabs, the table, the status line.
    pub fn draw(&self, area: Rect, buf: &mut Buffer) {
        let [header, tabs, table, status] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Fill(1),
            Constraint::Length(1),
        ])
        .areas(area);
        header_line(&self.admin, self.frame.as_ref()).render(header, buf);
        self.tabs_line().render(tabs, buf);
        match &self.frame {
            Some(frame) => draw_table(self.view, self.sort_of(self.view), frame, table, buf),
            None => Line::from(format!("waiting for the first frame from {}", self.admin))
                .italic()
                .render(table, buf),
        }
        let status_line = match &self.trouble {
            Some(trouble) => Line::from(trouble.as_str()).red(),
            None => Line::from("Tab/1-4 view   s sort column   q quit").dim(),
        };
        status_line.render(status, buf);
    }

    fn tabs_line(&self) -> Line<'static> {
        let mut spans = Vec::new();
        for (i, view) in View::ALL.into_iter().enumerate() {
            let label = format!(" {} {} ", i + 1, view.title());
            spans.push(if view == self.view {
                Span::from(label).reversed()
            } else {
                Span::from(label)
            });
            spans.push(Span::from(" "));
        }
        spans.push(Span::from(sort_label(self.view, self.sort_of(self.view))).dim());
        Line::from(spans)
    }
}

fn sort_label(view: View, sort: usize) -> String {
    let column = &view.columns()[sort];
    let direction = if column.sort == Order::Ascending {
        "A-Z"
    } else {
        "high first"
    };
    format!("  sorted by {} ({direction})", column.title)
}

fn header_line(admin: &str, frame: Option<&Frame>) -> Line<'static> {
    let mut text = format!("switchyard top  admin {admin}");
    if let Some(frame) = frame {
        let endpoints: usize = frame.pools.iter().map(|p| p.endpoints.len()).sum();
        let window = frame
            .window_s
            .map_or_else(|| "-".to_owned(), |w| format!("{w}s"));
        text.push_str(&format!(
            "  at {} UTC  window {window}  {} routes  {} pools  {endpoints} endpoints",
            clock(frame.time_ms),
            frame.routes.len(),
            frame.pools.len(),
        ));
    }
    Line::from(text).bold()
}

/// One view's table (header row plus a row per entry), clipped to `area`.
fn draw_table(view: View, sort: usize, frame: &Frame, area: Rect, buf: &mut Buffer) {
    let columns = view.columns();
    let right = |i: usize| columns[i].sort == Order::Descending;
    let header = Row::new(columns.iter().enumerate().map(|(i, c)| {
        let title = Line::from(c.title);
        let title = if right(i) {
            title.right_aligned()
        } else {
            title
        };
        if i == sort {
            Cell::from(title).underlined()
        } else {
            Cell::from(title)
        }
    }))
    .style(Style::new().bold());
    let rows = view.rows(frame, sort).into_iter().map(|row| {
        let style = if row.alarm {
            Style::new().red()
        } else {
            Style::new()
        };
        Row::new(row.cells.into_iter().enumerate().map(|(i, text)| {
            let line = Line::from(text);
            Cell::from(if right(i) { line.right_aligned() } else { line })
        }))
        .style(style)
    });
    Table::new(rows, columns.iter().map(|c| Constraint::Length(c.width)))
        .header(header)
        .column_spacing(1)
        .render(area, buf);
}

/// Every view of `frame`, one under the other, as plain text `width` columns wide.
pub fn render_once(admin: &str, frame: &Frame, width: u16) -> String {
    let tables: Vec<(View, u16)> = View::ALL
        .into_iter()
        .map(|view| (view, 1 + view.rows(frame, view.default_sort()).len() as u16))
        .collect();
    let height = 1 + tables.iter().map(|(_, rows)| 2 + rows).sum::<u16>();
    let mut buf = Buffer::empty(Rect::new(0, 0, width, height));
    header_line(admin, Some(frame)).render(Rect::new(0, 0, width, 1), &mut buf);
    let mut y = 1;
    for (view, rows) in tables {
        let title = format!("{}{}", view.title(), sort_label(view, view.default_sort()));
        Line::from(title).render(Rect::new(0, y + 1, width, 1), &mut buf);
        let area = Rect::new(0, y + 2, width, rows);
        draw_table(view, view.default_sort(), frame, area, &mut buf);
        y += 2 + rows;
    }
    buffer_text(&buf)
}

/// The buffer's symbols, one line per row, trailing spaces trimmed. A wide symbol covers the
/// cells after it, which hold a placeholder that is not printed.
pub fn buffer_text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut text = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        let mut covered = 0u16;
        for x in area.left()..area.right() {
            let cell = &buf[(x, y)];
            if covered == 0 {
                line.push_str(cell.symbol());
            }
            covered = covered.max(cell.cell_width()).saturating_sub(1);
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// `--once`: fetch `/stats` and print every view.
pub async fn once(admin: &Admin, width: u16) -> anyhow::Result<String> {
    let frame: Frame = admin.get_json("/stats").await?;
    Ok(render_once(admin.as_str(), &frame, width))
}

enum Update {
    Frame(Box<Frame>),
    Trouble(String),
    Connected,
}

/// The interactive view, until a quit key.
pub async fn interactive(admin: Admin) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("`switchyard top` draws on a terminal; use `--once` for plain text");
    }
    // An unreachable admin fails here, before the terminal is touched.
    let stream = admin.stream(STREAM_PATH).await?;
    let (updates_tx, mut updates) = mpsc::channel(16);
    let feeder = tokio::spawn(feed(admin.clone(), stream, updates_tx));
    let (keys_tx, mut keys) = mpsc::unbounded_channel();
    // Blocked in `read` until the process exits; it holds nothing that needs closing.
    std::thread::spawn(move || {
        while let Ok(event) = event::read() {
            if keys_tx.send(event).is_err() {
                return;
            }
        }
    });
    // Before `try_init`, so that a half-done setup (raw mode on, no alternate screen) is undone.
    let _restore = RestoreTerminal;
    let mut terminal = ratatui::try_init()?;
    let mut state = TopState::new(admin.as_str());
    loop {
        terminal.draw(|f| state.draw(f.area(), f.buffer_mut()))?;
        tokio::select! {
            update = updates.recv() => match update {
                Some(Update::Frame(frame)) => state.on_frame(*frame),
                Some(Update::Trouble(trouble)) => state.trouble = Some(trouble),
                Some(Update::Connected) => state.trouble = None,
                None => break,
            },
            key = keys.recv() => match key {
                Some(Event::Key(key)) if state.on_key(key) => break,
                Some(_) => {} // other keys, resizes: the next draw handles them
                None => break,
            },
        }
    }
    feeder.abort();
    Ok(())
}

struct RestoreTerminal;

impl Drop for RestoreTerminal {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Forwards frames from the stream, reconnecting with backoff; ends when the screen is gone.
async fn feed(admin: Admin, mut stream: EventStream, updates: mpsc::Sender<Update>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut trouble = loop {
            let data = match tokio::time::timeout(STALL, stream.next_event()).await {
                Err(_) => break format!("admin {}: no frame for {STALL:?}", admin.as_str()),
                Ok(Ok(None)) => break format!("admin {}: the stream ended", admin.as_str()),
                Ok(Err(e)) => break e.to_string(),
                Ok(Ok(Some(data))) => data,
            };
            let update = match serde_json::from_str::<Frame>(&data) {
                Ok(frame) => {
                    backoff = FIRST_BACKOFF;
                    Update::Frame(Box::new(frame))
                }
                Err(e) => Update::Trouble(format!("admin {}: bad frame: {e}", admin.as_str())),
            };
            if updates.send(update).await.is_err() {
                return;
            }
        };
        stream = loop {
            let note = format!("{trouble}; reconnecting in {backoff:?}");
            if updates.send(Update::Trouble(note)).await.is_err() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            match admin.stream(STREAM_PATH).await {
                Ok(stream) => break stream,
                Err(e) => trouble = e.to_string(),
            }
        };
        if updates.send(Update::Connected).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
#[path = "top_tests.rs"]
mod tests;
