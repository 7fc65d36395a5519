// What `#[derive(Schema)]` cannot describe, it refuses, saying what to do instead.
use serde::Serialize;
use sluice_sdk::Schema;

#[derive(Serialize, Schema)]
struct NullableField {
    name: Option<String>,
}

#[derive(Serialize, Schema)]
enum WithData {
    Text(String),
    Number(i64),
}

#[derive(Serialize)]
struct Inner {
    a: i64,
}

#[derive(Serialize, Schema)]
struct Flattened {
    #[serde(flatten)]
    inner: Inner,
}

#[derive(Serialize, Schema)]
#[serde(tag = "type")]
struct Tagged {
    a: i64,
}

#[derive(Serialize, Schema)]
struct BadName {
    #[serde(rename = "a b")]
    ab: i64,
}

fn main() {}
