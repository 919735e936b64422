//! Name, label and key formats, with Kubernetes' own error messages
//! (`k8s.io/apimachinery/pkg/util/validation`).

use serde_json::{Map, Value};

use crate::Cause;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
/// Kubernetes caps the sum of all annotation keys and values at 256 KiB.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const QUALIFIED_NAME_SLASH_MSG: &str = "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
const PORT_NAME_MSG: &str =
    "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)";

fn max_len(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_dns1123_label_chars(s: &str) -> bool {
    s.starts_with(lower_alnum)
        && s.ends_with(lower_alnum)
        && s.chars().all(|c| lower_alnum(c) || c == '-')
}

/// Problems with `s` as an RFC 1123 label (`my-name`); empty when valid.
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errs.push(max_len(DNS1123_LABEL_MAX));
    }
    if !is_dns1123_label_chars(s) {
        errs.push(DNS1123_LABEL_MSG.into());
    }
    errs
}

/// Problems with `s` as an RFC 1123 subdomain (`example.com`); empty when valid.
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(max_len(DNS1123_SUBDOMAIN_MAX));
    }
    if !s.split('.').all(is_dns1123_label_chars) {
        errs.push(DNS1123_SUBDOMAIN_MSG.into());
    }
    errs
}

/// Problems with `s` as an RFC 1035 label (`my-name`, starting with a letter).
pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errs.push(max_len(DNS1123_LABEL_MAX));
    }
    if !(s.starts_with(|c: char| c.is_ascii_lowercase()) && is_dns1123_label_chars(s)) {
        errs.push(DNS1035_LABEL_MSG.into());
    }
    errs
}

fn is_name_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

/// Problems with `s` as a qualified name (`example.com/MyName`): label and
/// annotation keys.
pub fn qualified_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".into());
            } else {
                errs.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => return vec![QUALIFIED_NAME_SLASH_MSG.into()],
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".into());
    } else if name.len() > QUALIFIED_NAME_MAX {
        errs.push(format!("name part {}", max_len(QUALIFIED_NAME_MAX)));
    }
    if !name.is_empty() && !is_name_part(name) {
        errs.push(QUALIFIED_NAME_MSG.into());
    }
    errs
}

/// Problems with `s` as a label value (empty is allowed).
pub fn label_value(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > LABEL_VALUE_MAX {
        errs.push(max_len(LABEL_VALUE_MAX));
    }
    if !s.is_empty() && !is_name_part(s) {
        errs.push(LABEL_VALUE_MSG.into());
    }
    errs
}

/// Problems with `s` as a ConfigMap or Secret key.
pub fn config_key(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(max_len(DNS1123_SUBDOMAIN_MAX));
    }
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        errs.push(CONFIG_KEY_MSG.into());
    }
    if s == "." {
        errs.push("must not be '.'".into());
    } else if s == ".." {
        errs.push("must not be '..'".into());
    } else if s.starts_with("..") {
        errs.push("must not start with '..'".into());
    }
    errs
}

/// Problems with `s` as an IANA service (port) name: at most 15 characters,
/// lower case letters, digits and single inner hyphens, at least one letter.
pub fn port_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 15 {
        errs.push(max_len(15));
    }
    if !s.chars().all(|c| lower_alnum(c) || c == '-') {
        errs.push(PORT_NAME_MSG.into());
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if s.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

/// Problems with `s` as an environment variable name (Kubernetes' relaxed
/// rule, on by default since 1.32).
pub fn env_var_name(s: &str) -> Vec<String> {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() || c == ' ') && !s.contains('=') {
        Vec::new()
    } else {
        vec!["a valid environment variable name must consist only of printable ASCII characters other than '='".into()]
    }
}

/// `Invalid` causes for `value` at `field`, one per message.
pub fn causes(field: &str, value: &str, msgs: Vec<String>, out: &mut Vec<Cause>) {
    for m in msgs {
        out.push(Cause::invalid(field, &Value::String(value.into()), m));
    }
}

/// Validates a label map (keys qualified names, values label values).
pub fn labels(field: &str, labels: Option<&Map<String, Value>>, out: &mut Vec<Cause>) {
    for (k, v) in labels.into_iter().flatten() {
        causes(field, k, qualified_name(k), out);
        if let Some(v) = v.as_str() {
            causes(field, v, label_value(v), out);
        }
    }
}

/// Validates a label map given as typed `BTreeMap`.
pub fn label_map(
    field: &str,
    labels: Option<&std::collections::BTreeMap<String, String>>,
    out: &mut Vec<Cause>,
) {
    for (k, v) in labels.into_iter().flatten() {
        causes(field, k, qualified_name(k), out);
        causes(field, v, label_value(v), out);
    }
}

/// Validates annotation keys and total size.
pub fn annotations(field: &str, annotations: Option<&Map<String, Value>>, out: &mut Vec<Cause>) {
    let mut total = 0;
    for (k, v) in annotations.into_iter().flatten() {
        causes(field, k, qualified_name(&k.to_ascii_lowercase()), out);
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > ANNOTATIONS_MAX_BYTES {
        out.push(Cause {
            field: field.into(),
            reason: "FieldValueTooLong",
            message: format!("Too long: must have at most {ANNOTATIONS_MAX_BYTES} bytes"),
        });
    }
}
