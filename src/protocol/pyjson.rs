//! Python-compatible JSON text: what `json.dumps(obj)` writes with its defaults
//! (`", "` and `": "` separators, `ensure_ascii=True`, floats as `repr(float)`), plus the
//! `repr(float)` rule itself, which `pyrepr` shares.
//!
//! Owns text formatting only; it never decides which fields a message has.

use serde::Serialize;
use serde_json::ser::{Formatter, Serializer};
use serde_json::Value;
use std::io::{self, Write};

/// Serializes `value` exactly as Python's `json.dumps(value)` would, key order kept.
#[must_use]
pub fn dumps(value: &Value) -> String {
    let mut out = Vec::with_capacity(256);
    let mut ser = Serializer::with_formatter(&mut out, PyFormatter);
    // Writing a `Value` into a Vec cannot fail: no I/O, no non-string keys.
    if value.serialize(&mut ser).is_err() {
        return String::from("null");
    }
    // The formatter only ever writes ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// `repr(x)` of a Python float, which is also how `json.dumps` writes it: the shortest
/// round-trip digits, positional notation for 1e-4 ≤ |x| < 1e16 (with a trailing `.0` when
/// integral), otherwise `d.ddde±XX` with at least two exponent digits.
#[must_use]
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Rust's `{:e}` gives the same shortest round-trip digits Python uses.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{frac}e{esign}{:02}", exp.abs());
    }
    let point = exp + 1; // digits before the decimal point
    let body = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else {
        let point = point as usize;
        if digits.len() <= point {
            format!("{digits}{}.0", "0".repeat(point - digits.len()))
        } else {
            format!("{}.{}", &digits[..point], &digits[point..])
        }
    };
    format!("{sign}{body}")
}

/// serde_json formatter with Python's separators, ASCII-only output and float repr.
struct PyFormatter;

impl Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_f64<W: ?Sized + Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        w.write_all(float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + Write>(&mut self, w: &mut W, value: f32) -> io::Result<()> {
        w.write_all(float_repr(f64::from(value)).as_bytes())
    }

    /// `ensure_ascii=True`: Python escapes DEL and everything above it as `\uXXXX`
    /// (UTF-16 surrogate pairs beyond the BMP); serde_json would write them raw.
    fn write_string_fragment<W: ?Sized + Write>(&mut self, w: &mut W, s: &str) -> io::Result<()> {
        if s.is_ascii() && !s.contains('\x7f') {
            return w.write_all(s.as_bytes());
        }
        let mut buf = [0u16; 2];
        for c in s.chars() {
            if c.is_ascii() && c != '\x7f' {
                let mut b = [0u8; 4];
                w.write_all(c.encode_utf8(&mut b).as_bytes())?;
            } else {
                for unit in c.encode_utf16(&mut buf) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_like_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-2.25, "-2.25"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (123_456.789, "123456.789"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.25e-7, "1.25e-07"),
            (1e100, "1e+100"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (3.0e-5, "3e-05"),
        ];
        for (x, want) in cases {
            assert_eq!(float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn dumps_uses_python_separators_and_order() {
        let v = json!([[2, 3], {"x": 1}, {"callbacks": null, "errbacks": null}]);
        assert_eq!(
            dumps(&v),
            r#"[[2, 3], {"x": 1}, {"callbacks": null, "errbacks": null}]"#
        );
        assert_eq!(
            dumps(&json!({"b": 1, "a": [1.5, true]})),
            r#"{"b": 1, "a": [1.5, true]}"#
        );
        assert_eq!(dumps(&json!([])), "[]");
        assert_eq!(dumps(&json!({})), "{}");
    }

    #[test]
    fn dumps_escapes_like_ensure_ascii() {
        assert_eq!(
            dumps(&json!("é\u{7f}\n\"\\\u{1}")),
            r#""\u00e9\u007f\n\"\\\u0001""#
        );
        assert_eq!(dumps(&json!("😀")), r#""\ud83d\ude00""#);
    }
}
