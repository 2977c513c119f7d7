//! `cargo xtask bench`: what wqflush costs, next to no probe and next to bpftrace, measured in
//! one QEMU boot of a Debian kernel with interleaved runs (none, fentry, kprobe, bpftrace, none,
//! ...). Under TCG absolute times mean little; the ratios between runs of the same boot do.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use wqflush_vmtest::{
    MODULE_GUEST_PATH, Series, VmRun, build_module, cache_dir, host_program, prepare_kernel,
    qemu::run_scenario_with,
};

/// The monitors compared, in the order each round runs them.
const CONFIGS: [&str; 5] = ["none", "kprobe-multi", "fentry", "kprobe", "bpftrace"];
/// wqflush's own configurations (its attach methods), the default first.
const METHODS: [&str; 3] = ["kprobe-multi", "fentry", "kprobe"];
/// Flushes in each storm: 4 kthreads bound to CPU 0 beside a busy one (the `storm` trigger).
const STORM: u64 = 100_000;
/// Empty bpftrace programs on the same hook (fentry, kprobe), run in the own-queue rounds only:
/// what entering a probe costs before any program runs, the floor for any tool.
const FLOORS: [&str; 2] = ["empty-fentry", "empty-kprobe"];
/// Where bpftrace goes in the guest (its libraries keep their host paths).
const BPFTRACE_GUEST: &str = "/usr/bin/bpftrace";
/// bpftrace, its libraries and the monitors' run time need more than the default 1 GiB.
const GUEST_MEMORY_MB: u32 = 3072;
/// USER_HZ: the unit of utime/stime in /proc/PID/stat on x86.
const USER_HZ: f64 = 100.0;

pub struct Options {
    pub series: Series,
    /// Rounds of the interleaved runs.
    pub rounds: u32,
    /// `bench <n>`: flushes of the module's own queue per run (non-offending path).
    pub iterations: u64,
    /// Offending flushes of system_wq per run, split over the two CPUs.
    pub flushes: u64,
    /// Distinct call sites for the memory figure (at most 10000).
    pub sites: u32,
}

pub fn run(opts: &Options, wqflush: &Path) -> Result<()> {
    ensure!(
        (1..=10000).contains(&opts.sites),
        "--sites must be 1..=10000"
    );
    let started = Instant::now();
    let bpftrace = host_bpftrace()?;
    let cache = cache_dir();
    let benchrun = build_benchrun(&cache.join("bench"))?;
    let kernel = prepare_kernel(opts.series, &cache)?;
    let ko = build_module(&kernel, &cache.join("module"))?;
    let mut files = vec![
        (ko, MODULE_GUEST_PATH.to_owned()),
        (wqflush.to_path_buf(), "/bin/wqflush".to_owned()),
        (benchrun, "/bin/benchrun".to_owned()),
    ];
    files.extend(host_program::with_libraries(&bpftrace, BPFTRACE_GUEST)?);
    let script = scenario(opts);
    // Every run boots its monitor, and bpftrace compiles its program with LLVM under TCG.
    let timeout = Duration::from_secs(
        900 + u64::from(opts.rounds) * (600 + opts.flushes / 10_000 + opts.iterations / 10_000),
    );
    let append = preemption(opts.series);
    eprintln!(
        "xtask: bench on Debian {} ({}{}), {} rounds of {}, guest timeout {:?}",
        opts.series,
        kernel.release,
        if append.is_empty() { String::new() } else { format!(", {append}") },
        opts.rounds,
        CONFIGS.join(" "),
        timeout
    );
    let run = run_scenario_with(&kernel, &files, &script, timeout, GUEST_MEMORY_MB, append)?;
    report(opts, &run, &kernel.release, Some(started.elapsed()))
}

/// The kernel command line of the bench: 6.x, built with dynamic preemption and voluntary by
/// default, boots with full preemption so the storm shows what preemption does to a probe
/// (7.x's own default is lazy; 5.10 is built voluntary).
fn preemption(series: Series) -> &'static str {
    match series {
        Series::V6_1 | Series::V6_12 => "preempt=full",
        Series::V5_10 | Series::V7 => "",
    }
}

/// Prints the table again from a boot kept with `WQFLUSH_VM_KEEP=1` (its console.log and
/// data.log); `opts` must be the options of that run.
pub fn replay(opts: &Options, dir: &Path) -> Result<()> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path)
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .with_context(|| format!("reading {}", path.display()))
    };
    let run = VmRun {
        console: read("console.log")?,
        data: read("data.log")?,
    };
    let release = run
        .console
        .lines()
        .find_map(|l| l.strip_prefix("vmtest: running scenario on "))
        .unwrap_or("?")
        .trim()
        .to_owned();
    report(opts, &run, &release, None)
}

fn report(opts: &Options, run: &VmRun, release: &str, took: Option<Duration>) -> Result<()> {
    if let Ok(log) = run.section("log") {
        eprint!("{log}");
    }
    run.ensure_success()?;
    let results = Results::parse(run.section("results")?)?;
    print!("{}", results.table(opts, release, took));
    Ok(())
}

/// Debian's bpftrace on the host (installed if missing), to copy into the guest.
fn host_bpftrace() -> Result<PathBuf> {
    let path = PathBuf::from("/usr/bin/bpftrace");
    if !path.exists() {
        eprintln!("xtask: installing bpftrace (only the bench uses it)");
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "bpftrace"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("apt-get install bpftrace")?;
        ensure!(
            status.success(),
            "apt-get install bpftrace failed ({status})"
        );
    }
    ensure!(
        path.exists(),
        "{} missing after installing bpftrace",
        path.display()
    );
    Ok(path)
}


/// Compiles the guest's timer (static) into `dir`, again only when its source changed.
fn build_benchrun(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (src, bin) = (dir.join("benchrun.c"), dir.join("benchrun"));
    if bin.exists() && std::fs::read_to_string(&src).is_ok_and(|s| s == BENCHRUN_C) {
        return Ok(bin);
    }
    std::fs::write(&src, BENCHRUN_C)?;
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .context("running gcc")?;
    ensure!(status.success(), "gcc -static benchrun.c failed ({status})");
    Ok(bin)
}

/// The guest's timer: `benchrun now` prints CLOCK_MONOTONIC; `benchrun NSFILE file|line ...
/// -- CMD` execs CMD in its own process (so `$!` and SIGTERM reach the monitor itself) after
/// forking a detached watcher that writes the time from just before the exec until the monitor
/// is ready into NSFILE, polling every millisecond.
const BENCHRUN_C: &str = r#"/*
 * benchrun: the bench's guest-side timer (static, no libraries).
 *   benchrun now                                    prints CLOCK_MONOTONIC in ns
 *   benchrun NSFILE file PATH -- CMD ARGS...        execs CMD (same pid, so $! and SIGTERM
 *   benchrun NSFILE line OUTFILE TEXT -- CMD ARGS...  reach it); a detached watcher writes the
 *                                                   ns from just before exec until PATH exists /
 *                                                   OUTFILE contains TEXT into NSFILE (-1 after
 *                                                   300 s)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int file_has(const char *path, const char *text)
{
	static char buf[1 << 16];
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	return strstr(buf, text) != NULL;
}

int main(int argc, char **argv)
{
	const char *nsfile, *mode, *path, *text = NULL;
	int cmd, fd;
	long long t0;
	pid_t child;

	if (argc == 2 && !strcmp(argv[1], "now")) {
		printf("%lld\n", now_ns());
		return 0;
	}
	if (argc < 5)
		goto usage;
	nsfile = argv[1];
	mode = argv[2];
	path = argv[3];
	if (!strcmp(mode, "file")) {
		cmd = 4;
	} else if (!strcmp(mode, "line") && argc >= 6) {
		text = argv[4];
		cmd = 5;
	} else {
		goto usage;
	}
	if (cmd >= argc || strcmp(argv[cmd], "--") || cmd + 1 >= argc)
		goto usage;
	cmd++;
	t0 = now_ns();
	child = fork();
	if (child < 0) {
		perror("benchrun: fork");
		return 1;
	}
	if (child == 0) {
		/* Double fork: the watcher belongs to init, not to CMD. */
		if (fork() != 0)
			_exit(0);
		fd = open("/dev/null", O_RDWR);
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		for (;;) {
			struct timespec ms = { 0, 1000000 };
			long long t = now_ns();
			struct stat st;
			int ready = text ? file_has(path, text) : stat(path, &st) == 0;

			if (ready || t - t0 > 300000000000LL) {
				char tmp[4096];
				FILE *f;

				snprintf(tmp, sizeof(tmp), "%s.tmp", nsfile);
				f = fopen(tmp, "w");
				if (!f)
					_exit(1);
				fprintf(f, "%lld\n", ready ? t - t0 : -1LL);
				fclose(f);
				rename(tmp, nsfile);
				_exit(0);
			}
			nanosleep(&ms, NULL);
		}
	}
	waitpid(child, NULL, 0);
	execvp(argv[cmd], argv + cmd);
	perror("benchrun: exec");
	return 127;
usage:
	fprintf(stderr, "usage: benchrun now | NSFILE file PATH -- CMD... | NSFILE line OUTFILE TEXT -- CMD...\n");
	return 2;
}
"#;

/// The guest side. Writes `<metric> <round> <config> <value>` lines to /tmp/results.
fn scenario(opts: &Options) -> String {
    let half = opts.flushes / 2;
    let params = format!(
        "ROUNDS={}\nITER={}\nHALF1={}\nHALF2={}\nSITES={}\nSTORM={STORM}\nCONFIGS=\"{}\"\nFLOORS=\"{}\"\nBPFTRACE={BPFTRACE_GUEST}\n",
        opts.rounds,
        opts.iterations,
        half,
        opts.flushes - half,
        opts.sites,
        CONFIGS.join(" "),
        FLOORS.join(" ")
    );
    format!("{params}{SCENARIO}")
}

const SCENARIO: &str = r#"
R=/tmp/results
L=/tmp/log
: > $R
: > $L
rec() { echo "$*" >> $R; }
log() { echo "bench: $*"; echo "$*" >> $L; }
fail() { log "FAILED: $*"; for f in /tmp/out /tmp/err; do [ -f $f ] && tail -n 30 $f >> $L; done; emit log cat $L; emit results cat $R; exit 1; }

# The offending flushes go through the 'pointer' trigger: flush_workqueue(h->wq) with
# h->wq == system_wq, which the kernel does not warn about at run time (6.12 would for others).
load_test_module pointer_wq=system || fail "insmod"

# The bpftrace equivalent of wqflush: the same function, one compare per system_*wq variable
# this kernel has, a count per kernel stack.
pred=
for s in $(awk 'NF == 3 && $3 ~ /^system_[a-z0-9_]*wq$/ { print $3 }' /proc/kallsyms | sort -u); do
	pred="$pred${pred:+ || }arg0 == *kaddr(\"$s\")"
done
# __flush_workqueue, or flush_workqueue before 5.19.
FN=$(flush_fn)
printf 'BEGIN { printf("bpftrace: live\\n"); }\nkprobe:%s /%s/ { @[kstack] = count(); }\n' "$FN" "$pred" > /tmp/wqflush.bt
log "bpftrace program: $(cat /tmp/wqflush.bt)"
printf 'BEGIN { printf("bpftrace: live\\n"); }\nkfunc:%s { }\n' "$FN" > /tmp/empty-fentry.bt
printf 'BEGIN { printf("bpftrace: live\\n"); }\nkprobe:%s { }\n' "$FN" > /tmp/empty-kprobe.bt
# Room for every call site (the default is 4096 keys).
export BPFTRACE_MAP_KEYS_MAX=65536

# start CONFIG: starts that monitor in the background (PID, output in /tmp/out) and waits
# until it is live; records the time from process start to its ready signal.
start() {
	PID=
	rm -f /tmp/ready /tmp/attach_ns /tmp/attach_ns.tmp /tmp/out /tmp/err
	case $1 in
	none)
		return 0 ;;
	fentry|kprobe|kprobe-multi)
		benchrun /tmp/attach_ns file /tmp/ready -- \
			wqflush --json --attach $1 --ready-file /tmp/ready >/tmp/out 2>/tmp/err &
		PID=$! ;;
	bpftrace|empty-*)
		_prog=/tmp/wqflush.bt
		[ $1 = bpftrace ] || _prog=/tmp/$1.bt
		: > /tmp/err
		benchrun /tmp/attach_ns line /tmp/out Attaching -- $BPFTRACE $_prog >/tmp/out 2>&1 &
		PID=$! ;;
	esac
	wait_for_file /tmp/attach_ns 300 || fail "$1 did not start"
	[ "$(cat /tmp/attach_ns)" -ge 0 ] || fail "$1 never got ready"
	case $1 in fentry|kprobe|kprobe-multi) _wq=1 ;; *) _wq= ;; esac
	if [ -z "$_wq" ]; then
		# "Attaching N probes..." comes before the attach; BEGIN fires once it is done.
		_n=3000
		until grep -q "bpftrace: live" /tmp/out; do
			_n=$((_n - 1))
			[ $_n -gt 0 ] && kill -0 $PID 2>/dev/null || fail "bpftrace did not go live"
			sleep 0.1
		done
	fi
	rec attach_ns $ROUND $1 $(cat /tmp/attach_ns)
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' /proc/$PID/status; }
cpu_ticks() { awk '{ print $14 + $15 }' /proc/$PID/stat; }
stop() {
	[ -n "$PID" ] || return 0
	stop_bg $PID 600
	_rc=$?
	[ $_rc = 0 ] || [ $_rc = 143 ] || fail "$1 exited with $_rc"
}
module_count() { awk -v t=$1 '$1 == t { n = $2 } END { print n + 0 }' /proc/wqflush_test; }
# bpftrace's map at exit: "@[\n stack lines\n]: count"; sums the stacks through function $1
# (count) and counts them (sites).
bt_count() { awk -v f="$1" '/^@\[/ { hit = 0 } index($0, f) { hit = 1 } /^\]: [0-9]+$/ { if (hit) { n += $2; s++ } } END { print n + 0, s + 0 }' /tmp/out; }
summary() { grep '"type":"summary"' /tmp/out | tail -n 1; }

# Context for the attach times: what reading kallsyms alone costs under TCG.
t0=$(benchrun now)
n=$(wc -l < /proc/kallsyms)
t1=$(benchrun now)
rec kallsyms_ns 0 none $((t1 - t0))
log "reading /proc/kallsyms ($n lines) took $(( (t1 - t0) / 1000000 )) ms"
t0=$(benchrun now)
wqflush doctor > /dev/null 2>&1
t1=$(benchrun now)
rec doctor_ns 0 none $((t1 - t0))
log "wqflush doctor (kallsyms, BTF, no load) took $(( (t1 - t0) / 1000000 )) ms"

ROUND=0
while [ $ROUND -lt $ROUNDS ]; do
	ROUND=$((ROUND + 1))
	# Non-offending path: flushes of the module's own queue, timed by the module.
	for c in $CONFIGS $FLOORS; do
		start $c
		if [ -n "$PID" ]; then
			sleep 1
			rec rss_attach_kb $ROUND $c $(rss_kb)
		fi
		echo "bench $ITER" > /proc/wqflush_test || fail "bench trigger"
		rec bench_ns $ROUND $c $(cat /proc/wqflush_test_bench)
		stop $c
		log "round $ROUND $c: bench done"
	done
	# Offending path: flush_workqueue(system_wq) from both CPUs at once.
	for c in $CONFIGS; do
		start $c
		before=$(module_count pointer)
		[ -n "$PID" ] && ticks0=$(cpu_ticks)
		t0=$(benchrun now)
		taskset -c 0 sh -c "echo 'pointer $HALF1' > /proc/wqflush_test" &
		w0=$!
		taskset -c 1 sh -c "echo 'pointer $HALF2' > /proc/wqflush_test" &
		w1=$!
		wait $w0 || fail "writer 0"
		wait $w1 || fail "writer 1"
		t1=$(benchrun now)
		rec flood_ns $ROUND $c $((t1 - t0))
		rec flood_module $ROUND $c $(( $(module_count pointer) - before ))
		if [ -n "$PID" ]; then
			rec flood_cpu_ticks $ROUND $c $(( $(cpu_ticks) - ticks0 ))
		fi
		stop $c
		case $c in
		fentry|kprobe|kprobe-multi)
			s=$(summary)
			[ -n "$s" ] || fail "$c printed no summary"
			rec flood_summary $ROUND $c "$s" ;;
		bpftrace)
			rec flood_bt $ROUND $c $(bt_count wqflush_test_flush_pointer) ;;
		esac
		log "round $ROUND $c: flood done"
	done
	# Memory: RSS once every one of SITES distinct call sites has been reported.
	for c in $CONFIGS; do
		[ $c = none ] && continue
		start $c
		echo "sites $SITES" > /proc/wqflush_test || fail "sites trigger"
		if [ $c != bpftrace ]; then
			# Steady: every site's first-sighting record written, or no new one for 3 s (the
			# ring buffer drops first sightings in a burst; their flushes are still counted).
			_last=-1
			_same=0
			while :; do
				_n=$(grep -c '"type":"flush"' /tmp/out)
				[ $_n -ge $SITES ] && break
				if [ $_n = $_last ]; then
					_same=$((_same + 1))
					[ $_same -ge 30 ] && break
				else
					_same=0
				fi
				_last=$_n
				sleep 0.1
			done
			rec sites_records $ROUND $c $_n
		fi
		sleep 1
		rec rss_sites_kb $ROUND $c $(rss_kb)
		stop $c
		case $c in
		fentry|kprobe|kprobe-multi)
			# The summary names all sites (megabytes): only its numbers go to the results.
			summary > /tmp/summary
			rec sites_summary_sites $ROUND $c $(grep -o '"caller":"wqflush_test_flush_sites"' /tmp/summary | wc -l)
			rec sites_lost $ROUND $c $(grep -o '"lost":[0-9]*' /tmp/summary | tail -n 1 | cut -d: -f2) ;;
		bpftrace)
			rec sites_bt $ROUND $c $(bt_count wqflush_test_flush_sites) ;;
		esac
		log "round $ROUND $c: sites done"
	done
	# Exactness: a storm of flushes from kthreads sharing CPU 0 with a busy one.
	for c in $CONFIGS; do
		[ $c = none ] && continue
		start $c
		before=$(module_count storm)
		echo "storm $STORM" > /proc/wqflush_test || fail "storm trigger"
		rec storm_module $ROUND $c $(( $(module_count storm) - before ))
		stop $c
		case $c in
		bpftrace) rec storm_bt $ROUND $c $(bt_count wqflush_test_flush_storm) ;;
		*) rec storm_summary $ROUND $c "$(summary)" ;;
		esac
		log "round $ROUND $c: storm done"
	done
	# Memory when every first sighting streams live: the same sites, one every ~1 ms.
	for c in $CONFIGS; do
		case $c in none|bpftrace) continue ;; esac
		start $c
		echo "sites_paced $SITES" > /proc/wqflush_test || fail "sites_paced trigger"
		sleep 2
		rec paced_records $ROUND $c $(grep -c '"type":"flush"' /tmp/out)
		rec rss_paced_kb $ROUND $c $(rss_kb)
		stop $c
		rec paced_lost $ROUND $c $(summary | grep -o '"lost":[0-9]*' | tail -n 1 | cut -d: -f2)
		log "round $ROUND $c: paced sites done"
	done
done
emit log cat $L
emit results cat $R
"#;

/// Everything the guest recorded: metric -> config -> values by round.
struct Results {
    values: BTreeMap<(String, String), Vec<(u32, String)>>,
}

impl Results {
    fn parse(text: &str) -> Result<Self> {
        let mut values: BTreeMap<(String, String), Vec<(u32, String)>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut parts = line.splitn(4, ' ');
            let (Some(metric), Some(round), Some(config), Some(value)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                bail!("bad result line {line:?}");
            };
            let round = round
                .parse()
                .with_context(|| format!("bad round in {line:?}"))?;
            values
                .entry((metric.to_owned(), config.to_owned()))
                .or_default()
                .push((round, value.to_owned()));
        }
        Ok(Results { values })
    }

    /// Numeric values of `metric` for `config`, by round.
    fn nums(&self, metric: &str, config: &str) -> BTreeMap<u32, f64> {
        self.values
            .get(&(metric.to_owned(), config.to_owned()))
            .into_iter()
            .flatten()
            .filter_map(|(r, v)| Some((*r, v.split_whitespace().next()?.parse().ok()?)))
            .collect()
    }

    fn raw(&self, metric: &str, config: &str) -> Vec<&str> {
        self.values
            .get(&(metric.to_owned(), config.to_owned()))
            .into_iter()
            .flatten()
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Per-round ratios `a / b` of one metric (runs of the same round pair up).
    fn ratios(&self, metric: &str, a: &str, b: &str) -> Vec<f64> {
        let (a, b) = (self.nums(metric, a), self.nums(metric, b));
        a.iter()
            .filter_map(|(r, x)| Some(x / b.get(r).filter(|y| **y > 0.0)?))
            .collect()
    }

    fn table(&self, opts: &Options, release: &str, took: Option<Duration>) -> String {
        let mut t = Table::default();
        let cols = [
            "no probe",
            "wqflush kprobe-multi (auto)",
            "wqflush fentry",
            "wqflush kprobe",
            "bpftrace",
        ];
        let stat = |metric: &str, scale: f64, digits: usize| -> Vec<String> {
            CONFIGS
                .iter()
                .map(|c| {
                    let v: Vec<f64> = self.nums(metric, c).values().map(|x| x / scale).collect();
                    Stat::of(&v).show(digits)
                })
                .collect()
        };
        let ratio = |metric: &str, b: &str| -> Vec<String> {
            CONFIGS
                .iter()
                .map(|c| {
                    if *c == b {
                        "1".to_owned()
                    } else {
                        Stat::of(&self.ratios(metric, c, b)).show(3)
                    }
                })
                .collect()
        };
        let per_flush = |metric: &str, n: u64| -> Vec<String> {
            CONFIGS
                .iter()
                .map(|c| {
                    let v: Vec<f64> = self
                        .nums(metric, c)
                        .values()
                        .map(|x| x / n as f64)
                        .collect();
                    Stat::of(&v).show(0)
                })
                .collect()
        };
        t.head("", &cols);
        t.row(
            &format!(
                "own queue: ns per flush_workqueue(own_wq) ({} per run)",
                opts.iterations
            ),
            per_flush("bench_ns", opts.iterations),
        );
        t.row("  ratio to no probe", ratio("bench_ns", "none"));
        t.row("  ratio to bpftrace", ratio("bench_ns", "bpftrace"));
        t.row(
            "  an empty program on the same hook (bpftrace `{}`)",
            self.floor_cells(|_, floor| {
                let n = opts.iterations as f64;
                let v: Vec<f64> = self
                    .nums("bench_ns", floor)
                    .values()
                    .map(|x| x / n)
                    .collect();
                Stat::of(&v).show(0)
            }),
        );
        t.row(
            "    its ratio to no probe",
            self.floor_cells(|_, floor| Stat::of(&self.ratios("bench_ns", floor, "none")).show(3)),
        );
        t.row(
            "    wqflush's ratio to it",
            self.floor_cells(|c, floor| Stat::of(&self.ratios("bench_ns", c, floor)).show(3)),
        );
        t.row(
            &format!("system_wq: wall s for {} flushes from 2 CPUs", opts.flushes),
            stat("flood_ns", 1e9, 2),
        );
        t.row("  ratio to no probe", ratio("flood_ns", "none"));
        t.row("  ratio to bpftrace", ratio("flood_ns", "bpftrace"));
        t.row("  counted / module's count", self.flood_counts());
        t.row("  lost / uncounted", self.flood_losses());
        t.row("  monitor's user+sys CPU s during the flood", {
            let mut v = stat("flood_cpu_ticks", USER_HZ, 2);
            v[0] = "-".into();
            v
        });
        t.row("attach: ms from exec to live", {
            let mut v = stat("attach_ns", 1e6, 0);
            v[0] = "-".into();
            v
        });
        t.row("  ratio to bpftrace", {
            let mut v = ratio("attach_ns", "bpftrace");
            v[0] = "-".into();
            v
        });
        t.row("RSS MB after attach", {
            let mut v = stat("rss_attach_kb", 1024.0, 1);
            v[0] = "-".into();
            v
        });
        t.row(
            &format!("RSS MB after {} distinct call sites", opts.sites),
            {
                let mut v = stat("rss_sites_kb", 1024.0, 1);
                v[0] = "-".into();
                v
            },
        );
        t.row(
            "  sites in the summary (first sightings streamed live)",
            self.sites_reported(),
        );
        t.row(
            &format!("RSS MB after {} call sites, one every ~1 ms", opts.sites),
            stat("rss_paced_kb", 1024.0, 1),
        );
        t.row("  first sightings streamed live / lost", self.paced_streamed());
        t.row(
            &format!("storm: {STORM} flushes from 4 kthreads on CPU 0: counted / fired"),
            self.storm_counts(),
        );
        t.row("  missed (the kernel's count of skipped runs)", self.storm_missed());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nwqflush bench: Debian {release} under QEMU/TCG (-smp 2), {} interleaved rounds \
             ({}); median [min-max]{}\n",
            opts.rounds,
            CONFIGS.join(" "),
            took.map_or(String::new(), |t| format!("; took {} s", t.as_secs()))
        );
        out.push_str(&t.render());
        let once = |m: &str| self.nums(m, "none").values().next().map(|ns| ns / 1e6);
        if let (Some(k), Some(d)) = (once("kallsyms_ns"), once("doctor_ns")) {
            let _ = writeln!(
                out,
                "\nIn this guest, reading /proc/kallsyms once took {k:.0} ms and `wqflush doctor` \
                 (kallsyms, BTF, no probe loaded) {d:.0} ms."
            );
        }
        out.push('\n');
        out.push_str(&self.goals(opts));
        out
    }

    /// One cell per column, filled for wqflush's two columns from the matching empty probe.
    fn floor_cells(&self, cell: impl Fn(&str, &str) -> String) -> Vec<String> {
        CONFIGS
            .iter()
            .map(
                |c| match FLOORS.iter().find(|f| f.strip_prefix("empty-") == Some(c)) {
                    Some(floor) => cell(c, floor),
                    None => "-".to_owned(),
                },
            )
            .collect()
    }

    /// wqflush: the summary's count at the module's pointer call site; bpftrace: its stacks
    /// through that function. Against the module's own count of the run, per round.
    fn flood_counts(&self) -> Vec<String> {
        CONFIGS
            .iter()
            .map(|c| {
                let module = self.nums("flood_module", c);
                let counted = self.counted(c, "flood", "wqflush_test_flush_pointer");
                let ok = module
                    .iter()
                    .all(|(r, m)| counted.get(r).is_some_and(|x| x.0 as f64 == *m));
                match *c {
                    "none" => format!(
                        "- / {}",
                        module
                            .values()
                            .next()
                            .map_or("?".into(), |m| format!("{m}"))
                    ),
                    _ if counted.is_empty() => "?".into(),
                    _ => {
                        let first = counted.values().next().map_or(0, |x| x.0);
                        let m = module.values().next().copied().unwrap_or(0.0);
                        if ok {
                            format!("{first} / {m} (all equal)")
                        } else {
                            let all: Vec<String> = counted
                                .iter()
                                .map(|(r, x)| {
                                    format!("{}/{}", x.0, module.get(r).copied().unwrap_or(0.0))
                                })
                                .collect();
                            format!("DIFFER {}", all.join(" "))
                        }
                    }
                }
            })
            .collect()
    }

    fn flood_losses(&self) -> Vec<String> {
        CONFIGS
            .iter()
            .map(|c| match *c {
                "fentry" | "kprobe" | "kprobe-multi" => {
                    let (mut lost, mut uncounted) = (0, 0);
                    for s in self.raw("flood_summary", c) {
                        lost += json_u64(s, "lost").unwrap_or(u64::MAX / 4);
                        uncounted += json_u64(s, "uncounted").unwrap_or(u64::MAX / 4);
                    }
                    format!("{lost} / {uncounted} (sum)")
                }
                "bpftrace" => "n/a (map)".into(),
                _ => "-".into(),
            })
            .collect()
    }

    /// Per round `counted/fired` of the storm, fired being the module's own count.
    fn storm_counts(&self) -> Vec<String> {
        CONFIGS
            .iter()
            .map(|c| {
                let fired = self.nums("storm_module", c);
                let counted = self.counted(c, "storm", "wqflush_test_flush_storm");
                if fired.is_empty() {
                    return "-".into();
                }
                let cells: Vec<String> = fired
                    .iter()
                    .map(|(r, f)| format!("{}/{f}", counted.get(r).map_or(0, |x| x.0)))
                    .collect();
                cells.join(" ")
            })
            .collect()
    }

    /// The summaries' `missed`, per round (`null`: the kernel keeps no count for the method).
    fn storm_missed(&self) -> Vec<String> {
        CONFIGS
            .iter()
            .map(|c| {
                let v: Vec<String> = self
                    .raw("storm_summary", c)
                    .iter()
                    .map(|s| json_u64(s, "missed").map_or("null".into(), |n| n.to_string()))
                    .collect();
                if v.is_empty() { "-".into() } else { v.join(" ") }
            })
            .collect()
    }

    fn paced_streamed(&self) -> Vec<String> {
        CONFIGS
            .iter()
            .map(|c| {
                let live: Vec<f64> = self.nums("paced_records", c).values().copied().collect();
                let lost: Vec<f64> = self.nums("paced_lost", c).values().copied().collect();
                if live.is_empty() {
                    return "-".into();
                }
                format!("{} / {}", Stat::of(&live).show(0), Stat::of(&lost).show(0))
            })
            .collect()
    }

    fn sites_reported(&self) -> Vec<String> {
        CONFIGS
            .iter()
            .map(|c| match *c {
                "none" => "-".into(),
                "bpftrace" => {
                    let v: Vec<f64> = self
                        .counted(c, "sites", "wqflush_test_flush_sites")
                        .values()
                        .map(|x| x.1 as f64)
                        .collect();
                    format!("{} (at exit)", Stat::of(&v).show(0))
                }
                _ => {
                    let live: Vec<f64> = self.nums("sites_records", c).values().copied().collect();
                    let total: Vec<f64> = self
                        .nums("sites_summary_sites", c)
                        .values()
                        .copied()
                        .collect();
                    format!(
                        "{} ({} live)",
                        Stat::of(&total).show(0),
                        Stat::of(&live).show(0)
                    )
                }
            })
            .collect()
    }

    /// round -> (flushes counted at `func`, distinct sites there) for `config` in `phase`.
    fn counted(&self, config: &str, phase: &str, func: &str) -> BTreeMap<u32, (u64, u64)> {
        let key = |m: &str| (m.to_owned(), config.to_owned());
        let mut out = BTreeMap::new();
        if let Some(v) = self.values.get(&key(&format!("{phase}_bt"))) {
            for (r, s) in v {
                let mut it = s.split_whitespace().filter_map(|x| x.parse().ok());
                if let (Some(n), Some(sites)) = (it.next(), it.next()) {
                    out.insert(*r, (n, sites));
                }
            }
        }
        if let Some(v) = self.values.get(&key(&format!("{phase}_summary"))) {
            for (r, s) in v {
                // Each site object of the summary: {"wq":...,"caller":"func",...,"count":N,...}
                let (mut n, mut sites) = (0, 0);
                for obj in s.split("{\"wq\"").skip(1) {
                    if obj.contains(&format!("\"caller\":\"{func}\"")) {
                        n += json_u64(obj, "count").unwrap_or(0);
                        sites += 1;
                    }
                }
                out.insert(*r, (n, sites));
            }
        }
        out
    }

    fn goals(&self, opts: &Options) -> String {
        let mut out = String::from("goals:\n");
        let med = |v: Vec<f64>| Stat::of(&v).median;
        for c in METHODS {
            let floor = format!("empty-{c}");
            if let (Some(e), Some(w)) = (
                med(self.ratios("bench_ns", &floor, "none")),
                med(self.ratios("bench_ns", c, &floor)),
            ) {
                let _ = writeln!(
                    out,
                    "  [info] {c}: an empty program on the same hook costs {e:.3}x no probe; \
                     wqflush costs {w:.3}x that"
                );
            }
            let mut line = |ok: bool, what: String| {
                let _ = writeln!(out, "  [{}] {c}: {what}", if ok { "met" } else { "MISSED" });
            };
            if let Some(r) = med(self.ratios("bench_ns", c, "none")) {
                line(
                    r <= 1.02,
                    format!("own-queue flush cost {r:.3}x no probe (goal <= 1.02x)"),
                );
            }
            if let Some(r) = med(self.ratios("bench_ns", c, "bpftrace")) {
                line(
                    r <= 1.0,
                    format!("own-queue flush cost {r:.3}x bpftrace (goal <= 1x)"),
                );
            }
            let module = self.nums("flood_module", c);
            let counted = self.counted(c, "flood", "wqflush_test_flush_pointer");
            let exact = !module.is_empty()
                && module
                    .iter()
                    .all(|(r, m)| counted.get(r).is_some_and(|x| x.0 as f64 == *m));
            line(
                exact,
                format!(
                    "counted every one of the {} offending flushes",
                    opts.flushes
                ),
            );
            let uncounted: u64 = self
                .raw("flood_summary", c)
                .iter()
                .map(|s| json_u64(s, "uncounted").unwrap_or(1))
                .sum();
            line(uncounted == 0, format!("uncounted {uncounted} (goal 0)"));
            if let Some(r) = med(self.ratios("flood_ns", c, "bpftrace")) {
                line(
                    r <= 1.0,
                    format!("offending flood {r:.3}x bpftrace's time (goal <= 1x, aim 0.8x)"),
                );
            }
            let fired = self.nums("storm_module", c);
            let counted = self.counted(c, "storm", "wqflush_test_flush_storm");
            let storm_exact = !fired.is_empty()
                && fired
                    .iter()
                    .all(|(r, f)| counted.get(r).is_some_and(|x| x.0 as f64 == *f));
            line(storm_exact, "counted every flush of the storm".to_owned());
            if let Some(ms) = med(self
                .nums("attach_ns", c)
                .values()
                .map(|x| x / 1e6)
                .collect())
            {
                line(ms <= 100.0, format!("attach {ms:.0} ms (goal <= 100 ms)"));
            }
            if let Some(r) = med(self.ratios("attach_ns", c, "bpftrace")) {
                line(
                    r <= 0.1,
                    format!("attach {r:.3}x bpftrace's (goal <= 0.1x)"),
                );
            }
            for (m, what) in [
                ("rss_attach_kb", "after attach"),
                ("rss_sites_kb", "after the sites"),
                ("rss_paced_kb", "after the paced sites (all streamed live)"),
            ] {
                if let Some(mb) = med(self.nums(m, c).values().map(|x| x / 1024.0).collect()) {
                    line(mb <= 10.0, format!("RSS {what} {mb:.1} MB (goal <= 10 MB)"));
                }
            }
        }
        out
    }
}

/// `"key":N` in a JSON line (the fields the bench reads are plain numbers).
fn json_u64(s: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let i = s.rfind(&pat)? + pat.len();
    let digits: String = s[i..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

struct Stat {
    median: Option<f64>,
    min: f64,
    max: f64,
    n: usize,
}

impl Stat {
    fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        };
        Stat {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
            n: v.len(),
        }
    }

    fn show(&self, digits: usize) -> String {
        match self.median {
            None => "?".into(),
            Some(m) if self.n == 1 => format!("{m:.digits$}"),
            Some(m) => format!("{m:.digits$} [{:.digits$}-{:.digits$}]", self.min, self.max),
        }
    }
}

#[derive(Default)]
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn head(&mut self, first: &str, cols: &[&str]) {
        let mut row = vec![first.to_owned()];
        row.extend(cols.iter().map(|c| (*c).to_owned()));
        self.rows.push(row);
    }

    fn row(&mut self, label: &str, cells: Vec<String>) {
        let mut row = vec![label.to_owned()];
        row.extend(cells);
        self.rows.push(row);
    }

    /// A Markdown table, padded so it also reads as plain text.
    fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width: Vec<usize> = (0..cols)
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for (n, row) in self.rows.iter().enumerate() {
            out.push('|');
            for (i, w) in width.iter().enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                let pad = w - cell.chars().count();
                if i == 0 {
                    let _ = write!(out, " {cell}{} |", " ".repeat(pad));
                } else {
                    let _ = write!(out, " {}{cell} |", " ".repeat(pad));
                }
            }
            out.push('\n');
            if n == 0 {
                out.push('|');
                for (i, w) in width.iter().enumerate() {
                    let dashes = "-".repeat(*w);
                    if i == 0 {
                        let _ = write!(out, "-{dashes}-|");
                    } else {
                        let _ = write!(out, "-{dashes}:|");
                    }
                }
                out.push('\n');
            }
        }
        out
    }
}
