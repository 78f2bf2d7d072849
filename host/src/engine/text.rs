//! A request's output text as it streams: tokens decoded a few at a time, and stop strings
//! looked for in the new text only, so the engine thread spends as long on a token at the end
//! of a long output, or with many stop strings, as on the first.

use crate::model::Vocabulary;

/// One stop string, matched as text arrives (Knuth–Morris–Pratt): each byte of text costs
/// amortised constant time, whatever the string's length or the text's.
struct StopString {
    bytes: Box<[u8]>,
    /// `fallback[i]`: the length of the longest proper prefix of `bytes[..=i]` that also ends it.
    fallback: Box<[usize]>,
    /// How much of the string the text so far ends with.
    matched: usize,
}

impl StopString {
    fn new(stop: String) -> Self {
        let bytes = stop.into_bytes().into_boxed_slice();
        let mut fallback = vec![0; bytes.len()].into_boxed_slice();
        let mut len = 0;
        for i in 1..bytes.len() {
            while len > 0 && bytes[i] != bytes[len] {
                len = fallback[len - 1];
            }
            if bytes[i] == bytes[len] {
                len += 1;
            }
            fallback[i] = len;
        }
        Self {
            bytes,
            fallback,
            matched: 0,
        }
    }

    /// Take the next byte of text: true when the string ends with it.
    fn feed(&mut self, byte: u8) -> bool {
        let mut len = self.matched;
        while len > 0 && self.bytes[len] != byte {
            len = self.fallback[len - 1];
        }
        if self.bytes[len] == byte {
            len += 1;
        }
        let ended = len == self.bytes.len();
        self.matched = if ended { self.fallback[len - 1] } else { len };
        ended
    }
}

/// The largest char boundary of `text` at or before `at`.
fn boundary_at_or_before(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Incremental text of one request. It holds back a partial UTF-8 character and any tail that
/// could begin a stop string, and cuts the text at the first stop string.
///
/// Tokens are decoded from `prefix_offset` on and the text already read is taken off the front,
/// as vLLM and TGI do: a tokenizer spells a token's leading space only after another token, so
/// the few tokens before the new ones go along as context.
pub(crate) struct TextStream {
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    stops: Vec<StopString>,
    /// Text decoded but not sent: it could begin a stop string.
    held: String,
    /// A stop string appeared; later tokens add no text.
    pub(crate) stopped: bool,
}

impl TextStream {
    pub(crate) fn new(stop: Vec<String>) -> Self {
        Self {
            tokens: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            stops: stop
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(StopString::new)
                .collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Add a token: the text that can be sent now.
    pub(crate) fn push(&mut self, vocabulary: &Vocabulary, token: u32) -> String {
        self.tokens.push(token);
        if self.stopped {
            return String::new();
        }
        match self.decode_new(vocabulary, false) {
            Some(new) => self.release(&new),
            None => String::new(),
        }
    }

    /// The rest of the text once the request finished.
    pub(crate) fn finish(&mut self, vocabulary: &Vocabulary) -> String {
        if self.stopped {
            return String::new();
        }
        let new = self.decode_new(vocabulary, true).unwrap_or_default();
        let mut text = self.release(&new);
        if !self.stopped {
            text.push_str(&std::mem::take(&mut self.held));
        }
        text
    }

    /// The text the tokens since `read_offset` add, once it ends in a whole character (or
    /// whatever it is, when `flush`).
    fn decode_new(&mut self, vocabulary: &Vocabulary, flush: bool) -> Option<String> {
        let context = vocabulary.decode(&self.tokens[self.prefix_offset..self.read_offset]);
        let text = vocabulary.decode(&self.tokens[self.prefix_offset..]);
        if !flush && text.ends_with('\u{FFFD}') {
            return None;
        }
        let new = text.get(context.len()..).filter(|new| !new.is_empty())?;
        let new = new.to_owned();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.tokens.len();
        Some(new)
    }

    /// Add decoded text: what can be sent of it and of what was held, up to the first stop
    /// string if one appeared.
    fn release(&mut self, new: &str) -> String {
        let offset = self.held.len();
        self.held.push_str(new);
        let mut first_stop: Option<usize> = None;
        for (i, &byte) in new.as_bytes().iter().enumerate() {
            let end = offset + i + 1;
            for stop in &mut self.stops {
                if stop.feed(byte) {
                    let start = end.saturating_sub(stop.bytes.len());
                    first_stop = Some(first_stop.map_or(start, |first| first.min(start)));
                }
            }
        }
        if let Some(start) = first_stop {
            self.stopped = true;
            let mut text = std::mem::take(&mut self.held);
            text.truncate(boundary_at_or_before(&text, start));
            return text;
        }
        let could_begin_a_stop = self.stops.iter().map(|stop| stop.matched).max();
        let send = self
            .held
            .len()
            .saturating_sub(could_begin_a_stop.unwrap_or(0));
        let tail = self.held.split_off(boundary_at_or_before(&self.held, send));
        std::mem::replace(&mut self.held, tail)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn stream(vocabulary: &Vocabulary, stop: &[&str], tokens: &[u32]) -> (Vec<String>, bool) {
        let mut stream = TextStream::new(stop.iter().map(|s| s.to_string()).collect());
        let mut deltas: Vec<String> = tokens
            .iter()
            .map(|&token| stream.push(vocabulary, token))
            .collect();
        deltas.push(stream.finish(vocabulary));
        (deltas, stream.stopped)
    }

    fn bytes(stop: &[&str], text: &str) -> (Vec<String>, bool) {
        let tokens: Vec<u32> = text.bytes().map(u32::from).collect();
        stream(&Vocabulary::Bytes, stop, &tokens)
    }

    /// What the stream must send: the text up to the first whole character after which some
    /// stop string appears, cut where the earliest of them starts.
    fn cut_at_first_stop(stop: &[&str], text: &str) -> (String, bool) {
        for end in text.char_indices().map(|(at, c)| at + c.len_utf8()) {
            let seen = &text[..end];
            if let Some(at) = stop
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| seen.find(s))
                .min()
            {
                return (text[..at].to_owned(), true);
            }
        }
        (text.to_owned(), false)
    }

    #[test]
    fn text_is_cut_before_the_first_stop_string() {
        let (deltas, stopped) = bytes(&["STOP", "xyz"], "hello STOP world");
        assert!(stopped);
        assert_eq!(deltas.concat(), "hello ");
    }

    #[test]
    fn a_possible_stop_prefix_is_held_back_then_released() {
        let (deltas, stopped) = bytes(&["STOP"], "a STAR");
        assert!(!stopped);
        assert_eq!(deltas.concat(), "a STAR");
        assert_eq!(deltas[3], "", "'ST' could begin STOP");
    }

    #[test]
    fn partial_utf8_characters_are_never_sent() {
        let (deltas, _) = bytes(&[], "né✓");
        assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')));
        assert_eq!(deltas.concat(), "né✓");
    }

    #[test]
    fn a_stop_string_that_overlaps_itself_is_found() {
        let (deltas, stopped) = bytes(&["aab"], "x aaaab y");
        assert!(stopped);
        assert_eq!(deltas.concat(), "x aa");
    }

    #[test]
    fn of_stop_strings_ending_together_the_text_is_cut_at_the_longer() {
        let (deltas, stopped) = bytes(&["b", "ab"], "xab");
        assert!(stopped);
        assert_eq!(deltas.concat(), "x");
    }

    #[test]
    fn a_tokenizers_text_is_its_decode_of_all_the_tokens() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/tiny-llama/tokenizer.json"
        );
        let tokenizer = tokenizers::Tokenizer::from_file(path).expect("the fixture's tokenizer");
        let vocabulary = Vocabulary::Tokenizer(Box::new(tokenizer));
        let tokens: Vec<u32> = (0..400u32).map(|i| (i * 37 + i / 7) % 128).collect();
        let (deltas, stopped) = stream(&vocabulary, &[], &tokens);
        assert!(!stopped);
        assert_eq!(deltas.concat(), vocabulary.decode(&tokens));
    }

    proptest! {
        /// Streamed deltas add up to the whole text cut at the first stop string, and no delta
        /// holds half a character.
        #[test]
        fn deltas_add_up_to_the_text_cut_at_the_first_stop(
            text in "[abé✓]{0,30}",
            stops in proptest::collection::vec("[abé]{0,3}", 0..4),
        ) {
            let stops: Vec<&str> = stops.iter().map(String::as_str).collect();
            let (deltas, stopped) = bytes(&stops, &text);
            let (expected, expected_stopped) = cut_at_first_stop(&stops, &text);
            prop_assert_eq!(deltas.concat(), expected);
            prop_assert_eq!(stopped, expected_stopped);
            prop_assert!(deltas.iter().all(|d| !d.contains(char::REPLACEMENT_CHARACTER)));
        }
    }
}
