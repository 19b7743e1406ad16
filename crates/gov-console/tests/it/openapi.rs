//! `/api/openapi.json` is generated from the routes and types: it is an OpenAPI 3.1 document
//! whose every reference resolves, it describes exactly the API routes the router serves (each
//! with its methods), and the router serves every operation it describes, refusing other methods.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use gov_console::ConsoleConfig;
use serde_json::Value;

use crate::http::console;

/// The API routes the console serves: the contract this test holds the document and the router
/// to. A route added to the router without its `#[utoipa::path]` is missing from the document.
const API_ROUTES: &[(&str, &str)] = &[
    ("get", "/api"),
    ("get", "/api/openapi.json"),
    ("get", "/api/agents"),
    ("post", "/api/agents/{agent}/halt"),
    ("post", "/api/agents/{agent}/resume"),
    ("get", "/api/approvals"),
    ("post", "/api/approvals/{id}/approve"),
    ("post", "/api/approvals/{id}/deny"),
    ("get", "/api/events"),
    ("post", "/api/chain/verify"),
    ("get", "/api/chain/verification"),
    ("post", "/api/chain/verification"),
    ("get", "/api/coverage"),
    ("get", "/api/gateway-keys"),
    ("post", "/api/gateway-keys"),
    ("post", "/api/gateway-keys/{id}/revoke"),
    ("get", "/health/governance"),
    ("get", "/events/stream"),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every `$ref` in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// The structure OpenAPI 3.1 requires of the parts this document uses.
fn check_openapi_31(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut bad = |p: String| problems.push(p);
    if !doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1."))
    {
        bad(format!("openapi is {}, not 3.1.x", doc["openapi"]));
    }
    for field in ["title", "version"] {
        if !doc["info"][field].is_string() {
            bad(format!("info.{field} is missing"));
        }
    }
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (name, s) in &schemes {
        if !matches!(
            s["type"].as_str(),
            Some("apiKey" | "http" | "oauth2" | "openIdConnect" | "mutualTLS")
        ) {
            bad(format!("security scheme {name}: type {}", s["type"]));
        }
        if s["type"] == "apiKey"
            && !(s["name"].is_string()
                && matches!(s["in"].as_str(), Some("query" | "header" | "cookie")))
        {
            bad(format!("security scheme {name}: apiKey needs name and in"));
        }
    }
    let requirement_ok = |req: &Value| {
        req.as_object().is_some_and(|r| {
            r.iter()
                .all(|(k, v)| schemes.contains_key(k) && v.is_array())
        })
    };
    for req in doc["security"].as_array().into_iter().flatten() {
        if !requirement_ok(req) {
            bad(format!(
                "top-level security {req} names an undefined scheme"
            ));
        }
    }
    let Some(paths) = doc["paths"].as_object() else {
        bad("no paths".into());
        return problems;
    };
    for (path, item) in paths {
        if !path.starts_with('/') {
            bad(format!("path {path} does not start with /"));
        }
        let templated: BTreeSet<&str> = path
            .split('{')
            .skip(1)
            .filter_map(|s| s.split('}').next())
            .collect();
        for (method, op) in item.as_object().into_iter().flatten() {
            if !METHODS.contains(&method.as_str()) {
                if method != "parameters" && method != "summary" && method != "description" {
                    bad(format!("{path}: {method} is not an operation"));
                }
                continue;
            }
            let Some(responses) = op["responses"].as_object().filter(|r| !r.is_empty()) else {
                bad(format!("{method} {path}: no responses"));
                continue;
            };
            for (code, r) in responses {
                let code_ok = code == "default"
                    || (code.len() == 3 && code.chars().all(|c| c.is_ascii_digit() || c == 'X'));
                if !code_ok {
                    bad(format!("{method} {path}: response key {code}"));
                }
                if !r["description"].is_string() && !r["$ref"].is_string() {
                    bad(format!("{method} {path} {code}: no description"));
                }
            }
            let mut in_path = BTreeSet::new();
            for p in op["parameters"].as_array().into_iter().flatten() {
                let (Some(name), Some(place)) = (p["name"].as_str(), p["in"].as_str()) else {
                    bad(format!("{method} {path}: a parameter without name or in"));
                    continue;
                };
                if !matches!(place, "query" | "header" | "path" | "cookie") {
                    bad(format!("{method} {path}: parameter {name} in {place}"));
                }
                if place == "path" {
                    in_path.insert(name);
                    if p["required"] != true {
                        bad(format!(
                            "{method} {path}: path parameter {name} not required"
                        ));
                    }
                }
            }
            if in_path != templated {
                bad(format!(
                    "{method} {path}: path parameters {in_path:?}, template {templated:?}"
                ));
            }
            for req in op["security"].as_array().into_iter().flatten() {
                if !requirement_ok(req) {
                    bad(format!(
                        "{method} {path}: security {req} names an undefined scheme"
                    ));
                }
            }
        }
    }
    let mut all = Vec::new();
    refs(doc, &mut all);
    for r in all {
        let target = r.strip_prefix('#').and_then(|pointer| doc.pointer(pointer));
        if target.is_none() {
            bad(format!("$ref {r} does not resolve"));
        }
    }
    problems
}

#[tokio::test]
async fn the_generated_openapi_document_describes_exactly_the_routes_served() {
    let c = console(ConsoleConfig::default()).await;
    let r = c.get("/api/openapi.json", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    let doc: Value = serde_json::from_str(&r.body).expect("the document is JSON");
    assert_eq!(
        doc,
        serde_json::to_value(gov_console::openapi_document()).expect("json"),
        "the route serves the generated document"
    );
    let problems = check_openapi_31(&doc);
    assert!(problems.is_empty(), "{problems:#?}");

    // The typed schemas are in it, with the fields the wire format has.
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for (name, fields) in [
        ("AgentList", &["agents"][..]),
        (
            "Agent",
            &[
                "agent_id",
                "halt_reason",
                "halted",
                "halted_by",
                "pending_requests",
                "seconds_since_heartbeat",
                "state",
            ],
        ),
        ("AgentSwitched", &["agent_id", "changed", "halted"]),
        ("PendingList", &["pending"]),
        (
            "PendingGate",
            &[
                "agent_id",
                "args",
                "expires_at",
                "id",
                "requested_at",
                "session_id",
                "tool",
            ],
        ),
        (
            "Decided",
            &[
                "approvals",
                "id",
                "proposed_rule_version",
                "quorum",
                "status",
            ],
        ),
        ("EventList", &["events"]),
        (
            "VerifyJob",
            &[
                "status",
                "started_by",
                "chain",
                "checked",
                "total",
                "done_events",
                "report",
                "error",
            ],
        ),
        ("Started", &["status"]),
        ("CoverageBody", &["coverage", "from", "to"]),
        ("AlreadyRunning", &["error", "status"]),
        ("ErrorBody", &["error", "kind", "status"]),
        ("ReasonBody", &["reason"]),
        ("HealthStatus", &["status"]),
        (
            "HealthDetails",
            &[
                "chain_checked_at",
                "chain_integrity",
                "grants",
                "key_resolution",
                "latency",
                "live_subscribers",
                "status",
            ],
        ),
        (
            "ChainIntegrity",
            &["chains", "events_checked", "first", "status"],
        ),
        ("Finding", &["chain", "reason", "seq"]),
        (
            "Grants",
            &[
                "can_update_or_delete",
                "has_roles",
                "least_privilege",
                "note",
                "owns_audit_table",
                "role",
                "superuser",
            ],
        ),
        ("KeyResolution", &["current_key_id", "rotation_aware"]),
        ("Latencies", &["p50_us", "p95_us"]),
    ] {
        let props = schemas
            .get(name)
            .and_then(|s| s["properties"].as_object())
            .unwrap_or_else(|| {
                panic!(
                    "no schema {name} with properties: {}",
                    schemas.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            });
        let got: BTreeSet<&str> = props.keys().map(String::as_str).collect();
        let want: BTreeSet<&str> = fields.iter().copied().collect();
        assert_eq!(got, want, "{name}");
    }
    for name in [
        "Verified",
        "Health",
        "Decision",
        "JobStatus",
        "ReportStatus",
        "IntegrityStatus",
        "Reachability",
    ] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    assert_eq!(
        doc["paths"]["/api/agents/{agent}/halt"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/ReasonBody"
    );

    // The document's operations are exactly the routes above.
    let described: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flatten()
                .filter(|(m, _)| METHODS.contains(&m.as_str()))
                .map(move |(m, _)| (m.clone(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = API_ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(described, served);

    // The router serves every operation described, and no other method on those paths.
    let ada = c.login("ada").await;
    c.gov.presence().heartbeat("bot-x").await.expect("beat");
    c.gov
        .audit()
        .log(
            gov_sdk::AuditEvent::builder("bot-x", "tool.call")
                .build()
                .expect("event"),
        )
        .await
        .expect("log");
    let gate = c
        .gov
        .gates()
        .request(
            "bot-x",
            None,
            "wire_money",
            &serde_json::json!({"amount": 1}),
        )
        .await
        .expect("request");
    let mut methods_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (m, p) in API_ROUTES {
        methods_of.entry(p).or_default().push(m);
    }
    for (template, methods) in &methods_of {
        let path = template
            .replace("{agent}", "bot-x")
            .replace("{id}", &gate.id.to_string());
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let req = Request::builder()
                .method(Method::from_bytes(method.as_bytes()).expect("method"))
                .uri(&path)
                .header(header::COOKIE, &ada.cookie)
                .header("x-csrf-token", &ada.csrf)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{\"reason\":\"route check\"}"))
                .expect("request");
            let documented = methods.contains(&method.to_ascii_lowercase().as_str());
            if path == "/events/stream" && documented {
                // A stream that does not end: its status is all this test reads.
                let res = tower::ServiceExt::oneshot(c.app.clone(), req)
                    .await
                    .expect("response");
                assert_eq!(res.status(), StatusCode::OK, "{method} {path}");
                continue;
            }
            let r = c.send(req).await;
            if documented {
                let routed = r.status != StatusCode::METHOD_NOT_ALLOWED
                    && !(r.status == StatusCode::NOT_FOUND
                        && r.body.contains("\"error\":\"not found\""));
                assert!(
                    routed,
                    "{method} {path} is described but not served: {} {}",
                    r.status, r.body
                );
                // Refusals by state are fine (the deny after the approve is a 409).
                assert!(
                    !r.status.is_server_error(),
                    "{method} {path}: {} {}",
                    r.status,
                    r.body
                );
            } else {
                assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            }
        }
    }

    // An action no route serves is the API's JSON 404.
    let r = c
        .post_json(
            "/api/agents/bot-x/explode",
            &ada,
            Some(&ada.csrf),
            serde_json::json!({"reason": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let v: Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"error": "not found", "kind": "not_found", "status": 404})
    );
    c.gov.close().await;
}
