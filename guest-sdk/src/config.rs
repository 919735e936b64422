//! The pod's configuration.
//!
//! Skiff passes a pod's configuration (the pod spec's `env`, plus `POD_NAME`
//! and friends) to the component as environment variables, so these are thin,
//! typed wrappers over [`std::env`](mod@std::env).
//!
//! ```no_run
//! use skiff_guest::config;
//!
//! let name = config::var_or("POD_NAME", "skiff");
//! let workers: usize = config::parse("WORKERS")?.unwrap_or(4);
//! # Ok::<(), config::ConfigError>(())
//! ```

use std::fmt::Display;
use std::str::FromStr;

/// A configuration variable is set but its value is unusable.
#[derive(Debug, thiserror::Error)]
#[error("config variable {name} has invalid value {value:?}: {reason}")]
pub struct ConfigError {
    name: String,
    value: String,
    reason: String,
}

impl ConfigError {
    /// The variable's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value that could not be used.
    pub fn value(&self) -> &str {
        &self.value
    }
}

/// The value of `name`, or `None` if it is unset or not valid UTF-8.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The value of `name`, or `default` if it is unset or not valid UTF-8.
pub fn var_or(name: &str, default: &str) -> String {
    var(name).unwrap_or_else(|| default.to_owned())
}

/// Parses the value of `name` as a `T`.
///
/// Returns `Ok(None)` if the variable is unset.
///
/// # Errors
///
/// A [`ConfigError`] naming the variable and the value if the variable is set
/// but does not parse, or is not valid UTF-8.
pub fn parse<T>(name: &str) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match std::env::var(name) {
        Ok(value) => parse_value(name, value).map(Some),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(raw)) => Err(ConfigError {
            name: name.to_owned(),
            value: raw.to_string_lossy().into_owned(),
            reason: "not valid UTF-8".to_owned(),
        }),
    }
}

fn parse_value<T>(name: &str, value: String) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    value.parse().map_err(|e: T::Err| ConfigError {
        name: name.to_owned(),
        reason: e.to_string(),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_the_variable_and_value() {
        let error = parse_value::<u32>("WORKERS", "many".to_owned()).unwrap_err();
        assert_eq!(error.name(), "WORKERS");
        assert_eq!(error.value(), "many");
        assert_eq!(
            error.to_string(),
            "config variable WORKERS has invalid value \"many\": invalid digit found in string"
        );
    }

    #[test]
    fn unset_variables_are_none() {
        let unset = "SKIFF_GUEST_TEST_SURELY_UNSET";
        assert_eq!(parse::<u32>(unset).unwrap(), None);
        assert_eq!(var(unset), None);
        assert_eq!(var_or(unset, "fallback"), "fallback");
    }
}
