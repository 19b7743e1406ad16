//! Model pricing in integer micro-USD per million tokens, and cost arithmetic. Money is never
//! a float here.
//!
//! The built-in table is a snapshot of providers' public list prices as of [`PRICING_VERSION`];
//! prices change, so every deployment can override or add models (`PriceTable::set`).
//!
//! A model is priced only by its exact name, or as a dated snapshot of a priced name: the name,
//! `-`, then a date as `YYYY-MM-DD` or `YYYYMMDD` (`gpt-4o-2024-08-06`,
//! `claude-sonnet-4-20250514`). Any other suffix names another model (`o1-pro` is not `o1`, and
//! costs ten times more), so it is unknown unless the table lists it. A snapshot priced
//! differently from its name's current model (`gpt-4o-2024-05-13`) is listed by its own name,
//! which wins over the rule.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The date of the built-in price snapshot.
pub const PRICING_VERSION: &str = "2025-10-15";

/// One million, the token unit prices are quoted in.
const PER: u128 = 1_000_000;

/// Price of a model, in micro-USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    /// Input (prompt) tokens.
    pub input: u64,
    /// Output (completion) tokens.
    pub output: u64,
    /// Cached input tokens (billed instead of `input` for the cached part).
    pub cached_input: u64,
}

/// Token counts of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Input tokens, cached ones included.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Of the input tokens, how many were served from the provider's cache.
    pub cached_input_tokens: u64,
}

impl TokenUsage {
    /// All tokens of the call.
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

impl ModelPrice {
    /// From USD per million tokens written as cents (no floats): `from_cents(250, 1000, 125)`
    /// is $2.50 in, $10.00 out, $1.25 cached.
    pub const fn from_cents(input: u64, output: u64, cached_input: u64) -> Self {
        Self {
            input: input * 10_000,
            output: output * 10_000,
            cached_input: cached_input * 10_000,
        }
    }

    /// The cost of `usage` in micro-USD, rounded up.
    pub fn cost_micros(&self, usage: &TokenUsage) -> u64 {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let fresh = usage.input_tokens - cached;
        let total = u128::from(fresh) * u128::from(self.input)
            + u128::from(cached) * u128::from(self.cached_input)
            + u128::from(usage.output_tokens) * u128::from(self.output);
        u64::try_from(total.div_ceil(PER)).unwrap_or(u64::MAX)
    }
}

/// Provider, model and price (USD cents per million tokens: input, output, cached input).
const BUILTIN: &[(&str, &str, ModelPrice)] = &[
    // OpenAI
    ("openai", "gpt-5", ModelPrice::from_cents(125, 1000, 13)),
    // The pro models have no cached-input discount.
    (
        "openai",
        "gpt-5-pro",
        ModelPrice::from_cents(1500, 12000, 1500),
    ),
    ("openai", "gpt-5-mini", ModelPrice::from_cents(25, 200, 3)),
    ("openai", "gpt-5-nano", ModelPrice::from_cents(5, 40, 1)),
    ("openai", "gpt-4.1", ModelPrice::from_cents(200, 800, 50)),
    (
        "openai",
        "gpt-4.1-mini",
        ModelPrice::from_cents(40, 160, 10),
    ),
    ("openai", "gpt-4.1-nano", ModelPrice::from_cents(10, 40, 3)),
    ("openai", "gpt-4o", ModelPrice::from_cents(250, 1000, 125)),
    // The first gpt-4o snapshot kept its launch price.
    (
        "openai",
        "gpt-4o-2024-05-13",
        ModelPrice::from_cents(500, 1500, 500),
    ),
    ("openai", "gpt-4o-mini", ModelPrice::from_cents(15, 60, 8)),
    ("openai", "o3", ModelPrice::from_cents(200, 800, 50)),
    ("openai", "o3-pro", ModelPrice::from_cents(2000, 8000, 2000)),
    ("openai", "o4-mini", ModelPrice::from_cents(110, 440, 28)),
    ("openai", "o1", ModelPrice::from_cents(1500, 6000, 750)),
    (
        "openai",
        "o1-pro",
        ModelPrice::from_cents(15000, 60000, 15000),
    ),
    // Anthropic
    (
        "anthropic",
        "claude-opus-4-1",
        ModelPrice::from_cents(1500, 7500, 150),
    ),
    (
        "anthropic",
        "claude-opus-4",
        ModelPrice::from_cents(1500, 7500, 150),
    ),
    (
        "anthropic",
        "claude-opus-4-0",
        ModelPrice::from_cents(1500, 7500, 150),
    ),
    (
        "anthropic",
        "claude-sonnet-4-5",
        ModelPrice::from_cents(300, 1500, 30),
    ),
    (
        "anthropic",
        "claude-sonnet-4",
        ModelPrice::from_cents(300, 1500, 30),
    ),
    (
        "anthropic",
        "claude-sonnet-4-0",
        ModelPrice::from_cents(300, 1500, 30),
    ),
    (
        "anthropic",
        "claude-3-7-sonnet",
        ModelPrice::from_cents(300, 1500, 30),
    ),
    (
        "anthropic",
        "claude-3-7-sonnet-latest",
        ModelPrice::from_cents(300, 1500, 30),
    ),
    (
        "anthropic",
        "claude-haiku-4-5",
        ModelPrice::from_cents(100, 500, 10),
    ),
    (
        "anthropic",
        "claude-3-5-haiku",
        ModelPrice::from_cents(80, 400, 8),
    ),
    (
        "anthropic",
        "claude-3-5-haiku-latest",
        ModelPrice::from_cents(80, 400, 8),
    ),
    // Google
    (
        "google",
        "gemini-2.5-pro",
        ModelPrice::from_cents(125, 1000, 31),
    ),
    (
        "google",
        "gemini-2.5-flash",
        ModelPrice::from_cents(30, 250, 8),
    ),
    (
        "google",
        "gemini-2.5-flash-lite",
        ModelPrice::from_cents(10, 40, 3),
    ),
    (
        "google",
        "gemini-2.0-flash",
        ModelPrice::from_cents(10, 40, 3),
    ),
    (
        "google",
        "gemini-2.0-flash-001",
        ModelPrice::from_cents(10, 40, 3),
    ),
    // Mistral
    (
        "mistral",
        "mistral-large-latest",
        ModelPrice::from_cents(200, 600, 200),
    ),
    (
        "mistral",
        "mistral-medium-latest",
        ModelPrice::from_cents(40, 200, 40),
    ),
    (
        "mistral",
        "mistral-small-latest",
        ModelPrice::from_cents(10, 30, 10),
    ),
    (
        "mistral",
        "codestral-latest",
        ModelPrice::from_cents(30, 90, 30),
    ),
    // Meta (typical hosted list prices)
    (
        "meta",
        "llama-4-maverick",
        ModelPrice::from_cents(27, 85, 27),
    ),
    ("meta", "llama-4-scout", ModelPrice::from_cents(18, 59, 18)),
    (
        "meta",
        "llama-3.3-70b-instruct",
        ModelPrice::from_cents(88, 88, 88),
    ),
    // DeepSeek
    (
        "deepseek",
        "deepseek-chat",
        ModelPrice::from_cents(27, 110, 7),
    ),
    (
        "deepseek",
        "deepseek-reasoner",
        ModelPrice::from_cents(55, 219, 14),
    ),
    // xAI
    ("xai", "grok-4", ModelPrice::from_cents(300, 1500, 75)),
    ("xai", "grok-4-0709", ModelPrice::from_cents(300, 1500, 75)),
    ("xai", "grok-3-mini", ModelPrice::from_cents(30, 50, 8)),
];

/// Prices by model name: the built-in snapshot plus overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceTable {
    prices: HashMap<String, (String, ModelPrice)>,
}

impl Default for PriceTable {
    fn default() -> Self {
        Self::builtin()
    }
}

impl PriceTable {
    /// The built-in snapshot ([`PRICING_VERSION`]).
    pub fn builtin() -> Self {
        Self {
            prices: BUILTIN
                .iter()
                .map(|(provider, model, p)| ((*model).to_owned(), ((*provider).to_owned(), *p)))
                .collect(),
        }
    }

    /// An empty table (only what is `set`).
    pub fn empty() -> Self {
        Self {
            prices: HashMap::new(),
        }
    }

    /// Adds or overrides a model's price.
    pub fn set(&mut self, provider: &str, model: &str, price: ModelPrice) {
        self.prices
            .insert(model.to_owned(), (provider.to_owned(), price));
    }

    /// How many models are priced.
    pub fn len(&self) -> usize {
        self.prices.len()
    }

    /// Whether no model is priced.
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// The price of `model`: its exact name, else the name it is a dated snapshot of (the
    /// module documentation gives the rule); anything else is unpriced (`None`), never a near
    /// name's price.
    pub fn get(&self, model: &str) -> Option<ModelPrice> {
        self.entry(model).map(|(_, p)| *p)
    }

    /// The provider of `model`, when priced (by the same rule as [`Self::get`]).
    pub fn provider(&self, model: &str) -> Option<&str> {
        self.entry(model).map(|(p, _)| p.as_str())
    }

    fn entry(&self, model: &str) -> Option<&(String, ModelPrice)> {
        self.prices
            .get(model)
            .or_else(|| snapshot_base(model).and_then(|base| self.prices.get(base)))
    }
}

/// The model a dated snapshot name stands for: `base` when `model` is `base-YYYY-MM-DD` or
/// `base-YYYYMMDD` with a year 2000–2099, a month 01–12 and a day 01–31; else `None`.
fn snapshot_base(model: &str) -> Option<&str> {
    fn date(y: &[u8], m: &[u8], d: &[u8]) -> bool {
        let num = |b: &[u8]| {
            b.iter().try_fold(0u32, |n, c| {
                c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
            })
        };
        matches!(
            (num(y), num(m), num(d)),
            (Some(2000..=2099), Some(1..=12), Some(1..=31))
        )
    }
    let b = model.as_bytes();
    // `-YYYY-MM-DD` is 11 bytes, `-YYYYMMDD` 9; the base must not be empty.
    if b.len() > 11 {
        let t = &b[b.len() - 11..];
        if t[0] == b'-' && t[5] == b'-' && t[8] == b'-' && date(&t[1..5], &t[6..8], &t[9..11]) {
            return Some(&model[..model.len() - 11]);
        }
    }
    if b.len() > 9 {
        let t = &b[b.len() - 9..];
        if t[0] == b'-' && date(&t[1..5], &t[5..7], &t[7..9]) {
            return Some(&model[..model.len() - 9]);
        }
    }
    None
}

/// An amount of money in micro-USD. Built from integers or decimal strings, never floats.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MicroUsd(pub i64);

impl MicroUsd {
    /// From whole cents.
    pub const fn from_cents(cents: i64) -> Self {
        Self(cents * 10_000)
    }

    /// From a decimal dollar amount written as text (`"5"`, `"5.00"`, `"0.000125"`).
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim().trim_start_matches('$');
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        if whole.is_empty() && frac.is_empty() || frac.len() > 6 {
            return None;
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let whole: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let frac_micros: i64 = format!("{frac:0<6}").parse().ok()?;
        whole
            .checked_mul(1_000_000)?
            .checked_add(frac_micros)
            .map(Self)
    }
}

impl std::fmt::Display for MicroUsd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        write!(f, "{sign}${}.{:06}", a / 1_000_000, a % 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_covers_at_least_25_models_of_six_providers() {
        let t = PriceTable::builtin();
        assert!(t.len() >= 25, "{}", t.len());
        let providers: std::collections::BTreeSet<&str> =
            BUILTIN.iter().map(|(p, _, _)| *p).collect();
        for p in [
            "openai",
            "anthropic",
            "google",
            "mistral",
            "meta",
            "deepseek",
        ] {
            assert!(providers.contains(p), "{p}");
        }
    }

    #[test]
    fn costs_are_exact_integers_rounded_up() {
        let p = ModelPrice::from_cents(250, 1000, 125); // $2.50 / $10 / $1.25 per Mtok
        let u = TokenUsage {
            input_tokens: 1_000,
            output_tokens: 500,
            cached_input_tokens: 200,
        };
        // 800 × 2.5 + 200 × 1.25 + 500 × 10 = 2000 + 250 + 5000 = 7250 micro-USD
        assert_eq!(p.cost_micros(&u), 7_250);
        let one = TokenUsage {
            input_tokens: 1,
            ..TokenUsage::default()
        };
        assert_eq!(p.cost_micros(&one), 3); // 2.5 rounds up
        let huge = TokenUsage {
            input_tokens: u64::MAX,
            output_tokens: u64::MAX,
            cached_input_tokens: 0,
        };
        assert_eq!(p.cost_micros(&huge), u64::MAX);
    }

    /// A price in cents per million tokens: input, output, cached input.
    type Cents = (u64, u64, u64);

    /// What the built-in table answers for a model name, or `None` for an unknown model.
    fn priced(model: &str) -> Option<Cents> {
        PriceTable::builtin()
            .get(model)
            .map(|p| (p.input / 10_000, p.output / 10_000, p.cached_input / 10_000))
    }

    #[test]
    fn names_are_priced_exactly_or_as_dated_snapshots_and_nothing_else() {
        #[rustfmt::skip]
        let cases: &[(&str, Option<Cents>)] = &[
            // Exact names.
            ("gpt-4o", Some((250, 1000, 125))),
            ("gpt-4o-mini", Some((15, 60, 8))),
            ("claude-sonnet-4", Some((300, 1500, 30))),
            // Dated snapshots of a priced name, in both date forms.
            ("gpt-4o-2024-08-06", Some((250, 1000, 125))),
            ("gpt-4o-2024-11-20", Some((250, 1000, 125))),
            ("gpt-4o-mini-2024-07-18", Some((15, 60, 8))),
            ("gpt-4.1-2025-04-14", Some((200, 800, 50))),
            ("o3-2025-04-16", Some((200, 800, 50))),
            ("claude-sonnet-4-20250514", Some((300, 1500, 30))),
            ("claude-opus-4-1-20250805", Some((1500, 7500, 150))),
            ("claude-3-5-haiku-20241022", Some((80, 400, 8))),
            ("claude-haiku-4-5-20251001", Some((100, 500, 10))),
            // A snapshot listed under its own name keeps its own price.
            ("gpt-4o-2024-05-13", Some((500, 1500, 500))),
            // Aliases listed by name.
            ("claude-3-7-sonnet-latest", Some((300, 1500, 30))),
            ("claude-opus-4-0", Some((1500, 7500, 150))),
            ("grok-4-0709", Some((300, 1500, 75))),
            // Costly variants at their own list prices, snapshots included.
            ("o1-pro", Some((15000, 60000, 15000))),
            ("o1-pro-2025-03-19", Some((15000, 60000, 15000))),
            ("o3-pro", Some((2000, 8000, 2000))),
            ("o3-pro-2025-06-10", Some((2000, 8000, 2000))),
            ("gpt-5-pro", Some((1500, 12000, 1500))),
            ("gpt-5-pro-2025-10-06", Some((1500, 12000, 1500))),
            // Variants the table does not list are unknown, never their base's price.
            ("o3-deep-research", None),
            ("o3-deep-research-2025-06-26", None),
            ("o4-mini-deep-research", None),
            ("gpt-4o-realtime-preview", None),
            ("gpt-4o-realtime-preview-2024-12-17", None),
            ("gpt-4o-audio-preview", None),
            ("gpt-4o-search-preview", None),
            ("gpt-4o-mini-realtime-preview", None),
            ("gpt-4o-mini-tts", None),
            ("o1-preview", None),
            ("o1-mini", None),
            ("o3-mini", None),
            ("gpt-5-chat-latest", None),
            ("grok-3-mini-fast", None),
            ("gemini-2.0-flash-lite", None),
            ("llama-4-maverick-17b-128e-instruct", None),
            // Suffixes that only look like dates.
            ("gpt-4o-2024-13-01", None),
            ("gpt-4o-2024-00-10", None),
            ("gpt-4o-2024-08-32", None),
            ("gpt-4o-1999-08-06", None),
            ("gpt-4o-2024-8-06", None),
            ("gpt-4o-2024_08_06", None),
            ("gpt-4o-20240806x", None),
            ("gpt-4o-2024080", None),
            ("gpt-4o-202408061", None),
            ("gpt-4o20240806", None),
            ("gpt-4o-", None),
            ("-2024-08-06", None),
            ("-20240806", None),
            ("gpt-4o-2024-08-06-2024-08-06", None),
            ("gpt-4oo", None),
            ("GPT-4O", None),
            ("", None),
        ];
        for (model, want) in cases {
            assert_eq!(priced(model), *want, "{model:?}");
        }
    }

    #[test]
    fn no_costly_variant_is_priced_at_its_base_models_price() {
        let t = PriceTable::builtin();
        for (variant, base) in [
            ("o1-pro", "o1"),
            ("o3-pro", "o3"),
            ("gpt-5-pro", "gpt-5"),
            ("o3-deep-research", "o3"),
            ("o4-mini-deep-research", "o4-mini"),
            ("gpt-4o-realtime-preview", "gpt-4o"),
            ("gpt-4o-audio-preview", "gpt-4o"),
            ("gpt-4o-mini-realtime-preview", "gpt-4o-mini"),
            ("gpt-4o-2024-05-13", "gpt-4o"),
            ("grok-3-mini-fast", "grok-3-mini"),
        ] {
            let base_price = t.get(base).expect(base);
            match t.get(variant) {
                None => {}
                Some(p) => assert!(
                    p.input > base_price.input && p.output > base_price.output,
                    "{variant} priced like {base}"
                ),
            }
        }
    }

    #[test]
    fn every_built_in_name_is_priced_by_itself_and_its_snapshots_follow_it() {
        let t = PriceTable::builtin();
        for (provider, model, price) in BUILTIN {
            assert_eq!(t.get(model), Some(*price), "{model}");
            assert_eq!(t.provider(model), Some(*provider), "{model}");
            assert_eq!(
                t.get(&format!("{model}-2099-12-31")),
                Some(*price),
                "{model}"
            );
            assert_eq!(t.get(&format!("{model}-20991231")), Some(*price), "{model}");
            // Any other suffix is another model: priced only when listed by its own name.
            for suffix in [
                "-pro",
                "-mini",
                "-preview",
                "-realtime-preview",
                "-deep-research",
                "-0709",
                "-x",
            ] {
                let other = format!("{model}{suffix}");
                let listed = BUILTIN
                    .iter()
                    .find(|(_, m, _)| *m == other)
                    .map(|(_, _, p)| *p);
                assert_eq!(t.get(&other), listed, "{other}");
            }
        }
        assert_eq!(t.provider("claude-sonnet-4-20250514"), Some("anthropic"));
        assert_eq!(t.provider("o3-deep-research"), None);
    }

    #[test]
    fn overrides_and_additions() {
        let mut t = PriceTable::builtin();
        t.set("local", "my-model", ModelPrice::from_cents(1, 2, 1));
        assert_eq!(t.get("my-model"), Some(ModelPrice::from_cents(1, 2, 1)));
        assert_eq!(
            t.get("my-model-2026-01-02"),
            Some(ModelPrice::from_cents(1, 2, 1))
        );
        assert_eq!(t.get("my-model-large"), None);
        t.set(
            "openai",
            "o3-deep-research",
            ModelPrice::from_cents(1000, 4000, 250),
        );
        assert_eq!(
            t.get("o3-deep-research").map(|p| p.output),
            Some(40_000_000)
        );
        assert_eq!(t.get("o3").map(|p| p.output), Some(8_000_000));
    }

    #[test]
    fn money_parses_without_floats() {
        assert_eq!(MicroUsd::parse("5"), Some(MicroUsd(5_000_000)));
        assert_eq!(MicroUsd::parse("$5.25"), Some(MicroUsd(5_250_000)));
        assert_eq!(MicroUsd::parse("0.000125"), Some(MicroUsd(125)));
        assert_eq!(MicroUsd::parse(".5"), Some(MicroUsd(500_000)));
        for bad in ["", ".", "5.0000001", "-1", "1e3", "abc"] {
            assert_eq!(MicroUsd::parse(bad), None, "{bad}");
        }
        assert_eq!(MicroUsd(5_250_000).to_string(), "$5.250000");
    }
}
