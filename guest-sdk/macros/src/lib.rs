//! `#[derive(Schema)]`: a Rust type's PState schema text, derived from its fields.
//!
//! Use it through `sluice_sdk::Schema` (the derive is re-exported beside the `Schema` type, the
//! way serde's derives sit beside its traits). It implements `sluice_sdk::HasSchema`:
//!
//! - a struct with named fields is a record `{field: T, ...}` in declaration order, each field
//!   under the name serde gives it (`#[serde(rename)]`, `#[serde(rename_all)]`; skipped fields
//!   are left out);
//! - an `Option<T>` field is an absent-or-`T` field, so it must be left out when `None`
//!   (`#[serde(skip_serializing_if = "Option::is_none")]`): the schema language has no null;
//! - a newtype struct, or any `#[serde(transparent)]` struct, has its field's schema; a tuple
//!   struct is a `list<any>`;
//! - an enum whose variants are all units is a `string` (serde writes the variant's name);
//! - `#[sluice(subindexed)]` on a field stores that collection element by element,
//!   `#[sluice(any)]` leaves it unchecked, `#[sluice(schema = "...")]` gives its text outright.
//!
//! Everything serde can do that the schema cannot follow (`flatten`, `with`, `into`, tagged and
//! data-carrying enums, unit structs) is a compile error that says what to do instead.
//! Invariant: the text produced is the one the host prints back for it (`describe`), so the
//! SDK's tests compare derived schemas against literal host syntax.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, Attribute, Data, DeriveInput, Error, Fields, GenericArgument, LitStr,
    PathArguments, Type,
};

/// Derives `sluice_sdk::HasSchema`; see the crate docs of `sluice-sdk-macros` and of
/// `sluice_sdk` for the mapping.
#[proc_macro_derive(Schema, attributes(sluice, serde))]
pub fn derive_schema(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let container = Container::parse(&input.attrs)?;
    let (body, consts) = match &input.data {
        Data::Struct(s) => struct_schema(input, &container, &s.fields)?,
        Data::Enum(e) => {
            if let Some(why) = &container.tagged {
                return Err(Error::new(
                    input.ident.span(),
                    format!("#[derive(Schema)]: an enum with serde's `{why}` is stored as a map or an untagged value, which Sluice's schema language cannot describe; store it as `sluice_sdk::Any<T>` or mark the field `#[sluice(any)]`"),
                ));
            }
            if let Some(v) = e.variants.iter().find(|v| !v.fields.is_empty()) {
                return Err(Error::new(
                    v.ident.span(),
                    "#[derive(Schema)]: an enum variant carrying data has no schema in Sluice's schema language (only enums of unit variants, stored as their names: `string`); store such values as `sluice_sdk::Any<T>` or a field marked `#[sluice(any)]`",
                ));
            }
            (quote!(::sluice_sdk::Schema::string()), TokenStream2::new())
        }
        Data::Union(u) => {
            return Err(Error::new(
                u.union_token.span,
                "#[derive(Schema)] does not support unions",
            ))
        }
    };
    let name = &input.ident;
    let mut generics = input.generics.clone();
    let params: Vec<_> = generics.type_params().map(|p| p.ident.clone()).collect();
    let where_clause = generics.make_where_clause();
    for p in params {
        where_clause
            .predicates
            .push(syn::parse_quote!(#p: ::sluice_sdk::HasSchema));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::sluice_sdk::HasSchema for #name #ty_generics #where_clause {
            fn schema() -> ::sluice_sdk::Schema {
                #body
            }
            #consts
        }
    })
}

/// A struct's schema expression, and the `HasSchema` constants it overrides.
fn struct_schema(
    input: &DeriveInput,
    container: &Container,
    fields: &Fields,
) -> syn::Result<(TokenStream2, TokenStream2)> {
    if let Some(why) = &container.tagged {
        return Err(Error::new(
            input.ident.span(),
            format!("#[derive(Schema)]: serde's `{why}` changes the struct's stored shape in a way the derive cannot see; remove it, or store the value as `sluice_sdk::Any<T>`"),
        ));
    }
    let mut kept = Vec::new();
    for f in fields {
        let attrs = FieldAttrs::parse(&f.attrs)?;
        if !attrs.skipped {
            kept.push((f, attrs));
        }
    }
    let transparent =
        container.transparent || matches!(fields, Fields::Unnamed(u) if u.unnamed.len() == 1);
    if transparent {
        let [(f, attrs)] = kept.as_slice() else {
            return Err(Error::new(
                input.ident.span(),
                "#[derive(Schema)]: a transparent struct needs exactly one serialized field",
            ));
        };
        let schema = field_schema(&f.ty, attrs, None)?;
        let consts = if attrs.any || attrs.schema.is_some() {
            let sub = attrs.is_subindexed_text();
            quote! {
                const COLLECTION: bool = #sub;
                const SUBINDEXED: bool = #sub;
            }
        } else {
            let ty = stored_type(&f.ty);
            let sub = attrs.subindexed;
            quote! {
                const COLLECTION: bool = <#ty as ::sluice_sdk::HasSchema>::COLLECTION;
                const SUBINDEXED: bool = #sub || <#ty as ::sluice_sdk::HasSchema>::SUBINDEXED;
                const SUBINDEXED_FIELD: ::core::option::Option<&'static str> =
                    <#ty as ::sluice_sdk::HasSchema>::SUBINDEXED_FIELD;
            }
        };
        return Ok((schema, consts));
    }
    match fields {
        Fields::Unit => Err(Error::new(
            input.ident.span(),
            "#[derive(Schema)]: a unit struct is stored as null, which no schema holds",
        )),
        Fields::Unnamed(_) => Ok((
            quote!(::sluice_sdk::Schema::list(::sluice_sdk::Schema::any())),
            quote!(
                const COLLECTION: bool = true;
            ),
        )),
        Fields::Named(_) => {
            let mut entries = Vec::new();
            // `if <field 1 is subindexed> { Some("f1") } else if ... else { None }`
            let mut probe = quote!(::core::option::Option::None);
            for (f, attrs) in kept.iter().rev() {
                let ident = f.ident.as_ref().expect("named field");
                let name = match &attrs.rename {
                    Some(n) => n.clone(),
                    None => container.rename_all.apply(&ident.unraw().to_string()),
                };
                check_field_name(&name, attrs.rename_span.unwrap_or_else(|| ident.span()))?;
                let schema = field_schema(&f.ty, attrs, Some(&name))?;
                entries.push(quote_spanned!(f.ty.span()=> (#name, #schema)));
                let sub = if attrs.any || attrs.schema.is_some() {
                    let s = attrs.is_subindexed_text();
                    quote!(#s)
                } else {
                    let ty = stored_type(&f.ty);
                    let s = attrs.subindexed;
                    quote!(#s || <#ty as ::sluice_sdk::HasSchema>::SUBINDEXED)
                };
                probe = quote! {
                    if #sub { ::core::option::Option::Some(#name) } else { #probe }
                };
            }
            entries.reverse();
            Ok((
                quote!(::sluice_sdk::Schema::record(&[#(#entries),*])),
                quote! {
                    const SUBINDEXED_FIELD: ::core::option::Option<&'static str> = #probe;
                },
            ))
        }
    }
}

/// The type whose schema a field has: `T` for an `Option<T>` field.
fn stored_type(ty: &Type) -> &Type {
    option_inner(ty).unwrap_or(ty)
}

/// The host accepts record field names of letters, digits, `_` and `-`.
fn check_field_name(name: &str, span: Span) -> syn::Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Error::new(
            span,
            format!("#[derive(Schema)]: `{name}` cannot be a record field name in a Sluice schema (letters, digits, `_` and `-` only)"),
        ));
    }
    Ok(())
}

/// The schema expression of one field.
fn field_schema(ty: &Type, attrs: &FieldAttrs, name: Option<&str>) -> syn::Result<TokenStream2> {
    let span = ty.span();
    let base = if let Some(text) = &attrs.schema {
        quote_spanned!(span=> ::sluice_sdk::Schema::from_text(#text))
    } else if attrs.any {
        quote_spanned!(span=> ::sluice_sdk::Schema::any())
    } else if let Some(inner) = option_inner(ty) {
        if !attrs.skips_none {
            let field = name.map_or(String::new(), |n| format!(" `{n}`"));
            return Err(Error::new(
                span,
                format!("#[derive(Schema)]: the `Option` field{field} must be absent, not null, when `None` (a Sluice record field is optional; no schema holds null): add `#[serde(default, skip_serializing_if = \"Option::is_none\")]`, or mark it `#[sluice(any)]`"),
            ));
        }
        quote_spanned!(span=> <#inner as ::sluice_sdk::HasSchema>::schema())
    } else {
        quote_spanned!(span=> <#ty as ::sluice_sdk::HasSchema>::schema())
    };
    Ok(if attrs.subindexed {
        quote_spanned!(span=> #base.subindexed())
    } else {
        base
    })
}

/// `T` when `ty` is spelled `Option<T>` (or `std::option::Option<T>`, ...).
fn option_inner(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else { return None };
    if p.qself.is_some() {
        return None;
    }
    let last = p.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.iter().collect::<Vec<_>>().as_slice() {
        [GenericArgument::Type(t)] => Some(t),
        _ => None,
    }
}

/// serde's `rename_all` rules, as serde applies them to field names.
#[derive(Default, Clone, Copy)]
enum RenameAll {
    #[default]
    None,
    Lower,
    Upper,
    Pascal,
    Camel,
    Snake,
    ScreamingSnake,
    Kebab,
    ScreamingKebab,
}

impl RenameAll {
    fn from_str(s: &LitStr) -> syn::Result<Self> {
        Ok(match s.value().as_str() {
            "lowercase" => Self::Lower,
            "UPPERCASE" => Self::Upper,
            "PascalCase" => Self::Pascal,
            "camelCase" => Self::Camel,
            "snake_case" => Self::Snake,
            "SCREAMING_SNAKE_CASE" => Self::ScreamingSnake,
            "kebab-case" => Self::Kebab,
            "SCREAMING-KEBAB-CASE" => Self::ScreamingKebab,
            other => {
                return Err(Error::new(
                    s.span(),
                    format!("#[derive(Schema)]: unknown rename_all rule `{other}`"),
                ))
            }
        })
    }

    fn apply(self, field: &str) -> String {
        match self {
            Self::None | Self::Lower | Self::Snake => field.to_string(),
            Self::Upper | Self::ScreamingSnake => field.to_ascii_uppercase(),
            Self::Pascal => pascal(field),
            Self::Camel => {
                let p = pascal(field);
                let mut chars = p.chars();
                match chars.next() {
                    Some(c) => c.to_ascii_lowercase().to_string() + chars.as_str(),
                    None => p,
                }
            }
            Self::Kebab => field.replace('_', "-"),
            Self::ScreamingKebab => field.to_ascii_uppercase().replace('_', "-"),
        }
    }
}

fn pascal(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut capitalize = true;
    for c in field.chars() {
        if c == '_' {
            capitalize = true;
        } else if capitalize {
            out.push(c.to_ascii_uppercase());
            capitalize = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// What the container's `#[serde(...)]` says that matters for the stored shape.
#[derive(Default)]
struct Container {
    rename_all: RenameAll,
    transparent: bool,
    /// `tag`, `untagged` or `content` (the attribute's name): the stored shape is not the
    /// fields'.
    tagged: Option<String>,
}

impl Container {
    fn parse(attrs: &[Attribute]) -> syn::Result<Self> {
        let mut c = Container::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
            attr.parse_nested_meta(|meta| {
                let p = &meta.path;
                if p.is_ident("rename_all") {
                    if let Some(s) = serialize_name(&meta)? {
                        c.rename_all = RenameAll::from_str(&s)?;
                    }
                } else if p.is_ident("transparent") {
                    c.transparent = true;
                } else if p.is_ident("tag") || p.is_ident("content") || p.is_ident("untagged") {
                    c.tagged = p.get_ident().map(ToString::to_string);
                    skip(&meta)?;
                } else if p.is_ident("into") {
                    return Err(meta.error("#[derive(Schema)]: `into` stores another type's shape; derive Schema on that type, or store this one as `sluice_sdk::Any<T>`"));
                } else {
                    skip(&meta)?;
                }
                Ok(())
            })?;
        }
        Ok(c)
    }
}

/// What a field's `#[serde(...)]` and `#[sluice(...)]` say.
#[derive(Default)]
struct FieldAttrs {
    rename: Option<String>,
    rename_span: Option<Span>,
    skipped: bool,
    skips_none: bool,
    subindexed: bool,
    any: bool,
    schema: Option<String>,
}

impl FieldAttrs {
    /// Whether a schema given as text is subindexed.
    fn is_subindexed_text(&self) -> bool {
        self.subindexed
            || self
                .schema
                .as_deref()
                .is_some_and(|s| s.trim_start().starts_with("subindexed"))
    }

    fn parse(attrs: &[Attribute]) -> syn::Result<Self> {
        let mut f = FieldAttrs::default();
        for attr in attrs {
            if attr.path().is_ident("serde") {
                attr.parse_nested_meta(|meta| {
                    let p = &meta.path;
                    if p.is_ident("rename") {
                        let span = meta.path.span();
                        if let Some(s) = serialize_name(&meta)? {
                            f.rename = Some(s.value());
                            f.rename_span = Some(span);
                        }
                    } else if p.is_ident("skip") || p.is_ident("skip_serializing") {
                        f.skipped = true;
                    } else if p.is_ident("skip_serializing_if") {
                        f.skips_none = true;
                        skip(&meta)?;
                    } else if p.is_ident("flatten") {
                        return Err(meta.error("#[derive(Schema)]: `flatten` merges fields the derive cannot see; write the fields out, or store the value as `sluice_sdk::Any<T>`"));
                    } else if p.is_ident("with") || p.is_ident("serialize_with") {
                        return Err(meta.error("#[derive(Schema)]: a field serialized `with` a function has a shape the derive cannot know; give it with `#[sluice(schema = \"...\")]` or `#[sluice(any)]`"));
                    } else {
                        skip(&meta)?;
                    }
                    Ok(())
                })?;
            } else if attr.path().is_ident("sluice") {
                attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident("subindexed") {
                        f.subindexed = true;
                    } else if meta.path.is_ident("any") {
                        f.any = true;
                    } else if meta.path.is_ident("schema") {
                        let s: LitStr = meta.value()?.parse()?;
                        f.schema = Some(s.value());
                    } else {
                        return Err(meta.error(
                            "unknown `sluice` attribute; expected `subindexed`, `any` or `schema = \"...\"`",
                        ));
                    }
                    Ok(())
                })?;
            }
        }
        if f.skipped && (f.subindexed || f.any || f.schema.is_some()) {
            return Err(Error::new(
                Span::call_site(),
                "#[derive(Schema)]: a skipped field has no schema",
            ));
        }
        Ok(f)
    }
}

/// The serialized name in `rename = "x"` or `rename(serialize = "x", ...)`; `None` when only
/// the deserialized name is given.
fn serialize_name(meta: &ParseNestedMeta) -> syn::Result<Option<LitStr>> {
    if meta.input.peek(syn::Token![=]) {
        return Ok(Some(meta.value()?.parse()?));
    }
    let mut out = None;
    meta.parse_nested_meta(|m| {
        if m.path.is_ident("serialize") {
            out = Some(m.value()?.parse()?);
        } else {
            skip(&m)?;
        }
        Ok(())
    })?;
    Ok(out)
}

/// Consumes a serde attribute item the derive does not need.
fn skip(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|m| skip(&m))?;
    }
    Ok(())
}
