//! Round-trip benchmark of the release daemon against a floor, in one run (issue 6).
//!
//! `cargo bench --bench roundtrip`; after `--`: `--json` (a JSON document on stdout),
//! `--quick` (a short smoke run), `--reps N` (default 3), `--taskset[=B,L,R]` (pin broker,
//! load and responder to CPUs; default 0,1,1), `--stock` (exactly Debian's mosquitto
//! settings, see below), `--binary PATH` (drive that daemon binary), `--no-build`,
//! `--soak[=N]` (also the soak below; N commands, default 1,000,000), `--state-base PATH`
//! (where the journal's state directories go), `--allow-tmpfs`. It
//!
//! * starts `mosquitto` on a free loopback port with Debian's stock settings plus
//!   `set_tcp_nodelay true` (`--stock` leaves that out: every QoS 1/2 round trip then waits
//!   ~40 ms on the broker's Nagle delay, floor included), or the embedded rumqttd when
//!   mosquitto is absent, said loudly;
//! * builds (`cargo build --release`) and drives the release binary of `mqtt-responder` with
//!   the library's examiner: **latency** (window 1) and **throughput** (window 20) at QoS 0,
//!   1 and 2, counting missing and duplicate replies;
//! * measures the daemon's peak RSS, CPU per 10,000 commands, idle wake-ups, time to READY
//!   and the stripped binary size;
//! * measures the issue's **floor** in the same run: the same peer talking to itself through
//!   the broker. One connection, run by the very examiner runner that examines the daemon
//!   ([`runner::examine_with_companion`]: the same session settings, examiner and
//!   handling), carries an [`Answerer`] too: the peer publishes a command, receives it (it
//!   subscribes to the command topic itself), publishes the reply from the table and
//!   receives that. It is what a round trip costs with a responder that takes zero time,
//!   and every target ratio is to it;
//! * measures a second reference, clearly apart: the **trivial responder process** (this
//!   binary with `--trivial-responder`), the same [`Answerer`] alone on its own connection
//!   in the daemon's place. The daemon against it is the cost of the daemon's logic alone;
//!   the floor against it is the cost of a second process and connection;
//! * measures the **journal** (issue 13): the same daemon with `session.state_dir` on, as the
//!   shipped systemd unit runs it (`StateDirectory=`), as its own row at every QoS, compared
//!   with the daemon with it off in the same run (throughput ≥ 0.9×, p50 ≤ 1.2×, CPU per
//!   command ≤ 1.5×). Each run gets a fresh state directory under
//!   `<target>/bench-journal-state` (or `--state-base`), which must be on a real disk: the
//!   bench prints its file system type and refuses tmpfs or ramfs (`--allow-tmpfs` runs
//!   anyway, with a warning), where no byte would reach a disk;
//! * reads, for every daemon run, `write_bytes` of `/proc/PID/io` (bytes the process caused
//!   to be written to the storage layer, counted when it dirties the page cache) when the
//!   last reply arrives, before the examiner's completion message goes out: per run and per
//!   command, and per 20,000 commands of the QoS 2 throughput runs (target ≤ 1 MiB);
//! * a **steady-rate** run, once: 10 QoS 2 commands a second for 60 s (10 s with `--quick`)
//!   with the journal on, the disk bytes from the first command to the last reply per
//!   minute (target ≤ 1 MiB/min). The examiner paces it ([`Paced`]: window 1, each reply
//!   handed to the examiner at the next tick of a 100 ms clock counted from the first
//!   command, so command k goes out at tick k); the timer is the workload, not a
//!   synchronisation;
//! * with `--soak`, the **soak**: 1,000,000 QoS 2 commands (window 20) with the journal on,
//!   the daemon's VmRSS sampled every 10,000 replies; the curve is printed and the verdict
//!   is the RSS at the end within 1 MiB of the RSS after the first 10,000. It takes a few
//!   minutes, so it is opt-in: `cargo bench --bench roundtrip -- --soak` (the default run
//!   still has the journal rows, the disk figures and the steady run);
//! * repeats every case, daemon, journal, floor and trivial responder interleaved (who goes
//!   first rotates), and prints medians with the min–max spread and the daemon's figures as
//!   ratios.
//!
//! # One connection for the floor, and whether that is fair
//! "Talking to itself" is one client: the examiner's commands come back to its own socket,
//! and its replies go out on it. What differs from the daemon's case:
//! * the round trip has the same four broker hops and as many wake-ups (peer, broker,
//!   responder, broker, peer), but the responder's are the peer's own thread's (warm caches,
//!   no second process to schedule): one process where the daemon's case has two on the
//!   same CPUs. With `--taskset` the floor's peer, both roles, runs on the load CPU;
//! * commands and replies share one TCP stream each way, mosquitto's per-client
//!   `max_inflight_messages` (20, stock) for what it sends the client, and the session's cap
//!   of 20 outgoing QoS 1/2 publishes, where the daemon's case has two of each. The window
//!   of 20 bounds the unanswered commands, so the floor's outgoing publishes (commands plus
//!   replies still in their QoS handshake) peaked at 21: the session's cap held one publish
//!   back in 14–27% of the event-loop passes at QoS 1 and 2.
//!   Raising the session's cap to 40, and mosquitto's with it, changed neither QoS's floor
//!   throughput beyond the run-to-run noise (2 repetitions of 20,000 commands each way,
//!   measured while writing this), so the floor keeps the examiner's settings unchanged.
//!
//! The trivial responder process separates the two effects: the daemon against it is the
//! cost of the daemon's own logic; the floor against it is what a second process and
//! connection cost.
//!
//! Absolute figures on a shared machine are noisy; the ratios to a floor measured moments
//! apart are what to read.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use mqtt_responder::config::{Broker, ReplyTable};
use mqtt_responder::driver::{self, App};
use mqtt_responder::mqtt::session::{Event, Session};
use mqtt_responder::peer::runner::{self, Companion, Examination};
use mqtt_responder::protocol::examiner::Report as ExaminerReport;
use mqtt_responder::protocol::examiner::{Action, Examiner, ExaminerSettings, Note, Phase};
use mqtt_responder::transport::Endpoint;
use mqtt_responder::vocabulary::{Protocol, QoS};

/// The window of the throughput case: mosquitto's default `max_inflight_messages`.
const THROUGHPUT_WINDOW: usize = 20;
/// From the UUID to the first command: time for the responder to subscribe to the command
/// topic. Each run checks that it was subscribed before the first command went out.
const START_DELAY: Duration = Duration::from_millis(500);
/// The daemon's keep-alive (the config default): pings are allowed on top of the idle budget.
const KEEP_ALIVE_SECS: u64 = 30;
/// Wake-ups per second allowed when idle, beyond keep-alive pings.
const IDLE_BUDGET: f64 = 0.1;
/// Bounds on waiting for processes and brokers.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on one examination: a fixed part, and this much per round of the window. With
/// `--stock`, a QoS 2 round trip of the floor waits twice on the broker's ~44 ms Nagle delay
/// (2,000 one at a time: 176 s).
const EXAM_TIMEOUT: Duration = Duration::from_secs(120);
const EXAM_TIMEOUT_PER_ROUND: Duration = Duration::from_millis(150);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The log line the responder writes once it is subscribed to the command topic.
const ANSWERING_LINE: &str = "answering commands";
/// From "answering commands" to the start of the idle window.
const IDLE_SETTLE: Duration = Duration::from_secs(1);
/// The steady-rate run's rate (commands/s, QoS 2, the journal on).
const STEADY_RATE: u32 = 10;
/// The soak's commands (`--soak`), and how often it samples VmRSS.
const SOAK_COMMANDS: usize = 1_000_000;
const SOAK_RSS_EVERY: usize = 10_000;
/// The issue's targets for the daemon with `state_dir` on.
const DISK_PER_20K_TARGET: f64 = 1_048_576.0;
const DISK_PER_MIN_TARGET: f64 = 1_048_576.0;
const SOAK_RSS_GROWTH_TARGET_KIB: f64 = 1024.0;
/// The first argument that makes this binary the trivial responder process.
const TRIVIAL_ARG: &str = "--trivial-responder";

#[derive(Debug, Clone)]
struct Options {
    json: bool,
    quick: bool,
    /// Exactly Debian's stock mosquitto settings (no `set_tcp_nodelay true`).
    stock: bool,
    /// The daemon binary to drive instead of building one.
    binary: Option<PathBuf>,
    reps: usize,
    build: bool,
    /// CPUs for broker, load (examiner) and responder.
    taskset: Option<[usize; 3]>,
    /// Commands of the soak (`--soak[=N]`); `None`: no soak.
    soak: Option<usize>,
    /// Where the journal's state directories go (`--state-base PATH`).
    state_base: Option<PathBuf>,
    /// Run the journal on tmpfs anyway (`--allow-tmpfs`), said loudly.
    allow_tmpfs: bool,
}

impl Options {
    fn parse() -> Result<Options> {
        let mut o = Options {
            json: false,
            quick: false,
            stock: false,
            binary: None,
            reps: 0,
            build: true,
            taskset: None,
            soak: None,
            state_base: None,
            allow_tmpfs: false,
        };
        let mut args = std::env::args().skip(1);
        // Bounded: one argument per iteration.
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--json" => o.json = true,
                "--quick" => o.quick = true,
                "--stock" => o.stock = true,
                "--no-build" => o.build = false,
                "--taskset" => o.taskset = Some([0, 1, 1]),
                "--soak" => o.soak = Some(SOAK_COMMANDS),
                "--allow-tmpfs" => o.allow_tmpfs = true,
                "--state-base" => {
                    let path = args
                        .next()
                        .ok_or_else(|| anyhow!("--state-base needs a path"))?;
                    o.state_base = Some(PathBuf::from(path));
                }
                s if s.starts_with("--soak=") => {
                    o.soak = Some(s["--soak=".len()..].parse().context("--soak=N")?);
                }
                "--binary" => {
                    let path = args
                        .next()
                        .ok_or_else(|| anyhow!("--binary needs a path"))?;
                    o.binary = Some(PathBuf::from(path));
                }
                "--reps" => {
                    let n = args
                        .next()
                        .ok_or_else(|| anyhow!("--reps needs a number"))?;
                    o.reps = n.parse().context("--reps")?;
                }
                s if s.starts_with("--taskset=") => {
                    let cpus: Vec<usize> = s["--taskset=".len()..]
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()
                        .context("--taskset=BROKER,LOAD,RESPONDER")?;
                    let [b, l, r] = cpus[..] else {
                        bail!("--taskset=BROKER,LOAD,RESPONDER takes three CPU numbers");
                    };
                    o.taskset = Some([b, l, r]);
                }
                // `cargo bench` passes `--bench`; filters are not used.
                _ => {}
            }
        }
        if o.reps == 0 {
            o.reps = if o.quick { 1 } else { 3 };
        }
        Ok(o)
    }

    fn latency_n(&self) -> usize {
        if self.quick { 200 } else { 2_000 }
    }

    fn throughput_n(&self) -> usize {
        if self.quick { 2_000 } else { 20_000 }
    }

    fn idle_window(&self) -> Duration {
        Duration::from_secs(if self.quick { 2 } else { 10 })
    }

    /// The steady-rate run: `STEADY_RATE` commands a second for this long.
    fn steady_secs(&self) -> u64 {
        if self.quick { 10 } else { 60 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Latency,
    Throughput,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Latency => "latency",
            Mode::Throughput => "throughput",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    /// The release daemon, driven by the examiner.
    Daemon,
    /// The same daemon with `session.state_dir` on (its crash-resume journal), on a real
    /// disk: the shipped systemd unit's configuration.
    Journal,
    /// The issue's floor: the examiner's peer answering its own commands.
    Floor,
    /// The second reference: the trivial responder process in the daemon's place.
    Trivial,
}

impl Who {
    const ALL: [Who; 4] = [Who::Daemon, Who::Journal, Who::Floor, Who::Trivial];

    fn name(self) -> &'static str {
        match self {
            Who::Daemon => "daemon",
            Who::Journal => "journal",
            Who::Floor => "floor",
            Who::Trivial => "trivial",
        }
    }
}

/// One examination's figures.
#[derive(Debug, Clone, Default)]
struct RunResult {
    n: usize,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
    per_sec: f64,
    missing: u64,
    duplicates: u64,
    wrong: u64,
    /// The responder was not subscribed when the first command went out.
    raced: bool,
    passed: bool,
    /// CPU seconds per 10,000 commands of the responder process (daemon, trivial).
    cpu_per_10k: Option<f64>,
    /// Peak RSS in KiB (daemon only).
    hwm_kib: Option<u64>,
    /// From process start to the login arriving at the examiner (NaN for the floor).
    ready_ms: f64,
    /// `write_bytes` of the responder process (`/proc/PID/io`: bytes it caused to be sent
    /// to the storage layer) from its start to the last reply, read before the completion
    /// message goes out.
    write_bytes: Option<u64>,
    /// The same, from the first command to the last reply only.
    write_bytes_cmds: Option<u64>,
    /// `cancelled_write_bytes` over the same stretch as `write_bytes`: dirty pages the
    /// process dropped before they were written back (a file replaced or truncated in
    /// time), so `write_bytes - cancelled` is closer to what the disk saw.
    cancelled_bytes: Option<u64>,
    /// Sectors written to the state directory's block device, all processes, from the
    /// first command to the last reply, in bytes (`/sys/class/block/DEV/stat`): the file
    /// system's own journal and metadata included, other writers too (for information).
    device_bytes_cmds: Option<u64>,
    /// VmRSS (KiB) after every `rss_every` replies (the soak): (replies, KiB, seconds since
    /// the first command).
    rss_curve: Vec<(usize, u64, f64)>,
}

/// The idle measurement of one daemon run.
#[derive(Debug, Clone)]
struct Idle {
    wakeups_per_sec: f64,
    window: Duration,
    threads: usize,
}

/// Where the target runs, for /proc readings.
#[derive(Debug, Clone, Copy)]
enum Target {
    None,
    Process(u32),
}

impl Target {
    fn proc_dir(self) -> Option<PathBuf> {
        match self {
            Target::None => None,
            Target::Process(pid) => Some(PathBuf::from(format!("/proc/{pid}"))),
        }
    }

    /// utime + stime in clock ticks.
    fn cpu_ticks(self) -> Option<u64> {
        let stat = std::fs::read_to_string(self.proc_dir()?.join("stat")).ok()?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state): utime is field 14, stime 15.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(utime + stime)
    }

    fn hwm_kib(self) -> Option<u64> {
        let Target::Process(pid) = self else {
            return None;
        };
        status_field(&format!("/proc/{pid}/status"), "VmHWM:")
    }

    fn rss_kib(self) -> Option<u64> {
        let Target::Process(pid) = self else {
            return None;
        };
        status_field(&format!("/proc/{pid}/status"), "VmRSS:")
    }

    /// `write_bytes` from `/proc/PID/io`: what the process caused to be written to the
    /// storage layer (page cache pages it dirtied, counted when dirtied).
    fn write_bytes(self) -> Option<u64> {
        self.io_field("write_bytes:")
    }

    fn cancelled_write_bytes(self) -> Option<u64> {
        self.io_field("cancelled_write_bytes:")
    }

    fn io_field(self, key: &str) -> Option<u64> {
        let Target::Process(pid) = self else {
            return None;
        };
        status_field(&format!("/proc/{pid}/io"), key)
    }
}

/// Bytes written to a block device so far: field 7 of its `stat`, in 512-byte sectors.
fn device_written(stat: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(stat).ok()?;
    let sectors: u64 = stat.split_whitespace().nth(6)?.parse().ok()?;
    Some(sectors * 512)
}

fn status_field(path: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Voluntary + involuntary context switches over every thread of `pid`, and the number of
/// threads.
fn context_switches(pid: u32) -> Option<(u64, usize)> {
    let mut total = 0;
    let mut threads = 0;
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for entry in dir.flatten().take(1_000) {
        let path = entry.path().join("status");
        let path = path.to_str()?;
        total += status_field(path, "voluntary_ctxt_switches:")?;
        total += status_field(path, "nonvoluntary_ctxt_switches:")?;
        threads += 1;
    }
    Some((total, threads))
}

/// What the examiner's observer records.
#[derive(Debug)]
struct Probe {
    target: Target,
    expected: usize,
    answered: usize,
    login_at: Option<Instant>,
    first_command_at: Option<Instant>,
    last_reply_at: Option<Instant>,
    cpu_start: Option<u64>,
    cpu_end: Option<u64>,
    hwm_kib: Option<u64>,
    write_start: Option<u64>,
    write_end: Option<u64>,
    cancelled_end: Option<u64>,
    /// The state directory's block device's `stat` file, and its bytes written at the first
    /// command and at the last reply.
    device_stat: Option<PathBuf>,
    device_start: Option<u64>,
    device_end: Option<u64>,
    /// Sample VmRSS after every this many replies (`None`: never).
    rss_every: Option<usize>,
    rss_curve: Vec<(usize, u64, f64)>,
}

impl Probe {
    fn new(expected: usize) -> Probe {
        Probe {
            target: Target::None,
            expected,
            answered: 0,
            login_at: None,
            first_command_at: None,
            last_reply_at: None,
            cpu_start: None,
            cpu_end: None,
            hwm_kib: None,
            write_start: None,
            write_end: None,
            cancelled_end: None,
            device_stat: None,
            device_start: None,
            device_end: None,
            rss_every: None,
            rss_curve: Vec::new(),
        }
    }

    fn note(&mut self, note: &Note) {
        match note {
            Note::Login { .. } => {
                self.login_at.get_or_insert_with(Instant::now);
            }
            Note::Command { .. } if self.first_command_at.is_none() => {
                self.first_command_at = Some(Instant::now());
                self.cpu_start = self.target.cpu_ticks();
                self.write_start = self.target.write_bytes();
                self.device_start = self.device_stat.as_deref().and_then(device_written);
            }
            Note::Reply { .. } => {
                self.answered += 1;
                let now = Instant::now();
                self.last_reply_at = Some(now);
                if self
                    .rss_every
                    .is_some_and(|every| self.answered % every == 0)
                    && let (Some(kib), Some(first)) = (self.target.rss_kib(), self.first_command_at)
                {
                    let secs = (now - first).as_secs_f64();
                    self.rss_curve.push((self.answered, kib, secs));
                }
                // The observer sees the last reply before the examiner's completion message
                // is written: the daemon is still running.
                if self.answered == self.expected {
                    self.cpu_end = self.target.cpu_ticks();
                    self.hwm_kib = self.target.hwm_kib();
                    self.write_end = self.target.write_bytes();
                    self.cancelled_end = self.target.cancelled_write_bytes();
                    self.device_end = self.device_stat.as_deref().and_then(device_written);
                }
            }
            _ => {}
        }
    }
}

/// What a run may do beyond the usual: sample VmRSS (the soak), pace the commands (the
/// steady-rate run).
#[derive(Debug, Clone, Copy, Default)]
struct Extra {
    /// Sample VmRSS after every this many replies.
    rss_every: Option<usize>,
    /// One command per this period (window 1; see [`Paced`]).
    paced: Option<Duration>,
}

/// Everything a run needs.
struct Bench {
    opts: Options,
    port: u16,
    binary: PathBuf,
    dir: tempfile::TempDir,
    clk_tck: f64,
    runtime: tokio::runtime::Runtime,
    run_no: u32,
    state: StateBase,
}

/// Where the journal's runs keep their state directories: a real disk, not tmpfs (which
/// would hide every byte the journal writes), by default `<target>/bench-journal-state`.
struct StateBase {
    dir: PathBuf,
    /// The file system type there (`findmnt`, else `stat -f`).
    fstype: String,
    /// Its block device's `stat` file in /sys, if found.
    device_stat: Option<PathBuf>,
}

impl StateBase {
    fn new(opts: &Options) -> Result<StateBase> {
        let dir = match &opts.state_base {
            Some(dir) => dir.clone(),
            None => target_dir()?.join("bench-journal-state"),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let fstype = fs_type(&dir).unwrap_or_else(|| "unknown".to_owned());
        if matches!(fstype.as_str(), "tmpfs" | "ramfs" | "unknown") {
            let what = format!(
                "the journal's state directory {} is on {fstype}: its disk writes would not \
                 be measured (pass --state-base PATH on a real disk)",
                dir.display()
            );
            if !opts.allow_tmpfs {
                bail!("{what}; --allow-tmpfs runs anyway");
            }
            eprintln!("roundtrip: WARNING: {what}; running anyway (--allow-tmpfs)");
        }
        let device_stat = findmnt(&dir, "SOURCE")
            .and_then(|source| {
                let name = Path::new(&source).file_name()?.to_owned();
                Some(Path::new("/sys/class/block").join(name).join("stat"))
            })
            .filter(|stat| device_written(stat).is_some());
        Ok(StateBase {
            dir,
            fstype,
            device_stat,
        })
    }

    /// A fresh, empty state directory for one run.
    fn fresh(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(dir)
    }
}

/// The output of `cmd`, trimmed, if it succeeded with some.
fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// `findmnt`'s `column` for the file system `path` is on.
fn findmnt(path: &Path, column: &str) -> Option<String> {
    output_of(
        Command::new("findmnt")
            .args(["-n", "-o", column, "-T"])
            .arg(path),
    )
}

/// The file system type `path` is on.
fn fs_type(path: &Path) -> Option<String> {
    findmnt(path, "FSTYPE")
        .or_else(|| output_of(Command::new("stat").args(["-f", "-c", "%T"]).arg(path)))
}

/// The target directory this bench was built into (`<target>/release/deps/roundtrip-…`).
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("cannot locate the target directory from {}", exe.display()))
}

fn main() {
    match real_main() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("roundtrip: FAILED: {e:#}");
            std::process::exit(1);
        }
    }
}

/// `--trivial-responder PORT USER_ID QOS`: this binary as the trivial responder process.
fn trivial_responder(args: &[String]) -> Result<()> {
    let [port, user_id, qos] = args else {
        bail!("--trivial-responder PORT USER_ID QOS");
    };
    let qos = QoS::try_from(qos.parse::<u8>()?).map_err(|q| anyhow!("QoS {q}"))?;
    let broker = broker(port.parse()?, format!("{user_id}-trivial"));
    TrivialResponder::new(user_id, qos)
        .run(&broker)
        .map_err(|e| anyhow!("{e}"))
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(TRIVIAL_ARG) {
        return trivial_responder(&args[2..]);
    }
    let opts = Options::parse()?;
    let binary = release_binary(&opts)?;
    // Before pinning: pinned, this process sees one CPU.
    let machine = machine();
    if let Some([_, load, _]) = opts.taskset {
        // All threads of this process: the examiner, and the floor's peer.
        taskset_pid(load, std::process::id(), true)?;
    }
    let dir = tempfile::Builder::new()
        .prefix("mqtt-responder-bench-")
        .tempdir()?;
    let state = StateBase::new(&opts)?;
    let broker = BrokerProcess::start(dir.path(), opts.taskset.map(|t| t[0]), opts.stock)?;
    let mut bench = Bench {
        state,
        clk_tck: clock_ticks(),
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        port: broker.port(),
        binary,
        dir,
        opts,
        run_no: 0,
    };
    let load_before = loadavg();
    eprintln!(
        "roundtrip: {} on 127.0.0.1:{}; daemon {}; {} repetitions; {}; journal runs' \
         state_dir under {} ({})",
        broker.describe(),
        bench.port,
        bench.binary.display(),
        bench.opts.reps,
        machine,
        bench.state.dir.display(),
        bench.state.fstype,
    );

    let cases: Vec<(Mode, QoS)> = [Mode::Latency, Mode::Throughput]
        .into_iter()
        .flat_map(|m| [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].map(move |q| (m, q)))
        .collect();
    let mut results: BTreeMap<(Mode, u8, Who), Vec<RunResult>> = BTreeMap::new();
    let mut idles = Vec::new();
    for rep in 0..bench.opts.reps {
        // The idle figure comes from its own daemon run with a long delay.
        match bench.run(
            Who::Daemon,
            Mode::Latency,
            QoS::ExactlyOnce,
            20,
            true,
            Extra::default(),
        ) {
            Ok((_, idle)) => idles.extend(idle),
            Err(e) => eprintln!("roundtrip: idle run failed: {e:#}"),
        }
        for &(mode, qos) in &cases {
            // Rotate who goes first, so a drift in the machine's load hits all alike.
            let mut order = Who::ALL;
            order.rotate_left(rep % Who::ALL.len());
            for who in order {
                let n = match mode {
                    Mode::Latency => bench.opts.latency_n(),
                    Mode::Throughput => bench.opts.throughput_n(),
                };
                let (result, _) = bench
                    .run(who, mode, qos, n, false, Extra::default())
                    .with_context(|| format!("{} {} QoS {qos}", who.name(), mode.name()))?;
                eprintln!(
                    "  rep {}/{} {:10} QoS {} {:7}: p50 {:7.1} µs  p99 {:7.1} µs  {:8.0}/s  \
                     missing {} dup {}{}{}",
                    rep + 1,
                    bench.opts.reps,
                    mode.name(),
                    qos,
                    who.name(),
                    result.p50_us,
                    result.p99_us,
                    result.per_sec,
                    result.missing,
                    result.duplicates,
                    match (who, result.write_bytes) {
                        (Who::Daemon | Who::Journal, Some(b)) => format!("  disk {b} B"),
                        _ => String::new(),
                    },
                    if result.raced { "  RACED" } else { "" }
                );
                results
                    .entry((mode, qos.as_u8(), who))
                    .or_default()
                    .push(result);
            }
        }
    }
    let steady = bench.steady();
    if let Err(e) = &steady {
        eprintln!("roundtrip: the steady-rate run failed: {e:#}");
    }
    let soak = bench.opts.soak.map(|n| bench.soak(n));
    if let Some(Err(e)) = &soak {
        eprintln!("roundtrip: the soak failed: {e:#}");
    }
    let stripped = stripped_size(&bench.binary, bench.dir.path());
    let report = Report {
        fstype: bench.state.fstype.clone(),
        device: bench
            .state
            .device_stat
            .as_ref()
            .map(|p| p.display().to_string()),
        steady: steady.ok(),
        soak: soak.and_then(Result::ok),
        machine,
        broker: broker.describe(),
        load: (load_before, loadavg()),
        opts: bench.opts.clone(),
        results,
        idles,
        stripped,
    };
    drop(broker);
    if bench.opts.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

impl Bench {
    /// The steady-rate run: `STEADY_RATE` QoS 2 commands a second for `steady_secs`, the
    /// journal on, paced by the examiner (see [`Paced`]).
    fn steady(&mut self) -> Result<RunResult> {
        let secs = self.opts.steady_secs();
        let n = (u64::from(STEADY_RATE) * secs) as usize;
        eprintln!(
            "roundtrip: steady rate: {n} QoS 2 commands at {STEADY_RATE}/s ({secs} s), \
             journal on"
        );
        let extra = Extra {
            paced: Some(Duration::from_secs(1) / STEADY_RATE),
            ..Extra::default()
        };
        let (result, _) = self.run(
            Who::Journal,
            Mode::Latency,
            QoS::ExactlyOnce,
            n,
            false,
            extra,
        )?;
        eprintln!(
            "  steady: {:.2} cmd/s, disk {} B over the commands ({} B since start), missing {} \
             dup {}",
            result.per_sec,
            result.write_bytes_cmds.unwrap_or(0),
            result.write_bytes.unwrap_or(0),
            result.missing,
            result.duplicates
        );
        Ok(result)
    }

    /// The soak: `n` QoS 2 commands (window 20) with the journal on, VmRSS sampled every
    /// `SOAK_RSS_EVERY` replies.
    fn soak(&mut self, n: usize) -> Result<RunResult> {
        eprintln!("roundtrip: soak: {n} QoS 2 commands, window {THROUGHPUT_WINDOW}, journal on");
        let extra = Extra {
            rss_every: Some(SOAK_RSS_EVERY),
            ..Extra::default()
        };
        let (result, _) = self.run(
            Who::Journal,
            Mode::Throughput,
            QoS::ExactlyOnce,
            n,
            false,
            extra,
        )?;
        eprintln!(
            "  soak: {:.0} cmd/s, missing {} dup {}, VmRSS {} samples",
            result.per_sec,
            result.missing,
            result.duplicates,
            result.rss_curve.len()
        );
        Ok(result)
    }

    /// One examination against the daemon, the floor or the trivial responder. With `idle`
    /// (daemon only), the examiner waits `idle_window` + 1.5 s before the first command and
    /// the daemon's context switches are counted over `idle_window` once it is answering.
    fn run(
        &mut self,
        who: Who,
        mode: Mode,
        qos: QoS,
        n: usize,
        idle: bool,
        extra: Extra,
    ) -> Result<(RunResult, Option<Idle>)> {
        let Extra { rss_every, paced } = extra;
        self.run_no += 1;
        let user_id = format!("bench{}x{}", std::process::id(), self.run_no);
        let window = match mode {
            Mode::Latency => 1,
            Mode::Throughput => THROUGHPUT_WINDOW,
        };
        let delay = if idle {
            self.opts.idle_window() + IDLE_SETTLE + Duration::from_millis(1_500)
        } else {
            START_DELAY
        };
        let settings = ExaminerSettings {
            user_id: Some(user_id.clone()),
            qos,
            commands: n,
            delay,
            window,
            reply_timeout: Duration::from_secs(10),
            seed: u64::from(self.run_no),
            ..ExaminerSettings::default()
        };
        let exam = Examination {
            connection: broker(self.port, format!("{user_id}-examiner")),
            settings,
            logins: 1,
            noise: Vec::new(),
            timeout: EXAM_TIMEOUT + EXAM_TIMEOUT_PER_ROUND * (n / window) as u32,
            progress: None,
            gate: None,
        };
        let endpoint = endpoint(&exam.connection)?;
        let mut probe = Probe::new(n);
        probe.rss_every = rss_every;
        if who == Who::Journal {
            probe.device_stat = self.state.device_stat.clone();
        }
        let probe = Rc::new(RefCell::new(probe));
        // The journal's directory: a fresh one per run on the real disk, removed after.
        let state_dir = match who {
            Who::Journal => Some(self.state.fresh(&user_id)?),
            _ => None,
        };
        let examined = match who {
            Who::Floor => {
                let mut observe = |note: &Note| probe.borrow_mut().note(note);
                self.runtime
                    .block_on(self_talk(&endpoint, exam, &user_id, &mut observe))?
            }
            Who::Daemon | Who::Journal | Who::Trivial => {
                let mut cmd = match who {
                    Who::Daemon | Who::Journal => {
                        let mut cmd = Command::new(&self.binary);
                        cmd.arg("run").arg("--config").arg(self.daemon_config(
                            &user_id,
                            qos,
                            state_dir.as_deref(),
                        )?);
                        cmd
                    }
                    _ => {
                        let mut cmd = Command::new(std::env::current_exe()?);
                        cmd.args([TRIVIAL_ARG, &self.port.to_string(), &user_id])
                            .arg(qos.as_u8().to_string());
                        cmd
                    }
                };
                let responder_cpu = self.opts.taskset.map(|t| t[2]);
                let idle_window = self.opts.idle_window();
                self.runtime.block_on(examine_process(
                    &endpoint,
                    exam,
                    &mut cmd,
                    responder_cpu,
                    &probe,
                    idle.then_some(idle_window),
                    paced,
                ))?
            }
        };
        if let Some(dir) = &state_dir {
            std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
        }
        let probe = probe.borrow();
        let total = examined.report.totals();
        let us = |q: f64| {
            total
                .percentile(q)
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
        };
        let per_sec = match (probe.first_command_at, probe.last_reply_at) {
            (Some(a), Some(b)) if b > a => probe.answered as f64 / (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let cpu_per_10k = match (probe.cpu_start, probe.cpu_end) {
            (Some(a), Some(b)) if n > 0 => {
                Some((b.saturating_sub(a)) as f64 / self.clk_tck / n as f64 * 10_000.0)
            }
            _ => None,
        };
        let ready_ms = match (probe.login_at, examined.started) {
            (Some(at), Some(started)) => at.saturating_duration_since(started).as_secs_f64() * 1e3,
            _ => f64::NAN,
        };
        let raced = match (examined.answering_at, probe.first_command_at) {
            (Some(sub), Some(first)) => sub > first,
            _ => true,
        };
        if !examined.passed && !idle {
            eprintln!(
                "roundtrip: {} {} QoS {qos} did not pass: {}\n{}",
                who.name(),
                mode.name(),
                examined.problems.join("; "),
                examined.log_tail
            );
        }
        let result = RunResult {
            n,
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            max_us: us(1.0),
            per_sec,
            missing: total.missing(),
            duplicates: total.duplicates,
            wrong: total.wrong + total.qos_mismatches,
            raced,
            passed: examined.passed,
            cpu_per_10k,
            hwm_kib: probe.hwm_kib,
            ready_ms,
            write_bytes: probe.write_end,
            write_bytes_cmds: match (probe.write_start, probe.write_end) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
            rss_curve: probe.rss_curve.clone(),
            cancelled_bytes: probe.cancelled_end,
            device_bytes_cmds: match (probe.device_start, probe.device_end) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
        };
        Ok((result, examined.idle))
    }

    fn daemon_config(&self, user_id: &str, qos: QoS, state_dir: Option<&Path>) -> Result<PathBuf> {
        let path = self.dir.path().join(format!("{user_id}.toml"));
        let state_dir = match state_dir {
            Some(dir) => {
                let dir = dir
                    .to_str()
                    .ok_or_else(|| anyhow!("{} is not UTF-8", dir.display()))?;
                format!("state_dir = {}\n", Value::from(dir))
            }
            None => String::new(),
        };
        let toml = format!(
            "[broker]\nhost = \"127.0.0.1\"\nport = {}\n\n[session]\nuser_id = \"{user_id}\"\n\
             qos = {}\n{state_dir}\n[reconnect]\ninitial_delay_ms = 50\nmax_delay_secs = 1\n\
             max_attempts = 5\n\n[log]\nlevel = \"info\"\nformat = \"text\"\n",
            self.port,
            qos.as_u8()
        );
        std::fs::write(&path, toml)?;
        Ok(path)
    }
}

/// What an examination found, whoever answered.
struct Examined {
    report: ExaminerReport,
    passed: bool,
    problems: Vec<String>,
    /// When the responder was subscribed to the command topic.
    answering_at: Option<Instant>,
    /// When the responder process was started (`None`: the floor, no process).
    started: Option<Instant>,
    /// The responder's last log lines, for failure reports.
    log_tail: String,
    idle: Option<Idle>,
}

/// Examines a responder process (the daemon or the trivial responder) started with `cmd`
/// once the examiner listens for logins, then waits (bounded) for it to exit. With
/// `idle_window`, counts its wake-ups (see [`launch`]). With `paced`, the examiner is a
/// [`Paced`] one with that period.
async fn examine_process(
    endpoint: &Endpoint,
    exam: Examination,
    cmd: &mut Command,
    cpu: Option<usize>,
    probe: &Rc<RefCell<Probe>>,
    idle_window: Option<Duration>,
    paced: Option<Duration>,
) -> Result<Examined> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let observer_probe = probe.clone();
    let mut observe = move |_: usize, note: &Note| observer_probe.borrow_mut().note(note);
    let examination = async {
        match paced {
            Some(period) => {
                paced_examine(endpoint, exam, &mut observe, Some(ready_tx), period).await
            }
            None => runner::examine(endpoint, exam, &mut observe, Some(ready_tx)).await,
        }
    };
    let launch = async {
        ready_rx
            .await
            .map_err(|_| anyhow!("the examiner never listened for logins"))?;
        launch(cmd, cpu, probe, idle_window).await
    };
    let (examined, launched) = tokio::join!(examination, launch);
    let mut launched = launched?;
    let finished = launched.finish().await;
    let outcome = examined.map_err(|e| anyhow!("{e}"))?;
    finished?;
    Ok(Examined {
        passed: outcome.passed(),
        problems: outcome.problems(),
        report: outcome
            .reports
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("the responder never logged in"))?,
        answering_at: launched.answering_at,
        started: Some(launched.started),
        log_tail: launched.log_tail(),
        idle: launched.idle.take(),
    })
}

/// The floor: the examiner's peer talking to itself through the broker. The library's
/// examiner runner examines `exam` exactly as against the daemon, with an [`Answerer`]
/// beside it on its connection: the answerer starts (and logs in) once the examiner listens
/// for logins, as the daemon is started then, and the connection closes once both are done
/// and nothing is in flight. Bounded by the examination's timeout and a grace period.
async fn self_talk(
    endpoint: &Endpoint,
    exam: Examination,
    user_id: &str,
    observe: &mut dyn FnMut(&Note),
) -> Result<Examined> {
    let bound = exam.timeout + EXIT_TIMEOUT;
    let mut answerer = Answerer::new(user_id, exam.settings.qos);
    let mut observe = |_: usize, note: &Note| observe(note);
    let run = runner::examine_with_companion(endpoint, exam, &mut observe, &mut answerer);
    let outcome = match tokio::time::timeout(bound, run).await {
        Ok(Ok(outcome)) if outcome.reconnects == 0 => outcome,
        Ok(Ok(outcome)) => bail!(
            "the floor's connection was lost ({} reconnects)",
            outcome.reconnects
        ),
        Ok(Err(e)) => bail!("the floor's connection ended: {e}"),
        Err(_) => bail!("the floor did not finish within {bound:?}"),
    };
    let report = outcome
        .reports
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("the floor's answerer never logged in"))?;
    let mut problems = report.problems();
    if outcome.timed_out {
        problems.push("the examination timed out".to_owned());
    }
    Ok(Examined {
        passed: report.passed() && !outcome.timed_out,
        problems,
        answering_at: answerer.answering_at,
        started: None,
        log_tail: String::new(),
        idle: None,
        report,
    })
}

/// A started responder process: the daemon or the trivial responder.
struct Launched {
    started: Instant,
    child: Option<Child>,
    /// stderr lines as they come (`None`: EOF).
    rx: mpsc::UnboundedReceiver<(Instant, Option<String>)>,
    answering_at: Option<Instant>,
    eof: bool,
    idle: Option<Idle>,
    /// Log lines so far, for failure reports.
    lines: Rc<RefCell<Vec<String>>>,
}

impl Launched {
    fn log_tail(&self) -> String {
        let lines = self.lines.borrow();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits (bounded) for the responder to exit after the examination.
    async fn finish(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + EXIT_TIMEOUT;
        // stderr closes when the process exits: read to EOF, bounded in time.
        while !self.eof {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((at, Some(line)))) => {
                    if self.answering_at.is_none() && line.contains(ANSWERING_LINE) {
                        self.answering_at = Some(at);
                    }
                    self.lines.borrow_mut().push(line);
                }
                Ok(Some((_, None)) | None) => self.eof = true,
                Err(_) => break,
            }
        }
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if !self.eof {
            child.kill().ok();
            child.wait().ok();
            bail!("the responder (pid {}) did not exit; killed it", child.id());
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("the responder exited with {status}:\n{}", self.log_tail());
        }
        Ok(())
    }
}

/// Starts the responder process (the daemon or the trivial responder), waits (bounded)
/// until it logs that it answers commands and, with `idle_window`, counts its wake-ups over
/// that window.
async fn launch(
    cmd: &mut Command,
    cpu: Option<usize>,
    probe: &Rc<RefCell<Probe>>,
    idle_window: Option<Duration>,
) -> Result<Launched> {
    let program = PathBuf::from(cmd.get_program());
    cmd.env_remove("RUST_LOG")
        .env_remove("MQTT_RESPONDER_CONFIG")
        // The daemon's fallback for session.state_dir: only the journal's runs have one.
        .env_remove("STATE_DIRECTORY")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {}", program.display()))?;
    let pid = child.id();
    if let Some(cpu) = cpu {
        taskset_pid(cpu, pid, true)?;
    }
    probe.borrow_mut().target = Target::Process(pid);
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr pipe"))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        // Ends at EOF, when the daemon exits.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), Some(line))).is_err() {
                return;
            }
        }
        let _ = tx.send((Instant::now(), None));
    });
    let lines = Rc::new(RefCell::new(Vec::new()));
    let mut answering_at = None;
    let mut eof = false;
    // Until the daemon is subscribed to the command topic (bounded in time).
    let deadline = tokio::time::Instant::now() + START_TIMEOUT + START_DELAY;
    while answering_at.is_none() && !eof {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((at, Some(line)))) => {
                if line.contains(ANSWERING_LINE) {
                    answering_at = Some(at);
                }
                lines.borrow_mut().push(line);
            }
            Ok(Some((_, None)) | None) => eof = true,
            Err(_) => break,
        }
    }
    let mut idle_result = None;
    if let (Some(idle_window), Some(answering)) = (idle_window, answering_at) {
        // The measurement window starts once the last handshakes of the start (the UUID's
        // acknowledgement) are over; these sleeps are the window, not a synchronisation.
        let from = answering + IDLE_SETTLE;
        tokio::time::sleep_until(tokio::time::Instant::from_std(from)).await;
        let before = context_switches(pid);
        tokio::time::sleep_until(tokio::time::Instant::from_std(from + idle_window)).await;
        let after = context_switches(pid);
        let commands_started = probe.borrow().first_command_at.is_some();
        if let (Some((a, _)), Some((b, threads)), false) = (before, after, commands_started) {
            idle_result = Some(Idle {
                wakeups_per_sec: b.saturating_sub(a) as f64 / idle_window.as_secs_f64(),
                window: idle_window,
                threads,
            });
        }
    }
    Ok(Launched {
        started,
        child: Some(child),
        rx,
        answering_at,
        eof,
        idle: idle_result,
        lines,
    })
}

/// The responder's side of the protocol with no logic, on the library's session: it
/// subscribes to the UUID topic, logs in, subscribes to the command topic, answers each
/// command from the table (topics rendered once) and notes the completion message. The
/// session acknowledges commands on arrival. The floor's peer runs it beside its examiner
/// (as its [`runner::Companion`], see [`self_talk`]); the trivial responder process runs it
/// alone ([`TrivialResponder`]).
struct Answerer {
    user_id: String,
    login_topic: String,
    uuid_topic: String,
    qos: QoS,
    completion: Bytes,
    replies: ReplyTable,
    /// Command, reply topic, reply payload.
    table: Vec<(Bytes, String, Bytes)>,
    command_topic: Option<String>,
    /// When the broker acknowledged the subscription to the command topic.
    answering_at: Option<Instant>,
    /// The completion message arrived.
    completed: bool,
}

impl Answerer {
    fn new(user_id: &str, qos: QoS) -> Answerer {
        let defaults = ExaminerSettings::default();
        Answerer {
            user_id: user_id.to_owned(),
            login_topic: "login".to_owned(),
            uuid_topic: format!("{user_id}/UUID"),
            qos,
            completion: Bytes::from(defaults.completion_message),
            replies: defaults.replies,
            table: Vec::new(),
            command_topic: None,
            answering_at: None,
            completed: false,
        }
    }

    fn publish(&self, session: &mut Session, topic: String, payload: Bytes, now: Instant) {
        session.publish(runner::publish(topic, payload, self.qos), now);
    }
}

impl Companion for Answerer {
    /// Subscribes to the UUID topic; the login follows its SUBACK.
    fn start(&mut self, session: &mut Session, now: Instant) {
        session.subscribe(vec![(self.uuid_topic.clone(), self.qos)], now);
    }

    /// Handles `event` if it is the answerer's (the SUBACKs of its subscriptions, messages
    /// on its UUID and command topics); returns whether it was.
    fn handle_event(&mut self, event: &Event, session: &mut Session, now: Instant) -> bool {
        match event {
            Event::SubAck { filters, .. } if names(filters, &self.uuid_topic) => {
                let login = Bytes::from(self.user_id.clone());
                self.publish(session, self.login_topic.clone(), login, now);
                true
            }
            Event::SubAck { filters, .. }
                if self
                    .command_topic
                    .as_ref()
                    .is_some_and(|topic| names(filters, topic)) =>
            {
                self.answering_at = Some(now);
                true
            }
            Event::Message(m) if Some(&m.publish.topic) == self.command_topic.as_ref() => {
                let p = &m.publish;
                if p.payload == self.completion {
                    self.completed = true;
                } else if let Some((_, topic, reply)) =
                    self.table.iter().find(|(c, _, _)| *c == p.payload)
                {
                    self.publish(session, topic.clone(), reply.clone(), now);
                }
                true
            }
            Event::Message(m) if m.publish.topic == self.uuid_topic => {
                if self.command_topic.is_none() {
                    let uuid = String::from_utf8_lossy(&m.publish.payload).into_owned();
                    self.table = self
                        .replies
                        .0
                        .iter()
                        .map(|(c, r)| {
                            (
                                Bytes::from(c.clone()),
                                format!("{uuid}/{c}"),
                                Bytes::from(r.clone()),
                            )
                        })
                        .collect();
                    session.subscribe(vec![(uuid.clone(), self.qos)], now);
                    self.command_topic = Some(uuid);
                }
                true
            }
            _ => false,
        }
    }

    /// The completion message arrived, or the examiner never sent it.
    fn is_done(&self, completion_sent: bool) -> bool {
        self.completed || !completion_sent
    }
}

/// Whether a SUBACK's `filters` include `topic`.
fn names(filters: &[(String, Option<QoS>)], topic: &str) -> bool {
    filters.iter().any(|(filter, _)| filter == topic)
}

/// The second reference: an [`Answerer`] alone on its own connection, in a process of its
/// own (`--trivial-responder`), started and examined as the daemon is.
struct TrivialResponder {
    answerer: Answerer,
    disconnect_sent: bool,
}

impl TrivialResponder {
    fn new(user_id: &str, qos: QoS) -> TrivialResponder {
        TrivialResponder {
            answerer: Answerer::new(user_id, qos),
            disconnect_sent: false,
        }
    }

    fn run(mut self, broker: &Broker) -> Result<(), String> {
        let endpoint = endpoint(broker).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        // The examiner's session settings, as for the floor.
        let mut session = Session::new(runner::peer_session_config(broker), Instant::now());
        let never = CancellationToken::new();
        runtime.block_on(async {
            let end = driver::open_and_run(
                &endpoint,
                &mut session,
                &mut self,
                Duration::from_secs(10),
                &never,
                None,
            )
            .await;
            match end {
                driver::End::Disconnected => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
    }
}

impl App for TrivialResponder {
    fn handle_event(&mut self, event: Event, session: &mut Session, now: Instant) {
        if matches!(event, Event::Connected { .. }) {
            self.answerer.start(session, now);
        } else {
            let answering = self.answerer.answering_at.is_some();
            self.answerer.handle_event(&event, session, now);
            if !answering && self.answerer.answering_at.is_some() {
                // The line the bench waits for, as from the daemon.
                eprintln!("{ANSWERING_LINE}");
            }
        }
        if self.answerer.completed && !self.disconnect_sent && session.outstanding() == 0 {
            session.disconnect(now);
            self.disconnect_sent = true;
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _session: &mut Session, _now: Instant) {}

    fn handle_shutdown(&mut self, _session: &mut Session, _now: Instant) {}

    fn wants_disconnect(&self) -> bool {
        self.disconnect_sent
    }
}

/// The steady-rate run's examiner: the library's [`Examiner`] alone on its own connection,
/// with a window of 1, and the bench as its clock: each reply is handed to the examiner at
/// the next tick of `period` counted from the first command (`first + k × period` for the
/// k-th reply), and the examiner sends the next command when it gets it. So command k goes
/// out at tick k, whatever the round trip (as long as it is shorter than `period`): a rate
/// set by the workload's timer, with no sleep anywhere. Bounded by the examiner's command
/// count and `deadline`.
struct Paced<'a> {
    examiner: Examiner,
    login_topic: String,
    period: Duration,
    /// When the first command went out, and how many replies were handed over since.
    first_command_at: Option<Instant>,
    released: u32,
    /// Replies held until their tick: topic, payload, QoS.
    held: VecDeque<(String, Bytes, QoS)>,
    ready: Option<oneshot::Sender<()>>,
    observe: &'a mut dyn FnMut(usize, &Note),
    broker_qos: QoS,
    deadline: Instant,
    timed_out: bool,
    disconnect_sent: bool,
}

impl Paced<'_> {
    fn next_release(&self) -> Option<Instant> {
        let first = self.first_command_at?;
        (!self.held.is_empty()).then(|| first + self.period * (self.released + 1))
    }

    fn run_actions(&mut self, session: &mut Session, now: Instant) {
        while let Some(action) = self.examiner.poll_action() {
            match action {
                Action::Subscribe { topic, qos } => {
                    session.subscribe(vec![(topic, qos.min(self.broker_qos))], now);
                }
                Action::Publish {
                    topic,
                    payload,
                    qos,
                    ..
                } => {
                    session.publish(runner::publish(topic, payload, qos), now);
                }
                Action::Finished => {}
            }
        }
        while let Some(note) = self.examiner.poll_note() {
            if matches!(note, Note::Command { .. }) && self.first_command_at.is_none() {
                self.first_command_at = Some(now);
            }
            (self.observe)(0, &note);
        }
        let done = self.examiner.phase() == Phase::Finished || self.timed_out;
        if done && session.outstanding() == 0 && !self.disconnect_sent {
            session.disconnect(now);
            self.disconnect_sent = true;
        }
    }
}

impl App for Paced<'_> {
    fn handle_event(&mut self, event: Event, session: &mut Session, now: Instant) {
        match event {
            Event::Connected {
                session_present,
                caps,
            } => {
                self.broker_qos = caps.max_qos;
                self.examiner
                    .handle_connected(session_present, caps.max_qos, now);
            }
            Event::SubAck { filters, .. } => {
                for (topic, granted) in filters {
                    if topic == self.login_topic
                        && let Some(ready) = self.ready.take()
                    {
                        let _ = ready.send(());
                    }
                    self.examiner.handle_subscribed(&topic, granted, now);
                }
            }
            Event::Message(m) => {
                let p = &m.publish;
                if p.topic != self.login_topic && self.examiner.phase() == Phase::Sending {
                    self.held
                        .push_back((p.topic.clone(), p.payload.clone(), p.qos));
                } else if self.examiner.handles_topic(&p.topic) {
                    self.examiner
                        .handle_message(&p.topic, &p.payload, p.qos, now);
                }
            }
            _ => {}
        }
        self.run_actions(session, now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let deadline = (!self.timed_out).then_some(self.deadline);
        [self.examiner.poll_timeout(), self.next_release(), deadline]
            .into_iter()
            .flatten()
            .min()
    }

    fn handle_timeout(&mut self, session: &mut Session, now: Instant) {
        if now >= self.deadline {
            self.timed_out = true;
        }
        // Bounded: at most the replies held, one per tick that has passed.
        while self.next_release().is_some_and(|t| now >= t) {
            if let Some((topic, payload, qos)) = self.held.pop_front() {
                self.released += 1;
                self.examiner.handle_message(&topic, &payload, qos, now);
            }
        }
        if self.examiner.poll_timeout().is_some_and(|t| now >= t) {
            self.examiner.handle_timeout(now);
        }
        self.run_actions(session, now);
    }

    fn handle_shutdown(&mut self, _session: &mut Session, _now: Instant) {}

    fn wants_disconnect(&self) -> bool {
        self.disconnect_sent
    }
}

/// Runs `exam` with one [`Paced`] examiner (see there) on its own connection; `ready` fires
/// once it listens for logins. No reconnection: the broker is on loopback.
async fn paced_examine(
    endpoint: &Endpoint,
    exam: Examination,
    observe: &mut dyn FnMut(usize, &Note),
    ready: Option<oneshot::Sender<()>>,
    period: Duration,
) -> Result<runner::Outcome, runner::ExamineError> {
    let now = Instant::now();
    let examiner = Examiner::new(exam.settings.clone(), now)
        .map_err(|e| runner::ExamineError::Settings(e.to_string()))?;
    let mut session = Session::new(runner::peer_session_config(&exam.connection), now);
    let mut app = Paced {
        login_topic: examiner.login_topic().to_owned(),
        examiner,
        period,
        first_command_at: None,
        released: 0,
        held: VecDeque::new(),
        ready,
        observe,
        broker_qos: QoS::ExactlyOnce,
        deadline: now + exam.timeout,
        timed_out: false,
        disconnect_sent: false,
    };
    let never = CancellationToken::new();
    let end = driver::open_and_run(
        endpoint,
        &mut session,
        &mut app,
        runner::CONNACK_TIMEOUT,
        &never,
        None,
    )
    .await;
    match end {
        driver::End::Disconnected => Ok(runner::Outcome {
            reports: vec![app.examiner.report()],
            missing_logins: 0,
            timed_out: app.timed_out,
            reconnects: 0,
        }),
        other => Err(runner::ExamineError::Connection(format!(
            "the paced examiner's connection ended: {other:?}"
        ))),
    }
}

/// The broker settings of the benchmark's own clients (the examiner, the trivial
/// responder): the broker on loopback `port`, MQTT 3.1.1, no credentials.
fn broker(port: u16, client_id: String) -> Broker {
    Broker {
        host: "127.0.0.1".to_owned(),
        port,
        protocol: Protocol::V311,
        client_id,
        username: None,
        password: None,
        keep_alive: Duration::from_secs(KEEP_ALIVE_SECS),
        connect_timeout: Duration::from_secs(10),
        max_inflight: 20,
        tls: None,
    }
}

fn endpoint(broker: &Broker) -> Result<Endpoint> {
    Endpoint::new(broker).map_err(|e| anyhow!("{e}"))
}

/// The release binary to drive: `--binary PATH`, else `cargo build --release` (a no-op when
/// up to date) into `<target>/roundtrip-release`. A separate target directory, because
/// `cargo bench` builds the bin target into `<target>/release` with the bench profile (which
/// ignores `panic = "abort"`): sharing it, the two builds would overwrite each other's
/// artifacts and rebuild on every run.
fn release_binary(opts: &Options) -> Result<PathBuf> {
    if let Some(binary) = &opts.binary {
        return Ok(binary.clone());
    }
    let target_dir = target_dir()?;
    let own_dir = target_dir.join("roundtrip-release");
    if opts.build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        eprintln!(
            "roundtrip: cargo build --release --bin mqtt-responder --target-dir {}",
            own_dir.display()
        );
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--bin",
                "mqtt-responder",
                "--target-dir",
            ])
            .arg(&own_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .status()
            .context("run cargo build --release")?;
        if !status.success() {
            bail!("cargo build --release failed: {status}");
        }
    }
    let binary = own_dir.join("release").join("mqtt-responder");
    if !binary.is_file() {
        bail!(
            "{} not found: drop --no-build, or pass --binary PATH",
            binary.display()
        );
    }
    Ok(binary)
}

fn taskset_pid(cpu: usize, pid: u32, all_threads: bool) -> Result<()> {
    let mut cmd = Command::new("taskset");
    cmd.arg(if all_threads { "-apc" } else { "-pc" })
        .arg(cpu.to_string())
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stdin(Stdio::null());
    let status = cmd.status().context("run taskset (util-linux)")?;
    if !status.success() {
        bail!("taskset -pc {cpu} {pid} failed: {status}");
    }
    Ok(())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let virt = Command::new("lscpu")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Hypervisor vendor:"))
                .map(|l| format!(", {} guest", l["Hypervisor vendor:".len()..].trim()))
        })
        .unwrap_or_default();
    format!("{cpus} vCPU {model}{virt}")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn stripped_size(binary: &Path, dir: &Path) -> Option<u64> {
    let copy = dir.join("mqtt-responder.stripped");
    std::fs::copy(binary, &copy).ok()?;
    let status = Command::new("strip").arg(&copy).status().ok()?;
    if !status.success() {
        return None;
    }
    Some(std::fs::metadata(&copy).ok()?.len())
}

/// The broker the run uses.
enum BrokerProcess {
    Mosquitto {
        child: Child,
        port: u16,
        version: String,
        stock: bool,
    },
    Embedded(mqtt_responder::peer::embedded_broker::EmbeddedBroker),
}

impl BrokerProcess {
    fn start(dir: &Path, cpu: Option<usize>, stock: bool) -> Result<BrokerProcess> {
        let Some(binary) = find_mosquitto() else {
            let bar = "!".repeat(78);
            eprintln!(
                "\n{bar}\n!!! mosquitto NOT FOUND: falling back to the embedded rumqttd.\n\
                 !!! Its figures are not comparable with Debian's mosquitto; install it with\n\
                 !!! `apt-get install -y mosquitto` for the real benchmark.\n{bar}\n"
            );
            let broker = mqtt_responder::peer::embedded_broker::EmbeddedBroker::start()
                .map_err(|e| anyhow!("embedded rumqttd: {e}"))?;
            return Ok(BrokerProcess::Embedded(broker));
        };
        let version = Command::new(&binary)
            .arg("-h")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(|l| l.trim().to_owned())
            })
            .unwrap_or_else(|| "mosquitto".to_owned());
        // A free port may be taken before mosquitto binds it: a few attempts, bounded.
        let mut last = None;
        for attempt in 0..3 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port();
            let log = dir.join(format!("mosquitto-{attempt}.log"));
            let conf = dir.join(format!("mosquitto-{attempt}.conf"));
            // Debian's stock settings: only the listener, anonymous access, a log file and,
            // as root, `user root` (else it drops to user mosquitto and cannot write here).
            // Unless --stock, also `set_tcp_nodelay true`: without it every QoS 1/2 round
            // trip waits ~40 ms on the broker's Nagle delay against the peer's delayed ACK,
            // floor included, and the figures say nothing about the responder.
            let mut text = format!(
                "user root\nlog_dest file {}\nallow_anonymous true\n",
                log.display()
            );
            if !stock {
                text.push_str("set_tcp_nodelay true\n");
            }
            text.push_str(&format!("listener {port} 127.0.0.1\n"));
            std::fs::write(&conf, text)?;
            let mut cmd = match cpu {
                Some(cpu) => {
                    let mut cmd = Command::new("taskset");
                    cmd.arg("-c").arg(cpu.to_string()).arg(&binary);
                    cmd
                }
                None => Command::new(&binary),
            };
            let mut child = cmd
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("spawn {}", binary.display()))?;
            let deadline = Instant::now() + START_TIMEOUT;
            let max_polls = START_TIMEOUT.as_millis() / POLL_INTERVAL.as_millis() + 1;
            for _ in 0..max_polls {
                if child.try_wait()?.is_some() || Instant::now() >= deadline {
                    break;
                }
                let addr = (Ipv4Addr::LOCALHOST, port).into();
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Ok(BrokerProcess::Mosquitto {
                        child,
                        port,
                        version,
                        stock,
                    });
                }
                // Paces the poll; the port accepting is the condition.
                std::thread::sleep(POLL_INTERVAL);
            }
            child.kill().ok();
            child.wait().ok();
            last = Some(anyhow!(
                "mosquitto did not accept TCP on 127.0.0.1:{port}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        Err(last.unwrap_or_else(|| anyhow!("mosquitto did not start")))
    }

    fn port(&self) -> u16 {
        match self {
            BrokerProcess::Mosquitto { port, .. } => *port,
            BrokerProcess::Embedded(b) => b.port(),
        }
    }

    fn describe(&self) -> String {
        match self {
            BrokerProcess::Mosquitto { version, stock, .. } => {
                if *stock {
                    format!("{version} (Debian stock settings)")
                } else {
                    format!("{version} (Debian stock settings + set_tcp_nodelay true)")
                }
            }
            BrokerProcess::Embedded(_) => {
                "EMBEDDED rumqttd 0.20 (mosquitto not found; not comparable)".to_owned()
            }
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        // Strictly our child, by PID.
        if let BrokerProcess::Mosquitto { child, .. } = self {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

fn find_mosquitto() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MOSQUITTO_BIN") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

/// Median, min and max of `values` (NaNs left out).
fn spread(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    Some((median, v[0], v[v.len() - 1]))
}

/// A figure: the case it comes from, whether lower is better, how to read it from a run.
struct Metric {
    mode: Mode,
    name: &'static str,
    unit: &'static str,
    lower_is_better: bool,
    get: fn(&RunResult) -> Option<f64>,
    /// The issue's target on the ratio to the floor, if any.
    target: Option<f64>,
}

impl Metric {
    /// The better of two values.
    fn better(&self, a: f64, b: f64) -> f64 {
        if self.lower_is_better {
            a.min(b)
        } else {
            a.max(b)
        }
    }

    /// The worse of two values.
    fn worse(&self, a: f64, b: f64) -> f64 {
        if self.lower_is_better {
            a.max(b)
        } else {
            a.min(b)
        }
    }
}

const P50: Metric = Metric {
    mode: Mode::Latency,
    name: "p50",
    unit: "µs",
    lower_is_better: true,
    get: |r| Some(r.p50_us),
    target: Some(1.25),
};
const P90: Metric = Metric {
    mode: Mode::Latency,
    name: "p90",
    unit: "µs",
    lower_is_better: true,
    get: |r| Some(r.p90_us),
    target: None,
};
const P99: Metric = Metric {
    mode: Mode::Latency,
    name: "p99",
    unit: "µs",
    lower_is_better: true,
    get: |r| Some(r.p99_us),
    target: Some(1.5),
};
const MAX: Metric = Metric {
    mode: Mode::Latency,
    name: "max",
    unit: "µs",
    lower_is_better: true,
    get: |r| Some(r.max_us),
    target: None,
};
const THROUGHPUT: Metric = Metric {
    mode: Mode::Throughput,
    name: "throughput",
    unit: "cmd/s",
    lower_is_better: false,
    get: |r| Some(r.per_sec),
    target: Some(0.8),
};
/// The responder process's CPU time: the daemon and the trivial responder only (the floor
/// has no responder process).
const CPU: Metric = Metric {
    mode: Mode::Throughput,
    name: "CPU/10k cmds",
    unit: "s",
    lower_is_better: true,
    get: |r| r.cpu_per_10k,
    target: None,
};

/// What the daemon is compared with the floor on.
const FLOOR_METRICS: [Metric; 5] = [P50, P90, P99, MAX, THROUGHPUT];
/// What the daemon is compared with the trivial responder process on.
const TRIVIAL_METRICS: [Metric; 4] = [P50, P99, THROUGHPUT, CPU];
/// What the daemon with `state_dir` on is compared with the daemon with it off on.
const JOURNAL_METRICS: [Metric; 4] = [P50, P99, THROUGHPUT, CPU];
/// The issue's targets for the daemon with `state_dir` on, as ratios to it off (issue 13).
const JOURNAL_TARGETS: [(Metric, f64); 3] = [(THROUGHPUT, 0.9), (P50, 1.2), (CPU, 1.5)];
/// Every figure, for the JSON document.
const ALL_METRICS: [Metric; 6] = [P50, P90, P99, MAX, THROUGHPUT, CPU];

/// The summary of one metric for one QoS, the daemon against a reference.
struct Row {
    daemon: Option<(f64, f64, f64)>,
    reference: Option<(f64, f64, f64)>,
    /// Median, min and max of the per-repetition ratios daemon / reference.
    ratio: Option<(f64, f64, f64)>,
    /// The best per-repetition ratio.
    best: Option<f64>,
}

/// A target judged: the best repetition's ratio at the worst QoS.
struct Verdict {
    what: String,
    /// Against the floor: what the target is judged on.
    value: f64,
    /// The same against the trivial responder process, for information.
    vs_trivial: Option<f64>,
    target: f64,
    ok: bool,
}

struct Report {
    /// The file system of the journal's state directories.
    fstype: String,
    /// Its block device's stat file.
    device: Option<String>,
    /// The steady-rate run (journal on, QoS 2, paced).
    steady: Option<RunResult>,
    /// The soak, with `--soak`.
    soak: Option<RunResult>,
    machine: String,
    broker: String,
    load: (String, String),
    opts: Options,
    results: BTreeMap<(Mode, u8, Who), Vec<RunResult>>,
    idles: Vec<Idle>,
    stripped: Option<u64>,
}

impl Report {
    fn runs(&self, mode: Mode, qos: u8, who: Who) -> &[RunResult] {
        self.results
            .get(&(mode, qos, who))
            .map_or(&[], Vec::as_slice)
    }

    fn row(&self, qos: u8, metric: &Metric, reference: Who) -> Row {
        self.row_of(Who::Daemon, qos, metric, reference)
    }

    /// `subject` against `reference`.
    fn row_of(&self, subject: Who, qos: u8, metric: &Metric, reference: Who) -> Row {
        let daemon = self.runs(metric.mode, qos, subject);
        let other = self.runs(metric.mode, qos, reference);
        let values = |runs: &[RunResult]| spread(runs.iter().filter_map(metric.get));
        // Repetitions are paired: run i of the daemon and run i of the reference were
        // moments apart.
        let ratios: Vec<f64> = daemon
            .iter()
            .zip(other)
            .filter_map(|(d, f)| Some((metric.get)(d)? / (metric.get)(f)?))
            .filter(|r| r.is_finite())
            .collect();
        let best = ratios.iter().copied().reduce(|a, b| metric.better(a, b));
        Row {
            daemon: values(daemon),
            reference: values(other),
            ratio: spread(ratios),
            best,
        }
    }

    /// The worst QoS's best ratio to `reference`.
    fn worst_best(&self, metric: &Metric, reference: Who) -> Option<f64> {
        self.worst_best_of(Who::Daemon, metric, reference)
    }

    fn worst_best_of(&self, subject: Who, metric: &Metric, reference: Who) -> Option<f64> {
        (0..=2u8)
            .filter_map(|q| self.row_of(subject, q, metric, reference).best)
            .reduce(|a, b| metric.worse(a, b))
    }

    /// The journal's ratio targets, judged against the daemon with `state_dir` off, in the
    /// same style: the best repetition's ratio at the worst QoS, with the worst QoS's median
    /// ratio beside it for information.
    fn journal_verdicts(&self) -> Vec<(Verdict, Option<f64>)> {
        let mut out = Vec::new();
        for (metric, target) in &JOURNAL_TARGETS {
            let Some(value) = self.worst_best_of(Who::Journal, metric, Who::Daemon) else {
                continue;
            };
            let median = (0..=2u8)
                .filter_map(|q| {
                    self.row_of(Who::Journal, q, metric, Who::Daemon)
                        .ratio
                        .map(|r| r.0)
                })
                .reduce(|a, b| metric.worse(a, b));
            let (ok, cmp) = if metric.lower_is_better {
                (value <= *target, "≤")
            } else {
                (value >= *target, "≥")
            };
            let verdict = Verdict {
                what: format!("journal {} {cmp} {target}×", metric.name),
                value,
                vs_trivial: None,
                target: *target,
                ok,
            };
            out.push((verdict, median));
        }
        out
    }

    /// Disk bytes of `who`'s runs of `mode` at `qos` (start to last reply): median, min, max.
    fn disk(&self, mode: Mode, qos: u8, who: Who) -> Option<(f64, f64, f64)> {
        spread(
            self.runs(mode, qos, who)
                .iter()
                .filter_map(|r| r.write_bytes.map(|b| b as f64)),
        )
    }

    /// The worst QoS 2 throughput run of the journal, in bytes per 20,000 commands.
    fn disk_per_20k(&self) -> Option<f64> {
        self.runs(Mode::Throughput, 2, Who::Journal)
            .iter()
            .filter_map(|r| Some(r.write_bytes? as f64 / r.n as f64 * 20_000.0))
            .reduce(f64::max)
    }

    /// The steady run: seconds from the first command to the last reply, and disk bytes per
    /// minute over that stretch.
    fn steady_per_min(&self) -> Option<(f64, f64)> {
        let r = self.steady.as_ref()?;
        let secs = r.n as f64 / r.per_sec;
        let bytes = r.write_bytes_cmds? as f64;
        (secs.is_finite() && secs > 0.0).then(|| (secs, bytes / secs * 60.0))
    }

    /// The soak's VmRSS after the first `SOAK_RSS_EVERY` replies and at the end (KiB).
    fn soak_rss(&self) -> Option<(u64, u64)> {
        let curve = &self.soak.as_ref()?.rss_curve;
        Some((curve.first()?.1, curve.last()?.1))
    }

    /// The issue's ratio targets, judged against the floor.
    fn verdicts(&self) -> Vec<Verdict> {
        let mut out = Vec::new();
        for metric in &FLOOR_METRICS {
            let (Some(target), Some(value)) = (metric.target, self.worst_best(metric, Who::Floor))
            else {
                continue;
            };
            let (ok, cmp) = if metric.lower_is_better {
                (value <= target, "≤")
            } else {
                (value >= target, "≥")
            };
            out.push(Verdict {
                what: format!("{} {cmp} {target}×", metric.name),
                value,
                vs_trivial: self.worst_best(metric, Who::Trivial),
                target,
                ok,
            });
        }
        out
    }

    fn all_runs(&self) -> impl Iterator<Item = (&(Mode, u8, Who), &RunResult)> {
        self.results
            .iter()
            .flat_map(|(k, runs)| runs.iter().map(move |r| (k, r)))
    }

    fn peak_rss(&self) -> Option<(f64, f64, f64)> {
        spread(
            (0..=2u8)
                .flat_map(|q| self.runs(Mode::Throughput, q, Who::Daemon))
                .filter_map(|r| r.hwm_kib.map(|k| k as f64)),
        )
    }

    fn max_peak_rss_kib(&self) -> Option<f64> {
        self.all_runs()
            .filter(|((_, _, who), _)| *who == Who::Daemon)
            .filter_map(|(_, r)| r.hwm_kib.map(|k| k as f64))
            .reduce(f64::max)
    }

    fn ready(&self, who: Who) -> Option<(f64, f64, f64)> {
        spread(
            self.all_runs()
                .filter(|((_, _, w), _)| *w == who)
                .map(|(_, r)| r.ready_ms),
        )
    }

    fn idle(&self) -> Option<(f64, f64, f64)> {
        spread(self.idles.iter().map(|i| i.wakeups_per_sec))
    }

    fn idle_allowance(&self) -> f64 {
        // One ping per keep-alive: the timer that sends it and the PINGRESP.
        IDLE_BUDGET + 2.0 / KEEP_ALIVE_SECS as f64
    }

    /// Missing, duplicate and wrong replies over `who`'s runs.
    fn losses(&self, who: Who) -> (u64, u64, u64) {
        let mut losses = (0, 0, 0);
        for (_, r) in self.all_runs().filter(|((_, _, w), _)| *w == who) {
            losses.0 += r.missing;
            losses.1 += r.duplicates;
            losses.2 += r.wrong;
        }
        losses
    }

    /// Runs where the responder was not subscribed when the first command went out.
    fn raced(&self) -> usize {
        self.all_runs().filter(|(_, r)| r.raced).count()
    }

    fn section(&self, s: &mut String, title: &str, metrics: &[Metric], reference: Who) {
        self.section_of(s, Who::Daemon, title, metrics, reference);
    }

    fn section_of(
        &self,
        s: &mut String,
        subject: Who,
        title: &str,
        metrics: &[Metric],
        reference: Who,
    ) {
        let fmt3 = |v: Option<(f64, f64, f64)>, prec: usize| match v {
            Some((m, lo, hi)) => format!("{m:.prec$} ({lo:.prec$}–{hi:.prec$})"),
            None => "—".to_owned(),
        };
        let prec = |unit: &str| if unit == "s" { 3 } else { 0 };
        let _ = writeln!(
            s,
            "\n{title:<28} {:>24} {:>24} {:>22} {:>6}",
            subject.name(),
            reference.name(),
            "ratio",
            "best"
        );
        for qos in 0..=2u8 {
            for metric in metrics {
                let row = self.row_of(subject, qos, metric, reference);
                let label = format!("QoS {qos} {} ({})", metric.name, metric.unit);
                let _ = writeln!(
                    s,
                    "  {label:<26} {:>24} {:>24} {:>22} {:>6}",
                    fmt3(row.daemon, prec(metric.unit)),
                    fmt3(row.reference, prec(metric.unit)),
                    fmt3(row.ratio, 2),
                    row.best.map_or("—".to_owned(), |b| format!("{b:.2}")),
                );
            }
        }
    }

    fn table(&self) -> String {
        let mut s = String::new();
        let fmt3 = |v: Option<(f64, f64, f64)>, prec: usize| match v {
            Some((m, lo, hi)) => format!("{m:.prec$} ({lo:.prec$}–{hi:.prec$})"),
            None => "—".to_owned(),
        };
        let _ = writeln!(
            s,
            "\nmqtt-responder round trip — {} on 127.0.0.1; {}",
            self.broker, self.machine
        );
        let _ = writeln!(
            s,
            "floor = the examiner's peer answering its own commands on its one connection; \
             trivial = a responder process with no logic in the daemon's place; journal = the \
             daemon with session.state_dir on ({}), the shipped unit's configuration",
            self.fstype
        );
        let _ = writeln!(
            s,
            "{} repetitions, daemon, journal, floor and trivial interleaved; medians (min–max); ratio = \
             daemon / reference per repetition, median (min–max) and best; load average {} → \
             {}{}",
            self.opts.reps,
            self.load.0,
            self.load.1,
            match self.opts.taskset {
                Some([b, l, r]) => format!("; pinned: broker CPU {b}, load {l}, responder {r}"),
                None => String::new(),
            }
        );
        let latency: Vec<Metric> = FLOOR_METRICS
            .into_iter()
            .filter(|m| m.mode == Mode::Latency)
            .collect();
        self.section(
            &mut s,
            &format!("latency: window 1, N = {}", self.opts.latency_n()),
            &latency,
            Who::Floor,
        );
        self.section(
            &mut s,
            &format!(
                "throughput: window {THROUGHPUT_WINDOW}, N = {}",
                self.opts.throughput_n()
            ),
            &[THROUGHPUT],
            Who::Floor,
        );
        let _ = write!(
            s,
            "\nsecond reference: the trivial responder process (latency p50/p99, throughput, \
             CPU)"
        );
        self.section(&mut s, "", &TRIVIAL_METRICS, Who::Trivial);
        let _ = write!(
            s,
            "\nthe journal: the daemon with session.state_dir on ({}) against it off, same run \
             (latency p50/p99, throughput, CPU)",
            self.fstype
        );
        self.section_of(&mut s, Who::Journal, "", &JOURNAL_METRICS, Who::Daemon);
        let _ = writeln!(
            s,
            "\ndisk writes (write_bytes of /proc/PID/io, process start to the last reply, read \
             before the completion message goes out; cancelled_write_bytes: of those, dirty \
             pages dropped before writeback); journal | daemon (state_dir off)"
        );
        for mode in [Mode::Latency, Mode::Throughput] {
            let n = match mode {
                Mode::Latency => self.opts.latency_n(),
                Mode::Throughput => self.opts.throughput_n(),
            };
            for qos in 0..=2u8 {
                let per_cmd = self
                    .disk(mode, qos, Who::Journal)
                    .map_or("—".to_owned(), |(m, _, _)| format!("{:.0}", m / n as f64));
                let label = format!("QoS {qos} {} N = {n}", mode.name());
                let cancelled = spread(
                    self.runs(mode, qos, Who::Journal)
                        .iter()
                        .filter_map(|r| r.cancelled_bytes.map(|b| b as f64)),
                );
                let _ = writeln!(
                    s,
                    "  {label:<26} {:>30} B = {per_cmd:>6} B/cmd (cancelled {:>9} B) | {} B",
                    fmt3(self.disk(mode, qos, Who::Journal), 0),
                    cancelled.map_or("—".to_owned(), |(m, _, _)| format!("{m:.0}")),
                    fmt3(self.disk(mode, qos, Who::Daemon), 0),
                );
            }
        }
        match (&self.steady, self.steady_per_min()) {
            (Some(r), Some((secs, per_min))) => {
                let _ = writeln!(
                    s,
                    "  steady {} QoS 2 commands at {STEADY_RATE}/s, journal on: {:.1} s, {:.2} \
                     cmd/s; {} B from the first command to the last reply ({} B since start, \
                     cancelled {} B) = {:.0} B/min, {:.0} B/cmd; missing {} dup {}\n  \
                     steady, the whole device {} (all writers, file system journal included, \
                     for information): {} over the same stretch",
                    r.n,
                    secs,
                    r.per_sec,
                    r.write_bytes_cmds.unwrap_or(0),
                    r.write_bytes.unwrap_or(0),
                    r.cancelled_bytes.unwrap_or(0),
                    per_min,
                    r.write_bytes_cmds.unwrap_or(0) as f64 / r.n as f64,
                    r.missing,
                    r.duplicates,
                    self.device.as_deref().unwrap_or("—"),
                    r.device_bytes_cmds.map_or("—".to_owned(), |b| format!(
                        "{b} B = {:.0} B/min",
                        b as f64 / secs * 60.0
                    )),
                );
            }
            _ => {
                let _ = writeln!(s, "  steady rate: no result");
            }
        }
        if let Some(r) = &self.soak {
            let _ = writeln!(
                s,
                "\nsoak: {} QoS 2 commands, window {THROUGHPUT_WINDOW}, journal on: {:.0} cmd/s, \
                 CPU {} s/10k, disk {} B ({:.0} B/cmd), missing {} dup {} wrong {}; VmRSS \
                 (KiB) after every {SOAK_RSS_EVERY} replies (replies: KiB @ s):",
                r.n,
                r.per_sec,
                r.cpu_per_10k.map_or("—".to_owned(), |c| format!("{c:.3}")),
                r.write_bytes.unwrap_or(0),
                r.write_bytes.unwrap_or(0) as f64 / r.n as f64,
                r.missing,
                r.duplicates,
                r.wrong,
            );
            for chunk in r.rss_curve.chunks(5) {
                let line: Vec<String> = chunk
                    .iter()
                    .map(|(n, kib, t)| format!("{n:>8}: {kib:>6} @ {t:>6.1}"))
                    .collect();
                let _ = writeln!(s, "  {}", line.join("   "));
            }
        }
        let loss = |who| {
            let (m, d, w) = self.losses(who);
            format!("{m} / {d} / {w}")
        };
        let _ = writeln!(s, "\ndaemon resources");
        let _ = writeln!(
            s,
            "  peak RSS (VmHWM, throughput runs)   {} KiB; max {} KiB (target ≤ 6144)",
            fmt3(self.peak_rss(), 0),
            self.max_peak_rss_kib()
                .map_or("—".to_owned(), |k| format!("{k:.0}")),
        );
        let _ = writeln!(
            s,
            "  start to READY (login seen)         {} ms (trivial: {} ms)",
            fmt3(self.ready(Who::Daemon), 1),
            fmt3(self.ready(Who::Trivial), 1),
        );
        let _ = writeln!(
            s,
            "  idle wake-ups over {:>2} s            {} /s (allowed {:.3}/s: {IDLE_BUDGET} + \
             keep-alive {KEEP_ALIVE_SECS} s pings); threads {}",
            self.idles.first().map_or(0, |i| i.window.as_secs()),
            fmt3(self.idle(), 3),
            self.idle_allowance(),
            self.idles.first().map_or(0, |i| i.threads),
        );
        let _ = writeln!(
            s,
            "  stripped release binary             {}",
            self.stripped.map_or("—".to_owned(), |b| format!(
                "{:.2} MiB ({b} bytes)",
                b as f64 / 1_048_576.0
            ))
        );
        let _ = writeln!(
            s,
            "  missing / duplicate / wrong replies {} (daemon, all QoS, all runs); floor {}; \
             trivial {}; runs where the responder was late to subscribe: {}",
            loss(Who::Daemon),
            loss(Who::Floor),
            loss(Who::Trivial),
            self.raced()
        );
        let _ = writeln!(
            s,
            "\ntargets (best repetition, worst QoS; ratio to the floor, to the trivial \
             responder in parentheses)"
        );
        for v in self.verdicts() {
            let _ = writeln!(
                s,
                "  {:<22} {:>6.2}×  {}  ({})",
                v.what,
                v.value,
                if v.ok { "PASS" } else { "FAIL" },
                v.vs_trivial.map_or("—".to_owned(), |t| format!(
                    "{t:.2}× the trivial responder"
                ))
            );
        }
        let rss_ok = self.max_peak_rss_kib().is_some_and(|k| k <= 6144.0);
        let _ = writeln!(
            s,
            "  {:<22} {:>6}   {}",
            "peak RSS ≤ 6 MiB",
            self.max_peak_rss_kib()
                .map_or("—".to_owned(), |k| format!("{:.2}M", k / 1024.0)),
            if rss_ok { "PASS" } else { "FAIL" }
        );
        let idle_ok = self
            .idles
            .iter()
            .map(|i| i.wakeups_per_sec)
            .reduce(f64::min)
            .is_some_and(|w| w <= self.idle_allowance());
        let _ = writeln!(
            s,
            "  {:<22} {:>6}   {}",
            "idle wake-ups",
            self.idle()
                .map_or("—".to_owned(), |(m, _, _)| format!("{m:.2}/s")),
            if idle_ok { "PASS" } else { "FAIL" }
        );
        let (m, d, w) = self.losses(Who::Daemon);
        let _ = writeln!(
            s,
            "  {:<22} {:>6}   {}",
            "no loss or duplicate",
            m + d + w,
            if m + d + w == 0 { "PASS" } else { "FAIL" }
        );
        let _ = writeln!(
            s,
            "\njournal targets (session.state_dir on, {}; best repetition, worst QoS; ratio to \
             the daemon with it off, the worst QoS's median ratio in parentheses)",
            self.fstype
        );
        let pass = |ok: bool| if ok { "PASS" } else { "FAIL" };
        for (v, median) in self.journal_verdicts() {
            let _ = writeln!(
                s,
                "  {:<30} {:>8.2}×  {}  (median {})",
                v.what,
                v.value,
                pass(v.ok),
                median.map_or("—".to_owned(), |m| format!("{m:.2}×"))
            );
        }
        let per_20k = self.disk_per_20k();
        let _ = writeln!(
            s,
            "  {:<30} {:>8}   {}  (worst QoS 2 throughput run, scaled to 20,000 commands)",
            "disk ≤ 1 MiB / 20k QoS 2 cmds",
            per_20k.map_or("—".to_owned(), |b| format!("{:.2}M", b / 1_048_576.0)),
            pass(per_20k.is_some_and(|b| b <= DISK_PER_20K_TARGET)),
        );
        let per_min = self.steady_per_min().map(|(_, b)| b);
        let _ = writeln!(
            s,
            "  {:<30} {:>8}   {}  ({STEADY_RATE} QoS 2 cmd/s for {} s)",
            "disk ≤ 1 MiB/min, steady",
            per_min.map_or("—".to_owned(), |b| format!("{:.2}M", b / 1_048_576.0)),
            pass(per_min.is_some_and(|b| b <= DISK_PER_MIN_TARGET)),
            self.opts.steady_secs(),
        );
        let steady_losses = self
            .steady
            .as_ref()
            .map(|r| r.missing + r.duplicates + r.wrong);
        let (jm, jd, jw) = self.losses(Who::Journal);
        let journal_losses = jm + jd + jw + steady_losses.unwrap_or(0);
        let _ = writeln!(
            s,
            "  {:<30} {:>8}   {}",
            "journal: no loss or duplicate",
            journal_losses,
            pass(journal_losses == 0 && steady_losses.is_some()),
        );
        match self.soak_rss() {
            Some((first, last)) => {
                let growth = last as f64 - first as f64;
                let _ = writeln!(
                    s,
                    "  {:<30} {:>7.0}K   {}  (VmRSS {first} KiB after {SOAK_RSS_EVERY} → \
                     {last} KiB at the end)",
                    "soak RSS growth ≤ 1 MiB",
                    growth,
                    pass(growth <= SOAK_RSS_GROWTH_TARGET_KIB),
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "  {:<30} {:>8}   (not run: --soak)",
                    "soak RSS growth ≤ 1 MiB", "—"
                );
            }
        }
        s
    }

    fn json(&self) -> Value {
        let trio = |v: Option<(f64, f64, f64)>| match v {
            Some((m, lo, hi)) => json!({"median": m, "min": lo, "max": hi}),
            None => Value::Null,
        };
        let mut cases = Vec::new();
        for mode in [Mode::Latency, Mode::Throughput] {
            for qos in 0..=2u8 {
                let mut figures = serde_json::Map::new();
                for metric in ALL_METRICS.iter().filter(|m| m.mode == mode) {
                    let floor = self.row(qos, metric, Who::Floor);
                    let trivial = self.row(qos, metric, Who::Trivial);
                    let journal = self.row_of(Who::Journal, qos, metric, Who::Daemon);
                    figures.insert(
                        metric.name.to_owned(),
                        json!({
                            "unit": metric.unit,
                            "daemon": trio(floor.daemon),
                            "floor": trio(floor.reference),
                            "trivial": trio(trivial.reference),
                            "ratio": trio(floor.ratio),
                            "best_ratio": floor.best,
                            "ratio_to_trivial": trio(trivial.ratio),
                            "best_ratio_to_trivial": trivial.best,
                            "journal": trio(journal.daemon),
                            "journal_ratio_to_daemon": trio(journal.ratio),
                            "journal_best_ratio_to_daemon": journal.best,
                        }),
                    );
                }
                let runs = |who| -> Vec<Value> {
                    self.runs(mode, qos, who).iter().map(run_json).collect()
                };
                cases.push(json!({
                    "mode": mode.name(),
                    "qos": qos,
                    "window": if mode == Mode::Latency { 1 } else { THROUGHPUT_WINDOW },
                    "figures": figures,
                    "daemon_runs": runs(Who::Daemon),
                    "floor_runs": runs(Who::Floor),
                    "trivial_runs": runs(Who::Trivial),
                    "journal_runs": runs(Who::Journal),
                }));
            }
        }
        let losses = |who| {
            let (missing, duplicates, wrong) = self.losses(who);
            json!({"missing": missing, "duplicates": duplicates, "wrong": wrong})
        };
        json!({
            "machine": self.machine,
            "broker": self.broker,
            "floor": "the examiner's peer answering its own commands on its one connection",
            "trivial": "a responder process with no logic (the library's session and driver) \
                        in the daemon's place",
            "load_average": {"before": self.load.0, "after": self.load.1},
            "repetitions": self.opts.reps,
            "quick": self.opts.quick,
            "taskset": self.opts.taskset,
            "cases": cases,
            "daemon": {
                "peak_rss_kib": trio(self.peak_rss()),
                "ready_ms": trio(self.ready(Who::Daemon)),
                "trivial_ready_ms": trio(self.ready(Who::Trivial)),
                "idle_wakeups_per_sec": trio(self.idle()),
                "idle_allowance_per_sec": self.idle_allowance(),
                "stripped_binary_bytes": self.stripped,
            },
            "losses": {
                "daemon": losses(Who::Daemon),
                "floor": losses(Who::Floor),
                "trivial": losses(Who::Trivial),
                "raced_runs": self.raced(),
            },
            "targets": self.verdicts().into_iter().map(|v| json!({
                "what": v.what, "worst_qos_best_ratio": v.value, "target": v.target,
                "pass": v.ok, "worst_qos_best_ratio_to_trivial": v.vs_trivial,
            })).collect::<Vec<_>>(),
            "journal": {
                "fstype": self.fstype,
                "targets": self.journal_verdicts().into_iter().map(|(v, median)| json!({
                    "what": v.what, "worst_qos_best_ratio_to_daemon": v.value,
                    "worst_qos_median_ratio_to_daemon": median, "target": v.target,
                    "pass": v.ok,
                })).collect::<Vec<_>>(),
                "disk_bytes_per_20k_qos2": self.disk_per_20k(),
                "disk_bytes_per_20k_target": DISK_PER_20K_TARGET,
                "steady": self.steady.as_ref().map(run_json),
                "steady_rate_per_sec": STEADY_RATE,
                "steady_disk_bytes_per_min": self.steady_per_min().map(|(_, b)| b),
                "steady_disk_per_min_target": DISK_PER_MIN_TARGET,
                "soak": self.soak.as_ref().map(run_json),
                "soak_rss_kib_first_last": self.soak_rss(),
                "soak_rss_growth_target_kib": SOAK_RSS_GROWTH_TARGET_KIB,
            },
        })
    }
}

/// One run's figures for the JSON document.
fn run_json(r: &RunResult) -> Value {
    json!({
        "n": r.n, "p50_us": r.p50_us, "p90_us": r.p90_us,
        "p99_us": r.p99_us, "max_us": r.max_us, "per_sec": r.per_sec,
        "missing": r.missing, "duplicates": r.duplicates,
        "wrong": r.wrong, "raced": r.raced, "passed": r.passed,
        "cpu_per_10k_s": r.cpu_per_10k, "peak_rss_kib": r.hwm_kib,
        "ready_ms": r.ready_ms.is_finite().then_some(r.ready_ms),
        "write_bytes": r.write_bytes, "write_bytes_commands": r.write_bytes_cmds,
        "cancelled_write_bytes": r.cancelled_bytes,
        "device_bytes_commands": r.device_bytes_cmds,
        "rss_curve": r.rss_curve.iter().map(|(n, kib, t)| json!({
            "replies": n, "rss_kib": kib, "secs": t,
        })).collect::<Vec<_>>(),
    })
}
