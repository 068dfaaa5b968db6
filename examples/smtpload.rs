//! SMTP load generator for benchmarks: C concurrent sessions send N messages of a given size
//! to HOST:PORT, one transaction per connection (or `--reuse K` per connection), and report
//! accepted messages per second, errors, per-phase latency, and the server's CPU time per
//! 1,000 messages when `--server-pid` names the server.
//!
//! cargo run --release --example smtpload -- 127.0.0.1:2525 -n 2000 -c 50 --size 2048 --to bench@bench.test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Opts {
    target: String,
    n: usize,
    c: usize,
    size: usize,
    to: String,
    from: String,
    reuse: usize,
    server_pids: Vec<u32>,
}

fn parse() -> Result<Opts, String> {
    let mut a = std::env::args().skip(1);
    let mut o = Opts {
        target: String::new(),
        n: 1000,
        c: 10,
        size: 2048,
        to: "bench@bench.test".into(),
        from: "load@client.test".into(),
        reuse: 1,
        server_pids: Vec::new(),
    };
    while let Some(x) = a.next() {
        let mut val = || a.next().ok_or(format!("{x} needs a value"));
        match x.as_str() {
            "-n" => o.n = val()?.parse().map_err(|e| format!("-n: {e}"))?,
            "-c" => o.c = val()?.parse().map_err(|e| format!("-c: {e}"))?,
            "--size" => o.size = val()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--to" => o.to = val()?,
            "--from" => o.from = val()?,
            "--reuse" => o.reuse = val()?.parse().map_err(|e| format!("--reuse: {e}"))?,
            "--server-pid" => o
                .server_pids
                .push(val()?.parse().map_err(|e| format!("--server-pid: {e}"))?),
            t if !t.starts_with('-') => o.target = t.to_string(),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.target.is_empty() {
        return Err("usage: smtpload HOST:PORT [-n N] [-c C] [--size BYTES] [--to ADDR] [--reuse K] [--server-pid PID]".into());
    }
    Ok(o)
}

/// (utime + stime in clock ticks, ppid) of a process, from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(f64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit(')').next()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: f[0] state, f[1] ppid, ..., f[11] utime, f[12] stime.
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((ticks, ppid))
}

/// The process and all its descendants (servers made of several processes).
fn tree(root: u32) -> Vec<u32> {
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
            && let Some((_, ppid)) = proc_stat(pid)
        {
            parent.insert(pid, ppid);
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// CPU seconds (user + system) used so far by a process tree.
fn cpu_seconds(pid: u32) -> f64 {
    tree(pid)
        .into_iter()
        .filter_map(proc_stat)
        .map(|(t, _)| t)
        .sum::<f64>()
        / 100.0
}

/// Sum of the peak RSS of a process tree, in KB.
fn rss_kb(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmHWM:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}

async fn reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<u16, String> {
    let mut line = String::new();
    for _ in 0..64 {
        line.clear();
        let n = tokio::time::timeout(Duration::from_secs(30), r.read_line(&mut line))
            .await
            .map_err(|_| "timeout")?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("bad reply {line:?}"));
        }
    }
    Err("reply too long".into())
}

async fn session(
    o: &Opts,
    body: &[u8],
    left: &AtomicUsize,
    lat: &mut Vec<f64>,
) -> Result<usize, String> {
    let s = TcpStream::connect(&o.target)
        .await
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).ok();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    if reply(&mut r).await? != 220 {
        return Err("banner".into());
    }
    w.write_all(b"EHLO client.test\r\n")
        .await
        .map_err(|e| e.to_string())?;
    reply(&mut r).await?;
    let mut sent = 0;
    while sent < o.reuse {
        if left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |x| x.checked_sub(1))
            .is_err()
        {
            break;
        }
        let t = Instant::now();
        w.write_all(format!("MAIL FROM:<{}>\r\n", o.from).as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        if reply(&mut r).await? != 250 {
            return Err("mail".into());
        }
        w.write_all(format!("RCPT TO:<{}>\r\n", o.to).as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        if reply(&mut r).await? != 250 {
            return Err("rcpt".into());
        }
        w.write_all(b"DATA\r\n").await.map_err(|e| e.to_string())?;
        if reply(&mut r).await? != 354 {
            return Err("data".into());
        }
        w.write_all(body).await.map_err(|e| e.to_string())?;
        if reply(&mut r).await? != 250 {
            return Err("dot".into());
        }
        lat.push(t.elapsed().as_secs_f64());
        sent += 1;
    }
    w.write_all(b"QUIT\r\n").await.ok();
    let _ = reply(&mut r).await;
    Ok(sent)
}

fn body(size: usize) -> Vec<u8> {
    let mut b = b"From: load@client.test\r\nTo: bench@bench.test\r\nSubject: load\r\n\r\n".to_vec();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    while b.len() + line.len() < size {
        b.extend_from_slice(line);
    }
    b.extend_from_slice(b".\r\n");
    b
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[((v.len() - 1) as f64 * p) as usize] * 1000.0
}

#[tokio::main]
async fn main() {
    let o = match parse() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let body = Arc::new(body(o.size));
    let left = Arc::new(AtomicUsize::new(o.n));
    let errors = Arc::new(AtomicUsize::new(0));
    let cpu0: f64 = o.server_pids.iter().map(|p| cpu_seconds(*p)).sum();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..o.c {
        let (o, body, left, errors) = (o.clone(), body.clone(), left.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut sent = 0;
            // Bounded: every loop either sends a message or counts an error, and stops
            // after as many errors as messages.
            for _ in 0..(o.n * 2 + 10) {
                if left.load(Ordering::SeqCst) == 0 {
                    break;
                }
                match session(&o, &body, &left, &mut lat).await {
                    Ok(n) => sent += n,
                    Err(_) => {
                        if errors.fetch_add(1, Ordering::SeqCst) > o.n {
                            break;
                        }
                    }
                }
            }
            (sent, lat)
        }));
    }
    let mut sent = 0;
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok((s, l)) = t.await {
            sent += s;
            lat.extend(l);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu1: f64 = o.server_pids.iter().map(|p| cpu_seconds(*p)).sum();
    let rss: u64 = o.server_pids.iter().map(|p| rss_kb(*p)).sum();
    println!(
        "sent={sent} errors={} seconds={secs:.2} accepted_per_s={:.0} txn_ms_p50={:.2} txn_ms_p99={:.2} server_cpu_ms_per_1000={:.0} server_peak_rss_kb={rss}",
        errors.load(Ordering::SeqCst),
        sent as f64 / secs,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        if sent > 0 {
            (cpu1 - cpu0) * 1000.0 * 1000.0 / sent as f64
        } else {
            0.0
        },
    );
}
