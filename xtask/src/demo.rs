//! `cargo xtask demo`: wqflush inside a real Debian kernel, catching the test module's flushes.

use std::{path::Path, time::Duration};

use anyhow::Result;
use wqflush_vmtest::{Guest, Series, boot_scenario};

/// What the guest does; printed for the user before the results so they can follow along.
const SCENARIO: &str = r#"# The module's own build (with the kernel's -g) where a distribution's would be: source lines
mkdir -p /lib/modules/$(uname -r)/extra && cp /lib/wqflush_test.ko /lib/modules/$(uname -r)/extra/
load_test_module || exit 1
ifconfig lo 127.0.0.1 up
emit doctor wqflush doctor
wqflush --waits --stuck-after 3s --kmsg --metrics 19100 --ready-file /tmp/ready >/tmp/wqflush.out 2>&1 &
pid=$!
wait_for_file /tmp/ready 60 || { cat /tmp/wqflush.out; exit 1; }
echo "scheduled 3" > /proc/wqflush_test   # flush_scheduled_work()
echo "long 2" > /proc/wqflush_test        # flush_workqueue(system_long_wq)
echo "pointer 4" > /proc/wqflush_test     # flush_workqueue(h->wq), h->wq == system_unbound_wq
echo "own 5" > /proc/wqflush_test         # flush_workqueue(own_wq): fine, not reported
echo "inline 1" > /proc/wqflush_test      # the pointer queue, from an inlined helper
echo "slow 3" > /proc/wqflush_test        # 3 work items sleeping 200 ms on system_wq, then a flush of it
echo "worker_self" > /proc/wqflush_test   # a work item of system_long_wq flushes system_long_wq
sleep 6                                   # --stuck-after 3s: that flush never returns
emit metrics wget -q -O - http://127.0.0.1:19100/metrics
stop_bg $pid
emit wqflush cat /tmp/wqflush.out
emit dmesg sh -c 'dmesg | grep -A9 "cut here" | head -22'
emit check wqflush check --json -- sh -c 'echo "pointer 1" > /proc/wqflush_test'
true  # check exits 3 when something flushed a system queue; the demo goes on
"#;

pub fn run(series: Series, wqflush: &Path) -> Result<()> {
    eprintln!("xtask: booting Debian {series} under QEMU (TCG) with this script:\n");
    for line in SCENARIO.lines() {
        eprintln!("    {line}");
    }
    let guest = Guest {
        wqflush: Some(wqflush.to_path_buf()),
        timeout: Duration::from_secs(300),
        // --kmsg writes kernel-style warnings on purpose, all at the test module's call sites.
        expected_warning: Some(" at wqflush_test_"),
        append: "",
        files: Vec::new(),
        memory_mb: wqflush_vmtest::qemu::DEFAULT_MEMORY_MB,
    };
    let (run, _) = boot_scenario(series, SCENARIO, &guest)?;
    let kernel = run.kernel_release().unwrap_or("?");
    println!(
        "\n# wqflush doctor (in the guest, Debian {})\n{}",
        kernel,
        run.section("doctor")?
    );
    println!(
        "# wqflush --waits --stuck-after 3s (in the guest, stopped with SIGTERM after the triggers)\n{}",
        run.section("wqflush")?
    );
    println!(
        "# curl 127.0.0.1:19100/metrics (wqflush --metrics 19100)\n{}",
        run.section("metrics")?
    );
    println!("# dmesg (wqflush --kmsg)\n{}", run.section("dmesg")?);
    println!(
        "# wqflush check --json -- sh -c 'echo \"pointer 1\" > /proc/wqflush_test'   (exit code {})\n{}",
        run.section_status("check")?,
        run.section("check")?
    );
    Ok(())
}
