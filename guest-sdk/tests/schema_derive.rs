//! `#[derive(Schema)]`: the schema text derived from Rust types, in the host's spelling (the
//! host prints a parsed schema back exactly so: `host/src/pstate/schema.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use sluice_sdk::{Any, Bytes, HasSchema, PStateDef, Schema, Subindexed};

fn schema<T: HasSchema + ?Sized>() -> String {
    T::schema().as_str().to_string()
}

#[derive(Serialize, Deserialize, Schema)]
struct Post {
    author: String,
    id: String,
    text: String,
    time: i64,
}

#[derive(Serialize, Deserialize, Schema)]
struct Account {
    balance: i64,
    history: Subindexed<Vec<Any>>,
}

#[test]
fn records_list_their_fields_in_order() {
    assert_eq!(
        schema::<Post>(),
        "{author: string, id: string, text: string, time: int}"
    );
    assert_eq!(
        schema::<Account>(),
        "{balance: int, history: subindexed list<any>}"
    );
}

#[derive(Serialize, Schema)]
struct Nested {
    posts: Vec<Post>,
    by_id: BTreeMap<String, Post>,
    tags: BTreeSet<String>,
    scores: HashMap<i64, f64>,
    raw: Bytes,
    pair: (i64, String),
    flags: Vec<Vec<bool>>,
}

#[test]
fn nested_types_nest() {
    assert_eq!(
        schema::<Nested>(),
        "{posts: list<{author: string, id: string, text: string, time: int}>, \
         by_id: map<string, {author: string, id: string, text: string, time: int}>, \
         tags: set<string>, scores: map<int, float>, raw: bytes, pair: list<any>, \
         flags: list<list<bool>>}"
    );
    assert_eq!(
        schema::<BTreeMap<String, Subindexed<BTreeMap<(i64, String), Post>>>>(),
        "map<string, subindexed map<list<any>, {author: string, id: string, text: string, time: int}>>"
    );
}

#[derive(Serialize, Deserialize, Schema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // only its schema is looked at
struct Renamed {
    first_name: String,
    #[serde(rename = "family")]
    last_name: String,
    #[serde(rename(serialize = "years", deserialize = "age"))]
    age_in_years: u32,
    #[serde(skip)]
    cache: Vec<u8>,
    #[serde(skip_serializing, default)]
    derived: bool,
    r#type: String,
}

#[derive(Serialize, Schema)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
struct Kebab {
    one_two: i64,
}

#[derive(Serialize, Schema)]
#[serde(rename_all = "PascalCase")]
struct Pascal {
    one_two: i64,
}

#[test]
fn serde_names_are_the_field_names() {
    assert_eq!(
        schema::<Renamed>(),
        "{firstName: string, family: string, years: int, type: string}"
    );
    assert_eq!(schema::<Kebab>(), "{ONE-TWO: int}");
    assert_eq!(schema::<Pascal>(), "{OneTwo: int}");
}

#[derive(Serialize, Deserialize, Default, Schema)]
struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bio: Option<String>,
    #[sluice(any)]
    extra: Option<String>,
}

#[test]
fn option_fields_are_optional_fields() {
    assert_eq!(
        schema::<Profile>(),
        "{name: string, bio: string, extra: any}"
    );
    // What the schema promises: `None` is absent, not null.
    let v: ciborium::Value = ciborium::Value::serialized(&Profile {
        name: Some("Ann".into()),
        ..Profile::default()
    })
    .unwrap();
    let fields: Vec<String> = v
        .as_map()
        .unwrap()
        .iter()
        .map(|(k, _)| k.as_text().unwrap().to_string())
        .collect();
    assert_eq!(fields, ["name", "extra"]);
}

#[derive(Serialize, Schema)]
struct UserId(String);

#[derive(Serialize, Schema)]
#[serde(transparent)]
struct Followers {
    inner: Subindexed<BTreeMap<String, u64>>,
}

#[derive(Serialize, Schema)]
struct Point(i64, i64);

#[derive(Serialize, Deserialize, Schema)]
#[serde(rename_all = "lowercase")]
enum Op {
    Follow,
    Unfollow,
}

#[test]
fn newtypes_tuples_and_unit_enums() {
    assert_eq!(schema::<UserId>(), "string");
    assert_eq!(schema::<Followers>(), "subindexed map<string, int>");
    assert_eq!(schema::<Point>(), "list<any>");
    assert_eq!(schema::<Op>(), "string");
    assert_eq!(
        schema::<BTreeMap<UserId, Vec<Op>>>(),
        "map<string, list<string>>"
    );
}

#[derive(Serialize, Schema)]
struct Attributes {
    #[sluice(subindexed)]
    log: Vec<i64>,
    #[sluice(schema = "map<string, any>")]
    meta: serde_json_like::Object,
}

mod serde_json_like {
    /// A type with no schema of its own.
    #[derive(serde::Serialize)]
    pub struct Object {}
}

#[derive(Serialize, Schema)]
struct Generic<T> {
    value: T,
    values: Vec<T>,
}

#[test]
fn attributes_and_generics() {
    assert_eq!(
        schema::<Attributes>(),
        "{log: subindexed list<int>, meta: map<string, any>}"
    );
    assert_eq!(
        schema::<Generic<Post>>(),
        "{value: {author: string, id: string, text: string, time: int}, \
         values: list<{author: string, id: string, text: string, time: int}>}"
    );
}

#[test]
fn a_pstate_is_a_map_from_its_key() {
    const ACCOUNTS: PStateDef<String, Account> = PStateDef::new("accounts");
    let mut m = sluice_sdk::Definition::default();
    m.pstate_of(ACCOUNTS);
    assert_eq!(
        schema::<BTreeMap<String, Account>>(),
        "map<string, {balance: int, history: subindexed list<any>}>"
    );
    assert_eq!(ACCOUNTS.name(), "accounts");
}

#[test]
fn records_know_a_subindexed_field_to_probe() {
    assert_eq!(Account::SUBINDEXED_FIELD, Some("history"));
    assert_eq!(Attributes::SUBINDEXED_FIELD, Some("log"));
    assert_eq!(Post::SUBINDEXED_FIELD, None);
    const { assert!(Followers::SUBINDEXED && Followers::COLLECTION) };
    const { assert!(!UserId::COLLECTION) };
}
