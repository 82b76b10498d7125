//! The operator's commands for seeing what happened: `logs filter`,
//! `audit verify|list`, `metrics requests` and `check`.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use learntrac_server::compliance::Status;
use learntrac_server::logs::filter::{Pattern, line_time, scan_group};
use learntrac_server::time::{format_rfc3339, parse_duration, parse_time};
use learntrac_server::{ServerConfig, unix_now};
use learntrac_store::{AuditEntry, AuditFilter, AuditVerification, Store};

use crate::{DataArgs, open_database, settings};

#[derive(Subcommand)]
pub enum LogsCommand {
    /// Print the lines of one log group that match a pattern: terms,
    /// "quoted phrases", OR, -term to exclude, and JSON field conditions
    /// such as status=401 or latency_ms>100.
    Filter {
        #[command(flatten)]
        data: DataArgs,
        /// gateway, trac, api, idp or audit.
        #[arg(long)]
        group: String,
        /// For example 'unauthorized OR 401 OR 403'.
        #[arg(long)]
        pattern: String,
        /// Only lines newer than this, such as 15m, 1h or 7d.
        #[arg(long)]
        since: Option<String>,
        /// Only lines up to this time (RFC 3339 or Unix seconds).
        #[arg(long)]
        until: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the audit trail's hash chain; exits non-zero and names the
    /// first bad record if it was changed.
    Verify {
        #[command(flatten)]
        data: DataArgs,
    },
    /// List audit records, oldest first.
    List {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        target: Option<String>,
        /// Only records newer than this, such as 1h or 7d.
        #[arg(long)]
        since: Option<String>,
        /// Only records up to this time (RFC 3339 or Unix seconds).
        #[arg(long)]
        until: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum MetricsCommand {
    /// Count requests per period from the gateway's access log, with the
    /// error statuses an attack shows up in.
    Requests {
        #[command(flatten)]
        data: DataArgs,
        /// How far back to look, such as 1h or 1d.
        #[arg(long, default_value = "1h")]
        since: String,
        /// Length of each period, in seconds.
        #[arg(long, default_value_t = 300)]
        period: i64,
    },
}

#[derive(Subcommand)]
pub enum AlertsCommand {
    /// List alerts whose last firing is within the period, newest first.
    List {
        #[command(flatten)]
        data: DataArgs,
        /// How far back to look, such as 1h or 7d.
        #[arg(long, default_value = "1d")]
        since: String,
    },
}

pub async fn alerts(command: AlertsCommand) -> Result<()> {
    let AlertsCommand::List { data, since } = command;
    let since = since_seconds(Some(&since))?.unwrap_or(0);
    let config = settings::resolve(&data)?;
    learntrac_server::secrets::open_store(&config, false)?;
    crate::require_database(&config)?;
    let store = open_database(&config).await?;
    println!("id\trule\tsubject\tfirst_at\tlast_at\tcount\tdelivered\tdetails");
    for alert in store.alerts_since(since).await? {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            alert.id,
            escape_field(&alert.rule),
            escape_field(&alert.subject),
            format_rfc3339(alert.first_at),
            format_rfc3339(alert.last_at),
            alert.count,
            if alert.delivered { "yes" } else { "no" },
            escape_field(&alert.details)
        );
    }
    Ok(())
}

fn since_seconds(since: Option<&str>) -> Result<Option<i64>> {
    since.map(|text| parse_duration(text).map(|seconds| unix_now() - seconds)).transpose().map_err(anyhow::Error::msg)
}

pub fn logs(command: LogsCommand) -> Result<()> {
    let LogsCommand::Filter { data, group, pattern, since, until } = command;
    if !learntrac_server::logs::GROUPS.contains(&group.as_str()) {
        bail!("log group {group:?} is unknown; use one of {}", learntrac_server::logs::GROUPS.join(", "));
    }
    let pattern: Pattern = pattern.parse().map_err(anyhow::Error::msg)?;
    let since = since_seconds(since.as_deref())?;
    let until = until.as_deref().map(parse_time).transpose().map_err(anyhow::Error::msg)?;
    let config = settings::resolve(&data)?;

    let mut matched = 0usize;
    let files = scan_group(&config.logs.dir, &group, since, until, |line, event| {
        if pattern.matches(line, Some(event)) {
            println!("{line}");
            matched += 1;
        }
    })
    .with_context(|| format!("cannot read the log files in {}", config.logs.dir.display()))?;
    if files == 0 {
        bail!("no log files for group {group} in {}; `learntrac serve` writes them", config.logs.dir.display());
    }
    eprintln!("{matched} matching lines in {files} file(s)");
    Ok(())
}

/// Opens the database and reads the audit key of an existing data
/// directory, with the operator's rights, creating nothing.
async fn open_audit(config: &ServerConfig) -> Result<(Vec<u8>, Store)> {
    let secrets = learntrac_server::secrets::open_store(config, false)?;
    let key = match secrets.get(learntrac_secrets::AUDIT_KEY) {
        Ok(key) => key,
        Err(learntrac_secrets::SecretError::NotFound(_)) => {
            crate::require_database(config)?;
            let store = open_database(config).await?;
            let recorded = store.audit_records(&AuditFilter { limit: Some(1), ..AuditFilter::default() }).await?;
            if !recorded.is_empty() {
                bail!(
                    "the secrets store has no audit key, but the database holds audit records: restore secrets.json \
                     from a backup before starting the server, which would create a new key that cannot check them"
                );
            }
            bail!("{} has no audit key yet; `learntrac serve` creates it on its first start", config.data_dir.display())
        }
        Err(error) => return Err(error.into()),
    };
    crate::require_database(config)?;
    let store = open_database(config).await?;
    Ok((key.expose().as_bytes().to_vec(), store))
}

/// Records an action taken at the command line in the audit trail. The
/// action has already happened, so a failure is reported as a warning on
/// standard error: a database that cannot be reached yet (before its
/// password is stored, for example) does not undo it.
pub async fn record_cli_action(config: &ServerConfig, action: &str, target: &str, details: &str) {
    let result = match learntrac_server::secrets::open_store(config, true) {
        Ok(secrets) => record_with_store(config, secrets, action, target, details).await,
        Err(error) => Err(error),
    };
    if let Err(error) = result {
        eprintln!("warning: {action} on {target} was done, but its audit record was not written: {error:#}");
    }
}

/// Like [`record_cli_action`] with a secrets store the caller already
/// opened, such as one just rotated to a new master key.
pub async fn record_with_store(
    config: &ServerConfig,
    mut secrets: learntrac_secrets::SecretStore,
    action: &str,
    target: &str,
    details: &str,
) -> Result<()> {
    learntrac_server::secrets::ensure_generated_secrets(&mut secrets, unix_now())?;
    let key = secrets.get(learntrac_secrets::AUDIT_KEY)?.expose().as_bytes().to_vec();
    // The database password comes from this store: after a rotation the
    // configured key source may still give the old key.
    let url = learntrac_server::secrets::operator_database_url(config, &secrets)?;
    let store = Store::open_with(&url, &config.pool).await?;
    learntrac_server::restrict_sqlite_files(&config.database_url);
    let entry = AuditEntry {
        actor: learntrac_server::audit::Actor::Cli.label(),
        action: action.to_string(),
        target: target.to_string(),
        client_address: "local".to_string(),
        request_id: String::new(),
        outcome: "success".to_string(),
        details: details.to_string(),
    };
    let stored = learntrac_server::audit::append(&store, &key, &entry, unix_now()).await;
    store.close().await;
    let Some(record) = stored else { bail!("the database did not store the record") };
    let line = learntrac_server::audit::log_line(&record);
    learntrac_server::logs::append_to_group(&config.logs, "audit", &line)
}

pub async fn audit(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::Verify { data } => {
            let config = settings::resolve(&data)?;
            let (key, store) = open_audit(&config).await?;
            match learntrac_server::audit::verify_with_logs(&store, &key, &config.logs.dir).await? {
                AuditVerification::Intact { records } => println!("audit trail intact: {records} records"),
                AuditVerification::Broken { seq, reason } => {
                    bail!("LT-AUDIT-BROKEN: the audit trail is broken at record {seq}: {reason}")
                }
            }
        }
        AuditCommand::List { data, actor, action, target, since, until } => {
            let config = settings::resolve(&data)?;
            let (_, store) = open_audit(&config).await?;
            let filter = AuditFilter {
                actor,
                action,
                target,
                since: since_seconds(since.as_deref())?,
                until: until.as_deref().map(parse_time).transpose().map_err(anyhow::Error::msg)?,
                limit: None,
            };
            for record in store.audit_records(&filter).await? {
                let fields = [
                    record.seq.to_string(),
                    format_rfc3339(record.at),
                    record.entry.actor,
                    record.entry.action,
                    record.entry.target,
                    record.entry.outcome,
                    record.entry.client_address,
                    record.entry.request_id,
                    record.entry.details,
                ];
                let escaped: Vec<String> = fields.iter().map(|field| escape_field(field)).collect();
                println!("{}", escaped.join("\t"));
            }
        }
    }
    Ok(())
}

/// Escapes a field for tab-separated output, so that text from users (a
/// file name, a page name) cannot start a line or a column of its own. An
/// empty field becomes `-`.
fn escape_field(field: &str) -> String {
    if field.is_empty() {
        return "-".to_string();
    }
    let mut out = String::with_capacity(field.len());
    for c in field.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Request counts of one period.
#[derive(Default)]
struct Period {
    total: u64,
    by_class: [u64; 6],
    unauthorized: u64,
    forbidden: u64,
    limited: u64,
}

pub fn metrics(command: MetricsCommand) -> Result<()> {
    let MetricsCommand::Requests { data, since, period } = command;
    if !(1..=86_400).contains(&period) {
        bail!("--period {period} is out of range; use 1 to 86400 seconds");
    }
    let since = since_seconds(Some(&since))?.unwrap_or(0);
    let config = settings::resolve(&data)?;

    let mut periods: BTreeMap<i64, Period> = BTreeMap::new();
    scan_group(&config.logs.dir, "gateway", Some(since), None, |_, event| {
        let Some(status) = event["fields"]["status"].as_u64() else { return };
        if event["target"] != "learntrac::access" {
            return;
        }
        let Some(time) = line_time(event) else { return };
        let counts = periods.entry(time - time.rem_euclid(period)).or_default();
        counts.total += 1;
        counts.by_class[(status / 100).min(5) as usize] += 1;
        match status {
            401 => counts.unauthorized += 1,
            403 => counts.forbidden += 1,
            429 => counts.limited += 1,
            _ => {}
        }
    })
    .with_context(|| format!("cannot read the access log in {}", config.logs.dir.display()))
    .and_then(|files| {
        if files == 0 {
            bail!("no gateway log files in {}; `learntrac serve` writes them", config.logs.dir.display());
        }
        Ok(files)
    })?;
    let periods_shown = (unix_now() - since) / period + 1;
    if periods_shown > 10_000 {
        bail!("--since and --period give {periods_shown} rows; use a longer --period");
    }

    println!("period_start\trequests\t2xx\t3xx\t4xx\t5xx\t401\t403\t429");
    let first = since - since.rem_euclid(period);
    let mut start = first;
    let now = unix_now();
    while start <= now {
        let counts = periods.remove(&start).unwrap_or_default();
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            format_rfc3339(start),
            counts.total,
            counts.by_class[2],
            counts.by_class[3],
            counts.by_class[4],
            counts.by_class[5],
            counts.unauthorized,
            counts.forbidden,
            counts.limited
        );
        start += period;
    }
    Ok(())
}

pub async fn check(data: DataArgs) -> Result<()> {
    let config = settings::resolve(&data)?;
    let secrets = learntrac_server::secrets::open_store(&config, false)?;
    let store = open_database(&config).await?;
    let audit_key = secrets.get(learntrac_secrets::AUDIT_KEY).ok();
    let controls = learntrac_server::compliance::run(
        &config,
        &secrets,
        &store,
        audit_key.as_ref().map(|key| key.expose().as_bytes()),
        unix_now(),
    )
    .await;
    for control in &controls {
        println!("{}\t{}\t{}", control.status, control.name, control.reason);
    }
    let failed = controls.iter().filter(|control| control.status == Status::Fail).count();
    if failed > 0 {
        bail!("{failed} control(s) failed");
    }
    Ok(())
}
