//! `--local-workers N`: the gateway starts N worker processes (`<worker-exe> worker ...`) on
//! their own loopback IPs, passes them its subscriber secret and allowed origins through the
//! environment, restarts one that exits, and stops them all (SIGTERM, then SIGKILL after
//! 5 s) when it shuts down. Children also get `PR_SET_PDEATHSIG` so they die with the gateway.

use crate::config::Config;
use crate::metrics;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long children get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// First restart delay; doubles per quick failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A child that ran this long before exiting restarts after [`MIN_BACKOFF`] again.
const STABLE_RUN: Duration = Duration::from_secs(30);

/// What starting local worker `i` looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    /// Environment to set (everything `PUSHGATE_*` inherited is cleared first).
    pub env: Vec<(String, String)>,
    pub id: String,
}

/// The first DNS name of the leaf certificate in `cert` (PEM).
fn first_dns_name(cert: &std::path::Path) -> anyhow::Result<Option<String>> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(cert)
        .with_context(|| format!("read --tls-cert {}", cert.display()))?;
    let leaf = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", cert.display()))?;
    let name = leaf.valid_dns_names().next().map(str::to_owned);
    Ok(name)
}

/// The command lines of all local workers. `gateway_addr` is where the gateway listens.
pub fn worker_specs(config: &Config, gateway_addr: SocketAddr) -> anyhow::Result<Vec<WorkerSpec>> {
    let exe = match &config.worker_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    // A gateway on 0.0.0.0 / [::] is reached over loopback by its local workers.
    let mut dial = gateway_addr;
    if dial.ip().is_unspecified() {
        dial.set_ip(match dial {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut env = vec![(
        "PUSHGATE_ALLOW_ORIGIN".to_owned(),
        config.allow_origins.join(","),
    )];
    if let Some(secret) = &config.subscriber_secret {
        env.push(("PUSHGATE_SUBSCRIBER_SECRET".to_owned(), secret.clone()));
    }
    if let Some(key) = &config.link_key {
        env.push(("PUSHGATE_LINK_KEY".to_owned(), key.clone()));
    }
    if let Some(key) = &config.admin_key {
        env.push(("PUSHGATE_ADMIN_KEY".to_owned(), key.clone()));
    }
    // A TLS gateway is dialed over TLS by its local workers too, trusting its own
    // certificate chain and checking the first DNS name on it (or the IP, if none).
    let mut link: Vec<OsString> = vec!["--gateway".into()];
    match (&config.tls_cert, config.tls_key.is_some()) {
        (Some(cert), true) => {
            link.push(format!("https://{dial}").into());
            link.extend(["--gateway-ca".into(), cert.clone().into_os_string()]);
            if let Some(name) = first_dns_name(cert)? {
                link.extend(["--gateway-tls-name".into(), name.into()]);
            }
        }
        _ => link.push(format!("http://{dial}").into()),
    }
    let mut specs = Vec::new();
    for i in 0..config.local_workers {
        let id = format!("local-{i}");
        let mut args: Vec<OsString> = vec!["worker".into()];
        args.extend(link.iter().cloned());
        for j in 0..config.local_worker_ips {
            args.push("--listen".into());
            args.push(
                SocketAddr::new(config.local_worker_ip(i, j), config.local_worker_port)
                    .to_string()
                    .into(),
            );
        }
        args.push("--id".into());
        args.push(id.clone().into());
        if config.log_format != worker::logging::LogFormat::Text {
            args.extend(["--log-format".into(), config.log_format.as_str().into()]);
        }
        args.extend(config.local_worker_args.iter().map(OsString::from));
        specs.push(WorkerSpec {
            exe: exe.clone(),
            args,
            env: env.clone(),
            id,
        });
    }
    Ok(specs)
}

/// Supervises the local workers until `shutdown`, then stops them. Await the returned set
/// to know they are gone.
pub fn start(specs: Vec<WorkerSpec>, shutdown: CancellationToken) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for spec in specs {
        set.spawn(supervise(spec, shutdown.clone()));
    }
    set
}

fn spawn_child(spec: &WorkerSpec) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.exe);
    cmd.args(&spec.args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("PUSHGATE_")) {
            cmd.env_remove(&k);
        }
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    // SAFETY: getpid before fork is plain; in the child only async-signal-safe calls
    // (prctl, getppid, kill) run before exec.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The gateway may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGTERM);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

async fn supervise(spec: WorkerSpec, shutdown: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let started = Instant::now();
        let mut child = match spawn_child(&spec) {
            Ok(c) => c,
            Err(e) => {
                warn!(worker = %spec.id, exe = %spec.exe.display(), error = %e, "cannot start local worker; retrying");
                if sleep_or_shutdown(backoff, &shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        debug!(worker = %spec.id, pid = child.id(), "local worker started");
        tokio::select! {
            status = child.wait() => {
                let ran = started.elapsed();
                if ran >= STABLE_RUN {
                    backoff = MIN_BACKOFF;
                }
                metrics::LOCAL_WORKER_RESTARTS.inc();
                warn!(
                    worker = %spec.id,
                    status = %status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                    ran_secs = ran.as_secs(),
                    restart_in_ms = backoff.as_millis() as u64,
                    "local worker exited; restarting"
                );
                if sleep_or_shutdown(backoff, &shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            _ = shutdown.cancelled() => {
                stop_child(&spec.id, &mut child).await;
                return;
            }
        }
    }
}

/// True when shutdown came first.
async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}

async fn stop_child(id: &str, child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: signalling our own child by pid; it is not reaped yet, so the pid is its.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(_) => debug!(worker = %id, "local worker stopped"),
        Err(_) => {
            warn!(worker = %id, "local worker did not stop within {STOP_GRACE:?}; killing it");
            let _ = child.kill().await;
        }
    }
}

/// Logs what will be started (debug; the start line of the gateway gives the count).
pub fn describe(specs: &[WorkerSpec]) {
    if let Some(first) = specs.first() {
        debug!(
            count = specs.len(),
            exe = %first.exe.display(),
            first_args = ?first.args,
            "starting local workers"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn specs_carry_ips_ids_and_env() {
        let c = Config::try_parse_from([
            "gateway",
            "--local-workers",
            "2",
            "--local-worker-ips",
            "2",
            "--local-worker-port",
            "9000",
            "--subscriber-secret",
            "s",
            "--worker-exe",
            "/bin/true",
            "--local-worker-arg=--capacity",
            "--local-worker-arg=5",
        ])
        .unwrap();
        let specs = worker_specs(&c, "0.0.0.0:8080".parse().unwrap()).unwrap();
        assert_eq!(specs.len(), 2);
        let args: Vec<String> = specs[1]
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "worker",
                "--gateway",
                "http://127.0.0.1:8080",
                "--listen",
                "127.0.0.3:9000",
                "--listen",
                "127.0.1.3:9000",
                "--id",
                "local-1",
                "--capacity",
                "5"
            ]
        );
        assert!(specs[0]
            .env
            .contains(&("PUSHGATE_SUBSCRIBER_SECRET".into(), "s".into())));
        assert!(specs[0]
            .env
            .contains(&("PUSHGATE_ALLOW_ORIGIN".into(), "*".into())));
        assert!(!args.iter().any(|a| a == "s"), "secret must not be in argv");
    }
}
