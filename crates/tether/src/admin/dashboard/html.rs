//! The dashboard's HTML, rendered here from [`super::view`] data: the page shell, the live
//! fragments (the same functions render a page and the updates its event stream sends), and
//! the plots as inline SVG. Everything that comes from a client or a server (clientInfo,
//! error messages, capabilities) is escaped: a session's client name is attacker-controlled.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use super::samples::{Point, SAMPLES};
use super::view::{Detail, ListFilter, Overview, Row, UpstreamRow, client_info, field};

/// Escapes text for HTML element content and quoted attribute values.
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

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A duration as an operator reads it: "4 s", "3 min", "2 h 5 min", "3 d 4 h".
pub fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

/// The page shell: header, navigation, the confirmation dialog, and `body`.
pub fn page(title: &str, active: &str, csrf: &str, events: &str, body: &str) -> String {
    let nav = [
        ("overview", "/", "Overview"),
        ("sessions", "/ui/sessions", "Sessions"),
        ("upstreams", "/ui/upstreams", "Upstreams"),
    ]
    .iter()
    .map(|(key, href, label)| {
        let cur = if *key == active { r#" aria-current="page""# } else { "" };
        format!(r#"<a href="{href}"{cur}>{label}</a>"#)
    })
    .collect::<Vec<_>>()
    .join(" ");
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{csrf}">
<title>tether · {title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/static/app.css">
<script src="/ui/static/app.js" defer></script>
</head>
<body data-events="{events}">
<header><strong class="brand">tether</strong><nav>{nav}</nav><span id="live" class="off" title="live updates">live</span>
<form method="post" action="/ui/logout" class="logout"><input type="hidden" name="csrf" value="{csrf}"><button type="submit">Log out</button></form></header>
<div id="flash" role="status" hidden></div>
<main>
<h1>{title}</h1>
{body}
</main>
<dialog id="confirm"><form method="dialog"><p id="confirm-text"></p>
<menu><button value="cancel" id="confirm-cancel">Cancel</button> <button value="ok" id="confirm-ok" class="danger">Confirm</button></menu></form></dialog>
</body></html>"#,
        title = esc(title),
        csrf = esc(csrf),
        events = esc(events),
    )
}

/// The login page; `error` is shown above the form.
pub fn login(error: Option<&str>) -> String {
    let error = error.map(|e| format!(r#"<p class="error" id="login-error">{}</p>"#, esc(e))).unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>tether · log in</title><link rel="icon" href="data:,"><link rel="stylesheet" href="/ui/static/app.css"></head>
<body class="login"><main><h1>tether admin</h1>{error}
<form method="post" action="/ui/login"><label>Admin token <input type="password" name="token" id="token" autocomplete="current-password" required autofocus></label>
<button type="submit" id="login">Log in</button></form>
<p class="hint">The token is <code>--admin-token</code>, or the generated one in <code>admin.token</code> in the state directory.</p></main></body></html>"#
    )
}

/// A live section: its id and its first content.
pub fn section(id: &str, inner: &str) -> String {
    format!(r#"<section id="{id}" class="live">{inner}</section>"#)
}

/// A button that asks for confirmation, then calls the admin API.
fn action(id: &str, method: &str, url: &str, label: &str, confirm: &str, extra: &str) -> String {
    format!(
        r#"<button type="button" id="{id}" data-method="{method}" data-url="{}" data-confirm="{}"{extra}>{}</button>"#,
        esc(url),
        esc(confirm),
        esc(label)
    )
}

// --- Overview ---------------------------------------------------------------------------------

/// The overview page's body.
pub fn overview_body(o: &Overview) -> String {
    let actions = format!(
        r#"<section class="actions"><h2>Actions</h2>
{drain}
<span class="field"><label>Log filter <input id="log-filter" value="{filter}" spellcheck="false"></label>
{set}</span></section>"#,
        drain = action(
            "drain",
            "POST",
            "/admin/drain",
            "Drain this replica",
            "Drain this replica? New sessions are refused and readiness goes false; live sessions keep being served.",
            ""
        ),
        filter = esc(o.log_filter.as_deref().unwrap_or("")),
        set = action(
            "set-log-level",
            "PUT",
            "/admin/log-level",
            "Set",
            "Change the gateway's log filter?",
            r#" data-body-from="log-filter" data-body-key="filter""#
        ),
    );
    let mut out = String::new();
    for (id, html) in overview_fragments(o) {
        out.push_str(&section(id, &html));
        out.push('\n');
    }
    out.push_str(&actions);
    out
}

/// The overview's live fragments.
pub fn overview_fragments(o: &Overview) -> Vec<(&'static str, String)> {
    let u = &o.upstreams;
    let status = if o.draining {
        r#"<span class="badge warn">draining</span>"#
    } else {
        r#"<span class="badge ok">serving</span>"#
    };
    let store = match (o.store.ok, &o.store.error) {
        (Some(true), _) => r#"<span class="badge ok">ok</span>"#.to_owned(),
        (Some(false), e) => format!(r#"<span class="badge bad">error</span> {}"#, esc(e.as_deref().unwrap_or(""))),
        (None, _) => r#"<span class="badge">checking</span>"#.to_owned(),
    };
    let cards = format!(
        r#"<div class="cards">
<div class="card"><h2>Sessions</h2><p class="big" id="sessions-active">{active}</p><p>active · {total} total · {closed} closed · {expired} expired · {tools} tool calls</p></div>
<div class="card"><h2>Upstreams <small>{kind}</small></h2><p class="big">{alive}</p><p>alive · {restarting} restarting · {broken} crash-looping · {idle} idle</p></div>
<div class="card"><h2>Revives</h2><p class="big" id="revives-total">{revives}</p><p>{losses} upstream losses · {failures} failed revives · {loops} crash loops · {reaped} idle reaps</p></div>
<div class="card"><h2>Store <small>{backend}</small></h2><p class="big">{store}</p><p>{werr} failed writes</p></div>
<div class="card"><h2>Gateway</h2><p class="big">{status}</p><p>tether {version} · up {uptime}</p></div>
</div>"#,
        active = o.sessions_active,
        total = o.sessions_total,
        closed = o.sessions_closed,
        expired = o.sessions_expired,
        tools = o.tool_calls,
        kind = esc(o.upstream_kind),
        alive = u.alive,
        restarting = u.restarting,
        broken = u.broken,
        idle = u.idle,
        revives = u.revives,
        losses = u.losses,
        failures = u.revive_failures,
        loops = u.crash_loops,
        reaped = u.reaped,
        backend = esc(o.store.backend),
        werr = o.store.write_errors,
        version = esc(o.version),
        uptime = ago(Duration::from_secs(o.uptime_seconds)),
    );
    let mut errors =
        String::from(r#"<table class="compact"><thead><tr><th>class</th><th>count</th></tr></thead><tbody>"#);
    for (class, n) in &o.errors {
        let _ = write!(errors, r#"<tr><td>{}</td><td class="num">{n}</td></tr>"#, esc(class));
    }
    errors.push_str("</tbody></table>");
    let mut replicas = String::from(
        r#"<table class="compact"><thead><tr><th>replica</th><th>role</th><th>sessions</th><th>state</th></tr></thead><tbody>"#,
    );
    for r in &o.replicas {
        let state = match (r.role, r.draining) {
            ("gone", _) => "no heartbeat",
            ("standby", _) => "waiting",
            (_, true) => "draining",
            _ => "serving",
        };
        let _ = write!(
            replicas,
            r#"<tr><td><code>{}</code>{}</td><td>{}</td><td class="num">{}</td><td>{}</td></tr>"#,
            esc(&r.id),
            if r.this && o.replicas.len() > 1 { " (this one)" } else { "" },
            esc(r.role),
            r.sessions.map_or("–".to_owned(), |n| n.to_string()),
            state
        );
    }
    replicas.push_str("</tbody></table>");
    vec![
        ("cards", cards),
        ("plots", plots(&o.points)),
        (
            "tables",
            format!(
                r#"<div class="row"><div id="errors"><h2>Errors by class</h2>{errors}</div><div id="replicas"><h2>Replicas</h2>{replicas}</div></div>"#
            ),
        ),
    ]
}

/// The two plots: requests per second, and p50/p99 latency.
fn plots(points: &[Point]) -> String {
    let rps: Vec<Option<f64>> = points.iter().map(|p| Some(p.rps)).collect();
    let p50: Vec<Option<f64>> = points.iter().map(|p| p.p50_ms).collect();
    let p99: Vec<Option<f64>> = points.iter().map(|p| p.p99_ms).collect();
    let last = points.last();
    let now_rps = last.map_or(0.0, |p| p.rps);
    let lat = |v: Option<f64>| v.map_or("–".to_owned(), |ms| format!("{ms:.1} ms"));
    format!(
        r#"<div class="plots"><figure><figcaption>requests/s <b>{now_rps:.1}</b></figcaption>{a}</figure>
<figure><figcaption>latency p50 <b class="p50">{p50now}</b> p99 <b class="p99">{p99now}</b> <small>(from histogram buckets)</small></figcaption>{b}</figure></div>"#,
        a = svg(&[("rps", &rps)], ""),
        b = svg(&[("p50", &p50), ("p99", &p99)], " ms"),
        p50now = lat(last.and_then(|p| p.p50_ms)),
        p99now = lat(last.and_then(|p| p.p99_ms)),
    )
}

/// The shortest time span a plot shows, in samples (seconds): a young gateway's few samples
/// fill the plot instead of a sliver at the right of five empty minutes.
const MIN_SPAN: usize = 60;

/// One plot: polylines over the last seconds (up to [`SAMPLES`]), newest on the right.
fn svg(series: &[(&str, &[Option<f64>])], unit: &str) -> String {
    const W: f64 = 600.0;
    const H: f64 = 120.0;
    let span = series.iter().map(|(_, v)| v.len()).max().unwrap_or(0).clamp(MIN_SPAN, SAMPLES);
    let max = series.iter().flat_map(|(_, v)| v.iter().flatten()).fold(0.0f64, |a, b| a.max(*b));
    let top = if max <= 0.0 { 1.0 } else { max * 1.1 };
    let mut out = format!(r#"<svg viewBox="0 0 {W} {H}" class="plot" role="img" aria-label="plot">"#);
    let _ = write!(out, r#"<line x1="0" y1="{H}" x2="{W}" y2="{H}" class="axis"/>"#);
    for (class, values) in series {
        let offset = span.saturating_sub(values.len());
        let mut pts = String::new();
        for (i, v) in values.iter().enumerate() {
            match v {
                Some(v) => {
                    let x = (offset + i) as f64 * W / (span - 1) as f64;
                    let y = H - v / top * (H - 4.0);
                    let _ = write!(pts, "{x:.1},{y:.1} ");
                }
                None if !pts.is_empty() => {
                    let _ = write!(out, r#"<polyline points="{}" class="line {class}"/>"#, pts.trim_end());
                    pts.clear();
                }
                None => {}
            }
        }
        if !pts.is_empty() {
            let _ = write!(out, r#"<polyline points="{}" class="line {class}"/>"#, pts.trim_end());
        }
    }
    let _ = write!(out, r#"<text x="4" y="12" class="label">{top:.1}{unit}</text>"#);
    let _ = write!(
        out,
        r#"<text x="4" y="{}" class="label">{} ago</text>"#,
        H - 4.0,
        ago(Duration::from_secs(span as u64))
    );
    let _ = write!(out, r#"<text x="{}" y="{}" class="label" text-anchor="end">now</text></svg>"#, W - 4.0, H - 4.0);
    out
}

// --- Sessions ---------------------------------------------------------------------------------

/// The sessions page's body: the filter form and the live table.
pub fn sessions_body(filter: &ListFilter, table: &str) -> String {
    let opt = |value: &str, label: &str, cur: &str| {
        let sel = if value == cur { " selected" } else { "" };
        format!(r#"<option value="{value}"{sel}>{label}</option>"#)
    };
    let state = if filter.state.is_empty() { "active" } else { filter.state.as_str() };
    format!(
        r#"<form method="get" action="/ui/sessions" class="filters" id="filters">
<label>Search <input name="q" id="filter-q" value="{q}" placeholder="client, version or id"></label>
<label>Transport <select name="transport">{t0}{t1}{t2}{t3}</select></label>
<label>State <select name="state">{s0}{s1}{s2}</select></label>
<button type="submit">Filter</button></form>
{table}"#,
        q = esc(&filter.q),
        t0 = opt("", "any", &filter.transport),
        t1 = opt("streamable-http", "Streamable HTTP", &filter.transport),
        t2 = opt("sse", "legacy SSE", &filter.transport),
        t3 = opt("stdio", "stdio", &filter.transport),
        s0 = opt("active", "active", state),
        s1 = opt("closed", "closed", state),
        s2 = opt("all", "all", state),
        table = section("session-table", table),
    )
}

/// The sessions table.
pub fn sessions_table(rows: &[Row], cut: bool) -> String {
    let mut out = String::from(
        r#"<table id="sessions"><thead><tr><th>session</th><th>client</th><th>transport</th><th>era</th><th>state</th><th>age</th><th>last activity</th><th>tool calls</th><th>revives</th><th>last error</th></tr></thead><tbody>"#,
    );
    for r in rows {
        let _ = write!(
            out,
            r#"<tr data-session="{id}"><td><a href="/ui/sessions/{id}" class="session-link"><code>{short}</code></a></td><td class="client">{client} <small>{version}</small></td><td>{transport}</td><td>{era} <small>{protocol}</small></td><td>{state}</td><td>{age}</td><td>{idle} ago</td><td class="num">{tools}</td><td class="num revives">{revives}</td><td class="err">{error}</td></tr>"#,
            id = esc(&r.id),
            short = esc(r.id.get(..12).unwrap_or(&r.id)),
            client = esc(&r.client),
            version = esc(&r.client_version),
            transport = esc(r.transport),
            era = esc(r.era),
            protocol = esc(&r.protocol),
            state = esc(&r.state),
            age = ago(r.age),
            idle = ago(r.idle),
            tools = r.tool_calls,
            revives = r.revives.map_or("–".to_owned(), |n| n.to_string()),
            error = esc(r.last_error.as_deref().unwrap_or("")),
        );
    }
    if rows.is_empty() {
        out.push_str(r#"<tr><td colspan="10" class="empty">no session matches</td></tr>"#);
    }
    out.push_str("</tbody></table>");
    if cut {
        out.push_str(
            r#"<p class="hint">Only 200 sessions are shown, the most recently active: narrow the filter.</p>"#,
        );
    }
    out
}

/// A session page's action buttons (not live: they stay while the details update).
pub fn session_actions(id: &str, open: bool) -> String {
    if !open {
        return String::new();
    }
    let short = id.get(..12).unwrap_or(id);
    format!(
        r#"<section class="actions">{} {}</section>"#,
        action(
            "refresh",
            "POST",
            &format!("/admin/sessions/{id}/refresh"),
            "Refresh (revive by replay)",
            &format!(
                "Refresh session {short}…? Its upstream is dropped and rebuilt by replaying initialize and its state; calls in flight that are not safe to repeat end with 'upstream restarted'."
            ),
            ""
        ),
        action(
            "terminate",
            "DELETE",
            &format!("/admin/sessions/{id}"),
            "Terminate",
            &format!("Terminate session {short}…? Its upstream closes and the client's next request gets 404."),
            r#" class="danger""#
        ),
    )
}

/// A session page's live fragment.
pub fn session_detail(d: &Detail) -> String {
    let r = &d.record;
    let kv = |k: &str, v: String| format!("<tr><th>{k}</th><td>{v}</td></tr>");
    let json = |v: Option<Value>| {
        v.map(|v| format!("<pre>{}</pre>", esc(&serde_json::to_string_pretty(&v).unwrap_or_default())))
            .unwrap_or_else(|| "–".to_owned())
    };
    let mut t = String::from(r#"<table class="kv" id="session-kv"><tbody>"#);
    t.push_str(&kv("id", format!("<code>{}</code>", esc(&r.id))));
    t.push_str(&kv("state", esc(&d.row.state)));
    t.push_str(&kv("clientInfo", format!(r#"<span id="client-info">{}</span>"#, json(client_info(r)))));
    t.push_str(&kv("transport", esc(d.row.transport)));
    t.push_str(&kv("negotiated version", format!("{} <small>{}</small>", esc(&d.row.protocol), esc(d.row.era))));
    t.push_str(&kv("client capabilities", json(field(r.client_init.as_deref(), "capabilities"))));
    t.push_str(&kv("server capabilities", json(field(r.upstream_init.as_deref(), "capabilities"))));
    t.push_str(&kv("serverInfo", json(field(r.upstream_init.as_deref(), "serverInfo"))));
    t.push_str(&kv("log level", esc(r.state.log_level.as_deref().unwrap_or("– (server default)"))));
    let subs = if r.state.subscriptions.is_empty() {
        "none".to_owned()
    } else {
        r.state.subscriptions.iter().map(|s| format!("<code>{}</code>", esc(s))).collect::<Vec<_>>().join("<br>")
    };
    t.push_str(&kv("subscriptions", subs));
    t.push_str(&kv("age", format!("{} · last activity {} ago", ago(d.row.age), ago(d.row.idle))));
    t.push_str(&kv("requests", format!("{} · {} tool calls", r.requests, r.tool_calls)));
    t.push_str(&kv("owner replica", esc(&d.owner)));
    match &d.live {
        Some(l) => {
            let binding = match (l.pid, &l.upstream_session) {
                (Some(pid), _) => format!("child pid <code id=\"pid\">{pid}</code>"),
                (None, Some(sid)) => format!("upstream session <code>{}</code>", esc(sid)),
                (None, None) => "no live connection".to_owned(),
            };
            t.push_str(&kv("binding", format!("{} · {binding}", esc(l.upstream_state))));
            t.push_str(&kv("generation", l.generation.map_or("–".to_owned(), |g| g.to_string())));
            t.push_str(&kv("revives", format!(r#"<span id="revives">{}</span>"#, l.revives)));
            let breaker = match l.breaker_open_for {
                Some(left) => format!(r#"<span class="badge bad">open</span> for {}"#, ago(left)),
                None => format!(
                    r#"<span class="badge ok">closed</span> · {} failures since the last start"#,
                    l.consecutive_failures
                ),
            };
            t.push_str(&kv("crash-loop breaker", breaker));
            t.push_str(&kv(
                "streams",
                format!(
                    "{} opened · standalone {}",
                    l.streams_opened,
                    if l.standalone_open { "open" } else { "closed" }
                ),
            ));
            t.push_str(&kv("last error", esc(d.row.last_error.as_deref().unwrap_or("none"))));
        }
        None => t.push_str(&kv("binding", "not live in this process".to_owned())),
    }
    t.push_str("</tbody></table>");
    let mut inflight = String::from("<h2>In flight</h2>");
    match d.live.as_ref().map(|l| &l.in_flight) {
        Some(v) if !v.is_empty() => {
            inflight.push_str(r#"<table class="compact"><thead><tr><th>method</th><th>age</th></tr></thead><tbody>"#);
            for (m, age) in v {
                let _ = write!(inflight, "<tr><td>{}</td><td>{:.1} s</td></tr>", esc(m), age.as_secs_f64());
            }
            inflight.push_str("</tbody></table>");
        }
        _ => inflight.push_str("<p>nothing</p>"),
    }
    let mut events =
        String::from(r#"<h2>Recent events <small>(observed every second)</small></h2><ul class="events">"#);
    for e in &d.events {
        let at = Duration::from_millis(crate::session::record::now_ms().saturating_sub(e.at_ms));
        let _ = write!(events, "<li><small>{} ago</small> {}</li>", ago(at), esc(&e.what));
    }
    if d.events.is_empty() {
        events.push_str("<li>none yet</li>");
    }
    events.push_str("</ul>");
    format!("{t}{inflight}{events}")
}

// --- Upstreams --------------------------------------------------------------------------------

/// The upstreams table, with the restart policy above it.
pub fn upstreams_table(rows: &[UpstreamRow], policy: &str) -> String {
    let mut out = format!(
        r#"<p class="hint">{}</p><table id="upstreams"><thead><tr><th>session</th><th>client</th><th>state</th><th>binding</th><th>generation</th><th>restarts</th><th>breaker</th></tr></thead><tbody>"#,
        esc(policy)
    );
    for r in rows {
        let binding = match (r.pid, &r.upstream_session) {
            (Some(pid), _) => format!("pid {pid}"),
            (None, Some(s)) => format!("session {}", esc(s.get(..12).unwrap_or(s))),
            (None, None) => "–".to_owned(),
        };
        let breaker = match r.breaker_open_for {
            Some(left) => format!(r#"<span class="badge bad">open</span> cool-down {} left"#, ago(left)),
            None if r.consecutive_failures > 0 => format!("closed · {} recent failures", r.consecutive_failures),
            None => "closed".to_owned(),
        };
        let _ = write!(
            out,
            r#"<tr><td><a href="/ui/sessions/{id}"><code>{short}</code></a></td><td>{client}</td><td>{state}</td><td>{binding}</td><td class="num">{generation}</td><td class="num">{revives}</td><td>{breaker}</td></tr>"#,
            id = esc(&r.session),
            short = esc(r.session.get(..12).unwrap_or(&r.session)),
            client = esc(&r.client),
            state = esc(r.state),
            generation = r.generation.map_or("–".to_owned(), |g| g.to_string()),
            revives = r.revives,
        );
    }
    if rows.is_empty() {
        out.push_str(r#"<tr><td colspan="7" class="empty">no live session</td></tr>"#);
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_clients_is_escaped() {
        assert_eq!(
            esc(r#"<img src=x onerror="alert('1')">&"#),
            "&lt;img src=x onerror=&quot;alert(&#39;1&#39;)&quot;&gt;&amp;"
        );
        assert_eq!(url_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(ago(Duration::from_secs(3725)), "1 h 2 min");
    }

    #[test]
    fn plots_are_bounded_svg() {
        let points: Vec<Point> = (0..SAMPLES)
            .map(|i| Point {
                at_ms: i as u64,
                rps: i as f64,
                p50_ms: Some(1.0),
                p99_ms: if i % 7 == 0 { None } else { Some(4.0) },
            })
            .collect();
        let s = plots(&points);
        assert!(s.contains("<svg") && s.contains("class=\"line rps\"") && s.contains("class=\"line p99\""));
        assert!(!s.contains("NaN") && !s.contains("inf"));
        assert!(plots(&[]).contains("<svg"), "an empty plot still renders");
    }
}
