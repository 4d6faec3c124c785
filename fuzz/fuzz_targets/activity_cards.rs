//! Card detection and removal (`directline::activity`) on arbitrary bytes
//! from the bot.
//!
//! Besides "no panic", each input is rewritten three ways (no card
//! exchanged, every card, every other card) and checked:
//! - a set is only ever recognised in a JSON object with an `activities` array;
//! - the output is valid JSON and again an ActivitySet;
//! - nothing exchanged and no proxy invoke: the same document, each activity
//!   with its original bytes;
//! - every untouched activity keeps its bytes, and exactly the exchanged
//!   cards are gone.
#![no_main]

use directline_proxy::directline::activity::{self, ActivitySet, Findings, Markers, OAuthCard};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|bytes: &[u8]| {
    let markers = Markers::default();
    let _ = markers.present(bytes);
    let Some(set) = ActivitySet::parse(bytes) else {
        return;
    };
    // serde_json skips the fields it ignores without checking their UTF-8,
    // so a set can be recognised in bytes that are not JSON; the properties
    // below hold for JSON input.
    let Ok(document) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    assert!(
        document.get("activities").is_some_and(Value::is_array),
        "recognised as an ActivitySet without an `activities` array"
    );
    let findings = activity::scan(&set, &markers);
    for card in &findings.cards {
        let _ = card.id();
        assert!(card.activity < set.activities.len());
    }
    let all: Vec<&OAuthCard> = findings.cards.iter().collect();
    let every_other: Vec<&OAuthCard> = findings.cards.iter().step_by(2).collect();
    for exchanged in [Vec::new(), all, every_other] {
        check_rewrite(&set, &findings, &exchanged, &document);
    }
});

fn check_rewrite(
    set: &ActivitySet<'_>,
    findings: &Findings,
    exchanged: &[&OAuthCard],
    document: &Value,
) {
    let out = activity::rewrite(set, findings, exchanged);
    let rewritten: Value = serde_json::from_slice(&out).expect("rewrite output is not valid JSON");
    let again = ActivitySet::parse(&out).expect("rewrite output is not an ActivitySet");
    if exchanged.is_empty() && findings.proxy_invokes.is_empty() {
        assert_eq!(&rewritten, document, "nothing to remove, yet it changed");
        let before: Vec<&str> = set.activities.iter().map(|a| a.get()).collect();
        let after: Vec<&str> = again.activities.iter().map(|a| a.get()).collect();
        assert_eq!(
            before, after,
            "nothing to remove, yet an activity's bytes changed"
        );
        return;
    }
    let touched = |index: usize| {
        findings.proxy_invokes.contains(&index) || exchanged.iter().any(|c| c.activity == index)
    };
    let untouched: Vec<&str> = (0..set.activities.len())
        .filter(|i| !touched(*i))
        .map(|i| set.activities[i].get())
        .collect();
    let kept: Vec<&str> = again.activities.iter().map(|a| a.get()).collect();
    assert!(
        is_subsequence(&untouched, &kept),
        "an untouched activity lost its bytes or its place"
    );
    let remaining = activity::scan(&again, &Markers::default()).cards.len();
    assert_eq!(
        remaining,
        findings.cards.len() - exchanged.len(),
        "the cards left are not the ones that were not exchanged"
    );
}

fn is_subsequence(needles: &[&str], haystack: &[&str]) -> bool {
    let mut rest = haystack.iter();
    needles.iter().all(|n| rest.any(|h| h == n))
}
