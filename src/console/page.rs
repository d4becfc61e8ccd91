//! The status page as one HTML document: tables rendered here, an SVG timeline of the next 24
//! hours, and (only when the endpoint has a control token) pause, resume and trigger buttons
//! with a few lines of script that post them with the token typed into the page.

use super::view::{StatusView, TIMELINE_CAP};
use std::fmt::Write;

/// Escapes text for HTML content and attribute values.
#[must_use]
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border-bottom:1px solid #ddd;\
padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f4f4f4}\
.paused{color:#a60}.bad{color:#b00}.ok{color:#070}small{color:#666}code{font-size:12px}\
button{margin:0 .2em}svg text{font-size:11px}";

const SCRIPT: &str = r#"<script>
function ctl(entry, action) {
  var token = document.getElementById('token').value;
  var out = document.getElementById('out');
  out.textContent = action + ' ' + entry + ' ...';
  fetch('/api/control', {method: 'POST', headers: {'Content-Type': 'application/json',
    'Authorization': 'Bearer ' + token}, body: JSON.stringify({entry: entry, action: action})})
    .then(function (r) { return r.text().then(function (t) { out.textContent = r.status + ' ' + t; }); });
}
</script>"#;

/// The page.
#[must_use]
pub fn render(v: &StatusView, controls: bool) -> String {
    let mut h = String::with_capacity(16 * 1024);
    h.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>beatd status</title>");
    let _ = write!(h, "<style>{STYLE}</style></head><body><h1>beatd</h1>");
    let l = &v.leader;
    let _ = write!(
        h,
        "<p id=\"leader\">Leader: <b>{}</b> · epoch {} · since {} · mode {}{}</p>",
        esc(l
            .holder
            .as_deref()
            .unwrap_or("none (no replica holds the lock)")),
        l.epoch.map_or("-".into(), |e| e.to_string()),
        esc(l.since.as_deref().unwrap_or("-")),
        l.mode,
        if l.this_replica {
            " · this replica leads"
        } else {
            ""
        },
    );
    let _ = write!(h, "<p><small>as of {} UTC</small></p>", esc(&v.now));
    if controls {
        h.push_str(
            "<p>Control token: <input id=\"token\" type=\"password\" size=\"24\"> \
             <span id=\"out\"></span></p>",
        );
    } else {
        h.push_str(
            "<p><small>Read-only: start beatd with --control-token for buttons.</small></p>",
        );
    }
    h.push_str(
        "<h2>Entries</h2><table id=\"entries\"><tr><th>entry</th><th>schedule</th>\
        <th>next fire times (local / UTC)</th><th>last run</th><th>result</th><th>lateness</th>\
        <th>state</th><th>skipped</th>",
    );
    if controls {
        h.push_str("<th></th>");
    }
    h.push_str("</tr>");
    for e in &v.entries {
        let _ = write!(
            h,
            "<tr data-entry=\"{n}\"><td><b>{n}</b><br><small>{t}</small></td><td>{s}<br><small>{z}</small></td><td>",
            n = esc(&e.name),
            t = esc(&e.task),
            s = esc(&e.schedule),
            z = esc(&e.timezone)
        );
        for (local, utc) in &e.next {
            let _ = write!(h, "{}<br><small>{}</small><br>", esc(local), esc(utc));
        }
        let state = if !e.enabled {
            "<span class=\"bad\">disabled</span>".to_owned()
        } else if let Some(p) = &e.paused {
            format!(
                "<span class=\"paused\">paused</span><br><small>since {}{} by {}</small>",
                esc(&p.since),
                p.until
                    .as_deref()
                    .map_or(String::new(), |u| format!(", until {}", esc(u))),
                esc(&p.by)
            )
        } else {
            "<span class=\"ok\">active</span>".to_owned()
        };
        let result = match e.result.as_deref() {
            Some(r @ ("FAILURE" | "REVOKED")) => format!("<span class=\"bad\">{r}</span>"),
            Some(r) => esc(r),
            None => "-".into(),
        };
        let skips: Vec<String> = e
            .skips
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r}: {n}"))
            .collect();
        let _ = write!(
            h,
            "</td><td>{}<br><small>{} runs</small></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            esc(e.last_run.as_deref().unwrap_or("never")),
            e.runs,
            result,
            e.lateness_s.map_or("-".into(), |s| format!("<span class=\"bad\">{s:.0} s overdue</span>")),
            state,
            if skips.is_empty() { "-".into() } else { skips.join("<br>") },
        );
        if controls {
            let n = esc(&e.name);
            let toggle = if e.paused.is_some() {
                "resume"
            } else {
                "pause"
            };
            let _ = write!(
                h,
                "<td><button data-action=\"{toggle}\" onclick=\"ctl(this.closest('tr').dataset.entry,'{toggle}')\">{toggle}</button>\
                 <button data-action=\"trigger\" onclick=\"ctl(this.closest('tr').dataset.entry,'trigger')\">trigger</button></td>",
            );
            let _ = n;
        }
        h.push_str("</tr>");
    }
    h.push_str("</table><h2>Recent failures</h2>");
    if v.failures.is_empty() {
        h.push_str("<p id=\"failures\">None.</p>");
    } else {
        h.push_str("<table id=\"failures\"><tr><th>entry</th><th>task id</th><th>state</th><th>error</th></tr>");
        for f in &v.failures {
            let _ = write!(
                h,
                "<tr><td>{}</td><td><code>{}</code></td><td class=\"bad\">{}</td><td><code>{}</code></td></tr>",
                esc(&f.entry),
                esc(&f.task_id),
                esc(&f.state),
                esc(f.error.as_deref().unwrap_or(""))
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Next 24 hours</h2>");
    timeline(&mut h, v);
    if controls {
        h.push_str(SCRIPT);
    }
    h.push_str("</body></html>");
    h
}

/// One row per entry, a tick per fire time, hours along the top.
fn timeline(h: &mut String, v: &StatusView) {
    const LEFT: f64 = 160.0;
    const WIDTH: f64 = 960.0;
    const ROW: f64 = 18.0;
    let rows = v.entries.len().max(1);
    #[allow(clippy::cast_precision_loss)]
    let height = 24.0 + ROW * rows as f64;
    let _ = write!(
        h,
        "<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"fire times of the next 24 hours\">",
        LEFT + WIDTH + 10.0
    );
    for hour in 0..=24 {
        let x = LEFT + WIDTH * f64::from(hour) / 24.0;
        let _ = write!(
            h,
            "<line x1=\"{x:.1}\" y1=\"14\" x2=\"{x:.1}\" y2=\"{height}\" stroke=\"#eee\"/>"
        );
        if hour % 3 == 0 {
            let _ = write!(
                h,
                "<text x=\"{x:.1}\" y=\"11\" text-anchor=\"middle\">+{hour}h</text>"
            );
        }
    }
    for (i, e) in v.entries.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let y = 24.0 + ROW * i as f64;
        let _ = write!(
            h,
            "<text x=\"4\" y=\"{:.1}\">{}</text>",
            y + 9.0,
            esc(&e.name)
        );
        let color = if e.paused.is_some() { "#c80" } else { "#36c" };
        let mut n = 0;
        for (j, ms) in &v.timeline {
            if *j != i || n >= TIMELINE_CAP {
                continue;
            }
            n += 1;
            #[allow(clippy::cast_precision_loss)]
            let x = LEFT + WIDTH * ((ms - v.now_ms) as f64 / 86_400_000.0);
            let _ = write!(
                h,
                "<line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{color}\"/>",
                y + 12.0
            );
        }
    }
    h.push_str("</svg>");
}
