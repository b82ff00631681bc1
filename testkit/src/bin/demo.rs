//! The seed scenario, live on this machine: three coordinators, the change log's server (a Kafka-protocol broker,
//! tansu, or with `--backend nats` a NATS JetStream server), and PostgreSQL clusters A (orders → order_agg),
//! B (users → user_stats) and C (federated `dashboard` joining both), with a small workload on A and B. Prints the
//! dashboard and per-source lag every few seconds, says how to connect, and stops (removing everything it
//! started) on Ctrl-C or after `--seconds N`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use shared_model::Backend;
use testkit::federation::Federation;
use testkit::seed::*;

fn main() {
    const USAGE: &str = "usage: pgtrickle-demo [--backend kafka|nats] [--seconds N]";
    let (mut seconds, mut backend) = (None::<u64>, Backend::Kafka);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = |rest: &mut std::slice::Iter<'_, String>| {
            rest.next().cloned().unwrap_or_else(|| fail(&format!("{flag} needs a value; {USAGE}")))
        };
        match flag.as_str() {
            "--seconds" => {
                let n = value(&mut rest);
                seconds = Some(n.parse().unwrap_or_else(|_| fail(&format!("--seconds takes a number, not {n:?}"))));
            }
            "--backend" => {
                let name = value(&mut rest);
                backend = name.parse().unwrap_or_else(|e| fail(&format!("--backend: {e}")));
            }
            _ => fail(&format!("unknown arguments {:?}; {USAGE}", &args)),
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        if let Err(error) = ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed)) {
            fail(&format!("cannot handle Ctrl-C: {error}"));
        }
    }
    println!("starting three coordinators, a {backend} change log and three PostgreSQL 15 clusters …");
    let fed =
        Federation::start_on(backend, 3, &[]).unwrap_or_else(|e| fail(&format!("cannot start the federation: {e}")));
    let (mut a, mut b) = setup_sources(&fed);
    let mut c = fed.connect(2).unwrap_or_else(|e| fail(&e.to_string()));
    if let Err(error) = c.query_one(
        &format!(
            "SELECT pgtrickle.create_federated_stream_table('dashboard', '{DASHBOARD}', sources => {}, \
             schedule => '500ms')",
            sources(fed.backend())
        ),
        &[],
    ) {
        fail(&format!("cannot create the dashboard: {error}"));
    }
    println!();
    for (index, name) in
        ["A (orders → order_agg)", "B (users → user_stats)", "C (federated dashboard)"].iter().enumerate()
    {
        println!("  cluster {name}: psql \"{}\"", fed.clusters[index].conninfo("postgres"));
    }
    println!("  coordinators: {}", fed.coordinators.endpoints());
    match backend {
        Backend::Kafka => println!("  broker: {} (Kafka protocol)", fed.broker.address()),
        Backend::Nats => println!("  NATS JetStream: nats://{} (stream PGTRICKLE)", fed.broker.address()),
    }
    println!("  on C try: SELECT * FROM dashboard;  SELECT * FROM pgtrickle.federation_sources;");
    match seconds {
        Some(n) => println!("  stops by itself after {n} s (or Ctrl-C)\n"),
        None => println!("  stop with Ctrl-C: everything started here is removed\n"),
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let started = Instant::now();
    let mut last_print = Instant::now() - Duration::from_secs(10);
    while !stop.load(Ordering::Relaxed) && seconds.is_none_or(|n| started.elapsed() < Duration::from_secs(n)) {
        workload(&mut a, &mut b, &mut rng, 5);
        std::thread::sleep(Duration::from_millis(200));
        if last_print.elapsed() >= Duration::from_secs(3) {
            last_print = Instant::now();
            print_state(&mut c, started.elapsed());
        }
    }
    print_state(&mut c, started.elapsed());
    println!("stopping: removing the clusters, the change log's server and the coordinators");
}

fn print_state(c: &mut postgres::Client, elapsed: Duration) {
    println!("── {:>5.1} s ── dashboard (top 5 by total) ──", elapsed.as_secs_f64());
    match c.query("SELECT name, coalesce(country, '-'), orders, total::text FROM dashboard d ORDER BY d.total DESC, d.name LIMIT 5", &[]) {
        Ok(rows) => {
            for row in rows {
                println!(
                    "  {:<10} {:<4} {:>4} orders  {:>10}",
                    row.get::<_, String>(0),
                    row.get::<_, String>(1),
                    row.get::<_, i64>(2),
                    row.get::<_, String>(3)
                );
            }
        }
        Err(error) => println!("  (dashboard not readable: {error})"),
    }
    println!("  per-source lag:");
    match c.query(
        "SELECT stream_id, committed_seq, applied_seq, lag_batches, round(lag_seconds::numeric, 1)::text, state \
         FROM pgtrickle.federation_sources ORDER BY stream_id",
        &[],
    ) {
        Ok(rows) => {
            for row in rows {
                println!(
                    "  {:<30} committed {:>4}  applied {:>4}  lag {} batches / {} s  {}",
                    row.get::<_, String>(0),
                    row.get::<_, i64>(1),
                    row.get::<_, i64>(2),
                    row.get::<_, i64>(3),
                    row.get::<_, String>(4),
                    row.get::<_, String>(5)
                );
            }
        }
        Err(error) => println!("  (federation_sources not readable: {error})"),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("pgtrickle-demo: {message}");
    std::process::exit(1);
}
