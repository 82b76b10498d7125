//! The gateway's settings, the `[gateway]` table of `learntrac.toml`: the
//! routing table and its upstreams, connection and request limits, the
//! filtering rules, rate limits and the address ranges allowed to
//! administer.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

/// The roles that `learntrac serve` runs in its own process when their
/// upstream has no addresses.
pub const ROLES: &[&str] = &["trac", "api", "idp"];

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    /// Largest request head (request line and headers); more gets 431.
    pub max_header_bytes: usize,
    /// Largest request body on every path but the upload paths.
    pub max_body_bytes: usize,
    /// Paths that accept book uploads (multipart, up to `max_upload_mib`),
    /// checked by type and size instead of by the filtering rules.
    pub upload_paths: Vec<String>,
    /// Time a client has to send a request's headers.
    pub header_read_seconds: u64,
    /// A connection with no traffic for this long is closed.
    pub idle_seconds: u64,
    /// Time to read a request body and get the upstream's response headers.
    pub request_seconds: u64,
    /// Open connections allowed from one client address.
    pub connections_per_client: usize,
    /// Interval between health checks of each upstream instance.
    pub health_check_seconds: u64,
    /// Path prefixes and the upstream that serves each; the longest match wins.
    pub routes: Vec<RouteSetting>,
    /// Addresses (`https://HOST:PORT`) of each upstream's instances. A role
    /// with no addresses runs inside `learntrac serve`.
    pub upstreams: BTreeMap<String, Vec<String>>,
    /// Client address ranges allowed to reach the administration paths.
    pub admin_networks: Vec<Network>,
    /// Path prefixes of administration pages and API calls.
    pub admin_paths: Vec<String>,
    pub rate_limits: RateLimitSettings,
    pub waf: WafSettings,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSetting {
    pub prefix: String,
    pub upstream: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Every request, per client address.
    pub address: Bucket,
    /// Requests with a valid token or session, per user.
    pub user: Bucket,
    /// Sign-in, token, sign-up and password-reset requests, per client address.
    pub auth: Bucket,
    /// Path prefixes that count against `auth`.
    pub auth_paths: Vec<String>,
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WafSettings {
    /// The mode of every rule without its own entry in `rules`.
    pub mode: RuleMode,
    /// Modes of single rules by id, such as `"sqli-union" = "count"`.
    pub rules: BTreeMap<String, RuleMode>,
    /// Form and JSON fields that contain learners' own writing (their
    /// replies to questions, wiki text, goals), checked with the free-text
    /// rules only.
    pub free_text_fields: Vec<String>,
    /// Fields that are never inspected, such as passwords.
    pub secret_fields: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuleMode {
    /// A match is logged and the request refused with 403.
    Block,
    /// A match is logged and the request goes on.
    Count,
    Off,
}

impl RuleMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleMode::Block => "block",
            RuleMode::Count => "count",
            RuleMode::Off => "off",
        }
    }
}

/// An address range in CIDR notation, such as `10.0.0.0/8` or `::1/128`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.address, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Network, String> {
        let invalid = || format!("{text:?} is not an address range; write it as 10.0.0.0/8 or fd00::/8");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.trim().parse().map_err(|_| invalid())?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.trim().parse::<u8>().ok().filter(|p| *p <= bits).ok_or_else(invalid)?,
            None => bits,
        };
        Ok(Network { address, prefix })
    }
}

impl TryFrom<String> for Network {
    type Error = String;

    fn try_from(text: String) -> Result<Network, String> {
        text.parse()
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl Default for GatewaySettings {
    fn default() -> GatewaySettings {
        let route = |prefix: &str, upstream: &str| RouteSetting { prefix: prefix.into(), upstream: upstream.into() };
        GatewaySettings {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
            upload_paths: vec!["/api/v1/books".into(), "/library".into()],
            header_read_seconds: 10,
            idle_seconds: 60,
            request_seconds: 120,
            connections_per_client: 128,
            health_check_seconds: 2,
            routes: vec![
                route("/", "trac"),
                route("/api/", "api"),
                route("/oauth2/", "idp"),
                route("/.well-known/", "idp"),
                route("/login", "idp"),
                route("/logout", "idp"),
                route("/account", "idp"),
                route("/signup", "idp"),
            ],
            upstreams: BTreeMap::new(),
            admin_networks: vec![
                Network { address: IpAddr::from([127, 0, 0, 0]), prefix: 8 },
                Network { address: IpAddr::from(std::net::Ipv6Addr::LOCALHOST), prefix: 128 },
            ],
            admin_paths: vec!["/admin".into(), "/api/v1/admin".into()],
            rate_limits: RateLimitSettings::default(),
            waf: WafSettings::default(),
        }
    }
}

impl Default for RateLimitSettings {
    fn default() -> RateLimitSettings {
        RateLimitSettings {
            address: Bucket { per_second: 200.0, burst: 400 },
            user: Bucket { per_second: 100.0, burst: 200 },
            auth: Bucket { per_second: 0.2, burst: 10 },
            auth_paths: vec![
                "/login".into(),
                "/oauth2/token".into(),
                "/signup".into(),
                "/account/password".into(),
                "/account/reset".into(),
            ],
        }
    }
}

impl Default for WafSettings {
    fn default() -> WafSettings {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        WafSettings {
            mode: RuleMode::Block,
            rules: BTreeMap::new(),
            free_text_fields: names(&["answer", "text", "goal", "query", "comment", "body", "title", "name"]),
            secret_fields: names(&[
                "password",
                "current_password",
                "new_password",
                "confirm_password",
                "client_secret",
                "refresh_token",
                "code",
                "code_verifier",
                "csrf_token",
            ]),
        }
    }
}

impl GatewaySettings {
    /// Checks the settings as a whole; the error names the setting and
    /// the fix.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value, range) in [
            ("max_header_bytes", self.max_header_bytes, 1024..=1024 * 1024),
            ("max_body_bytes", self.max_body_bytes, 1024..=1024 * 1024 * 1024),
            ("connections_per_client", self.connections_per_client, 1..=100_000),
        ] {
            if !range.contains(&value) {
                return Err(format!(
                    "gateway.{name} = {value} is out of range; use {} to {}",
                    range.start(),
                    range.end()
                ));
            }
        }
        for (name, value) in [
            ("header_read_seconds", self.header_read_seconds),
            ("idle_seconds", self.idle_seconds),
            ("request_seconds", self.request_seconds),
            ("health_check_seconds", self.health_check_seconds),
        ] {
            if !(1..=3600).contains(&value) {
                return Err(format!("gateway.{name} = {value} is out of range; use 1 to 3600 seconds"));
            }
        }
        for route in &self.routes {
            if !route.prefix.starts_with('/') {
                return Err(format!("gateway.routes: prefix {:?} must start with '/'", route.prefix));
            }
            if !ROLES.contains(&route.upstream.as_str()) && !self.upstreams.contains_key(&route.upstream) {
                return Err(format!(
                    "gateway.routes: prefix {:?} names upstream {:?}, which is neither a role ({}) nor in [gateway.upstreams]",
                    route.prefix,
                    route.upstream,
                    ROLES.join(", ")
                ));
            }
        }
        for (name, paths) in [
            ("admin_paths", &self.admin_paths),
            ("upload_paths", &self.upload_paths),
            ("rate_limits.auth_paths", &self.rate_limits.auth_paths),
        ] {
            if let Some(path) = paths.iter().find(|path| !path.starts_with('/')) {
                return Err(format!("gateway.{name}: {path:?} must start with '/', such as \"/{path}\""));
            }
        }
        if !self.routes.iter().any(|route| route.prefix == "/") {
            return Err("gateway.routes needs a route for prefix \"/\", which serves every other path".into());
        }
        for (name, addresses) in &self.upstreams {
            if addresses.is_empty() {
                return Err(format!("gateway.upstreams.{name} is empty; list at least one https://HOST:PORT"));
            }
            for address in addresses {
                check_upstream_address(name, address)?;
            }
        }
        let limits = &self.rate_limits;
        for (name, bucket) in [("address", limits.address), ("user", limits.user), ("auth", limits.auth)] {
            if !(bucket.per_second > 0.0 && bucket.per_second <= 1_000_000.0) || bucket.burst == 0 {
                return Err(format!(
                    "gateway.rate_limits.{name} = {{ per_second = {}, burst = {} }} is invalid; use a rate above 0 and a burst of at least 1",
                    bucket.per_second, bucket.burst
                ));
            }
        }
        for id in self.waf.rules.keys() {
            if !crate::gateway::waf::RULE_IDS.contains(&id.as_str()) {
                return Err(format!(
                    "gateway.waf.rules: there is no rule {id:?}; the rules are {}",
                    crate::gateway::waf::RULE_IDS.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Checks that a role in this process (`local`) or upstream addresses
    /// serve every route.
    pub fn check_served(&self, local: &[&str]) -> Result<(), String> {
        for route in &self.routes {
            if !self.upstreams.contains_key(&route.upstream) && !local.contains(&route.upstream.as_str()) {
                return Err(unserved_route(&route.prefix, &route.upstream));
            }
        }
        Ok(())
    }

    /// Returns whether `path` falls under `prefix`: equal to it, or below it.
    pub fn under(path: &str, prefix: &str) -> bool {
        match path.strip_prefix(prefix) {
            Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    pub fn is_admin_path(&self, path: &str) -> bool {
        self.admin_paths.iter().any(|prefix| GatewaySettings::under(path, prefix))
    }

    pub fn is_upload_path(&self, path: &str) -> bool {
        self.upload_paths.iter().any(|prefix| GatewaySettings::under(path, prefix))
    }

    pub fn is_auth_path(&self, path: &str) -> bool {
        self.rate_limits.auth_paths.iter().any(|prefix| GatewaySettings::under(path, prefix))
    }

    pub fn admin_allowed(&self, ip: IpAddr) -> bool {
        self.admin_networks.iter().any(|network| network.contains(ip))
    }
}

/// Describes a route that nothing in this process or the settings serves.
pub(crate) fn unserved_route(prefix: &str, upstream: &str) -> String {
    format!(
        "route {prefix:?} goes to {upstream:?}, which does not run in this process and has no addresses; \
         add {upstream} = [\"https://HOST:PORT\"] under [gateway.upstreams] in learntrac.toml"
    )
}

/// Checks one upstream address: `https://HOST:PORT`, nothing more,
/// because the roles accept mutual TLS only.
fn check_upstream_address(upstream: &str, address: &str) -> Result<(), String> {
    let problem = |what: &str| {
        format!(
            "gateway.upstreams.{upstream}: {address:?} {what}; write https://HOST:PORT, such as https://10.0.0.11:9001"
        )
    };
    let uri: axum::http::Uri = address.parse().map_err(|_| problem("is not an address"))?;
    if uri.scheme_str() != Some("https") {
        return Err(problem("must use https, because the roles accept mutual TLS only"));
    }
    let Some(authority) = uri.authority() else { return Err(problem("has no host")) };
    if authority.host().is_empty() {
        return Err(problem("has no host"));
    }
    if address.contains('#') {
        return Err(problem("must have no fragment"));
    }
    if authority.as_str().contains('@') {
        return Err(problem("must not contain a user name"));
    }
    let port_text = authority.as_str().rsplit_once(':').map(|(_, port)| port).filter(|p| !p.ends_with(']'));
    match port_text.map(str::parse::<u16>) {
        Some(Ok(port)) if port > 0 => {}
        Some(_) => return Err(problem("has an invalid port; use 1 to 65535")),
        None => return Err(problem("needs a port")),
    }
    if uri.path() != "/" || uri.query().is_some() {
        return Err(problem("must have no path or query"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_their_ranges() {
        let net: Network = "10.1.0.0/16".parse().expect("range");
        assert!(net.contains("10.1.200.3".parse().expect("ip")));
        assert!(!net.contains("10.2.0.1".parse().expect("ip")));
        assert!(net.contains("::ffff:10.1.0.9".parse().expect("ip")));
        let any: Network = "0.0.0.0/0".parse().expect("range");
        assert!(any.contains("192.0.2.1".parse().expect("ip")));
        let host: Network = "::1".parse().expect("range");
        assert!(host.contains("::1".parse().expect("ip")));
        assert!(!host.contains("::2".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "10.0.0/8", "example.org/8", "::/129"] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(GatewaySettings::under("/login", "/login"));
        assert!(GatewaySettings::under("/login/x", "/login"));
        assert!(!GatewaySettings::under("/loginx", "/login"));
        assert!(GatewaySettings::under("/api/v1", "/api/"));
        assert!(!GatewaySettings::under("/api", "/api/"));
    }

    #[test]
    fn defaults_are_valid_and_bad_routes_are_named() {
        assert_eq!(GatewaySettings::default().validate(), Ok(()));
        let mut settings = GatewaySettings::default();
        settings.routes.push(RouteSetting { prefix: "/x".into(), upstream: "nowhere".into() });
        assert!(settings.validate().expect_err("unknown upstream").contains("nowhere"));
        for (address, problem) in [
            ("http://127.0.0.1:9000", "mutual TLS"),
            ("https://127.0.0.1:99999", "invalid port"),
            ("https://127.0.0.1:0", "invalid port"),
            ("https://127.0.0.1", "needs a port"),
            ("https://user@127.0.0.1:9000", "user name"),
            ("https://127.0.0.1:9000?x=1", "no path or query"),
            ("https://127.0.0.1:9000/api", "no path or query"),
            ("https://:9000", "has no host"),
            ("https://127.0.0.1:9000#f", "no fragment"),
        ] {
            let mut settings = GatewaySettings::default();
            settings.upstreams.insert("api".into(), vec![address.into()]);
            let error = settings.validate().expect_err(address);
            assert!(error.contains(problem), "{address}: {error}");
        }
        for address in ["https://127.0.0.1:9000", "https://api.internal:9000/", "https://[::1]:9000"] {
            let mut settings = GatewaySettings::default();
            settings.upstreams.insert("api".into(), vec![address.into()]);
            assert_eq!(settings.validate(), Ok(()), "{address}");
        }
        let settings = GatewaySettings { admin_paths: vec!["admin".into()], ..GatewaySettings::default() };
        assert!(settings.validate().expect_err("relative path").contains("must start with '/'"));
    }
}
