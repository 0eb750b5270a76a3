//! Check-in and duress PINs. An admin sets each crew member's two PINs; citd keeps only their
//! argon2id hashes. A check-in carries the PIN, and citd decides ok or duress itself: the
//! request no longer says which, and deciding costs the same either way (both hashes are always
//! computed; each comparison inside is constant-time), so neither the wire, the answer nor its
//! timing tells a watcher which PIN was typed.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use cit_domain::InputError;

/// What a PIN turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Duress,
    /// Neither of the person's PINs.
    Wrong,
}

/// argon2id with OWASP's minimum (19 MiB, 2 passes, 1 lane): ~20 ms a hash on a server core.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A PIN as set: 4 to 12 digits.
pub fn validate(field: &str, pin: &str) -> Result<(), InputError> {
    if !(4..=12).contains(&pin.len()) || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InputError::invalid(field, "a PIN is 4 to 12 digits"));
    }
    Ok(())
}

/// The PHC string of `pin` with a fresh random salt.
pub fn hash(pin: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| "no randomness for a salt".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2()
        .hash_password(pin.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn matches(pin: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| argon2().verify_password(pin.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// Which of the two PINs `pin` is. Both are always checked, in the same order, whatever the
/// first said: the time taken does not depend on the answer.
pub fn decide(pin: &str, checkin_hash: &str, duress_hash: &str) -> Verdict {
    let ok = matches(pin, checkin_hash);
    let duress = matches(pin, duress_hash);
    match (ok, duress) {
        (true, _) => Verdict::Ok,
        (false, true) => Verdict::Duress,
        (false, false) => Verdict::Wrong,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_pins_are_told_apart_and_nothing_else_passes() {
        let (ok, duress) = (hash("2468").expect("hash"), hash("1357").expect("hash"));
        assert!(ok.starts_with("$argon2id$"), "{ok}");
        assert!(!ok.contains("2468"));
        assert_eq!(decide("2468", &ok, &duress), Verdict::Ok);
        assert_eq!(decide("1357", &ok, &duress), Verdict::Duress);
        assert_eq!(decide("0000", &ok, &duress), Verdict::Wrong);
        assert_eq!(decide("2468", "not a hash", &duress), Verdict::Wrong);
        // The same PIN hashes differently each time (a salt of its own).
        assert_ne!(hash("2468").expect("hash"), ok);
        for bad in ["123", "1234567890123", "12a4", ""] {
            assert!(validate("checkin_pin", bad).is_err(), "{bad}");
        }
    }
}
