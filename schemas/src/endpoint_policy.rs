//! Which push-service URLs pushq will call: browsers hand us URLs, so an
//! unchecked endpoint would let anyone make the worker POST inside our
//! network. The rules are pure (no DNS) and live here so that the worker,
//! which enforces them, and the SDK, which refuses such a subscription before
//! it is published, read the same settings the same way. The worker checks
//! resolved addresses on top of these rules.

use std::fmt;

use url::Url;

/// The public push services' hosts; each entry also covers its subdomains.
pub const DEFAULT_ENDPOINT_HOSTS: &str = "fcm.googleapis.com,android.googleapis.com,\
push.services.mozilla.com,web.push.apple.com,notify.windows.com";

/// The variables the policy is read from, by the worker and the SDK alike.
pub const HOSTS_VARIABLE: &str = "PUSHQ_ENDPOINT_HOSTS";
pub const ALLOW_HTTP_VARIABLE: &str = "PUSHQ_ALLOW_HTTP";

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortRule {
    /// Only the scheme's default port (443, or 80 for http).
    SchemeDefault,
    Exactly(u16),
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostRule {
    host: String,
    port: PortRule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPolicy {
    hosts: Vec<HostRule>,
    allow_http: bool,
}

/// Why an endpoint is refused; the sentence names the origin, never the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

impl EndpointPolicy {
    /// `hosts`: comma-separated `host`, `host:port` or `host:*`.
    pub fn parse(hosts: &str, allow_http: bool) -> Result<Self, String> {
        let mut rules = Vec::new();
        for entry in hosts.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            rules.push(parse_entry(entry)?);
        }
        if rules.is_empty() {
            return Err("no host is listed".to_owned());
        }
        Ok(Self {
            hosts: rules,
            allow_http,
        })
    }

    /// The policy the settings give, with the worker's defaults for unset
    /// ones; an error is a sentence naming the variable.
    pub fn from_settings(hosts: Option<&str>, allow_http: Option<&str>) -> Result<Self, String> {
        let allow_http = match allow_http.map(str::to_ascii_lowercase).as_deref() {
            None | Some("false" | "0" | "no") => false,
            Some("true" | "1" | "yes") => true,
            Some(other) => {
                return Err(format!(
                    "{ALLOW_HTTP_VARIABLE} must be true or false, not {other:?}"
                ));
            }
        };
        Self::parse(hosts.unwrap_or(DEFAULT_ENDPOINT_HOSTS), allow_http).map_err(|why| {
            format!(
                "{HOSTS_VARIABLE} must list hosts as host, host:port or host:* separated by commas: {why}"
            )
        })
    }

    /// [`EndpointPolicy::from_settings`] from `PUSHQ_ENDPOINT_HOSTS` and
    /// `PUSHQ_ALLOW_HTTP` in the environment.
    pub fn from_env() -> Result<Self, String> {
        // Set but empty means unset, as the worker reads its settings.
        let read = |name| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
        };
        let hosts = read(HOSTS_VARIABLE);
        let allow_http = read(ALLOW_HTTP_VARIABLE);
        Self::from_settings(hosts.as_deref(), allow_http.as_deref())
    }

    /// Checks an endpoint (already structurally valid per the contract).
    pub fn check(&self, endpoint: &str) -> Result<Url, Refusal> {
        let url = Url::parse(endpoint).map_err(|_| Refusal("the endpoint is not a URL".into()))?;
        let origin = url.origin().ascii_serialization();
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => {
                return Err(Refusal(format!(
                    "endpoint origin {origin} is refused: only https push services are allowed"
                )));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal(format!(
                "endpoint origin {origin} is refused: credentials in the URL"
            )));
        }
        if self.rule_for(&url).is_some() {
            Ok(url)
        } else {
            Err(Refusal(format!(
                "endpoint origin {origin} is not an allowed push service ({HOSTS_VARIABLE})"
            )))
        }
    }

    /// The push service an origin belongs to, as `PUSHQ_ENDPOINT_HOSTS`
    /// lists it (`push.services.mozilla.com` for every one of its
    /// subdomains, `host:port` where a port is listed): the bounded set of
    /// names metrics are labelled with. `None` for an origin no entry allows.
    pub fn push_service(&self, origin: &str) -> Option<String> {
        let url = Url::parse(origin).ok()?;
        let rule = self.rule_for(&url)?;
        Some(match rule.port {
            PortRule::SchemeDefault => rule.host.clone(),
            PortRule::Exactly(port) => format!("{}:{port}", rule.host),
            PortRule::Any => format!("{}:*", rule.host),
        })
    }

    /// The listed entry that allows `url`: its host or a parent domain of it,
    /// on the port the entry names.
    fn rule_for(&self, url: &Url) -> Option<&HostRule> {
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        // An IP address is allowed only where it is listed itself: the
        // subdomain rule means nothing for one, and a listed private address
        // is the operator's explicit permission.
        let is_ip = matches!(url.host(), Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)));
        self.hosts.iter().find(|rule| {
            let host_matches = host == rule.host
                || (!is_ip
                    && host
                        .strip_suffix(&rule.host)
                        .is_some_and(|prefix| prefix.ends_with('.')));
            let port_matches = match rule.port {
                PortRule::SchemeDefault => url.port().is_none(),
                PortRule::Exactly(port) => url.port_or_known_default() == Some(port),
                PortRule::Any => true,
            };
            host_matches && port_matches
        })
    }
}

fn parse_entry(entry: &str) -> Result<HostRule, String> {
    if entry.contains("://") {
        // Operators paste the push service's URL; the port split below would
        // then call the scheme's slashes an invalid port.
        let host = Url::parse(entry)
            .ok()
            .and_then(|url| {
                let host = url.host_str()?.to_owned();
                Some(match url.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| "the host name".to_owned());
        return Err(format!("`{entry}` is a URL: give the host alone, {host}"));
    }
    let (host, port) = match entry.rsplit_once(':') {
        Some((host, "*")) => (host, PortRule::Any),
        Some((host, port)) => (
            host,
            PortRule::Exactly(
                port.parse()
                    .map_err(|_| format!("entry {entry:?} has an invalid port"))?,
            ),
        ),
        None => (entry, PortRule::SchemeDefault),
    };
    let host = host
        .trim_start_matches("*.")
        .trim_matches('.')
        .to_ascii_lowercase();
    if host.contains('*') {
        return Err(format!(
            "entry {entry:?} is a wildcard: list each push service's host (an entry covers its subdomains already)"
        ));
    }
    let host_character =
        |c: char| c.is_alphanumeric() || matches!(c, '-' | '.' | '_' | '[' | ']' | ':');
    if host.is_empty() || !host.chars().all(host_character) {
        return Err(format!("entry {entry:?} is not a host name"));
    }
    Ok(HostRule { host, port })
}

impl Default for EndpointPolicy {
    /// The public push services, https only: the worker's default.
    fn default() -> Self {
        Self::parse(DEFAULT_ENDPOINT_HOSTS, false).unwrap_or(Self {
            hosts: Vec::new(),
            allow_http: false,
        })
    }
}

#[cfg(test)]
mod tests;
