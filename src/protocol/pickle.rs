//! A pickle *writer* for JSON-like values and tuples, so beatd can enqueue jobs for RQ's
//! default serializer (`pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)`, protocol 5 on
//! every Python RQ 2 and 3 support). Never a reader: beatd only produces pickles, and reading
//! one is running code.
//!
//! The output is protocol 5 with no FRAME and no MEMOIZE opcodes, which are optional (an
//! unpickler reads unframed opcodes and needs the memo only for shared references, which
//! JSON values cannot have). Otherwise the opcodes are the ones CPython 3.11's C pickler
//! chooses, batches of 1000 included, so the bytes equal `pickle.dumps(obj, 5)` less its
//! FRAME and MEMOIZE opcodes (`without_frame_and_memo_base64` in
//! `tests/fixtures/rq/rq3_pickle.json`).
//! The writer keeps its own stack, so no nesting depth overflows the Rust one.

use serde_json::{Map, Number, Value};

/// The protocol written; RQ's `DefaultSerializer` uses `pickle.HIGHEST_PROTOCOL`, 5.
pub const PROTOCOL: u8 = 5;

// The opcodes used (CPython's Lib/pickle.py names).
const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const BININT: u8 = b'J';
const LONG1: u8 = 0x8a;
const BINFLOAT: u8 = b'G';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE: u8 = b'X';
const BINUNICODE8: u8 = 0x8d;
const MARK: u8 = b'(';
const EMPTY_LIST: u8 = b']';
const APPEND: u8 = b'a';
const APPENDS: u8 = b'e';
const EMPTY_DICT: u8 = b'}';
const SETITEM: u8 = b's';
const SETITEMS: u8 = b'u';
const EMPTY_TUPLE: u8 = b')';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;

/// CPython's `Pickler._BATCHSIZE`: items per APPENDS / SETITEMS.
const BATCH: usize = 1000;

/// A Python object to pickle: the values `json.loads` gives (borrowed from a
/// [`serde_json::Value`]) plus tuples, which RQ's job data needs and JSON cannot say.
#[derive(Debug, Clone, PartialEq)]
pub enum PyObj<'a> {
    /// `None`.
    None,
    /// A `str`.
    Str(&'a str),
    /// A JSON value as Python reads it: null → `None`, bool, int, float, str, array →
    /// `list`, object → `dict`.
    Value(&'a Value),
    /// A `dict` with `str` keys, in the map's order.
    Dict(&'a Map<String, Value>),
    /// A `tuple`.
    Tuple(Vec<PyObj<'a>>),
}

/// One pending piece of output: the writer's own stack instead of recursion.
enum Step<'s, 'a> {
    Obj(&'s PyObj<'a>),
    Val(&'s Value),
    Str(&'s str),
    Op(u8),
}

/// `pickle.dumps(obj, protocol=5)` of `obj`, less FRAME and MEMOIZE opcodes.
#[must_use]
pub fn dumps(obj: &PyObj<'_>) -> Vec<u8> {
    let mut out = vec![PROTO, PROTOCOL];
    let mut stack = vec![Step::Obj(obj)];
    while let Some(step) = stack.pop() {
        match step {
            Step::Op(op) => out.push(op),
            Step::Str(s) => write_str(&mut out, s),
            Step::Obj(obj) => match obj {
                PyObj::None => out.push(NONE),
                PyObj::Str(s) => write_str(&mut out, s),
                PyObj::Value(v) => stack.push(Step::Val(v)),
                PyObj::Dict(map) => {
                    out.push(EMPTY_DICT);
                    push_items(&mut stack, map);
                }
                PyObj::Tuple(items) => push_tuple(&mut out, &mut stack, items),
            },
            Step::Val(v) => match v {
                Value::Null => out.push(NONE),
                Value::Bool(b) => out.push(if *b { NEWTRUE } else { NEWFALSE }),
                Value::Number(n) => write_number(&mut out, n),
                Value::String(s) => write_str(&mut out, s),
                Value::Array(items) => {
                    out.push(EMPTY_LIST);
                    push_appends(&mut stack, items);
                }
                Value::Object(map) => {
                    out.push(EMPTY_DICT);
                    push_items(&mut stack, map);
                }
            },
        }
    }
    out.push(STOP);
    out
}

/// [`dumps`] of one JSON value (RQ's `meta` is a `dict`, pickled alone).
#[must_use]
pub fn dumps_value(v: &Value) -> Vec<u8> {
    dumps(&PyObj::Value(v))
}

/// A tuple: `EMPTY_TUPLE`, the items and `TUPLE1`–`TUPLE3` up to three, else `MARK` items
/// `TUPLE`. Pushed in reverse, as the stack pops last first.
fn push_tuple<'s, 'a>(out: &mut Vec<u8>, stack: &mut Vec<Step<'s, 'a>>, items: &'s [PyObj<'a>]) {
    let close = match items.len() {
        0 => {
            out.push(EMPTY_TUPLE);
            return;
        }
        1 => TUPLE1,
        2 => TUPLE2,
        3 => TUPLE3,
        _ => TUPLE,
    };
    stack.push(Step::Op(close));
    stack.extend(items.iter().rev().map(Step::Obj));
    if close == TUPLE {
        stack.push(Step::Op(MARK));
    }
}

/// A list's items after its `EMPTY_LIST`: one item as item `APPEND`, more in batches of
/// 1000 as `MARK` items `APPENDS`, a last batch of one included (CPython's C pickler,
/// `batch_list_exact`, which `pickle.dumps` is; the pure-Python one differs there).
fn push_appends<'s>(stack: &mut Vec<Step<'s, '_>>, items: &'s [Value]) {
    if let [only] = items {
        stack.push(Step::Op(APPEND));
        stack.push(Step::Val(only));
        return;
    }
    for batch in items.chunks(BATCH).rev() {
        stack.push(Step::Op(APPENDS));
        stack.extend(batch.iter().rev().map(Step::Val));
        stack.push(Step::Op(MARK));
    }
}

/// A dict's items after its `EMPTY_DICT`: one as key value `SETITEM`, more in batches of
/// 1000 as `MARK` key value … `SETITEMS` (CPython's `batch_dict_exact`).
fn push_items<'s>(stack: &mut Vec<Step<'s, '_>>, map: &'s Map<String, Value>) {
    if map.len() == 1 {
        if let Some((k, v)) = map.iter().next() {
            stack.push(Step::Op(SETITEM));
            stack.push(Step::Val(v));
            stack.push(Step::Str(k));
        }
        return;
    }
    let pairs: Vec<(&'s String, &'s Value)> = map.iter().collect();
    for batch in pairs.chunks(BATCH).rev() {
        stack.push(Step::Op(SETITEMS));
        for (k, v) in batch.iter().rev() {
            stack.push(Step::Val(v));
            stack.push(Step::Str(k));
        }
        stack.push(Step::Op(MARK));
    }
}

fn write_number(out: &mut Vec<u8>, n: &Number) {
    if let Some(i) = n.as_i64() {
        write_int(out, i128::from(i));
    } else if let Some(u) = n.as_u64() {
        write_int(out, i128::from(u));
    } else {
        // Neither i64 nor u64: a float (serde_json has no NaN or infinity to write).
        out.push(BINFLOAT);
        out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_be_bytes());
    }
}

/// CPython's `save_long` for protocol 2+: `BININT1` 0–255, `BININT2` 256–65535, `BININT`
/// a signed 32-bit, else `LONG1` with the minimal little-endian two's complement.
fn write_int(out: &mut Vec<u8>, i: i128) {
    if let Ok(b) = u8::try_from(i) {
        out.extend_from_slice(&[BININT1, b]);
    } else if let Ok(h) = u16::try_from(i) {
        out.push(BININT2);
        out.extend_from_slice(&h.to_le_bytes());
    } else if let Ok(w) = i32::try_from(i) {
        out.push(BININT);
        out.extend_from_slice(&w.to_le_bytes());
    } else {
        let bytes = i.to_le_bytes();
        let mut len = bytes.len();
        // Drop a top byte that only repeats the sign of the one below it.
        while len > 1 {
            let (top, below) = (bytes[len - 1], bytes[len - 2]);
            if (top == 0x00 && below & 0x80 == 0) || (top == 0xff && below & 0x80 != 0) {
                len -= 1;
            } else {
                break;
            }
        }
        out.push(LONG1);
        // At most 9 bytes for an i64 or u64 value, so the length fits its one byte.
        out.push(len as u8);
        out.extend_from_slice(&bytes[..len]);
    }
}

/// CPython's `save_str` for protocol 4+: the UTF-8 bytes after `SHORT_BINUNICODE` (one
/// length byte) below 256, `BINUNICODE` (four) up to 4 GiB, else `BINUNICODE8` (eight).
fn write_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    if let Ok(n) = u8::try_from(b.len()) {
        out.extend_from_slice(&[SHORT_BINUNICODE, n]);
    } else if let Ok(n) = u32::try_from(b.len()) {
        out.push(BINUNICODE);
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        out.push(BINUNICODE8);
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    //! Expected bytes are CPython 3.11's `pickle.dumps(v, protocol=5)` with its FRAME and
    //! MEMOIZE opcodes removed (as `tests/fixtures/rq/capture.py` does).

    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Vec<u8> {
        dumps_value(&v)
    }

    /// `\x80\x05` + `body` + `.`
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80, 0x05];
        out.extend_from_slice(body);
        out.push(b'.');
        out
    }

    #[test]
    fn scalars() {
        assert_eq!(p(json!(null)), framed(b"N"));
        assert_eq!(p(json!(true)), framed(b"\x88"));
        assert_eq!(p(json!(false)), framed(b"\x89"));
        assert_eq!(p(json!(1.5)), framed(b"G\x3f\xf8\0\0\0\0\0\0"));
        assert_eq!(p(json!(-0.1)), framed(b"G\xbf\xb9\x99\x99\x99\x99\x99\x9a"));
        // 3.0 stays a float, as json.loads("3.0") does.
        assert_eq!(p(json!(3.0)), framed(b"G\x40\x08\0\0\0\0\0\0"));
    }

    #[test]
    fn ints_take_the_smallest_opcode() {
        assert_eq!(p(json!(0)), framed(b"K\x00"));
        assert_eq!(p(json!(255)), framed(b"K\xff"));
        assert_eq!(p(json!(256)), framed(b"M\x00\x01"));
        assert_eq!(p(json!(65535)), framed(b"M\xff\xff"));
        assert_eq!(p(json!(65536)), framed(b"J\x00\x00\x01\x00"));
        assert_eq!(p(json!(-1)), framed(b"J\xff\xff\xff\xff"));
        assert_eq!(p(json!(i32::MAX)), framed(b"J\xff\xff\xff\x7f"));
        assert_eq!(p(json!(i32::MIN)), framed(b"J\x00\x00\x00\x80"));
        assert_eq!(p(json!(2_147_483_648_i64)), framed(b"\x8a\x05\0\0\0\x80\0"));
        assert_eq!(
            p(json!(-2_147_483_649_i64)),
            framed(b"\x8a\x05\xff\xff\xff\x7f\xff")
        );
        assert_eq!(
            p(json!(4_294_967_295_i64)),
            framed(b"\x8a\x05\xff\xff\xff\xff\0")
        );
        assert_eq!(
            p(json!(i64::MAX)),
            framed(b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f")
        );
        assert_eq!(p(json!(i64::MIN)), framed(b"\x8a\x08\0\0\0\0\0\0\0\x80"));
        assert_eq!(
            p(json!(u64::MAX)),
            framed(b"\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\x00")
        );
    }

    #[test]
    fn strings_by_length() {
        assert_eq!(p(json!("")), framed(b"\x8c\x00"));
        assert_eq!(p(json!("hé")), framed(b"\x8c\x03h\xc3\xa9"));
        let s255 = "a".repeat(255);
        let mut want = vec![0x8c, 255];
        want.extend_from_slice(s255.as_bytes());
        assert_eq!(p(json!(s255)), framed(&want));
        let s256 = "a".repeat(256);
        let mut want = b"X\x00\x01\x00\x00".to_vec();
        want.extend_from_slice(s256.as_bytes());
        assert_eq!(p(json!(s256)), framed(&want));
    }

    #[test]
    fn lists_and_dicts_batch_like_cpython() {
        assert_eq!(p(json!([])), framed(b"]"));
        assert_eq!(p(json!([1])), framed(b"]K\x01a"));
        assert_eq!(p(json!([1, "x"])), framed(b"](K\x01\x8c\x01xe"));
        assert_eq!(p(json!({})), framed(b"}"));
        assert_eq!(p(json!({"a": 1})), framed(b"}\x8c\x01aK\x01s"));
        assert_eq!(
            p(json!({"a": 1, "b": [null]})),
            framed(b"}(\x8c\x01aK\x01\x8c\x01b]Nau")
        );
        // 1001 items: a batch of 1000 and a batch of one, both MARK … APPENDS.
        let items: Vec<Value> = (0..1001).map(|_| json!(0)).collect();
        let got = p(Value::Array(items));
        let mut want = b"](".to_vec();
        for _ in 0..1000 {
            want.extend_from_slice(b"K\x00");
        }
        want.extend_from_slice(b"e(K\x00e");
        assert_eq!(got, framed(&want));
        // 1001 keys: the same with SETITEMS.
        let map: Map<String, Value> = (0..1001).map(|i| (i.to_string(), json!(0))).collect();
        let got = p(Value::Object(map));
        assert!(
            got.ends_with(b"(\x8c\x041000K\x00u."),
            "{:?}",
            &got[got.len() - 12..]
        );
        assert_eq!(got.iter().filter(|b| **b == b'u').count(), 2);
    }

    #[test]
    fn tuples_by_length() {
        let one = json!(1);
        let t = |n: usize| PyObj::Tuple((0..n).map(|_| PyObj::Value(&one)).collect());
        assert_eq!(dumps(&t(0)), framed(b")"));
        assert_eq!(dumps(&t(1)), framed(b"K\x01\x85"));
        assert_eq!(dumps(&t(2)), framed(b"K\x01K\x01\x86"));
        assert_eq!(dumps(&t(3)), framed(b"K\x01K\x01K\x01\x87"));
        assert_eq!(dumps(&t(4)), framed(b"(K\x01K\x01K\x01K\x01t"));
        let kwargs = Map::new();
        let nested = PyObj::Tuple(vec![
            PyObj::Str("f"),
            PyObj::None,
            PyObj::Tuple(vec![]),
            PyObj::Dict(&kwargs),
        ]);
        assert_eq!(dumps(&nested), framed(b"(\x8c\x01fN)}t"));
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let mut v = json!(0);
        for _ in 0..100_000 {
            v = Value::Array(vec![v]);
        }
        let out = dumps_value(&v);
        assert_eq!(out.len(), 2 + 100_000 * 2 + 2 + 1);
        // serde_json's own drop is recursive; unwind it by hand.
        let mut cur = v;
        while let Value::Array(mut items) = cur {
            cur = items.pop().unwrap_or(Value::Null);
        }
    }
}
