//! Label and field selectors, as `?labelSelector=` and `?fieldSelector=`
//! carry them.

use serde_json::Value;

/// A parse error, naming the bad selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// A parsed label selector: `app=web,tier!=db,env in (a,b),!legacy,track`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<(String, LabelOp)>,
}

impl LabelSelector {
    /// Parses the string form (empty selects everything).
    pub fn parse(s: &str) -> Result<LabelSelector, SelectorError> {
        let mut requirements = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let bad = || SelectorError(format!("{part:?}"));
            let req = if let Some(key) = part.strip_prefix('!') {
                (key.trim().to_string(), LabelOp::DoesNotExist)
            } else if let Some((key, rest)) = split_word(part, " notin ") {
                (key, LabelOp::NotIn(parse_set(&rest).ok_or_else(bad)?))
            } else if let Some((key, rest)) = split_word(part, " in ") {
                (key, LabelOp::In(parse_set(&rest).ok_or_else(bad)?))
            } else if let Some((key, value)) = part.split_once("!=") {
                (
                    key.trim().to_string(),
                    LabelOp::NotEq(value.trim().to_string()),
                )
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                (
                    key.trim().to_string(),
                    LabelOp::Eq(value.trim().to_string()),
                )
            } else {
                (part.to_string(), LabelOp::Exists)
            };
            if req.0.is_empty() || req.0.contains(char::is_whitespace) {
                return Err(bad());
            }
            requirements.push(req);
        }
        Ok(LabelSelector { requirements })
    }

    /// The selector of a `metav1.LabelSelector` object (`matchLabels` and
    /// `matchExpressions`), as Deployments and Services carry them. `None`
    /// when an expression has an unknown operator.
    pub fn from_object(selector: &Value) -> Option<LabelSelector> {
        let mut requirements = Vec::new();
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                requirements.push((k.clone(), LabelOp::Eq(v.as_str()?.to_string())));
            }
        }
        if let Some(exprs) = selector.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e.get("key")?.as_str()?.to_string();
                let values = || -> Option<Vec<String>> {
                    e.get("values")?
                        .as_array()?
                        .iter()
                        .map(|v| v.as_str().map(str::to_string))
                        .collect()
                };
                let op = match e.get("operator")?.as_str()? {
                    "In" => LabelOp::In(values()?),
                    "NotIn" => LabelOp::NotIn(values()?),
                    "Exists" => LabelOp::Exists,
                    "DoesNotExist" => LabelOp::DoesNotExist,
                    _ => return None,
                };
                requirements.push((key, op));
            }
        }
        Some(LabelSelector { requirements })
    }

    /// The selector matching exactly these labels (a Service's `selector`).
    pub fn from_map(labels: &serde_json::Map<String, Value>) -> LabelSelector {
        LabelSelector {
            requirements: labels
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        LabelOp::Eq(v.as_str().unwrap_or_default().to_string()),
                    )
                })
                .collect(),
        }
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.requirements.iter().all(|(key, op)| match op {
            LabelOp::Eq(v) => get(key) == Some(v),
            LabelOp::NotEq(v) => get(key) != Some(v),
            LabelOp::In(set) => get(key).is_some_and(|v| set.iter().any(|s| s == v)),
            LabelOp::NotIn(set) => get(key).is_none_or(|v| !set.iter().any(|s| s == v)),
            LabelOp::Exists => get(key).is_some(),
            LabelOp::DoesNotExist => get(key).is_none(),
        })
    }

    /// Whether `object` (a whole object) is selected by its labels.
    pub fn matches_object(&self, object: &Value) -> bool {
        self.matches(
            object
                .pointer("/metadata/labels")
                .and_then(Value::as_object),
        )
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn split_word(part: &str, word: &str) -> Option<(String, String)> {
    let i = part.find(word)?;
    Some((
        part[..i].trim().to_string(),
        part[i + word.len()..].trim().to_string(),
    ))
}

fn parse_set(s: &str) -> Option<Vec<String>> {
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

/// A parsed field selector: `metadata.name=web,status.phase!=Running`.
///
/// Any dotted path into the object is accepted (Kubernetes accepts a fixed
/// set per type; every field clients use is covered this way).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    requirements: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses the string form (empty selects everything).
    pub fn parse(s: &str) -> Result<FieldSelector, SelectorError> {
        let mut requirements = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(SelectorError(format!(
                    "{part:?}: expected field=value or field!=value"
                )));
            };
            requirements.push((field.trim().to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value of `metadata.name=X` when the selector pins one name
    /// (kubectl's `get NAME -w` and `delete` do): lists can then read one key.
    pub fn name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|(f, eq, _)| f == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }

    /// Whether `object` is selected. A missing field compares as `""`, as in
    /// Kubernetes (`spec.nodeName=` selects unscheduled pods).
    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|(field, equal, want)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let have = match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (have == *want) == *equal
        })
    }
}

/// The parts of an object that a label and a field selector look at, read
/// from its JSON text without building the rest: `metadata.labels` and each
/// selected field. A selector matches the projection exactly when it
/// matches the whole object; a watch with a selector tests every change
/// this way, so an object that is not selected is never decoded.
#[derive(Debug, Clone)]
pub struct Projection {
    tree: Paths,
}

#[derive(Debug, Clone, Default)]
enum Paths {
    /// Everything under here.
    #[default]
    All,
    /// Only these members (object keys, or array indexes as text).
    Some(std::collections::BTreeMap<String, Paths>),
}

impl Paths {
    fn add(&mut self, path: &[&str]) {
        let Some((first, rest)) = path.split_first() else {
            *self = Paths::All;
            return;
        };
        if let Paths::Some(children) = self {
            match children.get_mut(*first) {
                // Already kept whole.
                Some(Paths::All) => {}
                Some(child) => child.add(rest),
                None => {
                    let mut child = Paths::Some(Default::default());
                    child.add(rest);
                    children.insert((*first).to_owned(), child);
                }
            }
        }
    }
}

impl Projection {
    /// What `labels` and `fields` need.
    pub fn new(labels: &LabelSelector, fields: &FieldSelector) -> Projection {
        let mut tree = Paths::Some(Default::default());
        if !labels.is_empty() {
            tree.add(&["metadata", "labels"]);
        }
        for (field, _, _) in &fields.requirements {
            tree.add(&field.split('.').collect::<Vec<_>>());
        }
        Projection { tree }
    }

    /// The projection of the object whose JSON is `json`.
    pub fn read(&self, json: &[u8]) -> serde_json::Result<Value> {
        use serde::de::DeserializeSeed;
        let mut de = serde_json::Deserializer::from_slice(json);
        let value = Keep(&self.tree).deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }
}

/// Deserializes what `.0` keeps of a value; what it skips is only scanned.
struct Keep<'a>(&'a Paths);

impl<'de> serde::de::DeserializeSeed<'de> for Keep<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            Paths::All => serde::Deserialize::deserialize(d),
            Paths::Some(children) => d.deserialize_any(KeepVisitor(children)),
        }
    }
}

struct KeepVisitor<'a>(&'a std::collections::BTreeMap<String, Paths>);

impl<'de> serde::de::Visitor<'de> for KeepVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match self.0.get(&key) {
                Some(paths) => {
                    let value = map.next_value_seed(Keep(paths))?;
                    out.insert(key, value);
                }
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let next = match self.0.get(&out.len().to_string()) {
                Some(paths) => seq.next_element_seed(Keep(paths))?,
                None => seq
                    .next_element::<serde::de::IgnoredAny>()?
                    .map(|_| Value::Null),
            };
            match next {
                Some(value) => out.push(value),
                None => return Ok(Value::Array(out)),
            }
        }
    }

    // A scalar where the paths go deeper: nothing there to select.
    fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_str<E>(self, _: &str) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Selecting on the projection is selecting on the object.
    #[test]
    fn projections_select_as_the_whole_object_does() {
        let objects = [
            json!({"metadata": {"name": "a", "namespace": "n", "labels": {"app": "web"}},
                   "spec": {"nodeName": "n1", "containers": [{"name": "c0"}, {"name": "c1"}]},
                   "status": {"phase": "Running"}}),
            json!({"metadata": {"name": "b"}, "spec": {"nodeName": ""}, "status": "odd"}),
            json!({"metadata": {"name": "c", "labels": {"app": "db", "tier": "x"}}, "spec": [1, 2]}),
            json!({"kind": "X"}),
        ];
        let selectors = [
            ("", "spec.nodeName=n1"),
            ("", "spec.nodeName="),
            ("app=web", ""),
            ("app in (web, db),!tier", "metadata.name!=a"),
            ("tier", "status.phase=Running,metadata.namespace=n"),
            ("", "spec.containers.1.name=c1"),
            ("", "spec=x,metadata=y"),
        ];
        for (labels, fields) in selectors {
            let l = LabelSelector::parse(labels).unwrap();
            let f = FieldSelector::parse(fields).unwrap();
            let projection = Projection::new(&l, &f);
            for obj in &objects {
                let projected = projection.read(obj.to_string().as_bytes()).unwrap();
                assert_eq!(
                    l.matches_object(&projected) && f.matches(&projected),
                    l.matches_object(obj) && f.matches(obj),
                    "{labels:?} {fields:?} on {obj}, projected {projected}"
                );
            }
        }
        let keep = Projection::new(
            &LabelSelector::parse("app").unwrap(),
            &FieldSelector::parse("spec.nodeName=n1").unwrap(),
        );
        assert_eq!(
            keep.read(objects[0].to_string().as_bytes()).unwrap(),
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"nodeName": "n1"}})
        );
        assert!(keep.read(b"{\"metadata\": ").is_err());
    }

    fn labels(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn label_selectors() {
        let l = labels(json!({"app": "web", "tier": "front", "env": "prod"}));
        let yes = |s: &str| LabelSelector::parse(s).unwrap().matches(Some(&l));
        assert!(yes(""));
        assert!(yes("app=web"));
        assert!(yes("app==web,tier!=db"));
        assert!(yes("env in (prod, staging)"));
        assert!(!yes("env notin (prod)"));
        assert!(yes("app"));
        assert!(yes("!legacy"));
        assert!(!yes("legacy"));
        assert!(!yes("app=web,tier=db"));
        assert!(yes("missing notin (x)"));
        assert!(LabelSelector::parse("env in prod").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
        assert!(!LabelSelector::parse("app=web").unwrap().matches(None));
    }

    #[test]
    fn selector_objects() {
        let sel = LabelSelector::from_object(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]
        }))
        .unwrap();
        assert!(sel.matches(Some(&labels(json!({"app": "web", "tier": "front"})))));
        assert!(!sel.matches(Some(&labels(json!({"app": "web"})))));
        assert!(
            LabelSelector::from_object(
                &json!({"matchExpressions": [{"key": "a", "operator": "Bogus"}]})
            )
            .is_none()
        );
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "web-1", "namespace": "default"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let yes = |s: &str| FieldSelector::parse(s).unwrap().matches(&pod);
        assert!(yes("metadata.name=web-1"));
        assert!(yes(
            "spec.nodeName=n1,status.phase!=Succeeded,status.phase!=Failed"
        ));
        assert!(!yes("metadata.name=web-2"));
        assert!(yes("spec.schedulerName="));
        assert_eq!(
            FieldSelector::parse("metadata.name=x").unwrap().name(),
            Some("x")
        );
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
