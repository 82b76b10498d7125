//! A small HTTPS load generator for `bench/run`: keep-alive connections
//! that each send requests back to back for a fixed time. Unlike wrk it can
//! present a client certificate, which a role behind the gateway requires.
//!
//! ```text
//! loadgen URL [--ca PEM] [--cert PEM --key PEM] [--header "Name: value"]
//!             [--connections 16] [--seconds 10]
//! ```
//!
//! Prints one line: `requests=N rps=R p50_ms=A p99_ms=B errors=E non_2xx=F`.
#![allow(clippy::expect_used)]

use std::time::{Duration, Instant};

struct Options {
    url: String,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    headers: Vec<(String, String)>,
    connections: usize,
    seconds: u64,
}

fn parse_options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        url: String::new(),
        ca: None,
        cert: None,
        key: None,
        headers: Vec::new(),
        connections: 16,
        seconds: 10,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--ca" => options.ca = Some(value("--ca")?),
            "--cert" => options.cert = Some(value("--cert")?),
            "--key" => options.key = Some(value("--key")?),
            "--header" => {
                let header = value("--header")?;
                let (name, text) = header.split_once(':').ok_or_else(|| format!("{header:?} is not Name: value"))?;
                options.headers.push((name.trim().to_string(), text.trim().to_string()));
            }
            "--connections" => {
                options.connections = value("--connections")?.parse().map_err(|_| "--connections takes a number")?
            }
            "--seconds" => options.seconds = value("--seconds")?.parse().map_err(|_| "--seconds takes a number")?,
            url if !url.starts_with("--") && options.url.is_empty() => options.url = url.to_string(),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.url.is_empty() {
        return Err("give the URL to load".into());
    }
    Ok(options)
}

fn client(options: &Options) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().http1_only().redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &options.ca {
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read {ca}: {e}"))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("{ca}: {e}"))?;
        builder = builder.tls_certs_only([cert]);
    }
    if let (Some(cert), Some(key)) = (&options.cert, &options.key) {
        let mut pem = std::fs::read(cert).map_err(|e| format!("cannot read {cert}: {e}"))?;
        pem.extend(std::fs::read(key).map_err(|e| format!("cannot read {key}: {e}"))?);
        builder = builder.identity(reqwest::Identity::from_pem(&pem).map_err(|e| format!("{cert}: {e}"))?);
    }
    builder.build().map_err(|e| format!("cannot build the client: {e}"))
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    non_2xx: u64,
}

#[tokio::main]
async fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    };
    let end = Instant::now() + Duration::from_secs(options.seconds);
    let mut tasks = Vec::new();
    for _ in 0..options.connections {
        // One client per task, so that each keeps its own connection.
        let client = match client(&options) {
            Ok(client) => client,
            Err(error) => {
                eprintln!("error: {error}");
                std::process::exit(2);
            }
        };
        let url = options.url.clone();
        let headers = options.headers.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < end {
                let started = Instant::now();
                let mut request = client.get(&url);
                for (name, value) in &headers {
                    request = request.header(name, value);
                }
                match request.send().await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        if response.bytes().await.is_err() {
                            tally.errors += 1;
                            continue;
                        }
                        tally.non_2xx += u64::from(!ok);
                        tally.latencies_us.push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    Err(_) => tally.errors += 1,
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        let tally = task.await.expect("a load task failed");
        all.latencies_us.extend(tally.latencies_us);
        all.errors += tally.errors;
        all.non_2xx += tally.non_2xx;
    }
    all.latencies_us.sort_unstable();
    let percentile = |p: f64| {
        if all.latencies_us.is_empty() {
            return 0.0;
        }
        let index = ((all.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(all.latencies_us[index]) / 1000.0
    };
    let count = all.latencies_us.len();
    println!(
        "requests={count} rps={:.0} p50_ms={:.3} p99_ms={:.3} errors={} non_2xx={}",
        count as f64 / options.seconds as f64,
        percentile(0.5),
        percentile(0.99),
        all.errors,
        all.non_2xx
    );
}
