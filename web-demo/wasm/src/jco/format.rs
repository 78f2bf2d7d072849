//! jco's JavaScript shape of WIT values as a serde data format, so that the contract's records
//! (wit-bindgen's types for `wit/scheduler.wit`, which derive serde) travel to and from a
//! transpiled component without a hand-written codec per record.
//!
//! The shape, as jco lowers and lifts it: a record is an object with camelCase keys; an `enum`
//! case is its kebab-case name; a `variant` is `{ tag, val }` (a case without payload may also be
//! the bare name); `u64` is a BigInt; an absent `option` is `undefined` (or `null`); a list is an
//! array, or a typed array for `u8`, `u32` and `u64` (which jco's lowering needs). Only what the
//! contract uses is supported: no maps, tuples, flags or resources.

use js_sys::{Array, BigUint64Array, Object, Reflect, Uint32Array, Uint8Array};
use serde::de::{
    self, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess, VariantAccess,
    Visitor,
};
use serde::ser::{self, Impossible, Serialize};
use serde::Deserialize;
use wasm_bindgen::{JsCast, JsValue};

/// A value that does not have the shape its type needs, with where in the value it sits.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatError {
    /// Record fields (jco's names) and list positions from the outermost value, `a[2].b`.
    path: String,
    message: String,
}

impl FormatError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            path: String::new(),
            message: message.into(),
        }
    }

    /// The error, seen from the record field (`name`) or list position (`[i]`) that holds it.
    fn within(mut self, place: &str) -> Self {
        self.path = if self.path.is_empty() || self.path.starts_with('[') {
            format!("{place}{}", self.path)
        } else {
            format!("{place}.{}", self.path)
        };
        self
    }
}

impl core::fmt::Display for FormatError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for FormatError {}

impl de::Error for FormatError {
    fn custom<T: core::fmt::Display>(message: T) -> Self {
        Self::new(message.to_string())
    }
}

impl ser::Error for FormatError {
    fn custom<T: core::fmt::Display>(message: T) -> Self {
        Self::new(message.to_string())
    }
}

/// A value of type `T` from what jco returned.
pub fn from_js<T: for<'de> Deserialize<'de>>(value: JsValue) -> Result<T, FormatError> {
    T::deserialize(Decoder(value))
}

/// `value` as jco takes it.
pub fn to_js<T: Serialize + ?Sized>(value: &T) -> Result<JsValue, FormatError> {
    value.serialize(Encoder).map(Encoded::into_js)
}

/// A Rust field name (snake_case) as jco spells it.
fn camel_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A Rust case name (PascalCase) as jco spells it.
fn kebab_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn describe(value: &JsValue) -> String {
    if value.is_undefined() {
        "nothing".into()
    } else if let Some(text) = value.as_string() {
        format!("the string {text:?}")
    } else if let Some(number) = value.as_f64() {
        format!("the number {number}")
    } else if value.is_bigint() {
        "a BigInt".into()
    } else if value.is_object() {
        "an object".into()
    } else {
        format!("{value:?}")
    }
}

fn expected(what: &str, value: &JsValue) -> FormatError {
    FormatError::new(format!("expected {what}, found {}", describe(value)))
}

struct Decoder(JsValue);

impl Decoder {
    /// An integer number within `min..=max`.
    fn integer(&self, what: &str, min: f64, max: f64) -> Result<f64, FormatError> {
        self.0
            .as_f64()
            .filter(|n| n.fract() == 0.0 && (min..=max).contains(n))
            .ok_or_else(|| expected(what, &self.0))
    }
}

impl<'de> de::Deserializer<'de> for Decoder {
    type Error = FormatError;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, FormatError> {
        Err(FormatError::new(
            "a value whose type the contract does not use",
        ))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FormatError> {
        let value = self
            .0
            .as_bool()
            .ok_or_else(|| expected("a bool", &self.0))?;
        visitor.visit_bool(value)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FormatError> {
        let value = self.integer("a u8", 0.0, f64::from(u8::MAX))?;
        visitor.visit_u8(value as u8)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FormatError> {
        let value = self.integer("a u32", 0.0, f64::from(u32::MAX))?;
        visitor.visit_u32(value as u32)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FormatError> {
        let value = self.integer("an s32", f64::from(i32::MIN), f64::from(i32::MAX))?;
        visitor.visit_i32(value as i32)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FormatError> {
        let value = u64::try_from(self.0.clone()).map_err(|_| expected("a u64 BigInt", &self.0))?;
        visitor.visit_u64(value)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FormatError> {
        let value = self
            .0
            .as_f64()
            .ok_or_else(|| expected("a number", &self.0))?;
        visitor.visit_f64(value)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FormatError> {
        let value = self
            .0
            .as_f64()
            .ok_or_else(|| expected("a number", &self.0))?;
        visitor.visit_f32(value as f32)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FormatError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FormatError> {
        let value = self
            .0
            .as_string()
            .ok_or_else(|| expected("a string", &self.0))?;
        visitor.visit_string(value)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FormatError> {
        if self.0.is_undefined() || self.0.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FormatError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, FormatError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FormatError> {
        let items = if let Some(array) = self.0.dyn_ref::<Uint32Array>() {
            Items::U32(array.to_vec().into_iter())
        } else if let Some(array) = self.0.dyn_ref::<BigUint64Array>() {
            Items::U64(array.to_vec().into_iter())
        } else if let Some(array) = self.0.dyn_ref::<Uint8Array>() {
            Items::U8(array.to_vec().into_iter())
        } else if let Some(array) = self.0.dyn_ref::<Array>() {
            Items::Values(array.clone(), 0)
        } else {
            return Err(expected("a list", &self.0));
        };
        visitor.visit_seq(Sequence { items, index: 0 })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FormatError> {
        if !self.0.is_object() {
            return Err(expected("a record", &self.0));
        }
        visitor.visit_map(Fields {
            object: self.0,
            fields: fields.iter(),
            current: None,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FormatError> {
        let (tag, val) = match self.0.as_string() {
            Some(tag) => (tag, JsValue::UNDEFINED),
            None if self.0.is_object() => {
                let tag = Reflect::get(&self.0, &JsValue::from_str("tag"))
                    .ok()
                    .and_then(|tag| tag.as_string())
                    .ok_or_else(|| expected("a variant's tag", &self.0))?;
                let val =
                    Reflect::get(&self.0, &JsValue::from_str("val")).unwrap_or(JsValue::UNDEFINED);
                (tag, val)
            }
            None => return Err(expected("a case name or a variant", &self.0)),
        };
        let variant = variants
            .iter()
            .find(|variant| kebab_case(variant) == tag)
            .ok_or_else(|| FormatError::new(format!("unknown case {tag:?}")))?;
        visitor.visit_enum(Case { variant, val })
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i64 i128 u16 u128 char bytes byte_buf unit_struct tuple tuple_struct map
        identifier ignored_any
    }
}

/// A list's items: jco's typed arrays, or a plain array.
enum Items {
    U32(std::vec::IntoIter<u32>),
    U64(std::vec::IntoIter<u64>),
    U8(std::vec::IntoIter<u8>),
    Values(Array, u32),
}

struct Sequence {
    items: Items,
    index: usize,
}

impl<'de> SeqAccess<'de> for Sequence {
    type Error = FormatError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, FormatError> {
        let index = self.index;
        self.index += 1;
        let item = match &mut self.items {
            Items::U32(items) => items
                .next()
                .map(|n| seed.deserialize(n.into_deserializer())),
            Items::U64(items) => items
                .next()
                .map(|n| seed.deserialize(n.into_deserializer())),
            Items::U8(items) => items
                .next()
                .map(|n| seed.deserialize(n.into_deserializer())),
            Items::Values(array, next) => (*next < array.length()).then(|| {
                let item = array.get(*next);
                *next += 1;
                seed.deserialize(Decoder(item))
            }),
        };
        item.transpose()
            .map_err(|error: FormatError| error.within(&format!("[{index}]")))
    }
}

/// A record's fields, in the order the type declares them, read under jco's names.
struct Fields {
    object: JsValue,
    fields: std::slice::Iter<'static, &'static str>,
    current: Option<&'static str>,
}

impl<'de> MapAccess<'de> for Fields {
    type Error = FormatError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, FormatError> {
        let Some(&field) = self.fields.next() else {
            return Ok(None);
        };
        self.current = Some(field);
        seed.deserialize(field.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, FormatError> {
        let name = camel_case(self.current.unwrap_or_default());
        let value =
            Reflect::get(&self.object, &JsValue::from_str(&name)).unwrap_or(JsValue::UNDEFINED);
        seed.deserialize(Decoder(value))
            .map_err(|error| error.within(&name))
    }
}

/// One case of a variant or enum, with its payload (`undefined` when it has none).
struct Case {
    variant: &'static str,
    val: JsValue,
}

impl<'de> EnumAccess<'de> for Case {
    type Error = FormatError;
    type Variant = Payload;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Payload), FormatError> {
        let variant = seed.deserialize(self.variant.into_deserializer())?;
        Ok((variant, Payload(self.val)))
    }
}

struct Payload(JsValue);

impl<'de> VariantAccess<'de> for Payload {
    type Error = FormatError;

    fn unit_variant(self) -> Result<(), FormatError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, FormatError> {
        seed.deserialize(Decoder(self.0))
            .map_err(|error| error.within("val"))
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, FormatError> {
        Err(FormatError::new("a tuple case, which WIT has not"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, FormatError> {
        Err(FormatError::new("a struct case, which WIT has not"))
    }
}

/// A value on its way to JavaScript; integers stay typed until a list decides its array type.
enum Encoded {
    U8(u8),
    U32(u32),
    U64(u64),
    Value(JsValue),
}

impl Encoded {
    fn into_js(self) -> JsValue {
        match self {
            Self::U8(n) => n.into(),
            Self::U32(n) => n.into(),
            Self::U64(n) => n.into(),
            Self::Value(value) => value,
        }
    }
}

struct Encoder;

fn unsupported(what: &str) -> FormatError {
    FormatError::new(format!("{what} has no shape in the contract"))
}

impl ser::Serializer for Encoder {
    type Ok = Encoded;
    type Error = FormatError;
    type SerializeSeq = ListEncoder;
    type SerializeTuple = Impossible<Encoded, FormatError>;
    type SerializeTupleStruct = Impossible<Encoded, FormatError>;
    type SerializeTupleVariant = Impossible<Encoded, FormatError>;
    type SerializeMap = Impossible<Encoded, FormatError>;
    type SerializeStruct = RecordEncoder;
    type SerializeStructVariant = Impossible<Encoded, FormatError>;

    fn serialize_bool(self, v: bool) -> Result<Encoded, FormatError> {
        Ok(Encoded::Value(v.into()))
    }
    fn serialize_i8(self, v: i8) -> Result<Encoded, FormatError> {
        Ok(Encoded::Value(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Encoded, FormatError> {
        Ok(Encoded::Value(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Encoded, FormatError> {
        Ok(Encoded::Value(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Encoded, FormatError> {
        Ok(Encoded::Value(v.into()))
    }
    fn serialize_u8(self, v: u8) -> Result<Encoded, FormatError> {
        Ok(Encoded::U8(v))
    }
    fn serialize_u16(self, v: u16) -> Result<Encoded, FormatError> {
        Ok(Encoded::Value(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Encoded, FormatError> {
        Ok(Encoded::U32(v))
    }
    fn serialize_u64(self, v: u64) -> Result<Encoded, FormatError> {
        Ok(Encoded::U64(v))
    }
    fn serialize_f32(self, v: f32) -> Result<Encoded, FormatError> {
        Ok(Encoded::Value(v.into()))
    }
    fn serialize_f64(self, v: f64) -> Result<Encoded, FormatError> {
        Ok(Encoded::Value(v.into()))
    }
    fn serialize_char(self, v: char) -> Result<Encoded, FormatError> {
        Ok(Encoded::Value(JsValue::from_str(
            v.encode_utf8(&mut [0; 4]),
        )))
    }
    fn serialize_str(self, v: &str) -> Result<Encoded, FormatError> {
        Ok(Encoded::Value(JsValue::from_str(v)))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Encoded, FormatError> {
        Ok(Encoded::Value(Uint8Array::from(v).into()))
    }
    fn serialize_none(self) -> Result<Encoded, FormatError> {
        Ok(Encoded::Value(JsValue::UNDEFINED))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Encoded, FormatError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Encoded, FormatError> {
        Ok(Encoded::Value(JsValue::UNDEFINED))
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Encoded, FormatError> {
        Ok(Encoded::Value(JsValue::UNDEFINED))
    }
    /// An `enum` case. (A `variant`'s case without payload would be `{ tag }`; no call of the
    /// contract takes a variant.)
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Encoded, FormatError> {
        Ok(Encoded::Value(JsValue::from_str(&kebab_case(variant))))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Encoded, FormatError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Encoded, FormatError> {
        let object = Object::new();
        set(&object, "tag", &JsValue::from_str(&kebab_case(variant)));
        set(&object, "val", &to_js(value)?);
        Ok(Encoded::Value(object.into()))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<ListEncoder, FormatError> {
        Ok(ListEncoder(Vec::with_capacity(len.unwrap_or(0))))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, FormatError> {
        Err(unsupported("a tuple"))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, FormatError> {
        Err(unsupported("a tuple struct"))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, FormatError> {
        Err(unsupported("a tuple case"))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, FormatError> {
        Err(unsupported("a map"))
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<RecordEncoder, FormatError> {
        Ok(RecordEncoder(Object::new()))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, FormatError> {
        Err(unsupported("a struct case"))
    }
}

fn set(object: &Object, key: &str, value: &JsValue) {
    // Setting a property of a fresh plain object cannot fail.
    let _ = Reflect::set(object, &JsValue::from_str(key), value);
}

struct ListEncoder(Vec<Encoded>);

impl ser::SerializeSeq for ListEncoder {
    type Ok = Encoded;
    type Error = FormatError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), FormatError> {
        self.0.push(value.serialize(Encoder)?);
        Ok(())
    }

    /// Lists of one integer type become the typed array jco's lowering reads.
    fn end(self) -> Result<Encoded, FormatError> {
        let items = self.0;
        let array: JsValue = if items.is_empty() {
            Array::new().into()
        } else if let Some(values) = all(&items, |item| match item {
            Encoded::U32(n) => Some(*n),
            _ => None,
        }) {
            Uint32Array::from(values.as_slice()).into()
        } else if let Some(values) = all(&items, |item| match item {
            Encoded::U64(n) => Some(*n),
            _ => None,
        }) {
            BigUint64Array::from(values.as_slice()).into()
        } else if let Some(values) = all(&items, |item| match item {
            Encoded::U8(n) => Some(*n),
            _ => None,
        }) {
            Uint8Array::from(values.as_slice()).into()
        } else {
            items
                .into_iter()
                .map(Encoded::into_js)
                .collect::<Array>()
                .into()
        };
        Ok(Encoded::Value(array))
    }
}

/// The items as `T`s, if every one is one.
fn all<T>(items: &[Encoded], pick: fn(&Encoded) -> Option<T>) -> Option<Vec<T>> {
    items.iter().map(pick).collect()
}

struct RecordEncoder(Object);

impl ser::SerializeStruct for RecordEncoder {
    type Ok = Encoded;
    type Error = FormatError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), FormatError> {
        let name = camel_case(key);
        let value = value
            .serialize(Encoder)
            .map_err(|error| error.within(&name))?;
        set(&self.0, &name, &value.into_js());
        Ok(())
    }

    fn end(self) -> Result<Encoded, FormatError> {
        Ok(Encoded::Value(self.0.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_names_become_jcos() {
        assert_eq!(camel_case("prompt_token_ids"), "promptTokenIds");
        assert_eq!(camel_case("step"), "step");
        assert_eq!(kebab_case("LengthCapped"), "length-capped");
        assert_eq!(kebab_case("KvCacheTooSmall"), "kv-cache-too-small");
        assert_eq!(kebab_case("Error"), "error");
    }
}
