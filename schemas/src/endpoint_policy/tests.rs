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
fn a_refusal_names_the_origin_never_the_path() {
    let policy = EndpointPolicy::default();
    for (endpoint, why) in [
        (
            "http://fcm.googleapis.com/fcm/send/secret-path",
            "only https",
        ),
        (
            "https://push.example.net/secret-path",
            "not an allowed push service",
        ),
    ] {
        let refusal = policy.check(endpoint).expect_err(endpoint);
        assert!(refusal.0.contains(why), "{refusal}");
        assert!(!refusal.0.contains("secret-path"), "{refusal}");
    }
}

#[test]
fn ports_and_http_are_opt_in() {
    let policy = EndpointPolicy::parse("127.0.0.1:*, push.local:8443", true).expect("parses");
    assert!(policy.check("http://127.0.0.1:38211/push/1").is_ok());
    assert!(policy.check("https://push.local:8443/x").is_ok());
    assert!(policy.check("https://push.local/x").is_err());
    assert!(EndpointPolicy::parse("a:b", false).is_err());
    assert!(EndpointPolicy::parse(" , ", false).is_err());
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

#[test]
fn a_url_given_as_a_host_is_named_as_one() {
    let err = EndpointPolicy::parse("web.push.apple.com, https://fcm.googleapis.com", false)
        .expect_err("a URL");
    assert_eq!(
        err,
        "`https://fcm.googleapis.com` is a URL: give the host alone, fcm.googleapis.com"
    );
    let err = EndpointPolicy::parse("http://push.local:8443/", true).expect_err("a URL");
    assert!(
        err.ends_with("give the host alone, push.local:8443"),
        "{err}"
    );
}

#[test]
fn a_wildcard_or_what_no_host_is_made_of_is_refused() {
    let err = EndpointPolicy::parse("*", false).expect_err("a wildcard");
    assert!(err.contains("is a wildcard"), "{err}");
    assert!(EndpointPolicy::parse("*:*", true).is_err());
    assert!(EndpointPolicy::parse("push.example.com;rm", false).is_err());
    // `*.` before a host is how some write "and its subdomains", which every entry means.
    assert!(EndpointPolicy::parse("*.push.example.com", false).is_ok());
    assert!(EndpointPolicy::parse("127.0.0.1:*", true).is_ok());
}

#[test]
fn settings_read_like_the_workers() {
    assert_eq!(
        EndpointPolicy::from_settings(None, None),
        Ok(EndpointPolicy::default())
    );
    let test_service =
        EndpointPolicy::from_settings(Some("127.0.0.1:*"), Some("TRUE")).expect("parses");
    assert!(test_service.check("http://127.0.0.1:9/push").is_ok());
    let err = EndpointPolicy::from_settings(None, Some("maybe")).expect_err("not a bool");
    assert!(err.starts_with("PUSHQ_ALLOW_HTTP"), "{err}");
    let err = EndpointPolicy::from_settings(Some("host:port"), None).expect_err("bad port");
    assert!(err.starts_with("PUSHQ_ENDPOINT_HOSTS"), "{err}");
}

#[test]
fn push_services_are_named_as_listed() {
    let policy =
        EndpointPolicy::parse("push.services.mozilla.com, push.local:8443", false).expect("parses");
    assert_eq!(
        policy.push_service("https://updates.push.services.mozilla.com"),
        Some("push.services.mozilla.com".to_owned())
    );
    assert_eq!(
        policy.push_service("https://push.local:8443"),
        Some("push.local:8443".to_owned())
    );
    assert_eq!(policy.push_service("https://elsewhere.example"), None);
}
