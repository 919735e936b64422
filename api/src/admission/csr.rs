//! CertificateSigningRequest validation
//! (`pkg/apis/certificates/validation` in Kubernetes), and the parser of
//! `spec.request` that the signing controller shares.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::names;
use super::rules::{immutable, required, supported};
use crate::Cause;
use crate::k8s_openapi::api::certificates::v1 as certificates;

/// The key usages Kubernetes accepts in `spec.usages`.
pub const KEY_USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// The shortest certificate lifetime a request may ask for (10 minutes).
pub const MIN_EXPIRATION_SECONDS: i32 = 600;

/// The type of the first PEM block in `pem`, and the block's text.
fn first_pem_block(pem: &str) -> Option<(&str, &str)> {
    let start = pem.find("-----BEGIN ")?;
    let rest = &pem[start + "-----BEGIN ".len()..];
    let label_end = rest.find("-----")?;
    let label = &rest[..label_end];
    let end_marker = format!("-----END {label}-----");
    let end = pem[start..].find(&end_marker)? + start + end_marker.len();
    Some((label, &pem[start..end]))
}

/// Parses and verifies a PEM `CERTIFICATE REQUEST` (PKCS#10), as the API
/// server does for `spec.request`: the first PEM block must be a
/// certificate request whose signature verifies with its own key.
///
/// This errors with a sentence saying what is wrong (not PEM, another block
/// type, bad DER, a bad signature, an unsupported extension).
pub fn parse_request(pem: &[u8]) -> Result<rcgen::CertificateSigningRequestParams, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "PEM data must be ASCII".to_string())?;
    let (label, block) = first_pem_block(text).ok_or("must contain a PEM block")?;
    if label != "CERTIFICATE REQUEST" {
        return Err(format!(
            "PEM block type must be CERTIFICATE REQUEST, not {label}"
        ));
    }
    rcgen::CertificateSigningRequestParams::from_pem(block)
        .map_err(|e| format!("invalid certificate request: {e}"))
}

fn condition_types(status: Option<&certificates::CertificateSigningRequestStatus>) -> Vec<&str> {
    status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.type_.as_str())
        .collect()
}

/// Validates a CertificateSigningRequest (and, on update, what changed).
pub fn certificate_signing_request(
    new: &certificates::CertificateSigningRequest,
    old: Option<&certificates::CertificateSigningRequest>,
    _: &Value,
    out: &mut Vec<Cause>,
) {
    let spec = &new.spec;
    if spec.request.0.is_empty() {
        out.push(required("spec.request"));
    } else if let Err(why) = parse_request(&spec.request.0) {
        out.push(Cause::invalid("spec.request", &json!("<request>"), why));
    }
    if spec.signer_name.is_empty() {
        out.push(required("spec.signerName"));
    } else {
        signer_name(&spec.signer_name, out);
    }
    match spec.usages.as_deref() {
        None | Some([]) => out.push(required("spec.usages")),
        Some(usages) => {
            let mut seen = BTreeSet::new();
            for (i, usage) in usages.iter().enumerate() {
                let field = format!("spec.usages[{i}]");
                supported(&field, usage, KEY_USAGES, out);
                if !seen.insert(usage) {
                    out.push(Cause::duplicate(field, &json!(usage)));
                }
            }
        }
    }
    if let Some(seconds) = spec
        .expiration_seconds
        .filter(|s| *s < MIN_EXPIRATION_SECONDS)
    {
        out.push(Cause::invalid(
            "spec.expirationSeconds",
            &json!(seconds),
            format!("may not specify a duration less than {MIN_EXPIRATION_SECONDS} seconds"),
        ));
    }

    let types = condition_types(new.status.as_ref());
    for (i, ty) in types.iter().enumerate() {
        let field = format!("status.conditions[{i}].type");
        if ty.is_empty() {
            out.push(required(field));
        } else if ["Approved", "Denied", "Failed"].contains(ty) && types[..i].contains(ty) {
            out.push(Cause::duplicate(field, &json!(ty)));
        }
    }
    if types.contains(&"Approved") && types.contains(&"Denied") {
        out.push(Cause::invalid(
            "status.conditions",
            &json!("Approved"),
            "Approved and Denied conditions are mutually exclusive",
        ));
    }
    let certificate = new.status.as_ref().and_then(|s| s.certificate.as_ref());
    if let Some(cert) = certificate.filter(|c| !c.0.is_empty()) {
        certificate_chain(&cert.0, out);
    }

    if let Some(old) = old {
        immutable("spec", &new.spec, &old.spec, out);
        let old_types = condition_types(old.status.as_ref());
        for ty in ["Approved", "Denied"] {
            if old_types.contains(&ty) && !types.contains(&ty) {
                out.push(Cause::forbidden(
                    "status.conditions",
                    format!("updates may not remove a condition of type {ty:?}"),
                ));
            }
        }
        let old_cert = old.status.as_ref().and_then(|s| s.certificate.as_ref());
        if let Some(old_cert) = old_cert.filter(|c| !c.0.is_empty())
            && certificate != Some(old_cert)
        {
            out.push(Cause::forbidden(
                "status.certificate",
                "updates may not modify existing certificate content",
            ));
        }
    }
}

/// `signerName` is a qualified name: `DOMAIN/PATH`.
fn signer_name(name: &str, out: &mut Vec<Cause>) {
    let field = "spec.signerName";
    let Some((domain, path)) = name.split_once('/') else {
        out.push(Cause::invalid(
            field,
            &json!(name),
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        ));
        return;
    };
    names::causes(field, name, names::dns1123_subdomain(domain), out);
    if path.is_empty() || path.len() > 253 || path.chars().any(char::is_whitespace) {
        out.push(Cause::invalid(
            field,
            &json!(name),
            "the path after the domain must be a non-empty name without spaces",
        ));
    }
}

/// `status.certificate` is one or more PEM `CERTIFICATE` blocks.
fn certificate_chain(pem: &[u8], out: &mut Vec<Cause>) {
    let field = "status.certificate";
    let Ok(mut text) = std::str::from_utf8(pem) else {
        out.push(Cause::invalid(
            field,
            &json!("<certificate>"),
            "must be PEM",
        ));
        return;
    };
    let mut blocks = 0;
    while let Some((label, block)) = first_pem_block(text) {
        if label != "CERTIFICATE" {
            out.push(Cause::invalid(
                field,
                &json!("<certificate>"),
                format!("only CERTIFICATE PEM blocks are allowed, found {label:?}"),
            ));
            return;
        }
        blocks += 1;
        let end = text.find(block).unwrap_or(0) + block.len();
        text = &text[end..];
    }
    if blocks == 0 {
        out.push(Cause::invalid(
            field,
            &json!("<certificate>"),
            "must contain at least one CERTIFICATE PEM block",
        ));
    }
}
