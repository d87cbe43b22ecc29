//! Durable issuance rate of the control daemon: certificates per second
//! through the admin socket with the soft backend, 64 concurrent clients,
//! with group commit against one commit per command, side by side in one
//! run, plus the raw rate of durable 4 KiB append+fsync on the same disk
//! (the ceiling of one commit per operation), probed just before each mode
//! and at the end because a shared disk varies. A third row repeats group
//! commit with `signer.connections = 64` (the default is 32), to show what
//! the signer pool's width costs. Prints a table and where the time and CPU
//! went; asserts nothing.
//!
//!     cargo build --release -p castellan-signer
//!     cargo bench -p castellan --bench issuance
//!
//! It starts a real `castellan-signer` (soft key store, under its seccomp
//! filter) and a real `castellan` daemon per mode, each in a fresh state
//! directory, creates a root and an issuing CA by 2-of-3 custodian
//! ceremonies with `castellanctl`, and then lets the clients (tokio tasks on
//! one thread, each with its own HTTP/1.1 keep-alive connection to the admin
//! socket) POST `/v1/certificates` until the time is up. An issuance counts
//! when its answer is a 2xx carrying a certificate: the daemon answers only
//! once the certificate is durable in its event log.
//!
//! Environment: `BENCH_SECONDS` (default 10) measured per mode after
//! `BENCH_WARMUP` seconds (default 2); `BENCH_CLIENTS` (default 64);
//! `BENCH_DIR` (default the system temp dir) for the state directories,
//! which must be on the disk under test; `BENCH_PERF=DIR` records a
//! `perf record -e cpu-clock` profile of daemon and signer over each window
//! into DIR (`BENCH_PERF_CALLGRAPH=1` adds DWARF call graphs; profiling
//! costs CPU, so rates measured with it are lower); `BENCH_MODES` (default
//! all) a comma-separated subset of the modes' tags `group`, `single`,
//! `group-64`, to compare one configuration before and after a change;
//! `BENCH_SIGNER_CONNECTIONS=N` runs the `group` row with
//! `signer.connections = N` instead of the default (to choose a default).

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    Bins, ISSUING_CA, Proc, ROOT_CA, binaries, ceremony, env_num, loadavg, start_signer, wait_for,
};

use bytes::Bytes;
use castellan::admin_client::AdminClient;
use castellan::api::{IssueRequest, IssuedView, StatusView};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const GOAL: f64 = 5_000.0;
/// Distinct CSRs (keys and names) the clients cycle through.
const CSRS: usize = 256;
/// How long the signer and the daemon have to create their sockets.
const WAIT_READY: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------
// CPU accounting from /proc
// ---------------------------------------------------------------------------

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Fields of a /proc stat line after the `(comm)`; index 0 is the state.
fn stat_fields(text: &str) -> Option<(String, Vec<String>)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let rest = text[close + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Some((comm, rest))
}

/// User+system CPU seconds of a process, dead threads included.
fn process_cpu(pid: &str, tck: f64) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| stat_fields(&t))
        .map(|(_, f)| {
            let n = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
            (n(11) + n(12)) / tck
        })
        .unwrap_or(0.0)
}

/// Per thread: (name, on-CPU seconds, run-queue wait seconds), from schedstat.
fn threads(pid: &str) -> BTreeMap<String, (String, f64, f64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let tid = e.file_name().to_string_lossy().into_owned();
        let base = e.path();
        let comm = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
        let sched = std::fs::read_to_string(base.join("schedstat")).unwrap_or_default();
        let mut it = sched
            .split_whitespace()
            .map(|s| s.parse::<f64>().unwrap_or(0.0) / 1e9);
        let (cpu, wait) = (it.next().unwrap_or(0.0), it.next().unwrap_or(0.0));
        out.insert(tid, (comm.trim().to_string(), cpu, wait));
    }
    out
}

/// Machine-wide (busy, iowait, total) jiffies from /proc/stat.
fn machine() -> (f64, f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|s| s.parse().unwrap_or(0.0))
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
    let total: f64 = v.iter().take(8).sum();
    let idle = get(3);
    let iowait = get(4);
    (total - idle - iowait, iowait, total)
}

struct Snapshot {
    at: Instant,
    metrics: BTreeMap<String, f64>,
    cpu: [f64; 3],
    threads: [BTreeMap<String, (String, f64, f64)>; 2],
    machine: (f64, f64, f64),
    /// /proc/pressure/io "some" total, µs.
    io_some_us: f64,
}

fn metrics(client: &AdminClient) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    match client.request("GET", "/metrics", None) {
        Ok(r) if r.status == 200 => {
            for line in String::from_utf8_lossy(&r.body).lines() {
                if line.starts_with('#') {
                    continue;
                }
                if let Some((k, v)) = line.rsplit_once(' ')
                    && let Ok(v) = v.parse()
                {
                    out.insert(k.to_string(), v);
                }
            }
        }
        Ok(r) => eprintln!("GET /metrics answered {}", r.status),
        Err(e) => eprintln!("GET /metrics: {e}"),
    }
    out
}

fn snapshot(client: &AdminClient, daemon: u32, signer: u32, tck: f64) -> Snapshot {
    let (d, s) = (daemon.to_string(), signer.to_string());
    let me = std::process::id().to_string();
    let cpu = [
        process_cpu(&d, tck),
        process_cpu(&s, tck),
        process_cpu(&me, tck),
    ];
    let threads = [threads(&d), threads(&s)];
    let machine = machine();
    let io_some_us = io_pressure_some();
    let at = Instant::now();
    let metrics = metrics(client);
    Snapshot {
        at,
        metrics,
        cpu,
        threads,
        machine,
        io_some_us,
    }
}

/// Microseconds in which some task was stalled on I/O, since boot (NaN
/// without PSI).
fn io_pressure_some() -> f64 {
    std::fs::read_to_string("/proc/pressure/io")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("some"))
                .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("total=")))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------
// One mode: signer + daemon + ceremonies + load
// ---------------------------------------------------------------------------

/// One daemon configuration under test.
#[derive(Clone, Copy)]
struct Mode {
    group_commit: bool,
    /// `signer.connections`; `None` keeps the daemon's default.
    signer_connections: Option<u32>,
    label: &'static str,
    /// Directory and perf file name.
    tag: &'static str,
}

const MODES: [Mode; 3] = [
    Mode {
        group_commit: true,
        signer_connections: None,
        label: "group commit",
        tag: "group",
    },
    Mode {
        group_commit: false,
        signer_connections: None,
        label: "one commit per command",
        tag: "single",
    },
    Mode {
        group_commit: true,
        signer_connections: Some(64),
        label: "group commit, signer.connections = 64",
        tag: "group-64",
    },
];

struct Outcome {
    mode: Mode,
    /// 4 KiB append+fsync per second on the state directory's disk, probed
    /// just before this mode.
    disk_before: f64,
    /// Share of the window in which some task of the machine was stalled
    /// on I/O (/proc/pressure/io "some").
    io_pressure: f64,
    load_before: String,
    load_after: String,
    issued: u64,
    window: f64,
    errors: u64,
    first_error: Option<String>,
    lat_us: Vec<u32>,
    batch_window: f64,
    batch_daemon: f64,
    commits_per_s: f64,
    commands_per_issue: f64,
    signer_rtt_ms: f64,
    signer_in_flight: f64,
    signer_connections: f64,
    /// CPU µs per issuance: daemon, signer, bench clients, other processes.
    cpu_us: [f64; 4],
    machine_busy: f64,
    machine_iowait: f64,
    /// Per process (daemon, signer): thread name → (CPU s, run-queue wait s,
    /// threads) over the window.
    thread_cpu: [BTreeMap<String, (f64, f64, usize)>; 2],
    durable_check: String,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.issued as f64 / self.window
    }

    fn pct(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.lat_us.len() as f64 * p).ceil() as usize).clamp(1, self.lat_us.len()) - 1;
        f64::from(self.lat_us[i]) / 1000.0
    }

    fn mean_ms(&self) -> f64 {
        if self.lat_us.is_empty() {
            return f64::NAN;
        }
        self.lat_us.iter().map(|&v| f64::from(v)).sum::<f64>() / self.lat_us.len() as f64 / 1000.0
    }

    fn label(&self) -> &'static str {
        self.mode.label
    }
}

struct Setup {
    bins: Bins,
    base: PathBuf,
    bodies: Arc<Vec<Bytes>>,
    clients: usize,
    warmup: Duration,
    window: Duration,
    tck: f64,
    /// `BENCH_PERF`: where to write `perf record` data of the window.
    perf: Option<PathBuf>,
}

fn ctl(s: &Setup, sock: &Path, args: &[&str]) -> Result<String, String> {
    run(
        Command::new(&s.bins.ctl)
            .arg("--socket")
            .arg(sock)
            .args(args),
        &format!("castellanctl {}", args.join(" ")),
    )
}

fn run_mode(s: &Setup, mode: Mode) -> Result<Outcome, String> {
    let group_commit = mode.group_commit;
    let dir = s.base.join(mode.tag);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let p = |name: &str| dir.join(name);
    let uid = nix::unistd::getuid().as_raw();

    // Custodians and the signer.
    let mut signer = start_signer(&s.bins, &dir)?;
    let signer_sock = p("signer.sock");

    // The daemon.
    let admin_sock = p("admin.sock");
    let connections = mode
        .signer_connections
        .map(|c| format!("connections = {c}\n"))
        .unwrap_or_default();
    std::fs::write(
        p("castellan.toml"),
        format!(
            "state_dir = \"{}\"\n[signer]\nsocket = \"{}\"\n{connections}[admin]\nsocket = \"{}\"\n\
             [admin.roles]\nadmin = [\"{uid}\"]\n[http]\nenabled = false\n\
             [issuance]\ngroup_commit = {group_commit}\n",
            p("state").display(),
            signer_sock.display(),
            admin_sock.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let daemon_log = p("castellan.log");
    let mut daemon = Proc {
        name: "castellan",
        child: Command::new(&s.bins.castellan)
            .arg("--config")
            .arg(p("castellan.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&daemon_log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("castellan: {e}"))?,
    };
    wait_for(&admin_sock, "castellan", &daemon_log, WAIT_READY)?;
    let admin = AdminClient::new(&admin_sock).with_timeout(Duration::from_secs(60));
    let status: StatusView = admin
        .get("/v1/status")
        .map_err(|e| format!("GET /v1/status: {e}"))?;
    if !status.signer_reachable {
        return Err("the daemon does not reach the signer".into());
    }

    // Root and issuing CA, 2 of 3 each.
    let ctl_json = |a: &[&str]| ctl(s, &admin_sock, &[&["--json"][..], a].concat());
    ceremony(&ctl_json, &dir, ROOT_CA.0, ROOT_CA.1)?;
    ceremony(&ctl_json, &dir, ISSUING_CA.0, ISSUING_CA.1)?;

    // One issuance checked in full before the load.
    let first: IssuedView = admin
        .post(
            "/v1/certificates",
            &serde_json::from_slice::<IssueRequest>(&s.bodies[0]).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("first issuance: {e}"))?;
    if first.serial.is_empty()
        || !first
            .certificate_pem
            .starts_with("-----BEGIN CERTIFICATE-----")
        || first.issuer != "issuing"
        || first.chain_pem.is_empty()
    {
        return Err(format!("first issuance answered oddly: {first:?}"));
    }

    // The disk just before the load (the daemon and signer are idle).
    let disk_before = append_sync(&dir, Duration::from_secs(3), false)
        .map_err(|e| format!("4 KiB append+fsync in {}: {e}", dir.display()))?;

    // The load.
    let load_before = loadavg();
    let stop = Arc::new(AtomicBool::new(false));
    let ok_total = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let load = {
        let (stop, ok_total, bodies, sock) = (
            stop.clone(),
            ok_total.clone(),
            s.bodies.clone(),
            admin_sock.clone(),
        );
        let clients = s.clients;
        std::thread::spawn(move || drive(clients, &sock, bodies, stop, ok_total, epoch))
    };
    std::thread::sleep(s.warmup);
    let a = snapshot(&admin, daemon.pid(), signer.pid(), s.tck);
    let mut perf = s.perf.as_ref().map(|out| {
        let data = out.join(format!("issuance-{}.perf.data", mode.tag));
        (perf_record(&data, &[daemon.pid(), signer.pid()]), data)
    });
    std::thread::sleep(s.window);
    let b = snapshot(&admin, daemon.pid(), signer.pid(), s.tck);
    if let Some((child, data)) = perf.as_mut() {
        match child {
            Ok(c) => {
                let pid = nix::unistd::Pid::from_raw(c.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
                let _ = c.wait();
                println!(
                    "   perf profile of the window: perf report -i {} --sort comm,dso,sym",
                    data.display()
                );
            }
            Err(e) => println!("   perf record failed: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let done = load
        .join()
        .map_err(|_| "the client thread panicked".to_string())?;
    let load_after = loadavg();

    // Durability cross-check: every certificate answered is in the log.
    let answered = ok_total.load(Ordering::Relaxed) + 1;
    let durable_check = match admin.get::<StatusView>("/v1/status") {
        Ok(st) => format!(
            "{answered} certificates answered, {} in the daemon's state ({} events)",
            st.certificates, st.events
        ),
        Err(e) => format!("GET /v1/status after the run: {e}"),
    };
    let end_metrics = metrics(&admin);
    daemon.stop();
    signer.stop();

    // Requests completed inside the window [a, b].
    let (from, to) = (
        a.at.duration_since(epoch).as_micros() as u64,
        b.at.duration_since(epoch).as_micros() as u64,
    );
    let mut lat_us: Vec<u32> = done
        .done
        .iter()
        .filter(|(end, _)| *end >= from && *end <= to)
        .map(|(_, l)| *l)
        .collect();
    lat_us.sort_unstable();
    let window = b.at.duration_since(a.at).as_secs_f64();
    let issued = lat_us.len() as u64;
    let d = |k: &str| {
        b.metrics.get(k).copied().unwrap_or(0.0) - a.metrics.get(k).copied().unwrap_or(0.0)
    };
    let commits = d("castellan_log_commits_total");
    let commands = d("castellan_log_commands_total");
    let calls = d("castellan_signer_calls_total");
    let lat_total = |m: &BTreeMap<String, f64>| {
        m.get("castellan_signer_calls_total")
            .copied()
            .unwrap_or(0.0)
            * m.get("castellan_signer_latency_seconds_avg")
                .copied()
                .unwrap_or(0.0)
    };
    let signer_rtt_ms = if calls > 0.0 {
        (lat_total(&b.metrics) - lat_total(&a.metrics)) / calls * 1000.0
    } else {
        f64::NAN
    };
    let per_issue = |x: f64| {
        if issued > 0 {
            x * 1e6 / issued as f64
        } else {
            f64::NAN
        }
    };
    let (busy, iowait, total) = (
        b.machine.0 - a.machine.0,
        b.machine.1 - a.machine.1,
        b.machine.2 - a.machine.2,
    );
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let busy_s = busy / s.tck;
    let ours: f64 = (0..3).map(|i| b.cpu[i] - a.cpu[i]).sum();
    let cpu_us = [
        per_issue(b.cpu[0] - a.cpu[0]),
        per_issue(b.cpu[1] - a.cpu[1]),
        per_issue(b.cpu[2] - a.cpu[2]),
        per_issue((busy_s - ours).max(0.0)),
    ];
    let thread_cpu = [0, 1].map(|i| {
        let mut by_name: BTreeMap<String, (f64, f64, usize)> = BTreeMap::new();
        for (tid, (name, cpu, wait)) in &b.threads[i] {
            let (c0, w0) = a.threads[i]
                .get(tid)
                .map_or((0.0, 0.0), |(_, c, w)| (*c, *w));
            let e = by_name.entry(name.clone()).or_default();
            e.0 += cpu - c0;
            e.1 += wait - w0;
            e.2 += 1;
        }
        by_name
    });
    Ok(Outcome {
        mode,
        disk_before,
        io_pressure: (b.io_some_us - a.io_some_us) / 1e6 / window,
        load_before,
        load_after,
        issued,
        window,
        errors: done.errors,
        first_error: done.first_error,
        lat_us,
        batch_window: if commits > 0.0 {
            commands / commits
        } else {
            f64::NAN
        },
        batch_daemon: end_metrics
            .get("castellan_log_commit_batch_size_avg")
            .copied()
            .unwrap_or(f64::NAN),
        commits_per_s: commits / window,
        commands_per_issue: if issued > 0 {
            commands / issued as f64
        } else {
            f64::NAN
        },
        signer_rtt_ms,
        signer_in_flight: b
            .metrics
            .get("castellan_signer_in_flight")
            .copied()
            .unwrap_or(f64::NAN),
        signer_connections: b
            .metrics
            .get("castellan_signer_connections")
            .copied()
            .unwrap_or(f64::NAN),
        cpu_us,
        machine_busy: if total > 0.0 {
            busy / total * cores
        } else {
            f64::NAN
        },
        machine_iowait: if total > 0.0 {
            iowait / total * cores
        } else {
            f64::NAN
        },
        thread_cpu,
        durable_check,
    })
}

// ---------------------------------------------------------------------------
// The clients
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Done {
    /// (completion time since the epoch µs, latency µs) of each issuance.
    done: Vec<(u64, u32)>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `clients` tasks on one thread until `stop`.
fn drive(
    clients: usize,
    sock: &Path,
    bodies: Arc<Vec<Bytes>>,
    stop: Arc<AtomicBool>,
    ok_total: Arc<AtomicU64>,
    epoch: Instant,
) -> Done {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                let (sock, bodies, stop, ok_total) = (
                    sock.to_path_buf(),
                    bodies.clone(),
                    stop.clone(),
                    ok_total.clone(),
                );
                tokio::spawn(client(i, sock, bodies, stop, ok_total, epoch))
            })
            .collect();
        let mut all = Done::default();
        for t in tasks {
            if let Ok(d) = t.await {
                all.done.extend(d.done);
                all.errors += d.errors;
                if all.first_error.is_none() {
                    all.first_error = d.first_error;
                }
            }
        }
        all
    })
}

async fn client(
    i: usize,
    sock: PathBuf,
    bodies: Arc<Vec<Bytes>>,
    stop: Arc<AtomicBool>,
    ok_total: Arc<AtomicU64>,
    epoch: Instant,
) -> Done {
    let mut d = Done {
        done: Vec::with_capacity(8192),
        ..Done::default()
    };
    let mut n = i;
    let fail = |d: &mut Done, e: String| {
        d.errors += 1;
        if d.first_error.is_none() {
            d.first_error = Some(e);
        }
    };
    'connect: while !stop.load(Ordering::Relaxed) {
        let stream = match tokio::net::UnixStream::connect(&sock).await {
            Ok(s) => s,
            Err(e) => {
                fail(&mut d, format!("connect: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
            {
                Ok(x) => x,
                Err(e) => {
                    fail(&mut d, format!("handshake: {e}"));
                    continue;
                }
            };
        tokio::spawn(conn);
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = sender.ready().await {
                fail(&mut d, format!("connection: {e}"));
                continue 'connect;
            }
            let body = bodies[n % bodies.len()].clone();
            n += 1;
            let req = hyper::Request::post("/v1/certificates")
                .header("host", "castellan")
                .header("content-type", "application/json")
                .header("accept", "application/json")
                .body(Full::new(body))
                .expect("request");
            let t0 = Instant::now();
            let resp = match sender.send_request(req).await {
                Ok(r) => r,
                Err(e) => {
                    fail(&mut d, format!("request: {e}"));
                    continue 'connect;
                }
            };
            let status = resp.status();
            let bytes = match resp.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    fail(&mut d, format!("answer: {e}"));
                    continue 'connect;
                }
            };
            let end = Instant::now();
            if status.is_success() && memchr(&bytes, b"-----BEGIN CERTIFICATE-----") {
                ok_total.fetch_add(1, Ordering::Relaxed);
                d.done.push((
                    end.duration_since(epoch).as_micros() as u64,
                    end.duration_since(t0).as_micros().min(u128::from(u32::MAX)) as u32,
                ));
            } else {
                let text = String::from_utf8_lossy(&bytes);
                fail(
                    &mut d,
                    format!(
                        "HTTP {status}: {}",
                        text.chars().take(300).collect::<String>()
                    ),
                );
            }
        }
    }
    d
}

fn memchr(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Reference: durable 4 KiB appends on the same disk
// ---------------------------------------------------------------------------

/// Appends of 4 KiB, each followed by fsync (`data_only`: fdatasync), for
/// `secs`; returns per second.
fn append_sync(dir: &Path, secs: Duration, data_only: bool) -> std::io::Result<f64> {
    let path = dir.join(if data_only {
        "append-fdatasync"
    } else {
        "append-fsync"
    });
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = [0x5au8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < secs {
        f.write_all(&block)?;
        if data_only {
            f.sync_data()?;
        } else {
            f.sync_all()?;
        }
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}

// ---------------------------------------------------------------------------

fn csr_bodies() -> Result<Vec<Bytes>, String> {
    (0..CSRS)
        .map(|i| {
            let name = format!("host-{i}.bench.internal");
            let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
            let mut params =
                rcgen::CertificateParams::new(vec![name.clone()]).map_err(|e| e.to_string())?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let csr = params
                .serialize_request(&key)
                .and_then(|c| c.pem())
                .map_err(|e| e.to_string())?;
            let req = IssueRequest {
                csr_pem: csr,
                profile: "server".into(),
                ttl_days: Some(30),
                issuer: Some("issuing".into()),
                identity: None,
            };
            serde_json::to_vec(&req)
                .map(Bytes::from)
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// `perf record` of the software CPU clock (hardware counters are often
/// missing in VMs) of `pids` until SIGINT; call graphs (DWARF) with
/// `BENCH_PERF_CALLGRAPH=1`.
fn perf_record(data: &Path, pids: &[u32]) -> std::io::Result<Child> {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let mut cmd = Command::new("perf");
    cmd.args(["record", "-q", "-e", "cpu-clock", "-F", "997", "-o"])
        .arg(data)
        .arg("-p")
        .arg(pids.join(","));
    if std::env::var_os("BENCH_PERF_CALLGRAPH").is_some() {
        cmd.args(["--call-graph", "dwarf,16384"]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

fn perf_available() -> String {
    match Command::new("perf")
        .args(["stat", "-e", "instructions", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Err(e) => format!("no (`perf`: {e})"),
        Ok(o) if o.status.success() => {
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("not supported") || err.contains("<not counted>") {
                "no (hardware counters not supported in this VM)".into()
            } else {
                "yes".into()
            }
        }
        Ok(o) => format!(
            "no ({})",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("failed")
        ),
    }
}

fn main() -> ExitCode {
    let bins = match binaries() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let secs = env_num("BENCH_SECONDS", 10).max(1);
    let warmup = env_num("BENCH_WARMUP", 2);
    let clients = env_num("BENCH_CLIENTS", 64).max(1) as usize;
    let base_parent = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let base = match tempfile::Builder::new()
        .prefix("castellan-bench-")
        .tempdir_in(&base_parent)
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot make a directory in {}: {e}", base_parent.display());
            return ExitCode::from(2);
        }
    };
    let bodies = match csr_bodies() {
        Ok(b) => Arc::new(b),
        Err(e) => {
            eprintln!("cannot make CSRs: {e}");
            return ExitCode::from(2);
        }
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "castellan issuance benchmark: soft backend, {clients} clients, {secs} s per mode after \
         {warmup} s warm-up, {cores} cores, state in {}",
        base.path().display()
    );
    println!("perf available: {}", perf_available());
    let setup = Setup {
        bins,
        base: base.path().to_path_buf(),
        bodies,
        clients,
        warmup: Duration::from_secs(warmup),
        window: Duration::from_secs(secs),
        tck: clk_tck(),
        perf: std::env::var_os("BENCH_PERF").map(PathBuf::from),
    };

    let selected = std::env::var("BENCH_MODES").ok();
    let modes: Vec<Mode> = MODES
        .into_iter()
        .filter(|m| {
            selected
                .as_deref()
                .is_none_or(|s| s.split(',').any(|t| t.trim() == m.tag))
        })
        .collect();
    if modes.is_empty() {
        eprintln!("BENCH_MODES selects none of the modes group, single, group-64");
        return ExitCode::from(2);
    }
    let modes: Vec<Mode> = match std::env::var("BENCH_SIGNER_CONNECTIONS") {
        Err(_) => modes,
        Ok(n) => {
            let Ok(n) = n.trim().parse::<u32>() else {
                eprintln!("BENCH_SIGNER_CONNECTIONS must be a number (1 to 64), not {n:?}");
                return ExitCode::from(2);
            };
            modes
                .into_iter()
                .map(|m| {
                    if m.tag != "group" {
                        return m;
                    }
                    Mode {
                        signer_connections: Some(n),
                        // Once per run, for the table.
                        label: Box::leak(
                            format!("group commit, signer.connections = {n}").into_boxed_str(),
                        ),
                        ..m
                    }
                })
                .collect()
        }
    };
    let mut outcomes = Vec::new();
    for mode in modes {
        println!("\n== {} (load average {})", mode.label, loadavg());
        match run_mode(&setup, mode) {
            Ok(o) => {
                println!(
                    "   {:.0} issuances/s, {} errors{}",
                    o.rate(),
                    o.errors,
                    o.first_error
                        .as_ref()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default()
                );
                println!("   durability: {}", o.durable_check);
                outcomes.push(o);
            }
            Err(e) => {
                eprintln!("{}: {e}", mode.label);
                return ExitCode::FAILURE;
            }
        }
    }
    let ref_secs = Duration::from_secs(secs.min(5));
    let fsync = append_sync(&setup.base, ref_secs, false);
    let fdatasync = append_sync(&setup.base, ref_secs, true);
    let load_end = loadavg();

    println!("\n## Durable issuances per second ({clients} clients, soft backend)\n");
    println!(
        "| mode | issued/s | p50 ms | p99 ms | mean ms | log commits/s | batch (window) | \
         castellan_log_commit_batch_size_avg | log commands / issuance | signer RTT ms | \
         disk: 4 KiB append+fsync/s just before | I/O pressure | errors | load avg before → after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for o in &outcomes {
        println!(
            "| {} | **{:.0}** | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.2} | {:.1} | {:.0} | {:.0} % | {} | {} → {} |",
            o.label(),
            o.rate(),
            o.pct(0.50),
            o.pct(0.99),
            o.mean_ms(),
            o.commits_per_s,
            o.batch_window,
            o.batch_daemon,
            o.commands_per_issue,
            o.signer_rtt_ms,
            o.disk_before,
            o.io_pressure * 100.0,
            o.errors,
            o.load_before,
            o.load_after
        );
    }
    let show = |r: &std::io::Result<f64>| match r {
        Ok(v) => format!("{v:.0}/s"),
        Err(e) => format!("failed: {e}"),
    };
    println!(
        "| reference, at the end: 4 KiB append + fsync, one thread | {} | | | | | | | | | | | | {load_end} |",
        show(&fsync)
    );
    println!(
        "| reference, at the end: 4 KiB append + fdatasync, one thread | {} | | | | | | | | | | | | |",
        show(&fdatasync)
    );
    if let [g, single, ..] = &outcomes[..]
        && g.mode.tag == "group"
        && single.mode.tag == "single"
    {
        println!(
            "\ngroup commit / one commit per command: {:.1}×; goal ≥ {GOAL:.0}/s with group commit: {}",
            g.rate() / single.rate(),
            if g.rate() >= GOAL { "MET" } else { "NOT MET" }
        );
    }

    println!("\n## Where the CPU went (µs of CPU per issuance, over the window)\n");
    println!(
        "| mode | daemon | signer | bench clients | other processes | machine busy (cores) | iowait (cores) | CPU-bound ceiling |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for o in &outcomes {
        let ours = o.cpu_us[0] + o.cpu_us[1] + o.cpu_us[2];
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0}/s |",
            o.label(),
            o.cpu_us[0],
            o.cpu_us[1],
            o.cpu_us[2],
            o.cpu_us[3],
            o.machine_busy,
            o.machine_iowait,
            cores as f64 * 1e6 / ours
        );
    }
    println!(
        "\n(CPU-bound ceiling: {cores} cores / (daemon + signer + clients) CPU per issuance, \
         with nothing else running.)"
    );
    for o in &outcomes {
        println!(
            "\n{}: signer connections {:.0}, in flight at the end {:.0}; threads (CPU s / run-queue wait s over {:.1} s):",
            o.label(),
            o.signer_connections,
            o.signer_in_flight,
            o.window
        );
        for (who, t) in ["castellan", "castellan-signer"].iter().zip(&o.thread_cpu) {
            let mut v: Vec<_> = t.iter().filter(|(_, (c, _, _))| *c > 0.005).collect();
            v.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
            let text: Vec<String> = v
                .iter()
                .map(|(name, (c, w, n))| format!("{name}×{n} {c:.2}/{w:.2}"))
                .collect();
            println!("  {who}: {}", text.join(", "));
        }
    }
    ExitCode::SUCCESS
}
