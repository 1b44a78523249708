//! Hostile text content through the real component (issue 12 §1, §2):
//! `decide-text` reads at most `TEXT_MAX_ITEMS` items and `TEXT_MAX_CHARS`
//! characters, so a 32 MiB text or a million items neither trap the guest nor
//! change another key's retry state, and they get the answer the policy gives
//! the part that is read.
//!
//! Each input goes in twice: whole (what a careless host would send: the
//! guest must still read only within the bounds and not trap) and cut as the
//! Python host cuts it (the crossing item cut at the bound, later items
//! dropped: the same decision, in a fraction of the guest memory).

use crate::support::*;
use retry_engine::wire::{TEXT_MAX_CHARS, TEXT_MAX_ITEMS};

const TOOL: &str = "t";

/// What the host sends of `texts`: at most `TEXT_MAX_ITEMS` items and
/// `TEXT_MAX_CHARS` characters, the crossing item cut (`text[:left]`).
fn as_host_sends(texts: &[String]) -> Vec<String> {
    let mut left = TEXT_MAX_CHARS;
    let mut out = Vec::new();
    for text in texts.iter().take(TEXT_MAX_ITEMS) {
        let chars = text.chars().count();
        if chars >= left {
            out.push(text.chars().take(left).collect());
            break;
        }
        out.push(text.clone());
        left -= chars;
    }
    out
}

/// A fresh instance that checks text content, with a victim key two failures
/// into its backoff.
fn with_victim() -> Result<Harness> {
    let mut h = no_jitter(json!({"check_text_content": true, "max_retries": 5}))?;
    let fails = fail_n(&mut h, TOOL, "victim", 2)?;
    ensure!(delays(&fails) == [200, 400]);
    Ok(h)
}

/// The victim's third failure still gets the third retry's delay.
fn victim_kept_its_count(h: &mut Harness) -> Result<()> {
    assert_retry(h.decide(TOOL, "victim", Signals::ERROR)?, 800, 3)
}

fn decide_texts(h: &mut Harness, rid: &str, texts: &[String]) -> Result<Decision> {
    let (key, parts) = harness::key(TOOL, rid);
    Ok(Decision::unpack(h.decide_text_raw(
        &key,
        parts,
        Signals::OK.pack(),
        texts,
    )?))
}

#[test]
fn test_text_bounds_a_32_mib_marker_is_a_failure_and_traps_nothing() -> Result<()> {
    let mut text = String::from(r#"{"isError": true, "pad": ""#);
    text.push_str(&"x".repeat(32 << 20));
    text.push_str("\"}");
    let whole = vec![text];
    let sent = as_host_sends(&whole);
    ensure!(sent[0].chars().count() == TEXT_MAX_CHARS);
    for texts in [&whole, &sent] {
        let mut h = with_victim()?;
        // As the native plugin says: a retriable failure.
        assert_retry(decide_texts(&mut h, "big", texts)?, 200, 1)?;
        victim_kept_its_count(&mut h)?;
    }
    // A marker after the cut is not read.
    let mut text = String::from(r#"{"pad": ""#);
    text.push_str(&"x".repeat(32 << 20));
    text.push_str(r#"", "isError": true}"#);
    let whole = vec![text];
    for texts in [whole.clone(), as_host_sends(&whole)] {
        let mut h = with_victim()?;
        assert_success(decide_texts(&mut h, "big", &texts)?)?;
        victim_kept_its_count(&mut h)?;
    }
    Ok(())
}

#[test]
fn test_text_bounds_a_million_items_read_only_the_first_1024() -> Result<()> {
    // 10^6 items of 100 bytes; the marker is item 1025, past the item bound.
    let filler = format!(r#"{{"status_code": 200, "pad": "{}"}}"#, "x".repeat(69));
    ensure!(filler.len() == 100);
    let mut whole = vec![filler; 1_000_000];
    whole[TEXT_MAX_ITEMS] = String::from(r#"{"isError": true}"#);
    let sent = as_host_sends(&whole);
    ensure!(sent.len() == TEXT_MAX_ITEMS);
    for texts in [&whole, &sent] {
        let mut h = with_victim()?;
        assert_success(decide_texts(&mut h, "many", texts)?)?;
        victim_kept_its_count(&mut h)?;
    }
    // Item 1024 is read.
    whole[TEXT_MAX_ITEMS - 1] = String::from(r#"{"status_code": 503}"#);
    let mut h = with_victim()?;
    assert_retry(
        decide_texts(&mut h, "many", &as_host_sends(&whole))?,
        200,
        1,
    )?;
    victim_kept_its_count(&mut h)?;
    Ok(())
}

#[test]
fn test_text_bounds_what_the_host_sends_fits_a_small_memory() -> Result<()> {
    // The largest input a host sends: the character bound in 4-byte characters.
    let mut text = String::from(r#"{"isError": true, "pad": ""#);
    text.push_str(&"😀".repeat(TEXT_MAX_CHARS));
    let sent = as_host_sends(&[text]);
    let mut h = with_victim()?;
    let before = h.store.data().memory.peak_bytes;
    assert_retry(decide_texts(&mut h, "wide", &sent)?, 200, 1)?;
    let grown = h.store.data().memory.peak_bytes.saturating_sub(before);
    // The text itself (1 MiB of UTF-8) plus allocator slack; never a copy per
    // member or a tree of the document.
    ensure!(grown <= 3 << 20, "guest memory grew by {grown} bytes");
    victim_kept_its_count(&mut h)
}
