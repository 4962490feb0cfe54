//! Kubernetes resource quantities ("1Gi", "500M", "1.5e9") as whole bytes, so that sizes written
//! in different forms compare: a claim asking for "1024Mi" does not need a PV of "1Gi" to grow.

/// The number of bytes `quantity` stands for, rounded up to a whole byte (a size of "100m" is
/// 0.1 byte, which no volume can hold less than one of). `None` for anything that is not a
/// quantity, negative, or beyond 2^127 bytes.
pub fn bytes(quantity: &str) -> Option<u128> {
    let s = quantity.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    // value = digits / 10^fraction.len() * 2^binary * 10^decimal
    let digits: u128 = format!("{whole}{fraction}").parse().ok()?;
    let (binary, decimal): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        exponent => (0, exponent.strip_prefix(['e', 'E'])?.parse().ok()?),
    };
    let scale = decimal - i32::try_from(fraction.len()).ok()?;
    let numerator = digits.checked_mul(1u128.checked_shl(binary)?)?;
    if scale >= 0 {
        numerator.checked_mul(10u128.checked_pow(scale.unsigned_abs())?)
    } else {
        match 10u128.checked_pow(scale.unsigned_abs()) {
            Some(divisor) => Some(numerator.div_ceil(divisor)),
            // Smaller than one byte in every representable case, but not nothing.
            None => Some(u128::from(numerator > 0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_forms_kubernetes_writes() {
        assert_eq!(bytes("1Gi"), Some(1 << 30));
        assert_eq!(bytes("1024Mi"), Some(1 << 30));
        assert_eq!(bytes("5Mi"), Some(5 << 20));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("1E3"), Some(1000));
        assert_eq!(bytes("100m"), Some(1), "a fraction of a byte rounds up");
        assert_eq!(bytes("1500m"), Some(2));
        assert_eq!(bytes("0"), Some(0));
        assert_eq!(bytes(".5k"), Some(500));
        assert_eq!(bytes("+2Ki"), Some(2048));
    }

    #[test]
    fn what_is_not_a_size() {
        for bad in ["", "Gi", "-1Gi", "1.2.3", "1 Gi", "1gi", "1e", "abc", "1Zi", "."] {
            assert_eq!(bytes(bad), None, "{bad:?}");
        }
        assert_eq!(bytes("1e100"), None, "beyond u128");
    }

    proptest! {
        #[test]
        fn binary_and_decimal_spellings_agree(n in 0u64..1 << 40) {
            let n = u128::from(n);
            prop_assert_eq!(bytes(&format!("{n}Ki")), Some(n * 1024));
            prop_assert_eq!(bytes(&format!("{n}k")), Some(n * 1000));
            prop_assert_eq!(bytes(&format!("{n}000m")), Some(n));
            prop_assert_eq!(bytes(&format!("{n}e0")), Some(n));
        }
    }
}
