//! `learntrac check`: the security controls, each reported as pass, warn
//! or fail with the reason.

use std::path::{Path, PathBuf};

use learntrac_secrets::{KeySource, SecretStore};
use learntrac_store::{AuditVerification, Store};

use crate::ServerConfig;
use crate::gateway::settings::{GatewaySettings, RuleMode};
use crate::logs::mask::AddressMode;
use crate::production::Problem;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

/// One control's result.
#[derive(Debug, Clone)]
pub struct Control {
    pub name: &'static str,
    pub status: Status,
    pub reason: String,
}

fn control(name: &'static str, status: Status, reason: impl Into<String>) -> Control {
    Control { name, status, reason: reason.into() }
}

/// Builds a control that fails with the production problems filed under
/// `name`, and passes with `pass_reason` when there are none.
fn from_problems(name: &'static str, problems: &[Problem], pass_reason: &str) -> Control {
    let messages: Vec<&str> =
        problems.iter().filter(|problem| problem.control == name).map(|p| p.message.as_str()).collect();
    if messages.is_empty() {
        control(name, Status::Pass, pass_reason)
    } else {
        control(name, Status::Fail, messages.join("; "))
    }
}

/// Runs every control. `audit_key` is `None` when the server has never
/// started, so no audit key exists yet.
pub async fn run(
    config: &ServerConfig,
    secrets: &SecretStore,
    store: &Store,
    audit_key: Option<&[u8]>,
    now: i64,
) -> Vec<Control> {
    let problems = crate::production::problems(config, secrets, store, now).await;
    let mut controls = vec![
        control(
            "tls_min_version",
            Status::Pass,
            "the gateway offers TLS 1.2 and 1.3 only (rustls implements nothing older)",
        ),
        control(
            "hsts",
            Status::Pass,
            "every response carries Strict-Transport-Security: max-age=31536000; includeSubDomains",
        ),
        if config.production {
            control("production_mode", Status::Pass, "production = true")
        } else {
            control(
                "production_mode",
                Status::Warn,
                "production mode is off (production in learntrac.toml, overridden by LEARNTRAC_PRODUCTION when set); \
                 a --production flag given to serve is not visible here",
            )
        },
        from_problems("certificate", &problems, "the certificate is issued by a CA and has not expired"),
        master_key_control(config, &problems),
        from_problems("data_dir", &problems, "the data directory is readable by its owner only"),
        from_problems("administrators", &problems, "no user has a first-start one-time password"),
        from_problems(
            "secrets",
            &problems,
            &format!("{} secrets, none at a development value, no password in database_url", secrets.list().len()),
        ),
    ];
    let groups: Vec<&str> = config.identity.mfa_required_groups.iter().map(|g| g.as_str()).collect();
    controls.push(from_problems("mfa_admins", &problems, &format!("TOTP is required for {}", groups.join(", "))));
    controls.push(match &config.identity.smtp {
        Some(smtp) => {
            control("mail", Status::Pass, format!("sign-up and reset codes go to {}:{}", smtp.host, smtp.port))
        }
        None => control(
            "mail",
            Status::Warn,
            "no SMTP server is configured, so sign-up and reset codes go to DATA_DIR/mail/outbox where nobody \
             receives them; set [identity.smtp] in learntrac.toml",
        ),
    });
    controls.push(admin_networks_control(&config.gateway));
    controls.push(filtering_rules_control(&config.gateway));
    controls.push(backup_control(config, secrets, now));
    controls.push(audit_control(store, audit_key, &config.logs.dir).await);
    controls.push(match config.log_client_address {
        AddressMode::Full => control(
            "log_masking",
            Status::Fail,
            "log_client_address = \"full\" writes whole client addresses; use hash or truncate",
        ),
        mode => control(
            "log_masking",
            Status::Pass,
            format!("email addresses and tokens are masked; client addresses are logged as {mode:?}").to_lowercase(),
        ),
    });
    let limits = &config.gateway.rate_limits;
    controls.push(control(
        "rate_limits",
        Status::Pass,
        format!(
            "token buckets of {}/s (burst {}) per address, {}/s (burst {}) per user and {}/s (burst {}) for sign-in; \
             the identity provider also allows {} password checks per address and minute",
            limits.address.per_second,
            limits.address.burst,
            limits.user.per_second,
            limits.user.burst,
            limits.auth.per_second,
            limits.auth.burst,
            crate::idp::SIGN_IN_LIMIT
        ),
    ));
    controls.push(from_problems(
        "database_tls",
        &problems,
        if crate::production::database_is_remote(config) {
            "the remote database is reached over TLS with certificate verification"
        } else {
            "the database is on this machine"
        },
    ));
    controls.push(control("cache_tls", Status::Pass, "LearnTrac uses no cache server"));
    controls
}

fn admin_networks_control(gateway: &GatewaySettings) -> Control {
    let ranges: Vec<String> = gateway.admin_networks.iter().map(|network| network.to_string()).collect();
    // A range holding a well-known public resolver admits the internet at large.
    let public =
        [std::net::IpAddr::from([8, 8, 8, 8]), std::net::IpAddr::from([0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8888])];
    let everywhere = gateway.admin_networks.iter().any(|network| public.iter().any(|ip| network.contains(*ip)));
    if ranges.is_empty() {
        control(
            "admin_networks",
            Status::Warn,
            "admin_networks is empty, so no address may use the administration paths",
        )
    } else if everywhere {
        control(
            "admin_networks",
            Status::Fail,
            format!(
                "admin_networks ({}) admits public addresses; list only your administrators' ranges",
                ranges.join(", ")
            ),
        )
    } else {
        control(
            "admin_networks",
            Status::Pass,
            format!("{} only from {}", gateway.admin_paths.join(", "), ranges.join(", ")),
        )
    }
}

fn filtering_rules_control(gateway: &GatewaySettings) -> Control {
    let relaxed: Vec<String> = gateway
        .waf
        .rules
        .iter()
        .filter(|(_, mode)| **mode != RuleMode::Block)
        .map(|(id, mode)| format!("{id} = {}", mode.as_str()))
        .collect();
    match (gateway.waf.mode, relaxed.is_empty()) {
        (RuleMode::Block, true) => control(
            "filtering_rules",
            Status::Pass,
            "every filtering rule blocks, but text-script, which only counts unless set to block",
        ),
        (RuleMode::Block, false) => {
            control("filtering_rules", Status::Warn, format!("rules not blocking: {}", relaxed.join(", ")))
        }
        (mode, _) => control(
            "filtering_rules",
            Status::Warn,
            format!("gateway.waf.mode = {}: matches are not blocked", mode.as_str()),
        ),
    }
}

fn master_key_control(config: &ServerConfig, problems: &[Problem]) -> Control {
    let result = from_problems("master_key", problems, "");
    if result.status == Status::Fail {
        return result;
    }
    match &config.master_key {
        KeySource::File(path) if path.starts_with(&config.data_dir) => control(
            "master_key",
            Status::Warn,
            format!(
                "the master key file {} is inside the data directory, so a copy of the directory carries its key; \
                 move it elsewhere (master_key_file) or use master_key_command",
                path.display()
            ),
        ),
        source => control("master_key", Status::Pass, format!("the master key comes from {}", source.describe())),
    }
}

/// Finds the newest `*.ltb` file in `dir`, with its age in seconds.
fn newest_backup(dir: &Path, now: i64) -> Option<(PathBuf, i64)> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "ltb"))
        .filter_map(|entry| {
            let modified = entry.metadata().ok()?.modified().ok()?;
            let seconds = modified.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
            Some((entry.path(), now - seconds))
        })
        .min_by_key(|(_, age)| *age)
}

fn backup_control(config: &ServerConfig, secrets: &SecretStore, now: i64) -> Control {
    let dir = &config.backup_dir;
    let Some((path, age)) = newest_backup(dir, now) else {
        return control(
            "backups",
            Status::Fail,
            format!(
                "no backup (*.ltb) in {}; create the directory and run \
                 `learntrac backup create --data-dir DIR --out {}/NAME.ltb` daily",
                dir.display(),
                dir.display()
            ),
        );
    };
    let hours = age / 3600;
    if hours >= config.backup_max_age_hours {
        return control(
            "backups",
            Status::Fail,
            format!(
                "the newest backup {} is {hours} hours old; the limit is {} (backup_max_age_hours)",
                path.display(),
                config.backup_max_age_hours
            ),
        );
    }
    match crate::backup::verify(&path, secrets.keys()) {
        Ok(summary) => control(
            "backups",
            Status::Pass,
            format!(
                "{} is {hours} hours old, encrypted under master key {} and intact",
                path.display(),
                summary.master_key_id
            ),
        ),
        Err(error) => {
            control("backups", Status::Fail, format!("the newest backup {} does not verify: {error:#}", path.display()))
        }
    }
}

async fn audit_control(store: &Store, audit_key: Option<&[u8]>, log_dir: &Path) -> Control {
    let Some(key) = audit_key else {
        return control(
            "audit_chain",
            Status::Warn,
            "no audit key exists yet; it is created when the server first starts",
        );
    };
    match crate::audit::verify_with_logs(store, key, log_dir).await {
        Ok(AuditVerification::Intact { records }) => {
            control("audit_chain", Status::Pass, format!("{records} records, chain intact"))
        }
        Ok(AuditVerification::Broken { seq, reason }) => {
            control("audit_chain", Status::Fail, format!("record {seq}: {reason}; run `learntrac audit verify`"))
        }
        Err(error) => control("audit_chain", Status::Fail, format!("cannot read the audit trail: {error}")),
    }
}
