//! Helpers the scale benchmarks share: free loopback ports, resident memory of a child, the file-descriptor limit
//! and percentiles.

use std::process::Child;

/// A port nothing listens on now (the OS picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Resident memory of a running child in MiB (0 when it is not running).
pub fn rss_mb(child: Option<&Child>) -> f64 {
    let Some(child) = child else { return 0.0 };
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Raises the soft limit of open files to the hard limit: thousands of watchers hold a socket each.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The `q` quantile (0..=1) of `v`, nearest rank; 0 for no samples.
pub fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0)
}

/// Kills a child (SIGKILL) and reaps it.
pub fn kill(child: Option<Child>) {
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The federation shape and load phases both scale benchmarks (coordinator and etcd) take.
#[derive(clap::Args, Debug, Clone)]
pub struct ScaleShape {
    /// Clusters, each publishing `streams` streams.
    #[arg(long, default_value_t = 1000)]
    pub clusters: usize,
    /// Streams per cluster (one request advances all of them).
    #[arg(long, default_value_t = 100)]
    pub streams: usize,
    /// Concurrent publishers during the load phases.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// Seconds of load before the follower is killed.
    #[arg(long, default_value_t = 20)]
    pub load_secs: u64,
    /// Seconds the follower stays down under load.
    #[arg(long, default_value_t = 60)]
    pub down_secs: u64,
    /// Watcher counts to measure notification delay with.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub watchers: Vec<usize>,
}
