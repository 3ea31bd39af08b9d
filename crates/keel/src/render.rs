//! Human output: aligned tables, colour on a terminal (unless `NO_COLOR`), relative times, and
//! errors as one readable line. `--json` bypasses all of it.

use std::io::IsTerminal;

use keel_client::{Error, Job, ProblemKind, State, Time};

/// Exit codes, documented in `keel --help` and the README.
pub mod exit {
    pub const OK: u8 = 0;
    /// The server refused the request (a 4xx problem other than not-found).
    pub const REFUSED: u8 = 1;
    /// Bad command-line usage (clap uses 2 as well).
    pub const USAGE: u8 = 2;
    /// The server could not be reached, or failed (5xx), after retries.
    pub const UNAVAILABLE: u8 = 3;
    /// The job or queue does not exist.
    pub const NOT_FOUND: u8 = 4;
}

pub struct Style {
    color: bool,
}

impl Style {
    pub fn detect() -> Style {
        Style {
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    pub fn state(&self, state: State) -> String {
        let code = match state {
            State::Completed => "32",
            State::Dead => "31",
            State::Running => "36",
            State::Scheduled => "33",
            State::Available => "0",
            State::Cancelled => "2",
        };
        self.paint(code, state.as_str())
    }
}

/// Prints rows as columns aligned on the visible width (colour codes do not count).
pub fn table(style: &Style, headers: &[&str], rows: &[Vec<String>]) {
    let visible = |s: &str| strip_ansi(s).chars().count();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(visible(cell));
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let parts: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c}{}", " ".repeat(widths[i] - visible(&c)))
                }
            })
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| style.bold(h)).collect());
    for row in rows {
        line(row.clone());
    }
}

fn pointer(p: &str) -> &str {
    if p.is_empty() { "(body)" } else { p }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// "3s ago", "in 5m", "2h ago", "4d ago".
pub fn relative(t: Time, now: Time) -> String {
    let ms = now.millis_since(t);
    let span = ms.unsigned_abs() / 1000;
    let text = match span {
        0 => return "now".to_owned(),
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    };
    if ms >= 0 {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

pub fn now() -> Time {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Time::from_millis(ms)
}

pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!(
            "{}…",
            text.chars().take(max.saturating_sub(1)).collect::<String>()
        )
    }
}

pub fn job_row(style: &Style, j: &Job, now: Time) -> Vec<String> {
    vec![
        j.id.to_string(),
        j.queue.clone(),
        j.kind.clone(),
        style.state(j.state),
        format!("{}/{}", j.attempt, j.max_attempts),
        relative(j.updated_at, now),
        j.last_error
            .as_ref()
            .map(|e| truncate(&e.message, 40))
            .unwrap_or_default(),
    ]
}

pub const JOB_HEADERS: [&str; 7] = [
    "ID",
    "QUEUE",
    "KIND",
    "STATE",
    "ATTEMPT",
    "UPDATED",
    "LAST ERROR",
];

/// Prints an error as one line (plus one per invalid field) and returns the exit code.
pub fn report(e: &Error) -> u8 {
    match e {
        Error::Problem(p) => match p.errors.as_slice() {
            [one] => eprintln!(
                "keel: {} ({}): {}: {}",
                p.title,
                p.status,
                pointer(&one.pointer),
                one.message
            ),
            [] => eprintln!("keel: {} ({}): {}", p.title, p.status, p.detail),
            many => {
                eprintln!("keel: {} ({}): {}", p.title, p.status, p.detail);
                for f in many {
                    eprintln!("  {}: {}", pointer(&f.pointer), f.message);
                }
            }
        },
        Error::Transport { url, source } => {
            // reqwest's own message is generic; the innermost cause says what happened.
            let mut cause: &dyn std::error::Error = source;
            while let Some(next) = cause.source() {
                cause = next;
            }
            eprintln!("keel: cannot reach {url}: {cause}");
        }
        other => eprintln!("keel: {other}"),
    }
    if let Error::Problem(p) = e
        && p.status == 401
    {
        eprintln!(
            "  hint: pass --token or set KEEL_TOKEN; a server on this machine keeps its first admin token in <data-dir>/admin.token (--data-dir, KEEL_DATA_DIR)"
        );
    }
    match e {
        Error::Problem(p) if p.kind() == ProblemKind::NotFound => exit::NOT_FOUND,
        Error::Problem(p) if p.status >= 500 => exit::UNAVAILABLE,
        Error::Problem(_) => exit::REFUSED,
        Error::Transport { .. } | Error::Decode { .. } => exit::UNAVAILABLE,
        Error::Invalid(_) => exit::USAGE,
    }
}

/// A progress bar on stderr counting `unit`s (a counter with a rate when the total is unknown).
pub fn progress_bar(total: Option<u64>, unit: &str) -> indicatif::ProgressBar {
    let bar =
        indicatif::ProgressBar::with_draw_target(total, indicatif::ProgressDrawTarget::stderr());
    let template = match total {
        Some(_) => format!("{{bar:40}} {{pos}}/{{len}} {unit} {{per_sec}} {{eta}}"),
        None => format!("{{spinner}} {{pos}} {unit} {{per_sec}}"),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let now = Time::from_millis(1_000_000_000);
        assert_eq!(relative(now, now), "now");
        assert_eq!(relative(now.plus_ms(-3_000), now), "3s ago");
        assert_eq!(relative(now.plus_ms(300_000), now), "in 5m");
        assert_eq!(relative(now.plus_ms(-2 * 86_400_000), now), "2d ago");
    }

    #[test]
    fn ansi_codes_do_not_count_as_width() {
        assert_eq!(strip_ansi("\x1b[31mdead\x1b[0m"), "dead");
    }
}
