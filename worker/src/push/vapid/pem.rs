//! The private key in a PEM file, as openssl and the web-push tools write it:
//! SEC1 (`EC PRIVATE KEY`, after an `EC PARAMETERS` block when written by
//! `openssl ecparam -genkey` without `-noout`) or PKCS#8 (`PRIVATE KEY`).

use p256::pkcs8::{DecodePrivateKey, ObjectIdentifier, PrivateKeyInfo};
use sec1::der::Decode;
use sec1::{EcParameters, EcPrivateKey};

const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

/// What a refusal asks for instead.
const EXPECTED: &str = "expected a P-256 private key in PEM, SEC1 as `openssl ecparam -name prime256v1 -genkey -noout` writes it, or PKCS#8";

/// The P-256 key in `pem`. A refusal names what was found and what is
/// expected, never the key.
pub(super) fn secret_key(pem: &str) -> Result<p256::SecretKey, String> {
    let mut key = None;
    for block in blocks(pem) {
        let (label, der) = sec1::der::pem::decode_vec(block.as_bytes())
            .map_err(|_| format!("holds a PEM block that cannot be read: {EXPECTED}"))?;
        match label {
            "EC PARAMETERS" => {
                let curve = EcParameters::from_der(&der)
                    .ok()
                    .and_then(EcParameters::named_curve);
                check_curve(curve)?;
            }
            "EC PRIVATE KEY" => {
                let parsed = EcPrivateKey::from_der(&der).map_err(|_| {
                    format!("holds an EC PRIVATE KEY block that is not SEC1: {EXPECTED}")
                })?;
                check_curve(parsed.parameters.and_then(EcParameters::named_curve))?;
                key = Some(p256::SecretKey::from_sec1_der(&der).ok());
            }
            "PRIVATE KEY" => {
                let info = PrivateKeyInfo::try_from(der.as_slice()).map_err(|_| {
                    format!("holds a PRIVATE KEY block that is not PKCS#8: {EXPECTED}")
                })?;
                if info.algorithm.oid != EC_PUBLIC_KEY {
                    return Err(format!(
                        "holds a key of algorithm {}, not an elliptic-curve key: {EXPECTED}",
                        info.algorithm.oid
                    ));
                }
                check_curve(info.algorithm.parameters_oid().ok())?;
                key = Some(p256::SecretKey::from_pkcs8_der(&der).ok());
            }
            other => {
                return Err(format!(
                    "holds a {other:?} block, not a private key: {EXPECTED}"
                ));
            }
        }
    }
    match key {
        Some(Some(key)) => Ok(key),
        Some(None) => Err(format!(
            "does not hold a valid P-256 private key: {EXPECTED}"
        )),
        None => Err(format!("holds no private key block: {EXPECTED}")),
    }
}

/// `None` is a key that names no curve; the parse that follows decides.
fn check_curve(curve: Option<ObjectIdentifier>) -> Result<(), String> {
    match curve {
        Some(curve) if curve != P256 => Err(format!(
            "holds a key on curve {}, not P-256 (prime256v1), the one VAPID signs with: {EXPECTED}",
            curve_name(curve)
        )),
        _ => Ok(()),
    }
}

fn curve_name(curve: ObjectIdentifier) -> String {
    let name = match curve.to_string().as_str() {
        "1.3.132.0.34" => "secp384r1",
        "1.3.132.0.35" => "secp521r1",
        "1.3.132.0.10" => "secp256k1",
        "1.3.132.0.33" => "secp224r1",
        "1.2.840.10045.3.1.1" => "prime192v1",
        _ => return curve.to_string(),
    };
    name.to_owned()
}

/// Each `-----BEGIN …-----` to `-----END …-----` block, as text; anything
/// between blocks (openssl's comments) is skipped.
fn blocks(pem: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
        if line.starts_with("-----END ") {
            blocks.extend(current.take());
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::{EncodePrivateKey, LineEnding};

    const P256_PARAMETERS: &str =
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n";
    const P384_PARAMETERS: &str =
        "-----BEGIN EC PARAMETERS-----\nBgUrgQQAIg==\n-----END EC PARAMETERS-----\n";

    #[test]
    fn sec1_with_or_without_parameters_and_pkcs8_are_read() {
        let key = p256::SecretKey::random(&mut rand_core::OsRng);
        let sec1 = key.to_sec1_pem(LineEnding::LF).expect("sec1");
        let pkcs8 = key.to_pkcs8_pem(LineEnding::LF).expect("pkcs8");
        for pem in [
            sec1.to_string(),
            format!("{P256_PARAMETERS}{}", *sec1),
            pkcs8.to_string(),
        ] {
            assert_eq!(secret_key(&pem).expect("read").to_bytes(), key.to_bytes());
        }
    }

    #[test]
    fn another_curve_is_refused_by_name_and_every_refusal_says_what_is_expected() {
        let key = p256::SecretKey::random(&mut rand_core::OsRng);
        let sec1 = key.to_sec1_pem(LineEnding::LF).expect("sec1");
        let err = secret_key(&format!("{P384_PARAMETERS}{}", *sec1)).expect_err("P-384");
        assert!(err.contains("secp384r1"), "{err}");
        for pem in [
            "",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            let err = secret_key(pem).expect_err("no key");
            assert!(
                err.contains("openssl ecparam -name prime256v1 -genkey -noout"),
                "{err}"
            );
        }
    }
}
