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

const GLOBAL_UNICAST_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);

/// IANA special-purpose IPv6 blocks; those outside 2000::/3 are refused by
/// that rule as well, and named here so that the table reads as the registry.
const SPECIAL_V6: &[(Ipv6Addr, u8)] = &[
    // IPv4-compatible (deprecated by RFC 4291 and routed nowhere), with the
    // unspecified address and loopback: ::a.b.c.d is refused whatever a.b.c.d.
    (Ipv6Addr::UNSPECIFIED, 96),
    (Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96), // IPv4-translated (SIIT, RFC 2765)
    (Ipv6Addr::new(0x0064, 0xff9b, 0x0001, 0, 0, 0, 0, 0), 48), // local-use NAT64 (RFC 8215)
    (Ipv6Addr::new(0x0100, 0, 0, 0, 0, 0, 0, 0), 64), // discard
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments
    (Ipv6Addr::new(0x2001, 0x0db8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation (RFC 9637)
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
            // the well-known NAT64 prefix (64:ff9b::/96) and 6to4 (2002::/16).
            // RFC 6052 forbids the well-known prefix for non-global IPv4
            // addresses, and an IPv6-only network reaches an IPv4-only push
            // service only through it, so it is judged rather than refused.
            // The local-use NAT64 prefix (64:ff9b:1::/48) and IPv4-compatible
            // addresses (::/96) are refused outright, in SPECIAL_V6.
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
            // Outside 2000::/3 IANA has assigned no global unicast address:
            // whatever the table below does not name there is refused too.
            in_prefix(
                bits,
                u128::from(GLOBAL_UNICAST_V6.0),
                GLOBAL_UNICAST_V6.1,
                128,
            ) && !SPECIAL_V6
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
            // IPv4-compatible, whatever the address it embeds.
            "::7f00:1",
            "::a00:1",
            "::a9fe:a9fe",
            "::808:808",
            // Local-use NAT64 (RFC 8215): the translator is ours, so is what it reaches.
            "64:ff9b:1::a00:1",
            "64:ff9b:1::808:808",
            "64:ff9b:1:ffff:ffff::1",
            // The well-known NAT64 prefix is judged by the IPv4 address it embeds.
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "::ffff:0:7f00:1",
            "3fff::1",
            // Nothing outside 2000::/3 is global unicast.
            "64:ff9b:2::1",
            "4000::1",
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
            "64:ff9b::8efa:b94a",
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
