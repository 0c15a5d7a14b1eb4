//! Which push-service URLs this worker will call: browsers hand us URLs, so an
//! unchecked endpoint would let anyone make the worker POST inside our network.

use std::fmt;

use url::Url;

use super::addresses;

/// The public push services' hosts; each entry also covers its subdomains.
pub const DEFAULT_ENDPOINT_HOSTS: &str = "fcm.googleapis.com,android.googleapis.com,\
push.services.mozilla.com,web.push.apple.com,notify.windows.com";

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

impl EndpointPolicy {
    /// `hosts`: comma-separated `host`, `host:port` or `host:*`.
    pub fn parse(hosts: &str, allow_http: bool) -> Result<Self, String> {
        let mut rules = Vec::new();
        for entry in hosts.split(',').map(str::trim).filter(|e| !e.is_empty()) {
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
            if host.is_empty() || host.contains(['/', '@', ' ']) {
                return Err(format!("entry {entry:?} is not a host name"));
            }
            rules.push(HostRule { host, port });
        }
        if rules.is_empty() {
            return Err("no host is listed".to_owned());
        }
        Ok(Self {
            hosts: rules,
            allow_http,
        })
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
                "endpoint origin {origin} is not an allowed push service (PUSHQ_ENDPOINT_HOSTS)"
            )))
        }
    }
}

impl EndpointPolicy {
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

    /// [`EndpointPolicy::check`], then, for a host name, its addresses: a name
    /// that resolves only into special-purpose ranges is refused now, at
    /// registration. A name that does not resolve here is let through; the
    /// HTTP client checks the addresses again on every connection.
    pub async fn check_resolved(&self, endpoint: &str) -> Result<Url, Refusal> {
        let url = self.check(endpoint)?;
        if let Some(url::Host::Domain(domain)) = url.host()
            && let Err(err) = addresses::resolve_public(domain).await
            && err.downcast_ref::<addresses::NonPublicAddress>().is_some()
        {
            return Err(Refusal(format!(
                "endpoint origin {} is refused: {err}",
                url.origin().ascii_serialization()
            )));
        }
        Ok(url)
    }
}

impl Default for EndpointPolicy {
    fn default() -> Self {
        Self::parse(DEFAULT_ENDPOINT_HOSTS, false).unwrap_or(Self {
            hosts: Vec::new(),
            allow_http: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_push_services_pass_by_default() {
        let policy = EndpointPolicy::default();
        for ok in [
            "https://fcm.googleapis.com/fcm/send/abc",
            "https://updates.push.services.mozilla.com/wpush/v2/abc",
            "https://web.push.apple.com/QGx",
            "https://db5p.notify.windows.com/w/?token=x",
            "https://fcm.googleapis.com:443/fcm/send/abc",
        ] {
            assert!(policy.check(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn everything_else_is_refused() {
        let policy = EndpointPolicy::default();
        for refused in [
            "http://fcm.googleapis.com/fcm/send/abc",
            "https://evilfcm.googleapis.com.attacker.net/x",
            "https://notfcm.googleapis.com.evil/x",
            "https://attackerfcm.googleapis.com/x",
            "https://fcm.googleapis.com:8443/x",
            "https://127.0.0.1/x",
            "https://user@fcm.googleapis.com/x",
            "ftp://fcm.googleapis.com/x",
        ] {
            assert!(policy.check(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn ports_and_http_are_opt_in() {
        let policy = EndpointPolicy::parse("127.0.0.1:*, push.local:8443", true).expect("parses");
        assert!(policy.check("http://127.0.0.1:38211/push/1").is_ok());
        assert!(policy.check("https://push.local:8443/x").is_ok());
        assert!(policy.check("https://push.local/x").is_err());
        assert!(EndpointPolicy::parse("a:b", false).is_err());
    }

    #[test]
    fn an_ip_address_passes_only_where_it_is_listed_itself() {
        let policy = EndpointPolicy::parse("0.1:*, 10.0.0.7:*, [::1]:*", true).expect("parses");
        assert!(policy.check("http://10.0.0.7:8080/x").is_ok());
        assert!(policy.check("http://[::1]:8080/x").is_ok());
        assert!(
            policy.check("http://10.0.0.1:8080/x").is_err(),
            "no suffix match for addresses"
        );
        assert!(policy.check("http://10.0.0.8:8080/x").is_err());
    }

    #[tokio::test]
    async fn a_listed_name_resolving_to_loopback_is_refused_at_registration() {
        let policy = EndpointPolicy::parse("localhost:*", true).expect("parses");
        assert!(policy.check("http://localhost:8080/push/1").is_ok());
        let refused = policy
            .check_resolved("http://localhost:8080/push/1")
            .await
            .expect_err("loopback");
        assert!(refused.0.contains("non-public"), "{refused}");
        assert!(!refused.0.contains("/push/1"), "the path is never named");
        assert!(EndpointPolicy::parse(" , ", false).is_err());
    }
}
