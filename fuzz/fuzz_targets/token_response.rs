//! Any bytes as a token endpoint answer: the parser returns a usable token or an error, never
//! panics, and never accepts a token that cannot go into a header or lives out of bounds.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ozzobit_auth::{AccessToken, MAX_TOKEN_LIFETIME};
use secrecy::ExposeSecret;

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = AccessToken::parse(data) {
        let value = token.secret().expose_secret();
        assert!(!value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic()));
        assert!(token.lifetime() >= Duration::from_secs(1));
        assert!(token.lifetime() <= MAX_TOKEN_LIFETIME);
    }
});
