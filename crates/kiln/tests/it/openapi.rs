//! `GET /api/v1/openapi.json` of a real master: OpenAPI 3.1 JSON whose
//! references all resolve, with the security schemes and the schemas of
//! the API's bodies; every documented path and method answers (the router
//! has it: neither its 404 nor 405), and the JSON the master answers to
//! the documented reads has the fields their schemas name. (That every
//! route of the router is in the document is the unit test
//! `kiln_master::api::openapi::tests::every_route_is_in_the_document`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// A value for each path parameter: names nothing that exists (the
/// handlers answer their own 404 with an error body, or 400).
fn sample(param: &str) -> &'static str {
    match param {
        "id" => "999999",
        "sha" => "0000000000000000000000000000000000000000000000000000000000000000",
        "forge" => "github",
        "name" => "no-such-name",
        "target" => "no-such-target",
        other => panic!("no sample value for the path parameter {other}: add one"),
    }
}

fn fill(path: &str) -> String {
    path.split('/')
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(p) => sample(p).to_string(),
                None => s.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// The schema `#/components/schemas/NAME` a `$ref` names.
fn resolve<'a>(doc: &'a Value, r: &str) -> &'a Value {
    let name = r.strip_prefix("#/components/schemas/").unwrap();
    &doc["components"]["schemas"][name]
}

/// `value` has the properties the object schema `schema` names: its keys are
/// among them and its required ones are there.
fn check_object(what: &str, schema: &Value, value: &Value) {
    assert_eq!(schema["type"], "object", "{what}: {schema}");
    // (`EmptyBody`, `{}`, has no properties.)
    let props: BTreeSet<&str> = schema["properties"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.keys())
        .map(String::as_str)
        .collect();
    let obj = value
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {value}"));
    for k in obj.keys() {
        assert!(
            props.contains(k.as_str()),
            "{what}: field {k} is not in the schema"
        );
    }
    for r in schema["required"].as_array().into_iter().flatten() {
        assert!(
            obj.contains_key(r.as_str().unwrap()),
            "{what}: required {r} missing"
        );
    }
}

#[test]
fn the_openapi_document_describes_every_route_and_each_answers() {
    let m = Master::start();
    let rt = runtime();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let get = |path: &str| {
        rt.block_on(async {
            let r = client
                .get(format!("{}{path}", m.api_url))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let ct = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            (status, ct, r.bytes().await.unwrap())
        })
    };

    // The document: OpenAPI 3.1 JSON, anonymous read (the master is public).
    let (status, ct, body) = get("/api/v1/openapi.json");
    assert_eq!(status, 200);
    assert_eq!(ct.as_deref(), Some("application/json"));
    eprintln!("openapi.json: {} bytes", body.len());
    assert!(body.len() < 512 << 10, "{} bytes", body.len());
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Kiln master API");
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for s in [
        "BuildView",
        "JobView",
        "SubmitRequest",
        "ErrorBody",
        "BuildState",
        "Project",
        "StatsView",
        "Event",
        "ServerMsg",
    ] {
        assert!(schemas.contains_key(s), "no schema {s}");
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["session"]["type"], "apiKey");
    assert_eq!(schemes["csrf"]["name"], "X-CSRF-Token");
    // Every reference resolves.
    let text = String::from_utf8_lossy(&body);
    for part in text.split("\"$ref\":\"").skip(1) {
        let r = part.split('"').next().unwrap();
        let (kind, name) = r
            .strip_prefix("#/components/")
            .and_then(|r| r.split_once('/'))
            .unwrap();
        assert!(doc["components"][kind].get(name).is_some(), "$ref {r}");
    }

    // Every documented path and method answers: the router has it (not
    // its 404, which has no body, nor 405); the admin token gets past every
    // role check, and no request carries a valid body, so nothing changes.
    let paths = doc["paths"].as_object().unwrap();
    let mut asked = 0;
    let mut checked_bodies = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let url = format!("{}{}", m.api_url, fill(path));
            let what = format!("{} {path}", method.to_uppercase());
            let (status, ct, body) = rt.block_on(async {
                let r = client
                    .request(method.to_uppercase().parse().unwrap(), &url)
                    .bearer_auth(&m.token)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let status = r.status().as_u16();
                let ct = r
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                // A stream (the events, a followed log) is not read to its end.
                let body = if ct.starts_with("application/x-ndjson") {
                    Vec::new()
                } else {
                    r.bytes().await.unwrap().to_vec()
                };
                (status, ct, body)
            });
            asked += 1;
            let error_body = serde_json::from_slice::<Value>(&body)
                .ok()
                .is_some_and(|v| v.get("code").is_some() && v.get("error").is_some());
            assert_ne!(status, 405, "{what}: the router has no such method");
            assert!(
                status != 404 || error_body,
                "{what}: the router has no such path ({status}, {:?})",
                String::from_utf8_lossy(&body)
            );
            // The status is one the document names (its default: the
            // master's own failures, 5xx).
            let responses = op["responses"].as_object().unwrap();
            let st = status.to_string();
            let in_doc =
                responses.contains_key(&st) || (status >= 500 && responses.contains_key("default"));
            assert!(in_doc, "{what}: answered {st}, not documented");
            // A JSON answer of 200 has the fields its schema names.
            if status == 200 && ct.starts_with("application/json") && path != "/api/v1/openapi.json"
            {
                let schema = &responses["200"]["content"]["application/json"]["schema"];
                let v: Value = serde_json::from_slice(&body).unwrap();
                if let Some(r) = schema["$ref"].as_str() {
                    check_object(&what, resolve(&doc, r), &v);
                    checked_bodies += 1;
                } else if let Some(r) = schema["items"]["$ref"].as_str() {
                    for item in v.as_array().unwrap() {
                        check_object(&what, resolve(&doc, r), item);
                    }
                    checked_bodies += 1;
                }
            }
        }
    }
    assert!(asked >= 35, "only {asked} operations");
    assert!(
        checked_bodies >= 5,
        "only {checked_bodies} answers checked against their schema"
    );

    // Paths that are not in the document, for contrast: the router's own 404.
    let (status, _, body) = get("/api/v1/no-such-route");
    assert_eq!(status, 404);
    assert!(body.is_empty(), "{body:?}");
}
