//! The OpenAPI document describes exactly [`super::ROUTES`].

use std::collections::BTreeSet;

use serde_json::Value;

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn doc() -> Value {
    serde_json::from_str(super::OPENAPI_JSON)
        .unwrap_or_else(|e| panic!("openapi.json is not valid JSON: {e}"))
}

fn paths(doc: &Value) -> &serde_json::Map<String, Value> {
    doc["paths"]
        .as_object()
        .expect("openapi.json has a `paths` object")
}

/// Every (path, method, path item, operation) of the document.
fn operations(doc: &Value) -> Vec<(&str, &str, &Value, &Value)> {
    let mut out = Vec::new();
    for (path, item) in paths(doc) {
        let item_obj = item
            .as_object()
            .unwrap_or_else(|| panic!("path item {path} is not an object"));
        for (method, op) in item_obj {
            if METHODS.contains(&method.as_str()) {
                out.push((path.as_str(), method.as_str(), item, op));
            }
        }
    }
    out
}

/// Follows a local `$ref` (`#/...`, a JSON pointer into the document).
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

/// A parameter, or the one its `$ref` points to.
fn parameter<'a>(doc: &'a Value, p: &'a Value) -> &'a Value {
    match p.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, r).unwrap_or_else(|| panic!("parameter $ref {r} does not resolve")),
        None => p,
    }
}

/// The `{name}`s of a path template.
fn template_params(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_string)
        .collect()
}

#[test]
fn openapi_version_is_3_1() {
    let doc = doc();
    let version = doc["openapi"].as_str().expect("`openapi` is a string");
    assert!(
        version.starts_with("3.1"),
        "the document must be OpenAPI 3.1, got `openapi: {version}`"
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
}

#[test]
fn documents_exactly_the_routes() {
    let doc = doc();
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(path, method, _, _)| (method.to_ascii_uppercase(), path.to_string()))
        .collect();
    let routes: BTreeSet<(String, String)> = super::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        routes.len(),
        super::ROUTES.len(),
        "ROUTES lists a route twice"
    );
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routes).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "openapi.json and ROUTES differ:\n  in ROUTES but not in openapi.json: {undocumented:?}\n  in openapi.json but not in ROUTES: {unrouted:?}"
    );
}

#[test]
fn path_parameters_are_declared() {
    let doc = doc();
    for (path, method, item, op) in operations(&doc) {
        let declared: BTreeSet<String> = item
            .get("parameters")
            .into_iter()
            .chain(op.get("parameters"))
            .flat_map(|ps| ps.as_array().expect("`parameters` is a list"))
            .map(|p| parameter(&doc, p))
            .filter(|p| p["in"] == "path")
            .map(|p| {
                assert_eq!(
                    p["required"], true,
                    "{method} {path}: path parameter {} must be required",
                    p["name"]
                );
                p["name"].as_str().expect("parameter name").to_string()
            })
            .collect();
        let in_template = template_params(path);
        let undeclared: Vec<_> = in_template.difference(&declared).collect();
        let extra: Vec<_> = declared.difference(&in_template).collect();
        assert!(
            undeclared.is_empty(),
            "{method} {path}: no `in: path` parameter for {undeclared:?}"
        );
        assert!(
            extra.is_empty(),
            "{method} {path}: path parameters {extra:?} are not in the path"
        );
    }
}

#[test]
fn every_ref_resolves() {
    fn walk<'a>(v: &'a Value, at: String, refs: &mut Vec<(String, &'a str)>) {
        match v {
            Value::Object(o) => {
                for (k, x) in o {
                    if k == "$ref" {
                        refs.push((at.clone(), x.as_str().expect("$ref is a string")));
                    } else {
                        let k = k.replace('~', "~0").replace('/', "~1");
                        walk(x, format!("{at}/{k}"), refs);
                    }
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk(x, format!("{at}/{i}"), refs);
                }
            }
            _ => {}
        }
    }
    let doc = doc();
    let mut refs = Vec::new();
    walk(&doc, String::new(), &mut refs);
    assert!(!refs.is_empty(), "the document uses shared components");
    let broken: Vec<_> = refs
        .iter()
        .filter(|(_, r)| resolve(&doc, r).is_none())
        .collect();
    assert!(
        broken.is_empty(),
        "$refs that do not resolve inside the document (at, $ref): {broken:?}"
    );
}

#[test]
fn operations_are_complete() {
    let doc = doc();
    let mut ids = BTreeSet::new();
    for (path, method, _, op) in operations(&doc) {
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(ids.insert(id), "operationId `{id}` is used twice");
        assert!(
            op["summary"].is_string() && op["description"].is_string(),
            "{method} {path} needs a summary and a description"
        );
        let responses = op["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} has no responses"));
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path} has no success response"
        );
        // Every route but the health checks can be refused by bearer auth.
        let open = op
            .get("security")
            .is_some_and(|s| s == &serde_json::json!([]));
        assert_eq!(
            open,
            path == "/health" || path == "/health/ready",
            "{method} {path}: security"
        );
        if !open {
            for status in ["401", "403"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} does not document {status}"
                );
            }
        }
    }
    assert!(
        doc["components"]["schemas"]["Error"].is_object()
            && doc["components"]["schemas"]["Navigator"].is_object(),
        "the shared Error and Navigator schemas"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
}
