//! `muster-health`: the container HEALTHCHECK probe. GETs musterd's `/health` and exits 0 on
//! 200 (a leader is known), 1 otherwise. Std only: it runs in a FROM-scratch image where no
//! shell, curl or wget exists.
//!
//! Usage: `muster-health [--http HOST:PORT] [--path /health] [--timeout-ms 2000] [--quiet]`
//! (env `MUSTER_HEALTH_HTTP`; default `127.0.0.1:2381`). HOST may be a name: resolving it
//! inside the image is how the smoke test checks the container's DNS.

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let mut addr = std::env::var("MUSTER_HEALTH_HTTP").unwrap_or_else(|_| "127.0.0.1:2381".into());
    let mut path = "/health".to_string();
    let mut timeout_ms: u64 = 2000;
    let mut quiet = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let r = match a.as_str() {
            "--http" => value("--http").map(|v| addr = v),
            "--path" => value("--path").map(|v| path = v),
            "--timeout-ms" => value("--timeout-ms").and_then(|v| {
                v.parse()
                    .map(|n| timeout_ms = n)
                    .map_err(|_| format!("bad --timeout-ms '{v}'"))
            }),
            "--quiet" | "-q" => {
                quiet = true;
                Ok(())
            }
            "-h" | "--help" => {
                println!("usage: muster-health [--http HOST:PORT] [--path /health] [--timeout-ms MS] [--quiet]");
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument '{other}'")),
        };
        if let Err(e) = r {
            eprintln!("muster-health: {e}");
            return ExitCode::from(2);
        }
    }
    match muster_chaos::http::get(&addr, &path, Duration::from_millis(timeout_ms)) {
        Ok(r) => {
            if !quiet {
                println!("{} {}", r.status, r.body.trim());
            }
            if r.status == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            if !quiet {
                println!("unreachable: http://{addr}{path}: {e}");
            }
            ExitCode::FAILURE
        }
    }
}
