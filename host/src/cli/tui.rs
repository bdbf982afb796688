//! `orca tui`: a terminal dashboard over the API (ratatui + crossterm). Views: services
//! (status, ready/want, revision, rollout and traffic, domain, TLS), a service's logs, a
//! service's events. Keys are in the footer; mutating keys go through the API, so a viewer
//! token's refusal is shown as the API's reason. When the server is unreachable the
//! dashboard says "disconnected, retrying" and keeps trying; it never panics on a bad answer.
//!
//! The key handling ([`App::key`]) is pure: it returns the [`Request`] to run, and the loop
//! runs it, so the state machine is tested without a terminal.

use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState};
use ratatui::Frame;
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{enc, Client};

/// How often the views refresh.
const REFRESH: Duration = Duration::from_secs(1);

/// What is on screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// The services table.
    Services,
    /// Logs of one service (`project/name`).
    Logs(String),
    /// Events of one service (`project/name`).
    Events(String),
}

/// What the keyboard is typing into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Keys are commands.
    None,
    /// `/`: the filter.
    Filter(String),
    /// `s`: replicas for the selected service.
    Scale(String),
    /// `r`: waiting for `y` to roll back the selected service.
    ConfirmRollback,
}

/// A call the loop makes for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Set replicas.
    Scale { key: String, replicas: u32 },
    /// Promote the rollout in progress.
    Promote { key: String },
    /// Roll back.
    Rollback { key: String },
    /// Leave the program.
    Quit,
}

/// The dashboard's state.
#[derive(Debug)]
pub struct App {
    /// Services of the last status answer.
    pub services: Vec<Value>,
    /// Lines of the logs/events view.
    pub lines: Vec<String>,
    /// The view.
    pub view: View,
    /// The input mode.
    pub input: Input,
    /// The filter in force.
    pub filter: String,
    /// Index into the filtered services.
    pub selected: usize,
    /// The last outcome or refusal, shown above the footer.
    pub message: String,
    /// `None` when the last refresh worked; else why it failed.
    pub disconnected: Option<String>,
    /// Cluster name.
    pub cluster: String,
}

impl App {
    /// An empty dashboard.
    pub fn new() -> App {
        App {
            services: Vec::new(),
            lines: Vec::new(),
            view: View::Services,
            input: Input::None,
            filter: String::new(),
            selected: 0,
            message: String::new(),
            disconnected: None,
            cluster: String::new(),
        }
    }

    /// The services the filter lets through.
    pub fn visible(&self) -> Vec<&Value> {
        let f = self.filter.to_lowercase();
        self.services
            .iter()
            .filter(|s| f.is_empty() || key_of(s).to_lowercase().contains(&f))
            .collect()
    }

    /// `project/name` of the selected service.
    pub fn selected_key(&self) -> Option<String> {
        self.visible().get(self.selected).map(|s| key_of(s))
    }

    /// Handles one key; returns the call to make, if any.
    pub fn key(&mut self, code: KeyCode, ctrl: bool) -> Option<Request> {
        if ctrl && code == KeyCode::Char('c') {
            return Some(Request::Quit);
        }
        match std::mem::replace(&mut self.input, Input::None) {
            Input::Filter(mut f) => {
                match code {
                    KeyCode::Enter => self.filter = f,
                    KeyCode::Esc => {}
                    KeyCode::Backspace => {
                        f.pop();
                        self.input = Input::Filter(f);
                    }
                    KeyCode::Char(c) => {
                        f.push(c);
                        self.input = Input::Filter(f);
                    }
                    _ => self.input = Input::Filter(f),
                }
                self.selected = 0;
                return None;
            }
            Input::Scale(mut n) => {
                match code {
                    KeyCode::Enter => {
                        let key = self.selected_key()?;
                        return match n.parse::<u32>() {
                            Ok(replicas) => Some(Request::Scale { key, replicas }),
                            Err(_) => {
                                self.message = format!("scale: {n:?} is not a number of replicas");
                                None
                            }
                        };
                    }
                    KeyCode::Esc => {}
                    KeyCode::Backspace => {
                        n.pop();
                        self.input = Input::Scale(n);
                    }
                    KeyCode::Char(c) if c.is_ascii_digit() => {
                        n.push(c);
                        self.input = Input::Scale(n);
                    }
                    _ => self.input = Input::Scale(n),
                }
                return None;
            }
            Input::ConfirmRollback => {
                if code == KeyCode::Char('y') {
                    return self.selected_key().map(|key| Request::Rollback { key });
                }
                self.message = "rollback cancelled".into();
                return None;
            }
            Input::None => {}
        }
        match (&self.view, code) {
            (_, KeyCode::Char('q')) => return Some(Request::Quit),
            (View::Logs(_) | View::Events(_), KeyCode::Esc) => {
                self.view = View::Services;
                self.lines.clear();
            }
            (View::Services, KeyCode::Esc) => self.filter.clear(),
            (View::Services, KeyCode::Down | KeyCode::Char('j')) => {
                let n = self.visible().len();
                if n > 0 {
                    self.selected = (self.selected + 1).min(n - 1);
                }
            }
            (View::Services, KeyCode::Up | KeyCode::Char('k')) => {
                self.selected = self.selected.saturating_sub(1);
            }
            (View::Services, KeyCode::Char('/')) => {
                self.input = Input::Filter(String::new());
            }
            (View::Services, KeyCode::Char('l')) => {
                if let Some(k) = self.selected_key() {
                    self.view = View::Logs(k);
                    self.lines.clear();
                }
            }
            (View::Services, KeyCode::Char('e')) => {
                if let Some(k) = self.selected_key() {
                    self.view = View::Events(k);
                    self.lines.clear();
                }
            }
            (View::Services, KeyCode::Char('s')) if self.selected_key().is_some() => {
                self.input = Input::Scale(String::new());
            }
            (View::Services, KeyCode::Char('p')) => {
                return self.selected_key().map(|key| Request::Promote { key });
            }
            (View::Services, KeyCode::Char('r')) if self.selected_key().is_some() => {
                self.input = Input::ConfirmRollback;
            }
            _ => {}
        }
        None
    }
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}

fn key_of(s: &Value) -> String {
    format!(
        "{}/{}",
        s["project"].as_str().unwrap_or(""),
        s["name"].as_str().unwrap_or("")
    )
}

fn split(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// Runs the dashboard until `q`.
pub async fn run(c: &Client) -> anyhow::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(c, &mut terminal).await;
    ratatui::restore();
    result
}

async fn event_loop(c: &Client, terminal: &mut ratatui::DefaultTerminal) -> anyhow::Result<()> {
    let mut app = App::new();
    let mut last_refresh: Option<Instant> = None;
    loop {
        if last_refresh.is_none_or(|t| t.elapsed() >= REFRESH) {
            refresh(c, &mut app).await;
            last_refresh = Some(Instant::now());
        }
        terminal.draw(|f| draw(f, &app))?;
        // Wait for a key at most until the next refresh.
        let polled = tokio::task::block_in_place(|| event::poll(Duration::from_millis(200)))?;
        if !polled {
            continue;
        }
        let Event::Key(k) = tokio::task::block_in_place(event::read)? else {
            continue;
        };
        if k.kind != KeyEventKind::Press {
            continue;
        }
        let before = app.view.clone();
        let request = app.key(k.code, k.modifiers.contains(KeyModifiers::CONTROL));
        if app.view != before {
            last_refresh = None;
        }
        match request {
            Some(Request::Quit) => return Ok(()),
            Some(r) => {
                app.message = perform(c, &r).await;
                last_refresh = None;
            }
            None => {}
        }
    }
}

/// Runs a mutating request; returns the line to show.
async fn perform(c: &Client, r: &Request) -> String {
    let (what, key, path, body) = match r {
        Request::Scale { key, replicas } => {
            let (p, n) = split(key);
            (
                format!("scale to {replicas}"),
                key,
                format!("/api/v1/services/{}/scale?project={}", enc(n), enc(p)),
                Some(json!({ "replicas": replicas })),
            )
        }
        Request::Promote { key } => {
            let (p, n) = split(key);
            (
                "promote".to_string(),
                key,
                format!("/api/v1/services/{}/promote?project={}", enc(n), enc(p)),
                None,
            )
        }
        Request::Rollback { key } => {
            let (p, n) = split(key);
            (
                "rollback".to_string(),
                key,
                format!("/api/v1/services/{}/rollback?project={}", enc(n), enc(p)),
                None,
            )
        }
        Request::Quit => return String::new(),
    };
    match c.call(Method::POST, &path, body).await {
        Ok(_) => format!("{key}: {what} requested"),
        Err(e) => {
            let reason = format!("{e:#}");
            if reason.contains("HTTP 403") {
                format!("{key}: {what} refused: this token is read-only (viewer): {reason}")
            } else {
                format!("{key}: {what} failed: {reason}")
            }
        }
    }
}

async fn refresh(c: &Client, app: &mut App) {
    let result = match app.view.clone() {
        View::Services => c.call(Method::GET, "/api/v1/status", None).await.map(|v| {
            app.cluster = v["cluster"].as_str().unwrap_or("").to_string();
            app.services = v["services"].as_array().cloned().unwrap_or_default();
            let n = app.visible().len();
            app.selected = app.selected.min(n.saturating_sub(1));
        }),
        View::Logs(key) => {
            let (p, n) = split(&key);
            let path = format!(
                "/api/v1/services/{}/logs?tail=200&project={}",
                enc(n),
                enc(p)
            );
            match c
                .send(Method::GET, &path, None, Some(Duration::from_secs(10)))
                .await
            {
                Ok(resp) => match Client::check(resp).await {
                    Ok(resp) => resp
                        .text()
                        .await
                        .map(|t| app.lines = t.lines().map(str::to_string).collect())
                        .map_err(|e| anyhow::anyhow!("reading logs: {e}")),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        }
        View::Events(key) => {
            let path = format!("/api/v1/events?service={}&limit=200", enc(&key));
            c.call(Method::GET, &path, None).await.map(|v| {
                app.lines = v["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(super::events::line)
                    .collect();
            })
        }
    };
    app.disconnected = result.err().map(|e| format!("{e:#}"));
}

fn draw(f: &mut Frame, app: &App) {
    let [head, body, message, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let state = match &app.disconnected {
        Some(e) => format!("disconnected, retrying: {e}"),
        None => "connected".to_string(),
    };
    let title = match &app.view {
        View::Services => format!("services ({})", app.visible().len()),
        View::Logs(k) => format!("logs {k}"),
        View::Events(k) => format!("events {k}"),
    };
    f.render_widget(
        Paragraph::new(format!("orca {} | {title} | {state}", app.cluster))
            .style(Style::default().add_modifier(Modifier::REVERSED)),
        head,
    );
    match &app.view {
        View::Services => draw_services(f, app, body),
        View::Logs(_) | View::Events(_) => {
            let height = body.height.saturating_sub(2) as usize;
            let start = app.lines.len().saturating_sub(height);
            let text: Vec<Line> = app.lines[start..]
                .iter()
                .map(|l| Line::from(l.as_str()))
                .collect();
            f.render_widget(Paragraph::new(text).block(Block::bordered()), body);
        }
    }
    let prompt = match &app.input {
        Input::Filter(s) => format!("filter: {s}_"),
        Input::Scale(s) => format!(
            "scale {} to replicas: {s}_ (Enter to apply, Esc to cancel)",
            app.selected_key().unwrap_or_default()
        ),
        Input::ConfirmRollback => format!(
            "roll back {}? y to confirm, any other key cancels",
            app.selected_key().unwrap_or_default()
        ),
        Input::None if !app.filter.is_empty() && app.message.is_empty() => {
            format!("filter: {} (Esc clears)", app.filter)
        }
        Input::None => app.message.clone(),
    };
    f.render_widget(Paragraph::new(prompt), message);
    let keys = match app.view {
        View::Services => "/ filter  l logs  e events  s scale  p promote  r rollback  q quit",
        _ => "Esc back  q quit",
    };
    f.render_widget(
        Paragraph::new(keys).style(Style::default().add_modifier(Modifier::REVERSED)),
        footer,
    );
}

fn draw_services(f: &mut Frame, app: &App, area: ratatui::layout::Rect) {
    let rows: Vec<Row> = app
        .visible()
        .iter()
        .map(|s| {
            let rollout = &s["rollout"];
            let phase = if rollout.is_object() {
                let traffic = if rollout["traffic"].is_object() {
                    format!(
                        " {}/{}",
                        rollout["traffic"]["stable"], rollout["traffic"]["candidate"]
                    )
                } else {
                    String::new()
                };
                format!("{}{traffic}", rollout["phase"].as_str().unwrap_or(""))
            } else {
                "-".to_string()
            };
            Row::new(vec![
                key_of(s),
                s["status"].as_str().unwrap_or("").to_string(),
                format!("{}/{}", s["ready_replicas"], s["replicas"]),
                s["revision"].to_string(),
                phase,
                s["domain"].as_str().unwrap_or("-").to_string(),
                s["tls"]["state"].as_str().unwrap_or("-").to_string(),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Min(16),
            Constraint::Length(9),
            Constraint::Length(6),
            Constraint::Length(4),
            Constraint::Length(12),
            Constraint::Min(10),
            Constraint::Length(7),
        ],
    )
    .header(
        Row::new(vec![
            "SERVICE", "STATUS", "READY", "REV", "ROLLOUT", "DOMAIN", "TLS",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
    .block(Block::bordered());
    let mut state = TableState::default();
    if !app.visible().is_empty() {
        state.select(Some(app.selected));
    }
    f.render_stateful_widget(table, area, &mut state);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> App {
        let mut a = App::new();
        a.services = vec![
            json!({"project": "shop", "name": "web", "replicas": 2, "ready_replicas": 2}),
            json!({"project": "shop", "name": "db", "replicas": 1, "ready_replicas": 1}),
            json!({"project": "blog", "name": "web", "replicas": 1, "ready_replicas": 0}),
        ];
        a
    }

    fn typed(a: &mut App, s: &str) -> Option<Request> {
        let mut last = None;
        for c in s.chars() {
            last = a.key(KeyCode::Char(c), false);
        }
        last
    }

    #[test]
    fn filter_narrows_and_esc_clears() {
        let mut a = app();
        a.key(KeyCode::Char('/'), false);
        typed(&mut a, "blog");
        a.key(KeyCode::Enter, false);
        assert_eq!(a.visible().len(), 1);
        assert_eq!(a.selected_key().as_deref(), Some("blog/web"));
        a.key(KeyCode::Esc, false);
        assert_eq!(a.visible().len(), 3);
    }

    #[test]
    fn scale_prompts_for_a_number() {
        let mut a = app();
        a.key(KeyCode::Down, false);
        a.key(KeyCode::Char('s'), false);
        typed(&mut a, "3x");
        assert_eq!(a.input, Input::Scale("3".into()));
        assert_eq!(
            a.key(KeyCode::Enter, false),
            Some(Request::Scale {
                key: "shop/db".into(),
                replicas: 3
            })
        );
        assert_eq!(a.input, Input::None);
    }

    #[test]
    fn rollback_needs_confirmation_and_logs_open_and_close() {
        let mut a = app();
        assert_eq!(a.key(KeyCode::Char('r'), false), None);
        assert_eq!(a.key(KeyCode::Char('n'), false), None);
        assert_eq!(a.message, "rollback cancelled");
        a.key(KeyCode::Char('r'), false);
        assert_eq!(
            a.key(KeyCode::Char('y'), false),
            Some(Request::Rollback {
                key: "shop/web".into()
            })
        );
        a.key(KeyCode::Char('l'), false);
        assert_eq!(a.view, View::Logs("shop/web".into()));
        a.key(KeyCode::Esc, false);
        assert_eq!(a.view, View::Services);
        assert_eq!(a.key(KeyCode::Char('q'), false), Some(Request::Quit));
    }

    #[test]
    fn nothing_selected_makes_no_request() {
        let mut a = App::new();
        for k in ['s', 'p', 'r', 'l', 'e'] {
            assert_eq!(a.key(KeyCode::Char(k), false), None);
            assert_eq!(a.input, Input::None);
            assert_eq!(a.view, View::Services);
        }
    }
}
