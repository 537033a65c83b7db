use std::time::Duration;

use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;

use super::*;
use crate::test_server::{Canned, TestServer};

const FRAME: &str = include_str!("../testdata/frame.json");

fn fixture() -> Frame {
    serde_json::from_str(FRAME).unwrap()
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

/// The interactive screen as drawn through ratatui's test terminal.
fn screen(state: &TopState, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal
        .draw(|f| state.draw(f.area(), f.buffer_mut()))
        .unwrap();
    buffer_text(terminal.backend().buffer())
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not in\n{text}"))
}

#[test]
fn once_shows_every_view_busiest_first() {
    let text = render_once("127.0.0.1:9901", &fixture(), 120);
    assert!(text.lines().all(|l| l.chars().count() <= 120), "{text}");
    assert!(text.starts_with(
        "switchyard top  admin 127.0.0.1:9901  at 16:40:00.000 UTC  window 5s  3 routes  2 pools  4 endpoints\n"
    ), "{text}");
    // Routes: chat (120.5 rps), then embed (2.5), then batch (no data).
    let chat = line_of(&text, "chat ");
    assert!(chat < line_of(&text, "embed ") && line_of(&text, "embed ") < line_of(&text, "batch "));
    let chat_line = text.lines().nth(chat).unwrap();
    for value in ["120.5", "1.25", "2876", "15230", "0.80", " 57"] {
        assert!(
            chat_line.contains(value),
            "`{value}` missing from `{chat_line}`"
        );
    }
    let batch_line = text.lines().nth(line_of(&text, "batch ")).unwrap();
    assert_eq!(
        batch_line.split_whitespace().collect::<Vec<_>>(),
        ["batch", "gpu-a", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "0"]
    );
    // The views come in order, each with its header row.
    let routes = line_of(&text, "Routes  sorted by RPS");
    let pools = line_of(&text, "Pools  sorted by RPS");
    let endpoints = line_of(&text, "Endpoints  sorted by RPS");
    assert!(routes < pools && pools < endpoints);
    assert!(text.lines().nth(routes + 1).unwrap().starts_with("ROUTE"));
    let gpu = text.lines().nth(pools + 2).unwrap();
    assert!(gpu.starts_with("gpu-a") && gpu.contains("57/256") && gpu.ends_with("PANIC"));
    let first_endpoint = text.lines().nth(endpoints + 2).unwrap();
    let cells: Vec<&str> = first_endpoint.split_whitespace().collect();
    assert!(first_endpoint.contains("10.0.0.1:8000"), "{first_endpoint}");
    assert_eq!(cells[cells.len() - 2..], ["81.5", "62.0"], "KV% and PFX%");
    let ejected = text.lines().nth(endpoints + 5).unwrap();
    assert!(ejected.contains("10.0.0.2:8000") && ejected.contains("ejected"));
}

#[test]
fn interactive_screen_switches_views_and_sorts() {
    let mut state = TopState::new("gw:9901");
    let waiting = screen(&state, 120, 12);
    assert!(waiting.contains("waiting for the first frame from gw:9901"));

    state.on_frame(fixture());
    let routes = screen(&state, 120, 12);
    assert!(routes
        .lines()
        .nth(1)
        .unwrap()
        .contains("sorted by RPS (high first)"));
    assert!(line_of(&routes, "chat ") < line_of(&routes, "embed "));
    assert!(routes.lines().last().unwrap().contains("q quit"));

    assert!(!state.on_key(key(KeyCode::Char('3'))));
    let endpoints = screen(&state, 120, 12);
    assert!(endpoints.lines().nth(2).unwrap().starts_with("POOL"));
    assert!(line_of(&endpoints, "10.0.0.1:8000") < line_of(&endpoints, "10.0.0.3:8000"));

    // s: the next sortable column after RPS is ERR%.
    state.on_key(key(KeyCode::Char('s')));
    let by_errors = screen(&state, 120, 12);
    assert!(
        by_errors.contains("sorted by ERR% (high first)"),
        "{by_errors}"
    );
    assert!(line_of(&by_errors, "10.0.0.2:8000") < line_of(&by_errors, "10.0.0.1:8000"));

    // Tab goes on to the recent picks, newest first, then wraps to Routes, whose sort is
    // untouched.
    state.on_key(key(KeyCode::Tab));
    assert_eq!(state.view, View::Picks);
    let picks = screen(&state, 160, 12);
    assert!(picks.contains("sorted by WHEN (high first)"), "{picks}");
    assert!(picks.contains("10.0.0.1:8000"), "{picks}");
    state.on_key(key(KeyCode::Tab));
    assert_eq!(state.view, View::Routes);
    assert!(screen(&state, 120, 12).contains("sorted by RPS"));
    state.on_key(key(KeyCode::BackTab));
    assert_eq!(state.view, View::Picks);
    assert!(!state.on_key(key(KeyCode::Char('3'))));
    assert_eq!(state.view, View::Endpoints);

    state.trouble = Some("admin gw:9901: the stream ended; reconnecting in 250ms".into());
    let troubled = screen(&state, 120, 12);
    assert!(troubled
        .lines()
        .last()
        .unwrap()
        .contains("reconnecting in 250ms"));
}

#[test]
fn quit_keys() {
    let mut state = TopState::new("gw:9901");
    assert!(state.on_key(key(KeyCode::Char('q'))));
    assert!(state.on_key(key(KeyCode::Esc)));
    assert!(state.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)));
    assert!(!state.on_key(key(KeyCode::Char('c'))));
    assert!(!state.on_key(key(KeyCode::Char('x'))));
}

#[test]
fn replayed_history_does_not_replace_a_newer_frame() {
    let mut state = TopState::new("gw:9901");
    let at = |time_ms| Frame {
        time_ms: Some(time_ms),
        ..Frame::default()
    };
    state.on_frame(at(2000));
    state.on_frame(at(1000));
    assert_eq!(state.frame.as_ref().unwrap().time_ms, Some(2000));
    state.on_frame(at(3000));
    assert_eq!(state.frame.as_ref().unwrap().time_ms, Some(3000));
}

#[tokio::test]
async fn once_fetches_stats_from_the_admin() {
    let server = TestServer::start(vec![("/stats", Canned::Json(FRAME))]).await;
    let admin = Admin::parse(&format!("http://{}", server.addr)).unwrap();
    let text = tokio::time::timeout(Duration::from_secs(10), once(&admin, 100))
        .await
        .unwrap()
        .unwrap();
    assert!(text.lines().all(|l| l.chars().count() <= 100));
    assert!(line_of(&text, "chat ") < line_of(&text, "embed "));
}

#[tokio::test]
async fn once_names_an_admin_that_is_not_there() {
    let server = TestServer::start(vec![]).await;
    let admin = Admin::parse(&server.addr.to_string()).unwrap();
    let err = once(&admin, 120).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "admin {}, GET /stats: status 404 Not Found: no such page",
            server.addr
        )
    );
}
