//! A small JSON reader, in place of serde_json: serde_json with its `Value`,
//! float parsing and error formatting was about a third of the component.
//!
//! The reader is a port of serde_json 1.0's `from_str::<Value>` and accepts
//! exactly what it accepts, so configs, snapshots and tool-result texts are
//! judged as before:
//! - the same grammar: whitespace is only space, tab, `\n` and `\r`; numbers
//!   without leading zeros; the escapes `\" \\ \/ \b \f \n \r \t \uXXXX`, with
//!   surrogate pairs required to be paired; no control character in strings;
//! - nesting deeper than 127 arrays/objects is an error ("recursion limit
//!   exceeded"), so hostile text cannot exhaust the stack;
//! - an integer that fits a `u64` (or, negative, an `i64`) is an integer,
//!   anything else a float, and a float whose magnitude overflows `f64` is an
//!   error ("number out of range"), with serde_json's arithmetic for where
//!   that happens;
//! - in an object the last of duplicate keys wins, and [`Map::sorted`]
//!   lists the members in key order, as serde_json's `BTreeMap` did;
//! - errors carry serde_json's message, line and column, byte for byte.
//!
//! What it does not keep: the value of a float. Nothing in the engine reads
//! one (a float is never a valid integer setting, status code or delay), so
//! [`Number::Float`] only records that the number was one. The unit tests
//! compare this reader with serde_json on many documents, valid and not.

use alloc::string::String;
use alloc::vec::Vec;

use super::text::push_u64;

/// Nesting limit: serde_json starts a counter at 128 and fails when an
/// opening bracket brings it to 0, so at most 127 levels parse.
const RECURSION_LIMIT: u8 = 128;

/// A JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    Object(Map),
}

/// A JSON number, classified as serde_json classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Number {
    /// An integer in `0..=u64::MAX`.
    PosInt(u64),
    /// A negative integer in `i64::MIN..0`.
    NegInt(i64),
    /// Any other number: a fraction, an exponent, an integer beyond 64 bits,
    /// or `-0`. Its value is not kept (see the module docs).
    Float,
}

/// A JSON object: its members in document order, duplicates included.
/// Lookups take the last member of a key (serde_json's map kept the last).
/// Document order rather than a sorted map keeps parsing linear on hostile
/// text with many keys; the engine looks up a few known keys per object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Map(Vec<(String, Value)>);

impl Map {
    /// The value of `key` (the last one, if the key is repeated).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The members sorted by key (byte order), one per key (the last), as
    /// serde_json's `BTreeMap` iterated them. Allocates an index; for the
    /// few places where the order is visible (error order of
    /// `tool_overrides`).
    pub fn sorted(&self) -> impl Iterator<Item = (&String, &Value)> {
        let mut order: Vec<&(String, Value)> = Vec::with_capacity(self.0.len());
        for member in &self.0 {
            match order.binary_search_by(|m| m.0.cmp(&member.0)) {
                // A later duplicate replaces the earlier one.
                Ok(at) => {
                    if let Some(slot) = order.get_mut(at) {
                        *slot = member;
                    }
                }
                Err(at) => order.insert(at, member),
            }
        }
        order.into_iter().map(|(key, value)| (key, value))
    }

    /// Among the keys equal to `name` ignoring ASCII case, the value of the
    /// first in key order (as a search through serde_json's sorted map
    /// found it), without sorting.
    pub fn get_ignore_ascii_case(&self, name: &str) -> Option<&Value> {
        let mut best: Option<&(String, Value)> = None;
        for member in &self.0 {
            if !member.0.eq_ignore_ascii_case(name) {
                continue;
            }
            // `<=`: of equal keys the later member wins, as in `get`.
            if best.is_none_or(|b| member.0 <= b.0) {
                best = Some(member);
            }
        }
        best.map(|(_, v)| v)
    }

    /// Number of members, duplicates included.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the object has no member.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Value {
    /// `self[key]` for an object; `None` for anything else.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(map) => map.get(key),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Map> {
        match self {
            Value::Object(map) => Some(map),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The number as a `u64`, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(Number::PosInt(n)) => Some(*n),
            _ => None,
        }
    }

    /// The number as an `i64`, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(Number::PosInt(n)) => i64::try_from(*n).ok(),
            Value::Number(Number::NegInt(n)) => Some(*n),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// A syntax error, located like serde_json's: 1-based line, 0-based byte
/// column of the offending position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: &'static str,
    line: usize,
    column: usize,
}

impl Error {
    /// Append serde_json's rendering: `<message> at line <l> column <c>`.
    pub fn push_to(&self, out: &mut String) {
        out.push_str(self.message);
        out.push_str(" at line ");
        push_u64(out, self.line as u64);
        out.push_str(" column ");
        push_u64(out, self.column as u64);
    }

    /// The rendering of [`Error::push_to`] as a new string.
    pub fn to_message(&self) -> String {
        let mut s = String::new();
        self.push_to(&mut s);
        s
    }
}

// serde_json's error texts.
const EOF_LIST: &str = "EOF while parsing a list";
const EOF_OBJECT: &str = "EOF while parsing an object";
const EOF_STRING: &str = "EOF while parsing a string";
const EOF_VALUE: &str = "EOF while parsing a value";
const EXPECTED_COLON: &str = "expected `:`";
const EXPECTED_LIST_COMMA_OR_END: &str = "expected `,` or `]`";
const EXPECTED_OBJECT_COMMA_OR_END: &str = "expected `,` or `}`";
const EXPECTED_IDENT: &str = "expected ident";
const EXPECTED_VALUE: &str = "expected value";
const INVALID_ESCAPE: &str = "invalid escape";
const INVALID_NUMBER: &str = "invalid number";
const NUMBER_OUT_OF_RANGE: &str = "number out of range";
const CONTROL_CHARACTER: &str = "control character (\\u0000-\\u001F) found while parsing a string";
const KEY_MUST_BE_A_STRING: &str = "key must be a string";
const LONE_SURROGATE: &str = "lone leading surrogate in hex escape";
const TRAILING_COMMA: &str = "trailing comma";
const TRAILING_CHARACTERS: &str = "trailing characters";
const UNEXPECTED_END_OF_HEX_ESCAPE: &str = "unexpected end of hex escape";
const RECURSION_LIMIT_EXCEEDED: &str = "recursion limit exceeded";

/// Parse one JSON document (surrounding whitespace allowed).
pub fn parse(text: &str) -> Result<Value, Error> {
    let mut p = Parser {
        text,
        bytes: text.as_bytes(),
        index: 0,
        remaining_depth: RECURSION_LIMIT,
        failure: ("", 0),
    };
    let parsed = p.value().and_then(|value| match p.skip_whitespace() {
        Some(_) => Err(p.peek_error(TRAILING_CHARACTERS)),
        None => Ok(value),
    });
    parsed.map_err(|Failed| {
        let (message, at) = p.failure;
        let before = text.as_bytes().get(..at).unwrap_or_default();
        let start_of_line = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |nl| nl + 1);
        Error {
            message,
            line: 1 + before.iter().filter(|&&b| b == b'\n').count(),
            column: at - start_of_line,
        }
    })
}

/// The reader's failure signal. What failed and where is recorded in
/// [`Parser::failure`] when it is raised: a zero-sized error keeps each `?`
/// on the way up cheap (the component is smaller than with the full error
/// passed up), and the line and column are computed once, at the top.
struct Failed;

/// The reader's state. Names follow serde_json's deserializer where the
/// logic is its: `next` consumes a byte, `peek` does not, `error` points at
/// the current index and `peek_error` one byte further (serde_json's two
/// error positions, so that columns match).
struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    index: usize,
    remaining_depth: u8,
    /// The message and byte offset of the failure, once [`Failed`] is raised.
    failure: (&'static str, usize),
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.index).copied()
    }

    fn peek_or_null(&self) -> u8 {
        self.peek().unwrap_or(0)
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.index += 1;
        Some(b)
    }

    fn eat(&mut self) {
        self.index += 1;
    }

    /// Fail at the current index.
    #[cold]
    fn error(&mut self, message: &'static str) -> Failed {
        self.failure = (message, self.index);
        Failed
    }

    /// Fail one byte past the current index (at most at the end).
    #[cold]
    fn peek_error(&mut self, message: &'static str) -> Failed {
        self.failure = (message, (self.index + 1).min(self.bytes.len()));
        Failed
    }

    /// Skip whitespace; the next byte, not consumed.
    fn skip_whitespace(&mut self) -> Option<u8> {
        while let Some(b) = self.peek() {
            if !matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(b);
            }
            self.eat();
        }
        None
    }

    fn value(&mut self) -> Result<Value, Failed> {
        let Some(peek) = self.skip_whitespace() else {
            return Err(self.peek_error(EOF_VALUE));
        };
        match peek {
            b'n' => {
                self.eat();
                self.ident(b"ull")?;
                Ok(Value::Null)
            }
            b't' => {
                self.eat();
                self.ident(b"rue")?;
                Ok(Value::Bool(true))
            }
            b'f' => {
                self.eat();
                self.ident(b"alse")?;
                Ok(Value::Bool(false))
            }
            b'-' => {
                self.eat();
                self.number(false).map(Value::Number)
            }
            b'0'..=b'9' => self.number(true).map(Value::Number),
            b'"' => {
                self.eat();
                self.string().map(Value::String)
            }
            b'[' => {
                self.enter()?;
                let items = self.array();
                self.remaining_depth += 1;
                items.map(Value::Array)
            }
            b'{' => {
                self.enter()?;
                let map = self.object();
                self.remaining_depth += 1;
                map.map(Value::Object)
            }
            _ => Err(self.peek_error(EXPECTED_VALUE)),
        }
    }

    /// One level deeper, at an opening bracket (not yet consumed).
    fn enter(&mut self) -> Result<(), Failed> {
        self.remaining_depth -= 1;
        if self.remaining_depth == 0 {
            return Err(self.peek_error(RECURSION_LIMIT_EXCEEDED));
        }
        self.eat();
        Ok(())
    }

    fn ident(&mut self, rest: &[u8]) -> Result<(), Failed> {
        for &expected in rest {
            match self.next() {
                None => return Err(self.error(EOF_VALUE)),
                Some(b) if b != expected => return Err(self.error(EXPECTED_IDENT)),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// After `[`: the elements and the closing `]`. (Not inlined into
    /// `value`: measured smaller.)
    #[inline(never)]
    fn array(&mut self) -> Result<Vec<Value>, Failed> {
        let mut items = Vec::new();
        loop {
            match self.skip_whitespace() {
                None => return Err(self.peek_error(EOF_LIST)),
                Some(b']') => break,
                Some(_) if items.is_empty() => {}
                Some(b',') => {
                    self.eat();
                    match self.skip_whitespace() {
                        Some(b']') => return Err(self.peek_error(TRAILING_COMMA)),
                        Some(_) => {}
                        None => return Err(self.peek_error(EOF_VALUE)),
                    }
                }
                Some(_) => return Err(self.peek_error(EXPECTED_LIST_COMMA_OR_END)),
            }
            items.push(self.value()?);
        }
        self.eat();
        Ok(items)
    }

    /// After `{`: the members and the closing `}`.
    #[inline(never)]
    fn object(&mut self) -> Result<Map, Failed> {
        let mut members = Vec::new();
        loop {
            match self.skip_whitespace() {
                None => return Err(self.peek_error(EOF_OBJECT)),
                Some(b'}') => break,
                Some(b'"') if members.is_empty() => {}
                Some(_) if members.is_empty() => return Err(self.peek_error(KEY_MUST_BE_A_STRING)),
                Some(b',') => {
                    self.eat();
                    match self.skip_whitespace() {
                        Some(b'"') => {}
                        Some(b'}') => return Err(self.peek_error(TRAILING_COMMA)),
                        Some(_) => return Err(self.peek_error(KEY_MUST_BE_A_STRING)),
                        None => return Err(self.peek_error(EOF_VALUE)),
                    }
                }
                Some(_) => return Err(self.peek_error(EXPECTED_OBJECT_COMMA_OR_END)),
            }
            self.eat(); // the key's opening quote
            let key = self.string()?;
            match self.skip_whitespace() {
                Some(b':') => self.eat(),
                Some(_) => return Err(self.peek_error(EXPECTED_COLON)),
                None => return Err(self.peek_error(EOF_OBJECT)),
            }
            let value = self.value()?;
            members.push((key, value));
        }
        self.eat();
        Ok(Map(members))
    }

    /// After the opening quote: the string's contents and the closing quote.
    fn string(&mut self) -> Result<String, Failed> {
        let mut out = String::new();
        let mut start = self.index;
        loop {
            let Some(&b) = self.bytes.get(self.index) else {
                return Err(self.error(EOF_STRING));
            };
            // Runs of plain text are cut at ASCII bytes (quote, backslash),
            // so always at char boundaries: `get` never fails.
            match b {
                b'"' => {
                    out.push_str(self.text.get(start..self.index).unwrap_or_default());
                    self.eat();
                    return Ok(out);
                }
                b'\\' => {
                    out.push_str(self.text.get(start..self.index).unwrap_or_default());
                    self.eat();
                    self.escape(&mut out)?;
                    start = self.index;
                }
                0..=0x1f => {
                    self.eat();
                    return Err(self.error(CONTROL_CHARACTER));
                }
                _ => self.eat(),
            }
        }
    }

    /// After a backslash: one escape, appended to `out`.
    fn escape(&mut self, out: &mut String) -> Result<(), Failed> {
        let Some(b) = self.next() else {
            return Err(self.error(EOF_STRING));
        };
        let c = match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => return self.unicode_escape(out),
            _ => return Err(self.error(INVALID_ESCAPE)),
        };
        out.push(c);
        Ok(())
    }

    /// After `\u`: a code point, or a surrogate pair as two escapes.
    fn unicode_escape(&mut self, out: &mut String) -> Result<(), Failed> {
        let n = self.hex4()?;
        let code = match n {
            0xDC00..=0xDFFF => return Err(self.error(LONE_SURROGATE)),
            0xD800..=0xDBFF => {
                // A leading surrogate: `\u` and a trailing one must follow.
                for expected in [b'\\', b'u'] {
                    match self.peek() {
                        None => return Err(self.error(EOF_STRING)),
                        Some(b) if b != expected => {
                            self.eat();
                            return Err(self.error(UNEXPECTED_END_OF_HEX_ESCAPE));
                        }
                        Some(_) => self.eat(),
                    }
                }
                let n2 = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&n2) {
                    return Err(self.error(LONE_SURROGATE));
                }
                ((u32::from(n - 0xD800) << 10) | u32::from(n2 - 0xDC00)) + 0x1_0000
            }
            _ => u32::from(n),
        };
        // Always a scalar value here: lone surrogates were rejected above.
        if let Some(c) = char::from_u32(code) {
            out.push(c);
        }
        Ok(())
    }

    /// Four hex digits.
    fn hex4(&mut self) -> Result<u16, Failed> {
        let Some(digits) = self.bytes.get(self.index..self.index + 4) else {
            self.index = self.bytes.len();
            return Err(self.error(EOF_STRING));
        };
        self.index += 4;
        let mut n = 0u16;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.error(INVALID_ESCAPE)),
            };
            n = (n << 4) | u16::from(v);
        }
        Ok(n)
    }

    /// After an optional `-`: a number, as serde_json's `parse_integer` and
    /// the functions it calls read it (one function here, same positions).
    /// The digits go into a `u64` significand while it fits; serde_json then
    /// stops: further integer digits only count as powers of ten, further
    /// fraction digits are dropped.
    fn number(&mut self, positive: bool) -> Result<Number, Failed> {
        let mut significand = 0u64;
        let mut exponent = 0i32;
        match self.next() {
            None => return Err(self.error(EOF_VALUE)),
            // There can be only one leading '0'.
            Some(b'0') if self.peek_or_null().is_ascii_digit() => {
                return Err(self.peek_error(INVALID_NUMBER))
            }
            Some(b'0') => {}
            Some(d @ b'1'..=b'9') => {
                significand = u64::from(d - b'0');
                let (folded, read) = self.digits(&mut significand);
                exponent = read.wrapping_sub(folded);
            }
            Some(_) => return Err(self.error(INVALID_NUMBER)),
        }
        // An integer part too long for a u64 is already a float.
        let mut float = exponent != 0;
        if self.peek_or_null() == b'.' {
            self.eat();
            // A fresh start: a digit that did not fit the integer part's
            // significand may fit here (serde_json behaves the same).
            let (folded, read) = self.digits(&mut significand);
            if read == 0 {
                return Err(match self.peek() {
                    Some(_) => self.peek_error(INVALID_NUMBER),
                    None => self.peek_error(EOF_VALUE),
                });
            }
            exponent = exponent.wrapping_sub(folded);
            float = true;
        }
        if matches!(self.peek_or_null(), b'e' | b'E') {
            self.eat();
            let positive_exp = match self.peek_or_null() {
                b'-' => {
                    self.eat();
                    false
                }
                b'+' => {
                    self.eat();
                    true
                }
                _ => true,
            };
            let mut exp = match self.next() {
                None => return Err(self.error(EOF_VALUE)),
                Some(d @ b'0'..=b'9') => i32::from(d - b'0'),
                Some(_) => return Err(self.error(INVALID_NUMBER)),
            };
            while let Some(d) = self.peek_digit() {
                self.eat();
                match exp.checked_mul(10).and_then(|e| e.checked_add(d as i32)) {
                    Some(e) => exp = e,
                    None => {
                        // An exponent beyond i32: infinity is an error,
                        // zero is not.
                        if significand != 0 && positive_exp {
                            return Err(self.error(NUMBER_OUT_OF_RANGE));
                        }
                        while self.peek_digit().is_some() {
                            self.eat();
                        }
                        return Ok(Number::Float);
                    }
                }
            }
            exponent = if positive_exp {
                exponent.saturating_add(exp)
            } else {
                exponent.saturating_sub(exp)
            };
            float = true;
        }
        if float {
            return self.float(significand, exponent);
        }
        if positive {
            return Ok(Number::PosInt(significand));
        }
        // `-0` and integers below i64::MIN are floats in serde_json.
        match 0i64.checked_sub_unsigned(significand) {
            Some(n) if n < 0 => Ok(Number::NegInt(n)),
            _ => Ok(Number::Float),
        }
    }

    fn peek_digit(&self) -> Option<u64> {
        match self.peek_or_null() {
            d @ b'0'..=b'9' => Some(u64::from(d - b'0')),
            _ => None,
        }
    }

    /// Consume a run of digits, folding them into `significand` until the
    /// first one that would overflow it (none after that); returns (digits
    /// folded, digits read).
    fn digits(&mut self, significand: &mut u64) -> (i32, i32) {
        let (mut folded, mut read) = (0i32, 0i32);
        let mut full = false;
        while let Some(d) = self.peek_digit() {
            self.eat();
            read = read.wrapping_add(1);
            if !full {
                match significand.checked_mul(10).and_then(|s| s.checked_add(d)) {
                    Some(s) => {
                        *significand = s;
                        folded += 1;
                    }
                    None => full = true,
                }
            }
        }
        (folded, read)
    }

    /// `significand · 10^exponent` is a float; serde_json's range check
    /// (its `f64_from_parts`): the product overflows when `exponent` is
    /// above 308, or when `significand as f64 · 1e{exponent}` rounds to
    /// infinity. A negative exponent never fails (it divides).
    fn float(&mut self, significand: u64, exponent: i32) -> Result<Number, Failed> {
        let overflows = significand != 0
            && match exponent {
                // Below 1e289 even u64::MAX · 10^exponent stays under f64::MAX.
                ..=288 => false,
                289..=308 => {
                    let pow = POW10_289_TO_308[(exponent - 289) as usize];
                    (significand as f64 * pow).is_infinite()
                }
                _ => true,
            };
        if overflows {
            Err(self.error(NUMBER_OUT_OF_RANGE))
        } else {
            Ok(Number::Float)
        }
    }
}

/// The tail of serde_json's `POW10` table: the same literals, so the same
/// (correctly rounded) doubles.
const POW10_289_TO_308: [f64; 20] = [
    1e289, 1e290, 1e291, 1e292, 1e293, 1e294, 1e295, 1e296, 1e297, 1e298, 1e299, 1e300, 1e301,
    1e302, 1e303, 1e304, 1e305, 1e306, 1e307, 1e308,
];

#[cfg(test)]
mod tests {
    //! serde_json (a dev-dependency) is the oracle: every document must get
    //! the same tree, or the same error message, from both.

    use super::*;
    use alloc::format;
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    /// A canonical rendering of a tree: numbers by class (`u`, `i`, `f`),
    /// objects sorted with the last duplicate kept.
    fn shape(v: &Value) -> String {
        match v {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Number(Number::PosInt(n)) => format!("u{n}"),
            Value::Number(Number::NegInt(n)) => format!("i{n}"),
            Value::Number(Number::Float) => "f".into(),
            Value::String(s) => format!("{s:?}"),
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(shape).collect();
                format!("[{}]", items.join(","))
            }
            Value::Object(map) => {
                let members: Vec<String> = map
                    .sorted()
                    .map(|(k, v)| format!("{k:?}:{}", shape(v)))
                    .collect();
                format!("{{{}}}", members.join(","))
            }
        }
    }

    fn serde_shape(v: &serde_json::Value) -> String {
        use serde_json::Value as S;
        match v {
            S::Null => "null".into(),
            S::Bool(b) => b.to_string(),
            S::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => format!("u{u}"),
                (None, Some(i)) => format!("i{i}"),
                (None, None) => "f".into(),
            },
            S::String(s) => format!("{s:?}"),
            S::Array(items) => {
                let items: Vec<String> = items.iter().map(serde_shape).collect();
                format!("[{}]", items.join(","))
            }
            S::Object(map) => {
                let members: Vec<String> = map
                    .iter()
                    .map(|(k, v)| format!("{k:?}:{}", serde_shape(v)))
                    .collect();
                format!("{{{}}}", members.join(","))
            }
        }
    }

    fn ours(text: &str) -> Result<String, String> {
        parse(text).map(|v| shape(&v)).map_err(|e| e.to_message())
    }

    fn oracle(text: &str) -> Result<String, String> {
        serde_json::from_str::<serde_json::Value>(text)
            .map(|v| serde_shape(&v))
            .map_err(|e| e.to_string())
    }

    fn check(text: &str) {
        assert_eq!(ours(text), oracle(text), "{text:?}");
    }

    #[test]
    fn test_json_literals_and_whitespace() {
        for text in [
            "",
            " ",
            "null",
            " null ",
            "nul",
            "nulx",
            "n",
            "true",
            "tru",
            "trUe",
            "false",
            "falsey",
            "x",
            "\u{feff}1",
            "\t\r\n 1 \n",
            "1 2",
            "[] ]",
            "\n\n  x",
            "\u{a0}1",
        ] {
            check(text);
        }
    }

    #[test]
    fn test_json_numbers() {
        for text in [
            "0",
            "-0",
            "-",
            "-a",
            "+1",
            "01",
            "-01",
            "00",
            "0.",
            "0.e1",
            ".5",
            "1e",
            "1e+",
            "1e+a",
            "1E-",
            "1.5",
            "-1.5",
            "-0.0",
            "0e0",
            "1e5",
            "1E+5",
            "2e-5",
            "1.5x",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "9223372036854775807",
            "9223372036854775808",
            "123456789012345678901234567890",
            "-123456789012345678901234567890",
            "123456789012345678901234567890.5",
            "123456789012345678901234567890e5",
            "1.23456789012345678901234567890",
            "0.000000000000000000000000000001e340",
            "1e308",
            "1e309",
            "-1e309",
            "0e309",
            "1e-400",
            "1.7976931348623157e308",
            "1.7976931348623158e308",
            "1.8e308",
            "17976931348623157e292",
            "17976931348623159e292",
            "18446744073709551615e289",
            "18446744073709551615e288",
            "99999999999999999999999e286",
            "1e2147483647",
            "1e2147483648",
            "0e2147483648",
            "1e-2147483648",
            "1e-2147483649",
            "-1e2147483648",
            "1e99999999999999",
            "[1e400]",
            // A fraction digit may fit where the integer part's did not.
            "18446744073709551619.1",
            "18446744073709551619.1e290",
            "18446744073709551615.5e289",
            "184467440737095516199e288",
            "-18446744073709551619.1e290",
            "1844674407370955161.9e290",
            "{\"a\":1e400}",
            "[-]",
            "[1.]",
            "[1e]",
            "[01]",
            "1.0e+0000000000000309",
        ] {
            check(text);
        }
    }

    #[test]
    fn test_json_strings_and_escapes() {
        for text in [
            r#""abc"#,
            r#"""#,
            r#""\"#,
            r#""\x""#,
            r#""\u12""#,
            r#""\u12"#,
            r#""\uZZZZ""#,
            r#""\u00e9\u00E9""#,
            r#""\ud800""#,
            r#""\ud800\""#,
            r#""\ud800\u0041""#,
            r#""\ud800\ud800""#,
            r#""\ud800\udc00""#,
            r#""\uD83D\uDE00""#,
            r#""\udc00""#,
            r#""\ud800x""#,
            r#""\ud800"#,
            r#""\ud800\"#,
            r#""\ud800\u"#,
            r#""\ud800\u12"#,
            r#""\ud800\n""#,
            "\"a\tb\"",
            "\"a\u{1}\"",
            "\"\u{1f}\"",
            "\"\u{7f}\"",
            "\"é✓😀\"",
            r#""\/\b\f\n\r\t\\\"""#,
            r#""\u0000""#,
            "\"line\nbreak\"",
            "\n\"é\n\\q\"",
        ] {
            check(text);
        }
    }

    #[test]
    fn test_json_structures() {
        for text in [
            "[",
            "[1",
            "[1,",
            "[1,]",
            "[,1]",
            "[1 2]",
            "[1,,2]",
            "[]",
            "[ ]",
            "[[]]",
            "{",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":1,",
            "{\"a\":1,}",
            "{1:2}",
            "{\"a\" 1}",
            "{\"a\":1 \"b\":2}",
            "{,}",
            "{}",
            "{ }",
            "{\"a\":1,\"a\":2}",
            "{\"b\":1,\"a\":[{}],\"b\":[3]}",
            "[1] x",
            "\n\n  [1,\n 2,, ]",
            "{\"a\":1}}",
            "{\"a\":1,\"b\"}",
            "{\"a\":1, 2}",
            "[\"a\":1]",
            "{\"\":null, \"é\":true, \"E\":false, \"e\":0}",
            "[1,{\"x\":[2,{\"y\":\"z\"}]}]",
            "{\"a\":1,\n\"a\":{\"a\":2}}",
            "[tru]",
            "{\"a\":nul}",
            "[1,\n2\n,\n",
            "{\"a\":\"b}",
        ] {
            check(text);
        }
    }

    #[test]
    fn test_json_depth_limit() {
        for depth in [1, 126, 127, 128, 129, 1000] {
            let arrays = "[".repeat(depth) + &"]".repeat(depth);
            check(&arrays);
            let objects = "{\"a\":".repeat(depth) + "1" + &"}".repeat(depth);
            check(&objects);
            let mixed = "{\"a\":[".repeat(depth) + &"]}".repeat(depth);
            check(&mixed);
            check(&"[".repeat(depth));
        }
        // The counter comes back on the way out: siblings may each nest.
        let nested = "[".repeat(120) + &"]".repeat(120);
        check(&format!("[{nested},{nested},{nested}]"));
    }

    #[test]
    fn test_json_map_lookups_keep_the_last_duplicate() {
        let v = parse(r#"{"b": 1, "a": 2, "b": 3, "Retry-After": 4, "retry-after": 5}"#).unwrap();
        let map = v.as_object().unwrap();
        assert_eq!(map.get("b").and_then(Value::as_u64), Some(3));
        assert_eq!(map.len(), 5);
        let keys: Vec<&str> = map.sorted().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["Retry-After", "a", "b", "retry-after"]);
        // "Retry-After" < "retry-after" in byte order: the first in key order.
        let found = map
            .get_ignore_ascii_case("RETRY-AFTER")
            .and_then(Value::as_u64);
        assert_eq!(found, Some(4));
        let v = parse(r#"{"X": 1, "x": 2, "X": 3}"#).unwrap();
        let found = v.as_object().unwrap().get_ignore_ascii_case("x");
        assert_eq!(found.and_then(Value::as_u64), Some(3));
    }

    /// Fragments that make up documents, valid and not.
    const FRAGMENTS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"a\"",
        "\"b\"",
        "\"k\\u00e9\"",
        "\"\\ud83d\\ude00\"",
        "\"\\ud83d\"",
        "\"\\udc00\"",
        "\"\\q\"",
        "\"",
        "\\",
        "1",
        "0",
        "-0",
        "-",
        "0.5",
        "1e5",
        "1E-7",
        "2.5e+3",
        "18446744073709551616",
        "-9223372036854775809",
        "1e400",
        "true",
        "null",
        "fals",
        " ",
        "\n",
        "\t",
        "\r",
        "x",
        "1.",
        "01",
        "2e",
        "\"\u{1}\"",
        "é",
        "😀",
        "\"é\\n\"",
        "{\"a\":",
        "[1,",
        "\"tool_overrides\"",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn test_json_fragment_soup_matches_serde_json(
            parts in prop::collection::vec(prop::sample::select(FRAGMENTS), 0..24)
        ) {
            let text: String = parts.concat();
            prop_assert_eq!(ours(&text), oracle(&text), "{:?}", text);
        }

        #[test]
        fn test_json_numbers_match_serde_json(
            text in "-?[0-9]{1,24}(\\.[0-9]{0,24})?([eE][+-]?(2[89][0-9]|30[0-9]|31[0-9]|[0-9]{0,12}))?[ x,]?"
        ) {
            prop_assert_eq!(ours(&text), oracle(&text), "{:?}", text);
        }

        #[test]
        fn test_json_strings_match_serde_json(
            body in "([a-zé✓😀\" \t]|\\\\[\"\\\\/bfnrtux]|\\\\u[dD][89abAB][0-9a-fA-F]{2}|\\\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\\\u[0-9a-fA-F]{0,4}){0,12}"
        ) {
            let text = format!("\"{body}\"");
            prop_assert_eq!(ours(&text), oracle(&text), "{:?}", text);
        }

        #[test]
        fn test_json_mutated_documents_match_serde_json(
            doc in any_document(),
            pretty in any::<bool>(),
            at in any::<prop::sample::Index>(),
            cut in 0usize..3,
            insert in prop::sample::select(FRAGMENTS),
        ) {
            let text = if pretty {
                serde_json::to_string_pretty(&doc).unwrap()
            } else {
                serde_json::to_string(&doc).unwrap()
            };
            prop_assert_eq!(ours(&text), oracle(&text), "{:?}", text);
            // One edit at a char boundary: delete up to 2 chars, insert a fragment.
            let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
            let start = bounds[at.index(bounds.len())];
            let end = bounds.iter().copied().filter(|&b| b >= start).nth(cut).unwrap_or(text.len());
            let edited = format!("{}{}{}", &text[..start], insert, &text[end..]);
            prop_assert_eq!(ours(&edited), oracle(&edited), "{:?}", edited);
        }
    }

    fn any_document() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value as S;
        let leaf = prop_oneof![
            Just(S::Null),
            any::<bool>().prop_map(S::Bool),
            any::<u64>().prop_map(S::from),
            any::<i64>().prop_map(S::from),
            any::<f64>()
                .prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(S::Number)),
            "[a-zé✓😀\"\\\\\u{1}\n ]{0,8}".prop_map(S::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(S::Array),
                prop::collection::vec(("[a-c]{0,2}", inner), 0..5)
                    .prop_map(|members| S::Object(members.into_iter().collect())),
            ]
        })
    }
}
