//! The README's demo binary runs the seed scenario end to end and reports the dashboard and per-source lag.

use std::process::Command;

#[test]
fn demo_runs_the_seed_scenario() {
    let exe = std::env::current_exe().unwrap();
    let demo = exe.parent().and_then(|d| d.parent()).unwrap().join("pgtrickle-demo");
    let output = Command::new(&demo).args(["--seconds", "8"]).output().expect("run pgtrickle-demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("psql \"host=127.0.0.1"), "{stdout}");
    assert!(stdout.contains("dashboard (top 5 by total)"), "{stdout}");
    // By the end both sources stream into C.
    let last = stdout.rsplit("per-source lag:").next().unwrap_or_default();
    assert_eq!(last.matches("streaming").count(), 2, "{stdout}");
    let bad = Command::new(&demo).arg("--bogus").output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("pgtrickle-demo: unknown arguments"));
}
