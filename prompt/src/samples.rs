//! Random conversations of every kind of text a tokenizer's word split must
//! get right: what a tokenizer's faster path is checked on when it loads,
//! and what the tests (here and in the workers) tokenize both ways.

use protocol::openai::ChatMessage;

/// `count` conversations of one to five messages: corpus words, runs of
/// spaces and newlines, digits, punctuation, characters of several bytes,
/// and strings that look like chat templates' markers. The same for a seed.
pub fn conversations(seed: u64, count: usize) -> Vec<Vec<ChatMessage<'static>>> {
    let words: Vec<&str> = crate::CORPUS.split_whitespace().take(2000).collect();
    let odd = [
        " ",
        "  ",
        "\n",
        "\n\n",
        "\t",
        "\t \n",
        "\r\n",
        "\u{a0}",
        "\u{3000}",
        "\u{2028}",
        "42",
        "12345",
        "3.14",
        "١٢٣",
        "１２３",
        "²",
        "!?",
        "naïve",
        "e\u{301}",
        "ﬁ",
        "ü",
        "ò",
        "日本語",
        "🌧",
        "<|user|>",
        "<|im_end|>",
        "<|im_start|>",
        "\n<|",
        "'s",
        "'S",
        "'ll",
        "---",
        "",
    ];
    let mut state = seed | 1;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    (0..count)
        .map(|_| {
            (0..1 + next(5))
                .map(|i| {
                    let role = ["system", "user", "assistant"][(i + next(2)) % 3];
                    let mut text = String::new();
                    for _ in 0..next(40) {
                        match next(4) {
                            0 => text.push_str(odd[next(odd.len())]),
                            _ => text.push_str(words[next(words.len())]),
                        }
                        if next(3) > 0 {
                            text.push(' ');
                        }
                    }
                    ChatMessage::new(role, text)
                })
                .collect()
        })
        .collect()
}
