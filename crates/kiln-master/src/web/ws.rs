//! `/api/v1/ws`: the websocket a page follows what it shows with (the
//! protocol is `kiln_api::live`'s). One task per connection: it forwards the
//! hub's numbered events that its subscriptions select, answers resumes from
//! the hub's ring, and relays the logs its log subscriptions read (one task
//! each, through a bounded channel: a slow page slows only itself).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_api::live::{ClientMsg, LogChunk, ServerMsg, Topic};
use tokio::sync::{broadcast, mpsc};

use super::{Fanout, Numbered, Scope};
use crate::logs::LogEvent;
use crate::Core;

/// Bytes of log text in one message.
const LOG_CHUNK: usize = 64 << 10;
/// Logs one connection may follow at once.
const MAX_LOGS: usize = 8;
/// How often the master pings, and how long a silent page is kept.
const PING: Duration = Duration::from_secs(30);
const SILENT: Duration = Duration::from_secs(95);

/// A scheduler event as the websocket (and `/api/v1/events`) shows it.
pub(super) fn event(e: crate::sched::Event) -> kiln_api::Event {
    crate::api::event(e)
}

/// A browser says which page opens a websocket (`Origin`); one from
/// another site is refused, so that a page elsewhere cannot read this
/// master's events with its user's cookie. Clients that are not browsers
/// send no `Origin`.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    origin
        .to_str()
        .is_ok_and(|o| crate::api::session::origin_is_host(o, headers))
}

pub(super) async fn upgrade(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "a websocket from another site\n").into_response();
    }
    // A page sends a few small messages: a small read buffer (the default
    // 128 KiB each would be 125 MiB for 1,000 pages).
    ws.max_message_size(64 << 10)
        .max_frame_size(64 << 10)
        .read_buffer_size(4 << 10)
        .write_buffer_size(0)
        .on_upgrade(move |socket| connection(core, socket))
}

fn text(m: &ServerMsg) -> Message {
    Message::Text(serde_json::to_string(m).unwrap_or_default().into())
}

/// What a connection's event subscriptions select.
#[derive(Default, Clone)]
struct Topics {
    all: bool,
    builds: HashSet<i64>,
}

impl Topics {
    fn wants(&self, n: &Numbered) -> bool {
        self.all || self.builds.contains(&n.build)
    }

    /// The hub's receiver that carries them: one build's events for a page
    /// that follows one build (it is not woken by the rest of the farm),
    /// else all.
    fn scope(&self) -> Scope {
        match (self.all, self.builds.len()) {
            (false, 1) => self
                .builds
                .iter()
                .next()
                .map_or(Scope::All, |b| Scope::Build(*b)),
            _ => Scope::All,
        }
    }
}

/// A task that ends when its handle is dropped.
struct Owned(tokio::task::JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn next_fanout(
    rx: &mut Option<broadcast::Receiver<Fanout>>,
) -> Result<Fanout, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn connection(core: Arc<Core>, mut ws: WebSocket) {
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(8);
    let mut logs: HashMap<i64, Owned> = HashMap::new();
    let mut topics = Topics::default();
    let mut rx: Option<broadcast::Receiver<Fanout>> = None;
    // What `rx` carries.
    let mut scope = Scope::All;
    // The newest event id this connection has dealt with, and since which
    // one it has (the events after it up to `seen` were sent already).
    let mut seen = 0u64;
    let mut since: Option<u64> = None;
    let mut heard = Instant::now();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING, PING);
    loop {
        let send = tokio::select! {
            m = ws.recv() => {
                heard = Instant::now();
                match m {
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<ClientMsg>(t.as_str()) {
                        Ok(ClientMsg::Subscribe(Topic::Log { log, offset })) => {
                            logs.retain(|_, t| !t.0.is_finished());
                            if logs.len() >= MAX_LOGS && !logs.contains_key(&log) {
                                vec![ServerMsg::Error(format!("at most {MAX_LOGS} logs per connection"))]
                            } else {
                                // A new subscription to a log replaces the old one.
                                let task = tokio::spawn(follow_log(core.clone(), log, offset, out_tx.clone()));
                                logs.insert(log, Owned(task));
                                vec![]
                            }
                        }
                        Ok(ClientMsg::Subscribe(t)) => {
                            let old = topics.clone();
                            match t {
                                Topic::Build { build } => { topics.builds.insert(build); }
                                _ => topics.all = true,
                            }
                            let want = topics.scope();
                            if rx.is_none() {
                                let (r, newest) = core.web.follow(want);
                                rx = Some(r);
                                scope = want;
                                seen = newest;
                                since = Some(newest);
                                vec![ServerMsg::Ready { last: seen }]
                            } else if want == scope {
                                vec![ServerMsg::Ready { last: seen }]
                            } else {
                                // From one build's events to all of them:
                                // what the old receiver had not given yet
                                // comes from the ring.
                                match core.web.resume(seen, want) {
                                    Some((r, newest, missed)) => {
                                        let mut out = replay(&missed, |n| old.wants(n));
                                        rx = Some(r);
                                        scope = want;
                                        seen = newest;
                                        out.push(text(&ServerMsg::Ready { last: seen }));
                                        if send_all(&mut ws, out).await.is_err() {
                                            return;
                                        }
                                        vec![]
                                    }
                                    None => vec![ServerMsg::Reload(true)],
                                }
                            }
                        }
                        Ok(ClientMsg::Resume(last)) => match core.web.resume(last, topics.scope()) {
                            Some((r, newest, missed)) => {
                                // What this connection sent already is not
                                // sent twice.
                                let sent = |id: u64| since.is_some_and(|s| id > s && id <= seen);
                                let mut out = replay(&missed, |n| topics.wants(n) && !sent(n.id));
                                rx = Some(r);
                                scope = topics.scope();
                                since = Some(since.map_or(last, |s| s.min(last)));
                                seen = newest;
                                out.push(text(&ServerMsg::Ready { last: newest }));
                                if send_all(&mut ws, out).await.is_err() {
                                    return;
                                }
                                vec![]
                            }
                            None => vec![ServerMsg::Reload(true)],
                        },
                        Err(e) => vec![ServerMsg::Error(format!("not a message this master takes: {e}"))],
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => vec![],
                }
            }
            f = next_fanout(&mut rx) => match f {
                Ok(Fanout::Event(n)) => {
                    if n.id > seen {
                        seen = n.id;
                        if topics.wants(&n) && ws.send(Message::Text(n.json.clone().into())).await.is_err() {
                            return;
                        }
                    }
                    vec![]
                }
                Ok(Fanout::Gap) => vec![ServerMsg::Reload(true)],
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // This page fell behind: what it missed is in the ring,
                    // or it reloads.
                    match core.web.resume(seen, scope) {
                        Some((r, newest, missed)) => {
                            rx = Some(r);
                            seen = newest;
                            let out = replay(&missed, |n| topics.wants(n));
                            if send_all(&mut ws, out).await.is_err() {
                                return;
                            }
                            vec![]
                        }
                        None => vec![ServerMsg::Reload(true)],
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            Some(m) = out_rx.recv() => {
                // A log's text, serialized once for every page in step.
                if ws.send(m).await.is_err() {
                    return;
                }
                vec![]
            }
            _ = ping.tick() => {
                if heard.elapsed() > SILENT {
                    return;
                }
                if ws.send(Message::Ping(bytes::Bytes::new())).await.is_err() {
                    return;
                }
                vec![]
            }
        };
        for m in send {
            let reload = matches!(m, ServerMsg::Reload(_));
            if ws.send(text(&m)).await.is_err() || reload {
                // After a reload the page starts again on a new connection.
                if reload {
                    let _ = ws.send(Message::Close(None)).await;
                }
                return;
            }
        }
    }
}

/// The messages of the events of `missed` that `keep` keeps, in order.
fn replay(missed: &[Arc<Numbered>], keep: impl Fn(&Numbered) -> bool) -> Vec<Message> {
    missed
        .iter()
        .filter(|n| keep(n))
        .map(|n| Message::Text(n.json.clone().into()))
        .collect()
}

async fn send_all(ws: &mut WebSocket, msgs: Vec<Message>) -> Result<(), axum::Error> {
    for m in msgs {
        ws.send(m).await?;
    }
    Ok(())
}

/// The length of the longest prefix of `b` that does not end inside a
/// UTF-8 character (a character cut by the end is left for the next piece).
fn utf8_cut(b: &[u8]) -> usize {
    let n = b.len();
    for back in 1..=n.min(3) {
        let c = b[n - back];
        if c & 0xc0 == 0x80 {
            continue;
        }
        let need = match c {
            0xf8.. => 1,
            0xf0.. => 4,
            0xe0.. => 3,
            0xc0.. => 2,
            _ => 1,
        };
        return if need > back { n - back } else { n };
    }
    n
}

/// What a log subscription has sent, and holds back.
struct LogOut {
    job: i64,
    /// Bytes sent so far (the offset of `pending`).
    sent: u64,
    pending: Vec<u8>,
    tx: mpsc::Sender<Message>,
    shared: Arc<LogFrames>,
}

/// The last log message made for each followed job, by its byte range:
/// the pages that follow a log in step (they flush on the same ticks)
/// send the same text, serialized once and shared (`Utf8Bytes` is
/// reference counted), not once per page.
#[derive(Default)]
pub(crate) struct LogFrames(std::sync::Mutex<HashMap<i64, (u64, u64, Utf8Bytes)>>);

impl LogFrames {
    fn get(&self, job: i64, offset: u64, next: u64, text: &[u8]) -> Utf8Bytes {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((o, n, json)) = m.get(&job) {
            if *o == offset && *n == next {
                return json.clone();
            }
        }
        let json: Utf8Bytes = serde_json::to_string(&ServerMsg::Log(LogChunk {
            job,
            offset,
            next,
            text: String::from_utf8_lossy(text).into_owned(),
        }))
        .unwrap_or_default()
        .into();
        m.insert(job, (offset, next, json.clone()));
        json
    }

    fn forget(&self, job: i64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job);
    }
}

impl LogOut {
    /// Send what is pending, in pieces; unless `last`, keep a character
    /// cut by the end for later. Err when the connection is gone.
    async fn flush(&mut self, last: bool) -> Result<(), ()> {
        let mut at = 0;
        while at < self.pending.len() {
            let end = (at + LOG_CHUNK).min(self.pending.len());
            let piece = &self.pending[at..end];
            let cut = if last && end == self.pending.len() {
                piece.len()
            } else {
                utf8_cut(piece)
            };
            if cut == 0 {
                break;
            }
            let offset = self.sent;
            self.sent += cut as u64;
            let json = self.shared.get(self.job, offset, self.sent, &piece[..cut]);
            at += cut;
            self.tx.send(Message::Text(json)).await.map_err(|_| ())?;
        }
        self.pending.drain(..at);
        Ok(())
    }

    async fn error(&self, m: String) {
        let _ = self.tx.send(text(&ServerMsg::Error(m))).await;
    }

    /// Bytes known so far (sent and held back).
    fn known(&self) -> u64 {
        self.sent + self.pending.len() as u64
    }

    /// Send all that is pending, then the end of the log.
    async fn finish(&mut self) {
        if self.flush(true).await.is_ok() {
            self.shared.forget(self.job);
            let _ = self
                .tx
                .send(text(&ServerMsg::LogEnd {
                    job: self.job,
                    length: self.sent,
                }))
                .await;
        }
    }
}

/// How often a followed log is sent: what a running build writes in
/// between goes in one message. The ticks are the same for every page
/// (counted from one instant), so pages in step send the same messages.
const LOG_TICK: Duration = Duration::from_millis(250);

fn next_tick() -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    let now = tokio::time::Instant::now();
    let tick = LOG_TICK.as_nanos().max(1);
    let n = now.duration_since(epoch).as_nanos() / tick + 1;
    epoch + Duration::from_nanos((n * tick) as u64)
}

/// Send job `job`'s log from byte `offset`, then what it writes until it
/// ends (`log_end`).
async fn follow_log(core: Arc<Core>, job: i64, offset: u64, tx: mpsc::Sender<Message>) {
    let shared = core.web.log_frames.clone();
    let row = match core.store.read(move |c| kiln_store::get_job(c, job)).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            let _ = tx
                .send(text(&ServerMsg::Error(format!("no job {job}"))))
                .await;
            return;
        }
        Err(e) => {
            let _ = tx
                .send(text(&ServerMsg::Error(format!("job {job}: {e}"))))
                .await;
            return;
        }
    };
    let build = row.build;
    // Subscribed before the log is read: nothing written in between is
    // lost (what is read twice is dropped by its offset).
    let active = core
        .sched()
        .job_current(job)
        .is_some_and(|(_, _, _, _, st)| !st.is_final());
    let mut sub = None;
    if active && core.logs.open(build, job).is_ok() {
        sub = core.logs.subscribe(job);
    }
    // A page that has the log up to its end (it asks from where the page
    // ended) needs nothing read: only what comes next.
    let written = sub.as_ref().and(core.logs.written(job));
    if let Some(written) = written.filter(|w| offset >= *w) {
        if let Some(rx) = sub.take() {
            let out = LogOut {
                job,
                sent: written,
                pending: Vec::new(),
                tx,
                shared,
            };
            return stream_log(&core, build, out, rx).await;
        }
    }
    let mut out = LogOut {
        job,
        sent: offset,
        pending: Vec::new(),
        tx,
        shared,
    };
    match core.logs.read_from(build, job, offset).await {
        Ok((tail, len)) => {
            out.sent = offset.min(len);
            out.pending = tail;
        }
        Err(e) => {
            out.error(format!("the log of job {job}: {e}")).await;
            return;
        }
    }
    let Some(rx) = sub else {
        out.finish().await;
        return;
    };
    if out.flush(false).await.is_err() {
        return;
    }
    stream_log(&core, build, out, rx).await
}

/// What one event of a followed log asks for.
enum Step {
    Go,
    Reread,
    End,
}

fn take(out: &mut LogOut, e: Result<LogEvent, broadcast::error::RecvError>) -> Step {
    match e {
        Ok(LogEvent::Data { offset, data }) => {
            let end = offset + data.len() as u64;
            let known = out.known();
            if end <= known {
                Step::Go
            } else if offset > known {
                // A hole: read the log again.
                Step::Reread
            } else {
                out.pending
                    .extend_from_slice(&data[(known - offset) as usize..]);
                Step::Go
            }
        }
        Err(broadcast::error::RecvError::Lagged(_)) => Step::Reread,
        Ok(LogEvent::End) | Err(broadcast::error::RecvError::Closed) => Step::End,
    }
}

/// Relay what a running job's log gets, until it ends: at most one
/// message per [`LOG_TICK`], with all that came in between.
async fn stream_log(
    core: &Core,
    build: i64,
    mut out: LogOut,
    mut rx: broadcast::Receiver<LogEvent>,
) {
    let job = out.job;
    loop {
        let mut step = take(&mut out, rx.recv().await);
        if matches!(step, Step::Go) {
            tokio::time::sleep_until(next_tick()).await;
            loop {
                match rx.try_recv() {
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        step = take(&mut out, Err(broadcast::error::RecvError::Lagged(n)));
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        step = Step::End;
                    }
                    Ok(e) => {
                        let s = take(&mut out, Ok(e));
                        if !matches!(s, Step::Go) {
                            step = s;
                        }
                    }
                }
                if !matches!(step, Step::Go) {
                    break;
                }
            }
        }
        match step {
            Step::Go => {}
            Step::Reread => {
                if reread(core, build, job, &mut out).await.is_err() {
                    return;
                }
            }
            Step::End => {
                // The complete log may be longer than what was streamed (a
                // worker's build.log replaced a live log with gaps).
                if reread(core, build, job, &mut out).await.is_err() {
                    return;
                }
                out.finish().await;
                return;
            }
        }
        if out.flush(false).await.is_err() {
            return;
        }
    }
}

/// Take what the log holds past what was sent.
async fn reread(core: &Core, build: i64, job: i64, out: &mut LogOut) -> Result<(), ()> {
    let (tail, len) = core
        .logs
        .read_from(build, job, out.sent)
        .await
        .map_err(|_| ())?;
    if len > out.known() {
        out.pending = tail;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_websocket_from_another_site_is_refused() {
        let h = |pairs: &[(header::HeaderName, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(k.clone(), axum::http::HeaderValue::from_static(v));
            }
            m
        };
        assert!(same_origin(&h(&[(header::HOST, "kiln:8080")])));
        assert!(same_origin(&h(&[
            (header::HOST, "kiln:8080"),
            (header::ORIGIN, "https://kiln:8080")
        ])));
        assert!(!same_origin(&h(&[
            (header::HOST, "kiln:8080"),
            (header::ORIGIN, "https://evil.example")
        ])));
        assert!(!same_origin(&h(&[(header::ORIGIN, "null")])));
    }

    #[test]
    fn a_character_cut_by_the_end_waits() {
        let s = "aé€😀".as_bytes();
        assert_eq!(utf8_cut(s), s.len());
        for cut in 1..s.len() {
            let n = utf8_cut(&s[..cut]);
            assert!(std::str::from_utf8(&s[..n]).is_ok(), "{cut} → {n}");
            assert!(cut - n < 4);
        }
        assert_eq!(utf8_cut(b""), 0);
        assert_eq!(utf8_cut(b"\xff\xfe"), 2, "not UTF-8 at all: sent as is");
    }

    #[tokio::test]
    async fn a_log_goes_out_in_pieces_that_resume_exactly() {
        let (tx, mut rx) = mpsc::channel(100);
        let mut text = "é".repeat(LOG_CHUNK);
        text.push('x');
        let mut out = LogOut {
            job: 1,
            sent: 10,
            pending: text.as_bytes().to_vec(),
            tx,
            shared: Arc::default(),
        };
        out.flush(false).await.unwrap();
        let mut got = String::new();
        let mut at = 10;
        while let Ok(Message::Text(t)) = rx.try_recv() {
            let ServerMsg::Log(c) = serde_json::from_str(t.as_str()).unwrap() else {
                panic!("not a log message: {t}");
            };
            assert_eq!(c.offset, at);
            assert_eq!(c.next - c.offset, c.text.len() as u64);
            at = c.next;
            got.push_str(&c.text);
        }
        assert_eq!(got, text);
        assert_eq!(out.sent, 10 + text.len() as u64);
    }

    #[tokio::test]
    async fn pages_in_step_share_one_message() {
        let shared: Arc<LogFrames> = Arc::default();
        let mut got = Vec::new();
        for _ in 0..2 {
            let (tx, mut rx) = mpsc::channel(4);
            let mut out = LogOut {
                job: 7,
                sent: 3,
                pending: b"line\n".to_vec(),
                tx,
                shared: shared.clone(),
            };
            out.flush(false).await.unwrap();
            let Ok(Message::Text(t)) = rx.try_recv() else {
                panic!("no message")
            };
            got.push(t);
        }
        assert_eq!(got[0], got[1]);
        assert_eq!(
            got[0].as_str().as_ptr(),
            got[1].as_str().as_ptr(),
            "one serialization, shared"
        );
        // Another range is serialized anew.
        assert_ne!(shared.get(7, 0, 3, b"abc"), got[0]);
    }

    #[tokio::test]
    async fn ticks_are_the_same_for_every_page() {
        let a = next_tick();
        let b = next_tick();
        assert!(a == b || b == a + LOG_TICK, "aligned ticks");
        assert!(a > tokio::time::Instant::now() - LOG_TICK);
        assert!(b <= tokio::time::Instant::now() + LOG_TICK);
    }
}
