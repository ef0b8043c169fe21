//! The committed OpenAPI document is exactly what the code generates.

/// Regenerate with `cargo run --bin myelin-server -- openapi > openapi/myelin.json`.
#[test]
fn committed_document_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/myelin.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = myelin_homeserver::api::openapi_json();
    assert!(
        committed == generated,
        "openapi/myelin.json is out of date: run `cargo run --bin myelin-server -- openapi > openapi/myelin.json`"
    );
}

/// Every operation names its Matrix error responses and has an operationId for generators.
#[test]
fn operations_document_matrix_errors() {
    let doc: serde_json::Value = serde_json::from_str(&myelin_homeserver::api::openapi_json()).unwrap();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            assert!(op["operationId"].is_string(), "{method} {path} has no operationId");
            let responses = op["responses"].as_object().unwrap();
            for status in ["400", "429", "500"] {
                let schema = &responses[status]["content"]["application/json"]["schema"]["$ref"];
                let schema = schema.as_str().unwrap_or_default();
                assert!(
                    schema.ends_with("/Error") || schema.ends_with("/AuthenticationResponse"),
                    "{method} {path} {status}: {schema}"
                );
            }
        }
    }
    assert!(operations >= 20, "{operations}");
}
