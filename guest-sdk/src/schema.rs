//! PState schemas: the text the host checks values against, built by hand ([`Schema`]'s
//! constructors) or derived from Rust types ([`HasSchema`], `#[derive(Schema)]`).
//!
//! Owns the mapping from Rust types to the host's schema language
//! (`bool | int | float | string | bytes | any | map<K, V> | set<T> | list<T> | {field: T, ...}`,
//! collections optionally `subindexed`), the wrapper types that pick a schema serde alone does
//! not ([`Bytes`], [`Any`], [`Subindexed`]), and the collection traits that decide which typed
//! PState operations a value type has ([`Collection`], [`SetLike`], [`ListLike`], [`MapLike`],
//! [`Sorted`], [`Integer`]). Invariant: a type's schema describes exactly what serde writes
//! for it through CBOR, so every value the SDK stores passes the host's check; where no schema
//! can say that (`Option<T>` outside a record field, `()`, `i128`), there is no impl and using
//! the type is a compile error.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;
use std::sync::Arc;

use serde::de::{DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The shape of a PState, in the host's schema language. Build with the constructors, or derive
/// it from a Rust type with [`HasSchema::schema`]; a PState's schema is a `map` whose keys
/// partition it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema(String);

impl Schema {
    pub fn bool() -> Self {
        Schema("bool".into())
    }
    pub fn int() -> Self {
        Schema("int".into())
    }
    pub fn float() -> Self {
        Schema("float".into())
    }
    pub fn string() -> Self {
        Schema("string".into())
    }
    pub fn bytes() -> Self {
        Schema("bytes".into())
    }
    /// Any value at all (not checked).
    pub fn any() -> Self {
        Schema("any".into())
    }
    pub fn map(key: Schema, value: Schema) -> Self {
        Schema(format!("map<{}, {}>", key.0, value.0))
    }
    pub fn set(element: Schema) -> Self {
        Schema(format!("set<{}>", element.0))
    }
    pub fn list(element: Schema) -> Self {
        Schema(format!("list<{}>", element.0))
    }
    /// A record: a map with these fixed string fields (each optional).
    pub fn record(fields: &[(&str, Schema)]) -> Self {
        let body: Vec<String> = fields
            .iter()
            .map(|(n, s)| format!("{n}: {}", s.0))
            .collect();
        Schema(format!("{{{}}}", body.join(", ")))
    }
    /// Store this collection element by element: it can hold millions of elements, be
    /// range-read with one seek, and report its size in O(1). Allowed for the PState's value or
    /// a record field, not inside another subindexed collection.
    pub fn subindexed(self) -> Self {
        Schema(format!("subindexed {}", self.0))
    }
    /// A schema given as text, e.g. `"map<string, int>"`; the host checks it at deploy.
    pub fn from_text(text: &str) -> Self {
        Schema(text.to_string())
    }
    /// The schema's text form, as the host shows it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Rust type whose stored form has a schema: what [`Definition::pstate_of`] declares for a
/// [`PStateDef`]'s key and value types. Implemented for the standard types below, and for your
/// own structs and unit enums with `#[derive(Schema)]`:
///
/// | Rust | schema |
/// |---|---|
/// | `bool` | `bool` |
/// | `i8`…`i64`, `u8`…`u64`, `isize`, `usize` | `int` |
/// | `f32`, `f64` | `float` |
/// | `String`, `str`, `char`, `Cow<str>` | `string` |
/// | [`Bytes`] | `bytes` (a `Vec<u8>` is a `list<int>`, as serde writes it) |
/// | `Vec<T>`, `VecDeque<T>`, `[T]` | `list<T>` |
/// | `BTreeSet<T>`, `HashSet<T>` | `set<T>` |
/// | `BTreeMap<K, V>`, `HashMap<K, V>` | `map<K, V>` |
/// | tuples `(A, B, ...)` (up to 6, each element with a schema) | `list<any>` (the language has no tuples) |
/// | [`Any<T>`], `ciborium::Value` | `any` |
/// | [`Subindexed<C>`] | `subindexed C` (C a map, set or list) |
/// | `&T`, `Box<T>`, `Rc<T>`, `Arc<T>` | `T` |
/// | a `#[derive(Schema)]` struct | `{field: T, ...}` (serde's field names; an `Option<T>` field is an optional `T`) |
/// | a `#[derive(Schema)]` enum of unit variants | `string` |
///
/// `Option<T>` has no schema of its own: a stored null is refused by every schema but `any`.
/// As a field of a derived record it is an optional field (absent when `None`); elsewhere use
/// [`Any`].
///
/// [`Definition::pstate_of`]: crate::Definition::pstate_of
/// [`PStateDef`]: crate::PStateDef
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no Sluice schema",
    label = "no schema for this type",
    note = "derive one with `#[derive(sluice_sdk::Schema)]`, or see `HasSchema` for the types that have one (an `Option` has one only as a field of a derived record; use `sluice_sdk::Any<T>` for unchecked values)"
)]
pub trait HasSchema {
    /// The schema of this type's stored form.
    fn schema() -> Schema;
    /// Whether the stored form is a map, set or list (so `count` is cheap and meaningful).
    #[doc(hidden)]
    const COLLECTION: bool = false;
    /// Whether the stored form is a subindexed collection.
    #[doc(hidden)]
    const SUBINDEXED: bool = false;
    /// For a record: a field holding a subindexed collection, whose count tells whether the
    /// record exists without reading the collection.
    #[doc(hidden)]
    const SUBINDEXED_FIELD: Option<&'static str> = None;
}

macro_rules! scalar {
    ($schema:ident: $($t:ty),*) => {
        $(impl HasSchema for $t {
            fn schema() -> Schema {
                Schema::$schema()
            }
        })*
    };
}

scalar!(bool: bool);
scalar!(int: i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);
scalar!(float: f32, f64);
scalar!(string: String, str, char);
scalar!(any: ciborium::Value);

impl HasSchema for Cow<'_, str> {
    fn schema() -> Schema {
        Schema::string()
    }
}

macro_rules! pointer {
    ($($p:ident),*) => {
        $(impl<T: HasSchema + ?Sized> HasSchema for $p<T> {
            fn schema() -> Schema {
                T::schema()
            }
            const COLLECTION: bool = T::COLLECTION;
            const SUBINDEXED: bool = T::SUBINDEXED;
            const SUBINDEXED_FIELD: Option<&'static str> = T::SUBINDEXED_FIELD;
        })*
    };
}

pointer!(Box, Rc, Arc);

impl<T: HasSchema + ?Sized> HasSchema for &T {
    fn schema() -> Schema {
        T::schema()
    }
    const COLLECTION: bool = T::COLLECTION;
    const SUBINDEXED: bool = T::SUBINDEXED;
    const SUBINDEXED_FIELD: Option<&'static str> = T::SUBINDEXED_FIELD;
}

macro_rules! tuple {
    ($($t:ident),+) => {
        impl<$($t: HasSchema),+> HasSchema for ($($t,)+) {
            fn schema() -> Schema {
                Schema::list(Schema::any())
            }
            const COLLECTION: bool = true;
        }
    };
}

tuple!(A);
tuple!(A, B);
tuple!(A, B, C);
tuple!(A, B, C, D);
tuple!(A, B, C, D, E);
tuple!(A, B, C, D, E, F);

macro_rules! collection {
    ($ctor:ident: $($c:ident),*) => {
        $(impl<T: HasSchema> HasSchema for $c<T> {
            fn schema() -> Schema {
                Schema::$ctor(T::schema())
            }
            const COLLECTION: bool = true;
        })*
    };
}

collection!(list: Vec, VecDeque);
collection!(set: BTreeSet, HashSet);

impl<T: HasSchema> HasSchema for [T] {
    fn schema() -> Schema {
        Schema::list(T::schema())
    }
    const COLLECTION: bool = true;
}

impl<K: HasSchema, V: HasSchema> HasSchema for BTreeMap<K, V> {
    fn schema() -> Schema {
        Schema::map(K::schema(), V::schema())
    }
    const COLLECTION: bool = true;
}

impl<K: HasSchema, V: HasSchema, S> HasSchema for HashMap<K, V, S> {
    fn schema() -> Schema {
        Schema::map(K::schema(), V::schema())
    }
    const COLLECTION: bool = true;
}

/// Bytes stored as a CBOR byte string (schema `bytes`); a plain `Vec<u8>` is a list of
/// integers (`list<int>`), as serde writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub Vec<u8>);

impl HasSchema for Bytes {
    fn schema() -> Schema {
        Schema::bytes()
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Bytes, A::Error> {
                let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Bytes(out))
            }
        }
        d.deserialize_byte_buf(BytesVisitor)
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl Deref for Bytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

/// A value stored unchecked (schema `any`): serde writes and reads it as a `T`, but the host
/// accepts any value in its place. `Any` alone holds a `ciborium::Value`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Any<T = ciborium::Value>(pub T);

impl<T> HasSchema for Any<T> {
    fn schema() -> Schema {
        Schema::any()
    }
}

impl<T> Deref for Any<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Any<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// A map, set or list stored element by element (schema `subindexed C`): it can hold millions
/// of elements, be range-read with one seek, and report its size in O(1). Allowed as a PState's
/// value or a record field (or use `#[sluice(subindexed)]` on the field), not inside another
/// subindexed collection. Serialized exactly as the collection itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Subindexed<C>(pub C);

impl<C: Collection> HasSchema for Subindexed<C> {
    fn schema() -> Schema {
        C::schema().subindexed()
    }
    const COLLECTION: bool = true;
    const SUBINDEXED: bool = true;
}

impl<C> Deref for Subindexed<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.0
    }
}

impl<C> DerefMut for Subindexed<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.0
    }
}

/// A value type that is a map, set or list: the typed handles have `count` and (for maps and
/// sets) `range` on it.
pub trait Collection: HasSchema {
    /// What `all` selects of one element: the element (set, list) or a `(key, value)` entry
    /// (map).
    type Item: DeserializeOwned;
}

/// A set value: typed handles have `insert`, `contains` and `remove_element`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a set",
    note = "`insert`, `contains` and `remove_element` need a PState whose value is a `BTreeSet`, `HashSet` or `Subindexed` one"
)]
pub trait SetLike: Collection {
    type Element: Serialize + DeserializeOwned;
}

/// A list value: typed handles have `push`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a list",
    note = "`push` needs a PState whose value is a `Vec`, `VecDeque` or `Subindexed` one"
)]
pub trait ListLike: Collection {
    type Element: Serialize + DeserializeOwned;
}

/// A map value: typed handles have `get_entry`, `set_entry`, `has_entry` and `remove_entry`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a map",
    note = "the `*_entry` methods need a PState whose value is a `BTreeMap`, `HashMap` or `Subindexed` one"
)]
pub trait MapLike: Collection {
    type Key: Serialize + DeserializeOwned;
    type Value: Serialize + DeserializeOwned;
}

/// A map or set: stored in key order whatever the Rust type, so typed handles have `range`
/// and `keep_last` on it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a map or a set (a collection in key order)",
    note = "`range` and `keep_last` need a PState whose value is a map or a set"
)]
pub trait Sorted: Collection {}

/// An integer value: typed handles have `increment`.
#[diagnostic::on_unimplemented(
    message = "`increment` needs an integer PState value, not `{Self}`",
    label = "not an integer",
    note = "the host increments only `int` values; use `set` for other types"
)]
pub trait Integer: HasSchema {}

impl Integer for i8 {}
impl Integer for i16 {}
impl Integer for i32 {}
impl Integer for i64 {}
impl Integer for isize {}
impl Integer for u8 {}
impl Integer for u16 {}
impl Integer for u32 {}
impl Integer for u64 {}
impl Integer for usize {}

macro_rules! list_like {
    ($($c:ident),*) => {
        $(impl<T: HasSchema + Serialize + DeserializeOwned> Collection for $c<T> {
            type Item = T;
        }
        impl<T: HasSchema + Serialize + DeserializeOwned> ListLike for $c<T> {
            type Element = T;
        })*
    };
}

list_like!(Vec, VecDeque);

impl<T: HasSchema + Serialize + DeserializeOwned + Ord> Collection for BTreeSet<T> {
    type Item = T;
}
impl<T: HasSchema + Serialize + DeserializeOwned + Ord> SetLike for BTreeSet<T> {
    type Element = T;
}
impl<T: HasSchema + Serialize + DeserializeOwned + Ord> Sorted for BTreeSet<T> {}

impl<T: HasSchema + Serialize + DeserializeOwned + Eq + Hash> Collection for HashSet<T> {
    type Item = T;
}
impl<T: HasSchema + Serialize + DeserializeOwned + Eq + Hash> SetLike for HashSet<T> {
    type Element = T;
}
impl<T: HasSchema + Serialize + DeserializeOwned + Eq + Hash> Sorted for HashSet<T> {}

impl<K, V> Collection for BTreeMap<K, V>
where
    K: HasSchema + Serialize + DeserializeOwned + Ord,
    V: HasSchema + Serialize + DeserializeOwned,
{
    type Item = (K, V);
}
impl<K, V> MapLike for BTreeMap<K, V>
where
    K: HasSchema + Serialize + DeserializeOwned + Ord,
    V: HasSchema + Serialize + DeserializeOwned,
{
    type Key = K;
    type Value = V;
}
impl<K, V> Sorted for BTreeMap<K, V>
where
    K: HasSchema + Serialize + DeserializeOwned + Ord,
    V: HasSchema + Serialize + DeserializeOwned,
{
}

impl<K, V> Collection for HashMap<K, V>
where
    K: HasSchema + Serialize + DeserializeOwned + Eq + Hash,
    V: HasSchema + Serialize + DeserializeOwned,
{
    type Item = (K, V);
}
impl<K, V> MapLike for HashMap<K, V>
where
    K: HasSchema + Serialize + DeserializeOwned + Eq + Hash,
    V: HasSchema + Serialize + DeserializeOwned,
{
    type Key = K;
    type Value = V;
}
impl<K, V> Sorted for HashMap<K, V>
where
    K: HasSchema + Serialize + DeserializeOwned + Eq + Hash,
    V: HasSchema + Serialize + DeserializeOwned,
{
}

impl<C: Collection> Collection for Subindexed<C> {
    type Item = C::Item;
}
impl<C: SetLike> SetLike for Subindexed<C> {
    type Element = C::Element;
}
impl<C: ListLike> ListLike for Subindexed<C> {
    type Element = C::Element;
}
impl<C: MapLike> MapLike for Subindexed<C> {
    type Key = C::Key;
    type Value = C::Value;
}
impl<C: Sorted> Sorted for Subindexed<C> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_types_have_the_hosts_spelling() {
        assert_eq!(
            BTreeMap::<String, i64>::schema().as_str(),
            "map<string, int>"
        );
        assert_eq!(
            HashMap::<u8, Vec<Bytes>>::schema().as_str(),
            "map<int, list<bytes>>"
        );
        assert_eq!(BTreeSet::<char>::schema().as_str(), "set<string>");
        assert_eq!(Vec::<u8>::schema().as_str(), "list<int>");
        assert_eq!(<(i64, String)>::schema().as_str(), "list<any>");
        assert_eq!(<&str>::schema().as_str(), "string");
        assert_eq!(Box::<f32>::schema().as_str(), "float");
        assert_eq!(<Any<Vec<i64>>>::schema().as_str(), "any");
        assert_eq!(ciborium::Value::schema().as_str(), "any");
        assert_eq!(
            Subindexed::<BTreeMap<i64, String>>::schema().as_str(),
            "subindexed map<int, string>"
        );
        assert_eq!(
            Subindexed::<HashSet<String>>::schema().as_str(),
            "subindexed set<string>"
        );
        const { assert!(Subindexed::<Vec<bool>>::COLLECTION && !i64::COLLECTION) };
    }

    #[test]
    fn wrappers_serialize_as_their_contents() {
        use crate::{decode, encode};
        assert_eq!(encode(&Bytes(vec![1, 2])).unwrap(), [0x42, 1, 2]);
        assert_eq!(encode(&Subindexed(vec![1u8])), encode(&vec![1u8]));
        assert_eq!(encode(&Any("x")), encode(&"x"));
        let back: Bytes = decode(&[0x42, 1, 2], "bytes").unwrap();
        assert_eq!(back, Bytes(vec![1, 2]));
        let from_list: Bytes = decode(&encode(&[7u8, 8]).unwrap(), "bytes").unwrap();
        assert_eq!(from_list, Bytes(vec![7, 8]));
    }
}
