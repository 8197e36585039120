//! The floor tools of benches/RESULTS.md run and report what they measured. (They also
//! make `cargo test --workspace` build these binaries, which gateway/tests/connect_floor.rs
//! runs against a real gateway.)

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{bin} failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn field(json: &str, key: &str) -> f64 {
    let rest = json
        .split(&format!("\"{key}\":"))
        .nth(1)
        .unwrap_or_else(|| panic!("no {key} in {json}"));
    rest.split([',', '}'])
        .next()
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

#[test]
fn connect_floor_connects_every_client_to_its_own_server() {
    let out = run(
        env!("CARGO_BIN_EXE_connect-floor"),
        &["--clients", "300", "--source-ips", "4", "--json"],
    );
    assert!(out.contains(r#""target":"floor""#), "{out}");
    assert_eq!(field(&out, "clients"), 300.0, "{out}");
    assert!(field(&out, "rate_per_sec") > 0.0, "{out}");
    assert!(field(&out, "client_cpu_us_per_connect") > 0.0, "{out}");
}

#[test]
fn send_floor_reports_both_modes() {
    let out = run(
        env!("CARGO_BIN_EXE_send-floor"),
        &["--sockets", "2000", "--rounds", "1", "--json"],
    );
    assert_eq!(field(&out, "sockets"), 2000.0, "{out}");
    // Thread CPU is counted in scheduler ticks: a short round may read 0.
    assert!(field(&out, "idle_us_per_send") >= 0.0, "{out}");
    assert!(field(&out, "awake_us_per_send") > 0.0, "{out}");
}
