//! Model pricing in integer micro-USD per million tokens, and cost arithmetic. Money is never
//! a float here.
//!
//! The built-in table is a snapshot of providers' public list prices as of [`PRICING_VERSION`];
//! prices change, so every deployment can override or add models (`PriceTable::set`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The date of the built-in price snapshot.
pub const PRICING_VERSION: &str = "2025-09-01";

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
    ("openai", "gpt-4o-mini", ModelPrice::from_cents(15, 60, 8)),
    ("openai", "o3", ModelPrice::from_cents(200, 800, 50)),
    ("openai", "o4-mini", ModelPrice::from_cents(110, 440, 28)),
    ("openai", "o1", ModelPrice::from_cents(1500, 6000, 750)),
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
        "claude-3-7-sonnet",
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

    /// The price of `model`: an exact match, else the longest priced name that `model` starts
    /// with followed by `-` (so dated names such as `gpt-4o-2024-08-06` find `gpt-4o`).
    pub fn get(&self, model: &str) -> Option<ModelPrice> {
        if let Some((_, p)) = self.prices.get(model) {
            return Some(*p);
        }
        self.prices
            .iter()
            .filter(|(name, _)| {
                model.len() > name.len()
                    && model.starts_with(name.as_str())
                    && model.as_bytes()[name.len()] == b'-'
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(_, (_, p))| *p)
    }

    /// The provider of `model`, when priced.
    pub fn provider(&self, model: &str) -> Option<&str> {
        self.prices.get(model).map(|(p, _)| p.as_str())
    }
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

    #[test]
    fn dated_model_names_and_overrides() {
        let mut t = PriceTable::builtin();
        assert_eq!(t.get("gpt-4o-2024-08-06"), t.get("gpt-4o"));
        assert_eq!(t.get("gpt-4o-mini-2024-07-18"), t.get("gpt-4o-mini"));
        assert_eq!(t.get("gpt-4oo"), None);
        t.set("local", "my-model", ModelPrice::from_cents(1, 2, 1));
        assert_eq!(t.get("my-model"), Some(ModelPrice::from_cents(1, 2, 1)));
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
