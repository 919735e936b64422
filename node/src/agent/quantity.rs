//! Resource quantities as the agent reads them: non-negative integers, by
//! [`skiff_api::quantity`] (rounded up, like Kubernetes).

/// `value` in thousandths of a unit (CPU millicores), or `None` if it is
/// not a non-negative quantity.
pub(crate) fn milli(value: &str) -> Option<u64> {
    skiff_api::quantity::parse_milli(value).and_then(|n| u64::try_from(n).ok())
}

/// `value` in whole units (memory bytes), or `None` if it is not a
/// non-negative quantity.
pub(crate) fn units(value: &str) -> Option<u64> {
    skiff_api::quantity::parse_units(value).and_then(|n| u64::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn negative_quantities_are_refused() {
        assert_eq!(super::milli("250m"), Some(250));
        assert_eq!(super::units("64Mi"), Some(64 << 20));
        assert_eq!(super::milli("-1"), None);
        assert_eq!(super::units("lots"), None);
    }
}
