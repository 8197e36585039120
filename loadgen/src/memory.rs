//! Memory per connection: every worker's (and the gateway's) `process_resident_memory_bytes`
//! from `/metrics`, and the kernel's TCP memory from `/proc/net/sockstat`, before and after.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde::{Deserialize, Serialize};

use crate::net::{HttpPool, SourceIps, Target};

/// One reading of everything.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub gateway_rss: Option<u64>,
    pub workers: Vec<WorkerReading>,
    pub sockstat: Option<Sockstat>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerReading {
    pub id: String,
    pub address: Option<String>,
    pub rss: Option<u64>,
    pub connections: Option<u64>,
}

/// `/proc/net/sockstat` TCP line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sockstat {
    pub inuse: u64,
    pub orphan: u64,
    pub tw: u64,
    pub alloc: u64,
    /// Pages.
    pub mem: u64,
}

/// Parses the `TCP:` line of `/proc/net/sockstat`.
pub fn parse_sockstat(text: &str) -> Option<Sockstat> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut s = Sockstat::default();
    let words: Vec<&str> = line.split_whitespace().skip(1).collect();
    for pair in words.chunks(2) {
        if let [k, v] = pair {
            let v: u64 = v.parse().ok()?;
            match *k {
                "inuse" => s.inuse = v,
                "orphan" => s.orphan = v,
                "tw" => s.tw = v,
                "alloc" => s.alloc = v,
                "mem" => s.mem = v,
                _ => {}
            }
        }
    }
    Some(s)
}

/// Reads `process_resident_memory_bytes` from Prometheus text.
pub fn parse_rss(metrics: &str) -> Option<u64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix("process_resident_memory_bytes")?;
        let values = match rest.strip_prefix('{') {
            Some(labels) => labels.split_once('}')?.1,
            None if rest.starts_with(' ') => rest,
            None => return None,
        };
        // A timestamp may follow the value.
        values
            .split_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
            .map(|f| f as u64)
    })
}

#[derive(Deserialize)]
struct WorkersAnswer {
    workers: Vec<WorkerEntry>,
}

#[derive(Deserialize)]
struct WorkerEntry {
    id: serde_json::Value,
    #[serde(default)]
    addresses: Vec<String>,
    connections: Option<u64>,
}

async fn get(url_base: &str, path: &str) -> Option<Bytes> {
    let target = Target::parse(url_base).ok()?;
    let pool = HttpPool::new(
        target,
        Arc::new(SourceIps::default()),
        1,
        Duration::from_secs(5),
    );
    // The admin surface (the gateway's /v1/workers and /metrics, a worker's /metrics with
    // --admin-key) asks others than loopback for the fleet's admin key.
    let key = std::env::var("PUSHGATE_ADMIN_KEY").ok();
    match pool
        .send(Method::GET, path, &[], key.as_deref(), Bytes::new())
        .await
    {
        Ok((s, body)) if s == 200 => Some(body),
        _ => None,
    }
}

async fn rss_of(base: &str) -> Option<u64> {
    let body = get(base, "/metrics").await?;
    parse_rss(&String::from_utf8_lossy(&body))
}

/// Reads the gateway, every worker it lists, and the kernel.
pub async fn snapshot(gateway: &str) -> Snapshot {
    let gateway = gateway.trim_end_matches('/');
    let mut snap = Snapshot {
        gateway_rss: rss_of(gateway).await,
        workers: Vec::new(),
        sockstat: std::fs::read_to_string("/proc/net/sockstat")
            .ok()
            .and_then(|t| parse_sockstat(&t)),
    };
    if let Some(body) = get(gateway, "/v1/workers").await {
        if let Ok(a) = serde_json::from_slice::<WorkersAnswer>(&body) {
            for w in a.workers {
                let id = match w.id {
                    serde_json::Value::String(s) => s,
                    v => v.to_string(),
                };
                let address = w.addresses.first().cloned();
                let rss = match &address {
                    Some(addr) => rss_of(&format!("http://{addr}")).await,
                    None => None,
                };
                snap.workers.push(WorkerReading {
                    id,
                    address,
                    rss,
                    connections: w.connections,
                });
            }
        }
    }
    snap
}

/// Reads after the settle time twice, half a second apart, and keeps the later reading.
pub async fn settled_snapshot(gateway: &str, settle: Duration) -> Snapshot {
    tokio::time::sleep(settle).await;
    let _ = snapshot(gateway).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    snapshot(gateway).await
}

/// Memory figures of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryResult {
    /// Connections open when the "after" reading was taken.
    pub connections: u64,
    pub workers: Vec<WorkerMemory>,
    /// Σ worker RSS growth.
    pub workers_delta_bytes: i64,
    /// Σ worker RSS growth ÷ connections.
    pub bytes_per_connection: Option<f64>,
    pub gateway: GatewayMemory,
    pub kernel: Option<KernelMemory>,
    pub before: Snapshot,
    pub after: Snapshot,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerMemory {
    pub id: String,
    pub address: Option<String>,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub delta_bytes: Option<i64>,
    /// Connections loadgen holds on this worker (from its assignments).
    pub connections: u64,
    pub bytes_per_connection: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayMemory {
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub delta_bytes: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelMemory {
    pub page_size: u64,
    pub tcp_mem_pages_before: u64,
    pub tcp_mem_pages_after: u64,
    pub tcp_inuse_before: u64,
    pub tcp_inuse_after: u64,
    /// Growth of TCP memory ÷ growth of TCP sockets in use (both ends count on loopback).
    pub bytes_per_socket: Option<f64>,
    /// Growth of TCP memory ÷ connections.
    pub bytes_per_connection: Option<f64>,
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Compares two readings. `per_worker` = connections held per worker id.
pub fn compare(
    before: Snapshot,
    after: Snapshot,
    per_worker: &HashMap<String, i64>,
    connections: u64,
) -> MemoryResult {
    let per_conn = |delta: i64, n: u64| (n > 0).then(|| delta as f64 / n as f64);
    let mut workers = Vec::new();
    let mut total = 0i64;
    // Connections on the workers that could be read (a worker without a reading must not
    // dilute the figure).
    let mut measured = 0u64;
    let mut all_read = true;
    for w in &after.workers {
        let b = before
            .workers
            .iter()
            .find(|x| x.id == w.id)
            .and_then(|x| x.rss);
        let delta = match (b, w.rss) {
            (Some(b), Some(a)) => Some(a as i64 - b as i64),
            _ => None,
        };
        let n = per_worker.get(&w.id).copied().unwrap_or(0).max(0) as u64;
        total += delta.unwrap_or(0);
        if delta.is_some() {
            measured += n;
        } else {
            all_read = false;
        }
        workers.push(WorkerMemory {
            id: w.id.clone(),
            address: w.address.clone(),
            rss_before: b,
            rss_after: w.rss,
            delta_bytes: delta,
            connections: n,
            bytes_per_connection: delta.and_then(|d| per_conn(d, n)),
        });
    }
    let any_worker = workers.iter().any(|w| w.delta_bytes.is_some());
    let kernel = match (before.sockstat, after.sockstat) {
        (Some(b), Some(a)) => {
            let ps = page_size();
            let dmem = (a.mem as i64 - b.mem as i64) * ps as i64;
            let dsock = a.inuse as i64 - b.inuse as i64;
            Some(KernelMemory {
                page_size: ps,
                tcp_mem_pages_before: b.mem,
                tcp_mem_pages_after: a.mem,
                tcp_inuse_before: b.inuse,
                tcp_inuse_after: a.inuse,
                // sockstat counts buffer pages only, host-wide: when they did not grow
                // (idle sockets hold none, other sockets drain) there is no figure.
                bytes_per_socket: (dsock > 0 && dmem > 0).then(|| dmem as f64 / dsock as f64),
                bytes_per_connection: (dmem > 0).then(|| per_conn(dmem, connections)).flatten(),
            })
        }
        _ => None,
    };
    let gateway = GatewayMemory {
        rss_before: before.gateway_rss,
        rss_after: after.gateway_rss,
        delta_bytes: match (before.gateway_rss, after.gateway_rss) {
            (Some(b), Some(a)) => Some(a as i64 - b as i64),
            _ => None,
        },
    };
    MemoryResult {
        connections,
        workers,
        workers_delta_bytes: total,
        bytes_per_connection: match (any_worker, all_read) {
            (false, _) => None,
            (true, true) => per_conn(total, connections),
            (true, false) => per_conn(total, measured),
        },
        gateway,
        kernel,
        before,
        after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sockstat_and_rss() {
        let text =
            "sockets: used 230\nTCP: inuse 5 orphan 0 tw 2 alloc 7 mem 3\nUDP: inuse 1 mem 0\n";
        assert_eq!(
            parse_sockstat(text),
            Some(Sockstat {
                inuse: 5,
                orphan: 0,
                tw: 2,
                alloc: 7,
                mem: 3
            })
        );
        let m = "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                 # TYPE process_resident_memory_bytes gauge\n\
                 process_resident_memory_bytes 1.2345e7\n";
        assert_eq!(parse_rss(m), Some(12_345_000));
        assert_eq!(
            parse_rss("process_resident_memory_bytes{pid=\"1\"} 4096 1700000000\n"),
            Some(4096)
        );
        assert_eq!(parse_rss("process_resident_memory_bytes_total 5\n"), None);
    }

    #[test]
    fn compares_per_worker() {
        let r = |id: &str, rss| WorkerReading {
            id: id.into(),
            address: None,
            rss: Some(rss),
            connections: None,
        };
        let before = Snapshot {
            gateway_rss: Some(100),
            workers: vec![r("a", 1000), r("b", 2000)],
            sockstat: Some(Sockstat {
                inuse: 10,
                mem: 1,
                ..Default::default()
            }),
        };
        let after = Snapshot {
            gateway_rss: Some(150),
            workers: vec![r("a", 1000 + 300 * 10), r("b", 2000 + 500 * 30)],
            sockstat: Some(Sockstat {
                inuse: 90,
                mem: 21,
                ..Default::default()
            }),
        };
        let per: HashMap<String, i64> = [("a".to_string(), 10), ("b".to_string(), 30)].into();
        let m = compare(before, after, &per, 40);
        assert_eq!(m.workers[0].bytes_per_connection, Some(300.0));
        assert_eq!(m.workers[1].bytes_per_connection, Some(500.0));
        assert_eq!(m.bytes_per_connection, Some(18_000.0 / 40.0));
        assert_eq!(m.gateway.delta_bytes, Some(50));
        let k = m.kernel.unwrap();
        assert_eq!(k.bytes_per_socket, Some(20.0 * k.page_size as f64 / 80.0));
    }

    #[test]
    fn an_unread_worker_does_not_dilute_the_figure() {
        let r = |id: &str, rss| WorkerReading {
            id: id.into(),
            address: None,
            rss,
            connections: None,
        };
        let before = Snapshot {
            gateway_rss: None,
            workers: vec![r("a", Some(1000)), r("b", Some(2000))],
            sockstat: None,
        };
        let after = Snapshot {
            gateway_rss: None,
            workers: vec![r("a", Some(1000 + 300 * 10)), r("b", None)],
            sockstat: None,
        };
        let per: HashMap<String, i64> = [("a".to_string(), 10), ("b".to_string(), 30)].into();
        let m = compare(before, after, &per, 40);
        assert_eq!(
            m.bytes_per_connection,
            Some(300.0),
            "b's 30 connections were not read"
        );
    }
}
