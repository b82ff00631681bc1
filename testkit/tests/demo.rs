//! The README's demo binary runs the seed scenario end to end and reports the dashboard and per-source lag.

use std::process::Command;

testkit::backend_tests!(demo_runs_the_seed_scenario);

fn demo() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().join("pgtrickle-demo")
}

fn demo_runs_the_seed_scenario(backend: shared_model::Backend) {
    let demo = demo();
    let output = Command::new(&demo)
        .args(["--backend", &backend.to_string(), "--seconds", "8"])
        .output()
        .expect("run pgtrickle-demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("psql \"host=127.0.0.1"), "{stdout}");
    assert!(stdout.contains("dashboard (top 5 by total)"), "{stdout}");
    // By the end both sources stream into C.
    let last = stdout.rsplit("per-source lag:").next().unwrap_or_default();
    assert_eq!(last.matches("streaming").count(), 2, "{stdout}");
    let server = match backend {
        shared_model::Backend::Kafka => "(Kafka protocol)",
        shared_model::Backend::Nats => "NATS JetStream: nats://",
    };
    assert!(stdout.contains(server), "{stdout}");
}

#[test]
fn demo_refuses_bad_arguments() {
    for (args, expected) in [
        (&["--bogus"][..], "pgtrickle-demo: unknown arguments"),
        (&["--backend", "rabbitmq"], "pgtrickle-demo: --backend:"),
        (&["--seconds"], "pgtrickle-demo: --seconds needs a value"),
    ] {
        let bad = Command::new(demo()).args(args).output().unwrap();
        assert_eq!(bad.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
    }
}
