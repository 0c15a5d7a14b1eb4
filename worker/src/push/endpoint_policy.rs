//! Which push-service URLs this worker will call. The rules that need no DNS
//! are the contract's (`pushq_schemas::endpoint_policy`), shared with the SDK;
//! here they are completed by a look at the addresses a name resolves to.

pub use pushq_schemas::endpoint_policy::{DEFAULT_ENDPOINT_HOSTS, EndpointPolicy, Refusal};
use url::Url;

use super::addresses;

/// [`EndpointPolicy::check`], then, for a host name, its addresses: a name
/// that resolves only into special-purpose ranges is refused now, at
/// registration. A name that does not resolve here is let through; the HTTP
/// client checks the addresses again on every connection.
pub async fn check_resolved(policy: &EndpointPolicy, endpoint: &str) -> Result<Url, Refusal> {
    let url = policy.check(endpoint)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listed_name_resolving_to_loopback_is_refused_at_registration() {
        let policy = EndpointPolicy::parse("localhost:*", true).expect("parses");
        assert!(policy.check("http://localhost:8080/push/1").is_ok());
        let refused = check_resolved(&policy, "http://localhost:8080/push/1")
            .await
            .expect_err("loopback");
        assert!(refused.0.contains("non-public"), "{refused}");
        assert!(!refused.0.contains("/push/1"), "the path is never named");
    }
}
