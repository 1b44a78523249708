//! Rule 3 of classification: error markers in a result's text content, read
//! within fixed bounds.
//!
//! Text content comes from upstream servers, so it is hostile input of any
//! size. The engine reads at most [`TEXT_MAX_ITEMS`] items and at most
//! [`TEXT_MAX_CHARS`] characters (Unicode scalar values) of them in all, in
//! order:
//! - an item that ends before the character bound is judged whole, exactly as
//!   the native plugin judges it: the whole text must be one JSON object
//!   (whitespace around it allowed), with `"isError": true` or an integer
//!   `status_code` in `retry_on_status`; the last of duplicate members wins;
//! - the item that reaches the bound (its length is at least what is left of
//!   it) is read as cut at the bound and judged on its top-level members that
//!   are complete before the cut (a number that runs into the cut is not);
//!   a syntax error before the cut, or anything but whitespace after the
//!   object closes, makes it no marker, as it would make the whole text none;
//! - items after the bound are not read.
//!
//! A host may cut the item that crosses the bound itself (and drop the items
//! after it) before sending the texts: the answer is the same.
//!
//! The reader is serde_json driven by a visitor that keeps only `isError` and
//! `status_code` and builds no tree, so the cost is linear in what is read and
//! the skipped parts allocate nothing beyond serde_json's scratch buffer for
//! escaped strings. Skipped values still go through `deserialize_any` rather
//! than serde's `IgnoredAny`: serde_json's ignore path applies neither its
//! recursion limit nor its number-range check, so it would accept texts (too
//! deep, `1e400`) that parsing the text into a `Value` rejects.

use core::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::wire::{TEXT_MAX_CHARS, TEXT_MAX_ITEMS};

/// Whether any of `texts` marks a failure, reading them within the bounds
/// (see the module docs).
pub fn texts_mark_failure<T: AsRef<str>>(texts: &[T], retry_on_status: &[i32]) -> bool {
    let mut chars_left = TEXT_MAX_CHARS;
    for text in texts.iter().take(TEXT_MAX_ITEMS) {
        let text = text.as_ref();
        match read_within(text, chars_left) {
            Read::Whole(chars) => {
                if text_marks_failure(text, retry_on_status) {
                    return true;
                }
                chars_left -= chars;
            }
            Read::Cut(prefix) => return cut_text_marks_failure(prefix, retry_on_status),
        }
    }
    false
}

/// How much of one item the bound lets the reader see.
enum Read<'a> {
    /// All of it: this many characters, fewer than were left.
    Whole(usize),
    /// The item reaches the bound: its first `chars_left` characters.
    Cut(&'a str),
}

fn read_within(text: &str, chars_left: usize) -> Read<'_> {
    // Fewer bytes than characters left: fewer characters too.
    if text.len() < chars_left {
        return Read::Whole(text.chars().count());
    }
    match text.char_indices().nth(chars_left) {
        Some((at, _)) => Read::Cut(&text[..at]),
        None if text.chars().count() == chars_left => Read::Cut(text),
        None => Read::Whole(text.chars().count()),
    }
}

/// Rule 3 for one whole item: one JSON object marking a failure.
pub fn text_marks_failure(text: &str, retry_on_status: &[i32]) -> bool {
    if !starts_object(text) {
        return false;
    }
    let mut members = Members::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let read = (&mut de)
        .deserialize_map(TopLevel(&mut members))
        .and_then(|()| de.end());
    read.is_ok() && members.mark_failure(retry_on_status)
}

/// Rule 3 for the item cut at the bound: judged on the members complete
/// before the cut.
pub fn cut_text_marks_failure(prefix: &str, retry_on_status: &[i32]) -> bool {
    if !starts_object(prefix) {
        return false;
    }
    // A number that runs into the cut may go on past it: leave it out, so the
    // member it belongs to reads as incomplete.
    let body = without_number_tail(prefix);
    let mut members = Members::default();
    let mut de = serde_json::Deserializer::from_str(body);
    match (&mut de).deserialize_map(TopLevel(&mut members)) {
        // The object closed before the cut: only whitespace may follow.
        Ok(()) => {
            body.len() == prefix.len() && de.end().is_ok() && members.mark_failure(retry_on_status)
        }
        // The cut fell inside the object. The member read last was followed
        // by whitespace or a comma (the body does not end in a number), so it
        // is complete.
        Err(e) if e.is_eof() => {
            members.commit();
            members.mark_failure(retry_on_status)
        }
        Err(_) => false,
    }
}

/// Only a JSON object can match; skip the parser for the common case of
/// prose. JSON allows exactly these four whitespace bytes.
fn starts_object(text: &str) -> bool {
    text.bytes()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        == Some(b'{')
}

/// `text` without a trailing number (digits, `-`, `.`, exponent), if it ends
/// in one. A run that starts with a letter (`true`) is not a number.
fn without_number_tail(text: &str) -> &str {
    let body =
        text.trim_end_matches(|c: char| matches!(c, '0'..='9' | '-' | '+' | '.' | 'e' | 'E'));
    match text[body.len()..].bytes().next() {
        Some(b'0'..=b'9' | b'-') => body,
        _ => text,
    }
}

/// The two members rule 3 looks at, as read so far.
#[derive(Default)]
struct Members {
    /// The last complete `isError` is the boolean `true`.
    is_error: bool,
    /// The last complete `status_code`, when it is an integer that fits an i64.
    status_code: Option<i64>,
    /// The member read last, until what follows it shows it complete.
    pending: Option<Member>,
}

enum Member {
    IsError(bool),
    StatusCode(Option<i64>),
}

impl Members {
    fn commit(&mut self) {
        match self.pending.take() {
            Some(Member::IsError(b)) => self.is_error = b,
            Some(Member::StatusCode(s)) => self.status_code = s,
            None => {}
        }
    }

    fn mark_failure(&self, retry_on_status: &[i32]) -> bool {
        // `as i32` truncates on purpose: the native plugin compares
        // `status as i32`, so 2^32 + 503 matches 503 there too.
        self.is_error
            || self
                .status_code
                .is_some_and(|s| retry_on_status.contains(&(s as i32)))
    }
}

/// The top-level object: records `isError` and `status_code`, skips the rest.
struct TopLevel<'a>(&'a mut Members);

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(name) = map.next_key::<Name>()? {
            // A next key: the member before it ended with a comma.
            self.0.commit();
            let value = map.next_value::<Scalar>()?;
            self.0.pending = match name {
                Name::IsError => Some(Member::IsError(value == Scalar::Bool(true))),
                Name::StatusCode => Some(Member::StatusCode(match value {
                    Scalar::Int(n) => Some(n),
                    _ => None,
                })),
                Name::Other => None,
            };
        }
        self.0.commit();
        Ok(())
    }
}

/// A member name, as far as rule 3 cares.
enum Name {
    IsError,
    StatusCode,
    Other,
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(NameVisitor)
    }
}

struct NameVisitor;

impl Visitor<'_> for NameVisitor {
    type Value = Name;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Name, E> {
        Ok(match s {
            "isError" => Name::IsError,
            "status_code" => Name::StatusCode,
            _ => Name::Other,
        })
    }
}

/// What the reader keeps of any value: a boolean, an integer that fits an
/// i64, or nothing. Containers are walked (serde_json bounds their nesting)
/// and dropped.
#[derive(PartialEq, Eq)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Other,
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Scalar, E> {
        Ok(i64::try_from(n).map_or(Scalar::Other, Scalar::Int))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<Scalar>()?.is_some() {}
        Ok(Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<Scalar, Scalar>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec;
    use alloc::vec::Vec;

    const CODES: [i32; 2] = [429, 503];

    fn marker_with_pad(pad_chars: usize) -> String {
        let mut s = String::from(r#"{"isError": true, "pad": ""#);
        s.extend(core::iter::repeat_n('x', pad_chars));
        s.push_str("\"}");
        s
    }

    #[test]
    fn test_text_markers_whole_items_as_today() {
        assert!(text_marks_failure(r#"{"isError": true}"#, &CODES));
        assert!(text_marks_failure(" \n{\"status_code\": 503} \t", &CODES));
        assert!(text_marks_failure(r#"{"status_code": 4294967799}"#, &CODES));
        assert!(!text_marks_failure(r#"{"status_code": 503.0}"#, &CODES));
        assert!(!text_marks_failure(r#"{"isError": true} trailing"#, &CODES));
        assert!(!text_marks_failure(
            r#"{"isError": true, "n": 1e400}"#,
            &CODES
        ));
        assert!(!text_marks_failure(
            r#"{"isError": true, "s": "\ud800"}"#,
            &CODES
        ));
        // The last of duplicate members wins, as in serde_json's map.
        assert!(!text_marks_failure(
            r#"{"isError": true, "isError": false}"#,
            &CODES
        ));
        assert!(text_marks_failure(
            r#"{"isError": 1, "isError": true}"#,
            &CODES
        ));
        assert!(!text_marks_failure(
            r#"{"status_code": 503, "status_code": "x"}"#,
            &CODES
        ));
        // Escaped names are the names they spell.
        assert!(text_marks_failure(r#"{"is\u0045rror": true}"#, &CODES));
        // serde_json's recursion limit still applies to skipped values.
        let deep =
            String::from(r#"{"isError": true, "x": "#) + &"[".repeat(200) + &"]".repeat(200) + "}";
        assert!(!text_marks_failure(&deep, &CODES));
    }

    #[test]
    fn test_text_markers_cut_item_marker_before_the_cut_is_a_failure() {
        let text = marker_with_pad(TEXT_MAX_CHARS * 2);
        assert!(texts_mark_failure(&[text.as_str()], &CODES));
        // Cut by the host at the bound: the same answer.
        let cut: String = text.chars().take(TEXT_MAX_CHARS).collect();
        assert!(texts_mark_failure(&[cut.as_str()], &CODES));
        // A later duplicate that is complete before the cut still wins.
        let text = String::from(r#"{"isError": true, "isError": false, "pad": ""#)
            + &"x".repeat(TEXT_MAX_CHARS);
        assert!(!texts_mark_failure(&[text], &CODES));
    }

    #[test]
    fn test_text_markers_cut_item_marker_after_the_cut_is_not() {
        let mut text = String::from(r#"{"pad": ""#);
        text.push_str(&"x".repeat(TEXT_MAX_CHARS));
        text.push_str(r#"", "isError": true}"#);
        assert!(!texts_mark_failure(&[text], &CODES));
        // A marker right at the cut: only complete members count.
        let lead = r#"{"pad": "#;
        let filler = TEXT_MAX_CHARS - lead.len() - 2 - r#", "status_code": 50"#.len();
        let text =
            String::from(lead) + "\"" + &"x".repeat(filler) + "\"" + r#", "status_code": 503}"#;
        assert!(text_marks_failure(&text, &CODES), "whole, it marks");
        assert!(
            !texts_mark_failure(&[text.as_str()], &CODES),
            "cut inside 503"
        );
    }

    #[test]
    fn test_text_markers_exact_bound_item_is_read_as_cut() {
        // An item of exactly the characters left is cut there (a host that
        // cut a longer one sends the same): a whole marker object still marks,
        // trailing garbage still makes it none.
        let text = marker_with_pad(TEXT_MAX_CHARS - marker_with_pad(0).len());
        assert_eq!(text.chars().count(), TEXT_MAX_CHARS);
        assert!(texts_mark_failure(&[text.as_str()], &CODES));
        let text = marker_with_pad(TEXT_MAX_CHARS - marker_with_pad(0).len() - 2) + " x";
        assert_eq!(text.chars().count(), TEXT_MAX_CHARS);
        assert!(!texts_mark_failure(&[text.as_str()], &CODES));
        // A later item gets what is left of the bound.
        let marker = r#"{"status_code": 503}"#;
        let quiet = |chars: usize| String::from("{\"pad\": \"") + &"x".repeat(chars - 11) + "\"}";
        let first = quiet(TEXT_MAX_CHARS - marker.len());
        assert!(texts_mark_failure(&[first.as_str(), marker], &CODES));
        let first = quiet(TEXT_MAX_CHARS - marker.len() + 1);
        assert!(
            !texts_mark_failure(&[first.as_str(), marker], &CODES),
            "503 cut to 50"
        );
    }

    #[test]
    fn test_text_markers_items_beyond_the_bounds_are_not_read() {
        let mut texts: Vec<&str> = vec!["plain words"; TEXT_MAX_ITEMS - 1];
        texts.push(r#"{"isError": true}"#);
        assert!(texts_mark_failure(&texts, &CODES), "item 1024 is read");
        texts.insert(0, "more words");
        assert!(!texts_mark_failure(&texts, &CODES), "item 1025 is not");
        // After the character bound nothing is read.
        let filler = "x".repeat(TEXT_MAX_CHARS);
        assert!(!texts_mark_failure(
            &[filler.as_str(), r#"{"isError": true}"#],
            &CODES
        ));
        // Multi-byte characters count once.
        let marker = r#"{"isError": true}"#;
        let wide = "é".repeat(TEXT_MAX_CHARS - marker.len());
        assert!(texts_mark_failure(&[wide.as_str(), marker], &CODES));
        let wide = "😀".repeat(TEXT_MAX_CHARS - marker.len() + 2);
        assert!(!texts_mark_failure(&[wide.as_str(), marker], &CODES));
    }

    #[test]
    fn test_text_markers_cut_edges() {
        let cut = |s: &str| cut_text_marks_failure(s, &CODES);
        assert!(cut(r#"{"isError": true"#), "true cannot go on");
        assert!(!cut(r#"{"isError": tru"#));
        assert!(!cut(r#"{"status_code": 503"#), "503 may go on");
        assert!(cut(r#"{"status_code": 503 "#));
        assert!(cut(r#"{"status_code": 503, "#));
        assert!(cut(r#"{"status_code": 503, "x": 1e"#));
        assert!(
            cut(r#"{"status_code": 503, "status_code": 4"#),
            "only complete members count"
        );
        assert!(cut(r#"{"isError": true}  "#));
        assert!(!cut(r#"{"isError": true} 1"#), "no continuation is JSON");
        assert!(
            !cut(r#"{"isError": true, x"#),
            "syntax error before the cut"
        );
        assert!(!cut("  "));
    }
}
