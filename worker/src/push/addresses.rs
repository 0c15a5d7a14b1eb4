//! Which IP addresses a push request may go to. An allowed host name could
//! still resolve into our own network (a hostile DNS answer, or a rebinding
//! between a check and the connection), so the HTTP client resolves through
//! [`PublicOnlyResolver`]: it drops every special-purpose address and the
//! client connects only to what it returned, the addresses that were checked.
//! An IP literal is never resolved; the endpoint policy allows one only when
//! `PUSHQ_ENDPOINT_HOSTS` names exactly that address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// IANA special-purpose IPv4 blocks (RFC 6890 and successors) that a public
/// push service never lives in.
const SPECIAL_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // carrier-grade NAT
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local, cloud metadata services
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, broadcast
];

const SPECIAL_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::UNSPECIFIED, 128),
    (Ipv6Addr::LOCALHOST, 128),
    (Ipv6Addr::new(0x0100, 0, 0, 0, 0, 0, 0, 0), 64), // discard
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments
    (Ipv6Addr::new(0x2001, 0x0db8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),  // unique local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), // site-local (deprecated)
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),  // multicast
];

/// True for an address a public push service can have.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            // Addresses that embed an IPv4 one are judged by it: IPv4-mapped,
            // NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let segments = v6.segments();
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public_v4(embedded_v4(segments[6], segments[7]));
            }
            if segments[0] == 0x2002 {
                return is_public_v4(embedded_v4(segments[1], segments[2]));
            }
            let bits = u128::from(v6);
            !SPECIAL_V6
                .iter()
                .any(|(net, len)| in_prefix(bits, u128::from(*net), *len, 128))
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let bits = u128::from(u32::from(v4));
    !SPECIAL_V4
        .iter()
        .any(|(net, len)| in_prefix(bits, u128::from(u32::from(*net)), *len, 32))
}

fn embedded_v4(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
}

fn in_prefix(address: u128, network: u128, prefix: u8, width: u8) -> bool {
    let host_bits = u32::from(width - prefix);
    address.checked_shr(host_bits) == network.checked_shr(host_bits)
}

/// Resolution found only addresses a push request may not go to.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to non-public addresses")]
pub struct NonPublicAddress {
    pub host: String,
}

/// The system resolver, keeping only public addresses.
#[derive(Debug, Default)]
pub struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let public = resolve_public(&host).await?;
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

/// The public addresses of `host`; an error when it has none.
pub async fn resolve_public(
    host: &str,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    // Port 0: the connector puts the URL's port on each address.
    let resolved = tokio::net::lookup_host((host, 0)).await?;
    let public: Vec<SocketAddr> = resolved.filter(|addr| is_public(addr.ip())).collect();
    if public.is_empty() {
        return Err(Box::new(NonPublicAddress {
            host: host.to_owned(),
        }));
    }
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_purpose_addresses_are_not_public() {
        for special in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:c0a8:0101::1",
            "2001:db8::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
        ] {
            let ip: IpAddr = special.parse().expect(special);
            assert!(!is_public(ip), "{special} must not be public");
        }
    }

    #[test]
    fn public_push_service_addresses_are() {
        for public in [
            "142.250.185.74",
            "172.32.0.1",
            "100.128.0.1",
            "8.8.8.8",
            "2a00:1450:4001:82b::200a",
            "2600:1901:0:38d7::",
            "::ffff:142.250.185.74",
            "2002:8efa:b94a::1",
        ] {
            let ip: IpAddr = public.parse().expect(public);
            assert!(is_public(ip), "{public} must be public");
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused() {
        let err = resolve_public("localhost")
            .await
            .expect_err("loopback only");
        assert!(err.downcast_ref::<NonPublicAddress>().is_some(), "{err}");
    }
}
