//! Generates the client from the committed OpenAPI document with progenitor, the way a user
//! of Myelin would.

use std::path::Path;

fn main() {
    let document = Path::new(env!("CARGO_MANIFEST_DIR")).join("../myelin.json");
    println!("cargo::rerun-if-changed={}", document.display());
    let file = std::fs::File::open(&document).expect("openapi/myelin.json");
    let spec: openapiv3::OpenAPI = serde_json::from_reader(file).expect("a valid OpenAPI 3.0 document");
    let tokens = progenitor::Generator::default().generate_tokens(&spec).expect("progenitor generates a client");
    let ast: syn::File = syn::parse2(tokens).expect("generated code parses");
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("client.rs");
    std::fs::write(out, prettyplease::unparse(&ast)).expect("write generated client");
}
